//! The conformance kit passes for every built-in connector against its
//! emulator, the lookup check included where the connector answers it.

use weft::conformance::{CheckTarget, Verdict, check};
use weft::credentials::Secret;
use weft::runtime::InstanceLimits;
use weft_sandbox::vendors::{connector_settings, sample_records};

use super::support::{TestResult, runtime, sandbox};

#[tokio::test]
async fn every_builtin_connector_passes_the_conformance_kit() -> TestResult {
    let sandbox = sandbox(25).await?;
    let runtime = runtime(InstanceLimits::default())?;
    let mut checked = 0;
    for name in weft::builtin::names() {
        let plugin = runtime.load(name, weft::builtin::component(name).ok_or("built in")?).await?;
        let endpoint = sandbox
            .endpoints()
            .into_iter()
            .find(|e| e.vendor == plugin.manifest().name)
            .ok_or_else(|| format!("no emulator for {name}"))?;
        let target = CheckTarget {
            base_url: endpoint.base_url,
            secret: Some(Secret::new(endpoint.api_key)),
            settings: connector_settings(name),
            resource: None,
            samples: sample_records(name),
            allow_irreversible: true,
            // GrowPanel cannot page past its `limit`; everyone else is
            // checked across several small pages.
            page_size: (name != "growpanel").then_some(7),
        };
        let results = check(&plugin, &target).await?;
        let failures: Vec<_> = results.iter().filter(|r| r.verdict == Verdict::Fail).collect();
        assert!(failures.is_empty(), "{name}: {failures:#?}");
        assert!(
            results
                .iter()
                .any(|r| r.verdict == Verdict::Pass && r.check.starts_with("full pagination")),
            "{name}: {results:#?}"
        );
        assert!(
            results
                .iter()
                .any(|r| r.verdict == Verdict::Pass && r.check.starts_with("a wrong credential")),
            "{name}: {results:#?}"
        );
        // The connectors that answer `lookup` agree with their own upsert.
        let lookup =
            results.iter().find(|r| r.check.starts_with("lookup finds")).map(|r| r.verdict);
        let expected = if ["stripe", "stripe-scim", "metronome"].contains(&name) {
            Verdict::Pass
        } else {
            Verdict::Skip
        };
        assert_eq!(lookup, Some(expected), "{name}: {results:#?}");
        checked += 1;
    }
    assert_eq!(checked, 5, "stripe, stripe-scim, baremetrics, metronome, growpanel");
    Ok(())
}
