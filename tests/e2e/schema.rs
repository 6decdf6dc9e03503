//! The JSON Schema shipped for editors (schema/workflow.schema.json) agrees
//! with the parser: every example workflow conforms, and what the parser
//! refuses as an unknown key or a wrong type the schema refuses too.

use std::path::{Path, PathBuf};

use super::support::TestResult;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn validator() -> TestResult<jsonschema::Validator> {
    let text = std::fs::read_to_string(root().join("schema/workflow.schema.json"))?;
    let schema: serde_json::Value = serde_json::from_str(&text)?;
    Ok(jsonschema::validator_for(&schema)
        .map_err(|e| format!("the schema does not compile: {e}"))?)
}

fn as_json(toml_text: &str) -> TestResult<serde_json::Value> {
    let value: toml::Value = toml::from_str(toml_text)?;
    Ok(serde_json::to_value(value)?)
}

fn errors(validator: &jsonschema::Validator, text: &str) -> TestResult<Vec<String>> {
    let instance = as_json(text)?;
    Ok(validator
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect())
}

#[test]
fn every_example_workflow_conforms_to_the_schema() -> TestResult {
    let validator = validator()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("workflows"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2);
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let problems = errors(&validator, &text)?;
        assert!(problems.is_empty(), "{}: {problems:#?}", file.display());
        // And the parser agrees they are good.
        weft::workflow::Workflow::parse(Path::new(&file), &text).map_err(|d| d.to_string())?;
    }
    Ok(())
}

const GOOD: &str = r#"
[workflow]
name = "w"

[inputs.email]
type = "string"

[trigger]
cron = "*/5 * * * *"

[trigger.webhook]
verify = "hmac-sha256"
secret = "env:HOOK"
header = "X-Signature"

[connections.stripe]
plugin = "stripe"
credentials = "env:STRIPE_API_KEY"
rate_limits = { post = "100/min" }

[[step]]
id = "a"
list = "stripe.customers"
map = "{id}"

[[step]]
id = "b"
for_each = ".steps.a.records[]"
concurrency = 2
upsert = "stripe.customers"
record = { id = "${{ $item.id }}" }
retry = { attempts = 3, backoff = "1s" }
timeout = "30s"
"#;

#[test]
fn what_the_parser_refuses_the_schema_refuses() -> TestResult {
    let validator = validator()?;
    assert_eq!(errors(&validator, GOOD)?, Vec::<String>::new());
    weft::workflow::Workflow::parse(Path::new("w.toml"), GOOD).map_err(|d| d.to_string())?;
    for (what, bad) in [
        ("unknown step key", GOOD.replace("timeout = \"30s\"", "timeout = \"30s\"\npage_sise = 3")),
        ("unknown top-level table", format!("{GOOD}\n[triggers]\ncron = \"x\"\n")),
        ("wrong type", GOOD.replace("concurrency = 2", "concurrency = \"two\"")),
        ("bad input type", GOOD.replace("type = \"string\"", "type = \"text\"")),
        ("secret in the file", GOOD.replace("env:STRIPE_API_KEY", "sk_live_123")),
        ("two ops", GOOD.replace("map = \"{id}\"", "get = \"stripe.customers\"")),
        ("no op", GOOD.replace("list = \"stripe.customers\"\n", "")),
        ("bad rate class", GOOD.replace("post = ", "posts = ")),
    ] {
        assert!(
            !errors(&validator, &bad)?.is_empty(),
            "the schema accepts a workflow with a {what}"
        );
        assert!(
            weft::workflow::Workflow::parse(Path::new("w.toml"), &bad).is_err(),
            "the parser accepts a workflow with a {what}"
        );
    }
    Ok(())
}

#[test]
fn the_connection_egress_and_budget_keys_agree_with_the_parser() -> TestResult {
    let validator = validator()?;
    let keys = |extra: &str| {
        GOOD.replace(
            "rate_limits = { post = \"100/min\" }",
            &format!("rate_limits = {{ post = \"100/min\" }}\n{extra}"),
        )
    };
    let good = keys("allow_private_network = true\nmax_requests_per_call = 50");
    assert_eq!(errors(&validator, &good)?, Vec::<String>::new());
    weft::workflow::Workflow::parse(Path::new("w.toml"), &good).map_err(|d| d.to_string())?;
    for bad in [
        "allow_private_network = \"yes\"",
        "max_requests_per_call = 0",
        "max_requests_per_call = \"many\"",
    ] {
        let bad = keys(bad);
        assert!(!errors(&validator, &bad)?.is_empty(), "the schema accepts {bad}");
        assert!(
            weft::workflow::Workflow::parse(Path::new("w.toml"), &bad).is_err(),
            "the parser accepts {bad}"
        );
    }
    Ok(())
}
