use super::*;

fn parse(text: &str) -> Result<Workflow, Diagnostics> {
    Workflow::parse(Path::new("flows/test.toml"), text)
}

fn first_error(text: &str) -> Diagnostic {
    match parse(text) {
        Ok(_) => panic!("expected an error"),
        Err(d) => d.0[0].clone(),
    }
}

const GOOD: &str = r#"
[workflow]
name = "export"

[connections.stripe]
plugin = "stripe"
credentials = "env:STRIPE_API_KEY"

[[step]]
id = "all"
list = "stripe.customers"
page_size = 100
"#;

const FULL: &str = r#"
[workflow]
name = "provision"

[inputs.email]
type = "string"
description = "the customer's email"

[inputs.seats]
type = "integer"
default = 1

[connections.stripe]
plugin = "stripe"
credentials = "env:STRIPE_API_KEY"

[connections.growpanel]
plugin = "growpanel"
credentials = "env:GROWPANEL_API_KEY"

[[step]]
id = "lookup"
list = "stripe.customers"
filter = { email = "${{ .inputs.email }}" }

[[step]]
id = "each"
for_each = ".steps.lookup.records[] | select(.email != null)"
concurrency = 4
when = ".steps.lookup.count > 0"
upsert = "growpanel.customers"
record = { id = "${{ $item.id }}", email = "${{ $item.email }}", seats = "${{ .inputs.seats }}" }
retry = { attempts = 3, backoff = "500ms" }
timeout = "30s"

[[step]]
id = "mirror"
sync = { from = "stripe.customers", to = "growpanel.customers", key = "id" }
map = '{id: .id, name: .name, email: .email}'
"#;

#[test]
fn a_good_workflow_parses() -> Result<(), Diagnostics> {
    let w = parse(GOOD)?;
    assert_eq!(w.name, "export");
    assert_eq!(w.steps[0].target(), "stripe.customers");
    assert!(matches!(w.steps[0].action, Action::List { page_size: Some(100), .. }));
    assert_eq!(w.connections["stripe"].plugin, PluginRef::Builtin("stripe".into()));
    Ok(())
}

#[test]
fn inputs_for_each_conditions_retries_and_sync_parse() -> Result<(), Diagnostics> {
    let w = parse(FULL)?;
    assert_eq!(w.inputs.len(), 2);
    assert!(
        w.inputs.iter().any(|i| i.name == "email" && i.required && i.kind == InputType::String)
    );
    assert!(
        w.inputs
            .iter()
            .any(|i| i.name == "seats" && !i.required && i.default == Some(serde_json::json!(1)))
    );
    let each = &w.steps[1];
    assert!(
        matches!(&each.for_each, Some(ForEach::Records { step, then: Some(_), .. }) if step == "lookup"),
        "{:?}",
        each.for_each
    );
    assert_eq!(each.concurrency, 4);
    assert_eq!(each.retry.attempts, 3);
    assert_eq!(each.retry.backoff, Duration::from_millis(500));
    assert_eq!(each.timeout, Some(Duration::from_secs(30)));
    assert!(each.when.is_some());
    let Action::Sync(sync) = &w.steps[2].action else { panic!("a sync step") };
    assert_eq!(sync.from.to_string(), "stripe.customers");
    assert_eq!(w.steps[2].target(), "growpanel.customers");
    assert_eq!(sync.key.text(), ".id");
    Ok(())
}

#[test]
fn a_for_each_over_an_expression_is_not_streamed() -> Result<(), Diagnostics> {
    let text = FULL.replace(".steps.lookup.records[] | select(.email != null)", "[range(0; 10)]");
    let w = parse(&text)?;
    assert!(matches!(w.steps[1].for_each, Some(ForEach::Expr(_))));
    Ok(())
}

#[test]
fn unknown_key_points_at_its_line_and_column() {
    let d = first_error(&GOOD.replace("page_size = 100", "page_sise = 100"));
    assert_eq!((d.line, d.column), (12, 1), "{d}");
    assert!(d.message.contains("page_sise"), "{d}");
    let shown = d.to_string();
    assert!(shown.contains("flows/test.toml:12:1"), "{shown}");
    assert!(shown.contains("^"), "{shown}");
}

#[test]
fn wrong_type_is_reported_where_it_is() {
    let d = first_error(&GOOD.replace("page_size = 100", "page_size = \"lots\""));
    assert_eq!(d.line, 12, "{d}");
}

#[test]
fn unknown_connection_is_named() {
    let d = first_error(&GOOD.replace("list = \"stripe.customers\"", "list = \"strpe.customers\""));
    assert!(d.message.contains("unknown connection \"strpe\""), "{d}");
    assert_eq!((d.line, d.column), (11, 8), "{d}");
}

#[test]
fn duplicate_step_ids_are_refused() {
    let text = format!("{GOOD}\n[[step]]\nid = \"all\"\nlist = \"stripe.customers\"\n");
    let d = first_error(&text);
    assert!(d.message.contains("already defined"), "{d}");
}

#[test]
fn a_step_with_two_ops_is_refused() {
    let d = first_error(&GOOD.replace("page_size = 100", "get = \"stripe.customers\""));
    assert!(d.message.contains("more than one op"), "{d}");
}

#[test]
fn fields_that_do_not_fit_the_op_are_refused() {
    let d = first_error(&GOOD.replace("page_size = 100", "key = \"cus_1\""));
    assert!(d.message.contains("`key` does not apply to a list step"), "{d}");
    assert_eq!(d.line, 12, "{d}");
}

#[test]
fn rate_limit_overrides_parse_per_class() -> Result<(), Diagnostics> {
    let w = parse(&GOOD.replace("credentials = \"env:STRIPE_API_KEY\"", "credentials = \"env:STRIPE_API_KEY\"\nrate_limit = \"10/s\"\nrate_limits = { post = \"100/min\" }"))?;
    let limits = &w.connections["stripe"].rate_limits;
    assert!(
        limits
            .contains(&crate::limiter::LimitOverride { class: MethodClass::Any, per_second: 10.0 }),
        "{limits:?}"
    );
    assert!(
        limits.contains(&crate::limiter::LimitOverride {
            class: MethodClass::Post,
            per_second: 100.0 / 60.0
        }),
        "{limits:?}"
    );
    let d = first_error(&GOOD.replace(
        "credentials = \"env:STRIPE_API_KEY\"",
        "credentials = \"env:STRIPE_API_KEY\"\nrate_limit = \"fast\"",
    ));
    assert!(d.message.contains("N/s"), "{d}");
    Ok(())
}

#[test]
fn egress_and_request_budget_keys_parse_on_a_connection() -> Result<(), Diagnostics> {
    let w = parse(GOOD)?;
    assert!(
        !w.connections["stripe"].allow_private_network,
        "private networks are refused by default"
    );
    assert_eq!(w.connections["stripe"].max_requests_per_call, None);
    let keys = "credentials = \"env:STRIPE_API_KEY\"\nallow_private_network = true\nmax_requests_per_call = 50";
    let w = parse(&GOOD.replace("credentials = \"env:STRIPE_API_KEY\"", keys))?;
    assert!(w.connections["stripe"].allow_private_network);
    assert_eq!(w.connections["stripe"].max_requests_per_call, Some(50));
    for bad in [
        "max_requests_per_call = 0",
        "max_requests_per_call = -1",
        "max_requests_per_call = 5000000000",
    ] {
        let d = first_error(&GOOD.replace(
            "credentials = \"env:STRIPE_API_KEY\"",
            &format!("credentials = \"env:STRIPE_API_KEY\"\n{bad}"),
        ));
        assert!(
            d.message.contains("max_requests_per_call must be a whole number from 1"),
            "{bad}: {d}"
        );
        assert_eq!(d.line, 8, "{d}");
    }
    let d = first_error(&GOOD.replace(
        "credentials = \"env:STRIPE_API_KEY\"",
        "credentials = \"env:STRIPE_API_KEY\"\nallow_private_network = \"yes\"",
    ));
    assert!(d.message.contains("bool"), "{d}");
    Ok(())
}

#[test]
fn bad_credentials_reference_is_refused() {
    let d = first_error(&GOOD.replace("env:STRIPE_API_KEY", "STRIPE_API_KEY"));
    assert!(d.message.contains("env:NAME"), "{d}");
    assert_eq!(d.line, 7);
}

#[test]
fn a_reference_to_a_later_step_points_at_its_name() {
    let text = FULL.replace(".steps.lookup.count > 0", ".steps.mirror.counts.created > 0");
    let d = first_error(&text);
    assert!(d.message.contains("in `when`: step \"mirror\" runs after step \"each\""), "{d}");
    assert_eq!(&d.source_line[d.column - 1..d.column - 1 + d.width], "mirror", "{d}");
}

#[test]
fn a_reference_to_a_missing_step_lists_the_steps_above() {
    let text =
        FULL.replace("seats = \"${{ .inputs.seats }}\"", "seats = \"${{ .steps.lokup.count }}\"");
    let d = first_error(&text);
    assert!(d.message.contains("in `record`: no step \"lokup\" above; steps above: lookup"), "{d}");
    assert_eq!(&d.source_line[d.column - 1..d.column - 1 + d.width], "lokup", "{d}");
}

#[test]
fn a_step_cannot_use_its_own_result() {
    let text = FULL.replace(".steps.lookup.count > 0", ".steps.each.counts.failed == 0");
    let d = first_error(&text);
    assert!(d.message.contains("refers to its own result"), "{d}");
}

#[test]
fn an_unknown_input_is_an_error_with_a_caret() {
    let text = FULL.replace("email = \"${{ .inputs.email }}\"", "email = \"${{ .inputs.emial }}\"");
    let d = first_error(&text);
    assert!(
        d.message.contains("unknown input \"emial\"; the workflow declares: email, seats"),
        "{d}"
    );
    assert_eq!(&d.source_line[d.column - 1..d.column - 1 + d.width], "emial", "{d}");
}

#[test]
fn a_record_field_named_like_a_root_is_not_a_reference_in_map() -> Result<(), Diagnostics> {
    parse(&FULL.replace(
        "{id: .id, name: .name, email: .email}",
        "{id: .id, name: .inputs.name, s: .steps.x}",
    ))?;
    Ok(())
}

#[test]
fn an_expression_that_does_not_compile_points_inside_the_string() {
    let text = FULL.replace(".steps.lookup.count > 0", ".steps.lookup.count | frobnicate");
    let d = first_error(&text);
    assert!(d.message.contains("in `when`: unknown function frobnicate/0"), "{d}");
    assert_eq!(&d.source_line[d.column - 1..d.column - 1 + d.width], "frobnicate", "{d}");
}

#[test]
fn a_template_that_does_not_compile_points_inside_the_record() {
    let text =
        FULL.replace("email = \"${{ $item.email }}\"", "email = \"${{ $item.email | nope }}\"");
    let d = first_error(&text);
    assert!(d.message.contains("in `record`: unknown function nope/0"), "{d}");
    assert_eq!(&d.source_line[d.column - 1..d.column - 1 + d.width], "nope", "{d}");
}

#[test]
fn item_outside_a_for_each_is_an_error() {
    let text = GOOD.replace("page_size = 100", "filter = { email = \"${{ $item.email }}\" }");
    let d = first_error(&text);
    assert!(d.message.contains("$item is set only in a step with for_each"), "{d}");
}

#[test]
fn for_each_does_not_apply_to_a_list() {
    let d = first_error(&GOOD.replace("page_size = 100", "for_each = \"[1, 2]\""));
    assert!(d.message.contains("for_each does not apply to a list step"), "{d}");
}

#[test]
fn a_bad_cron_expression_is_refused_where_it_is() {
    let text = GOOD.replace(
        "[connections.stripe]",
        "[trigger]\ncron = \"every 5 minutes\"\n\n[connections.stripe]",
    );
    let d = first_error(&text);
    assert!(
        d.message.contains("bad cron expression \"every 5 minutes\": The 'Seconds' field"),
        "{d}"
    );
    assert!(!d.message.contains('\n'), "{d}");
    assert_eq!(d.line, 6, "{d}");
}

#[test]
fn triggers_parse() -> Result<(), Diagnostics> {
    let text = GOOD.replace(
        "[connections.stripe]",
        "[trigger]\ncron = \"*/15 * * * *\"\n\n[trigger.webhook]\nverify = \"stripe\"\nsecret = \"env:STRIPE_WEBHOOK_SECRET\"\ntolerance = \"2m\"\n\n[connections.stripe]",
    );
    let w = parse(&text)?;
    let cron = w.trigger.cron.as_ref().map(|c| (c.expression.as_str(), c.overlap, c.catch_up));
    assert_eq!(cron, Some(("*/15 * * * *", Overlap::Skip, false)));
    let webhook = w.trigger.webhook.as_ref().map(|h| (h.verify.clone(), h.tolerance));
    assert_eq!(webhook, Some((Verify::Stripe, Duration::from_secs(120))));
    Ok(())
}

#[test]
fn an_hmac_webhook_needs_its_header() {
    let text = GOOD.replace("[connections.stripe]", "[trigger.webhook]\nverify = \"hmac-sha256\"\nsecret = \"env:HOOK_SECRET\"\n\n[connections.stripe]");
    let d = first_error(&text);
    assert!(d.message.contains("needs `header`"), "{d}");
}

#[test]
fn durations_and_retries_are_checked() {
    let d = first_error(&GOOD.replace("page_size = 100", "timeout = \"soon\""));
    assert!(d.message.contains("bad duration \"soon\""), "{d}");
    let d = first_error(&GOOD.replace("page_size = 100", "retry = { attempts = 0 }"));
    assert!(d.message.contains("between 1 and 20"), "{d}");
}

#[test]
fn a_required_input_with_a_default_is_refused() {
    let d = first_error(&FULL.replace("default = 1", "default = 1\nrequired = true"));
    assert!(d.message.contains("required and has a default"), "{d}");
}

#[test]
fn a_default_of_the_wrong_type_is_refused() {
    let d = first_error(&FULL.replace("default = 1", "default = \"one\""));
    assert!(d.message.contains("not of type integer"), "{d}");
}

#[test]
fn streamed_records_are_recognised_in_every_spelling() {
    assert_eq!(streamed_records(".steps.a.records"), Some(("a".into(), None)));
    assert_eq!(streamed_records("$steps.a-b.records[]"), Some(("a-b".into(), None)));
    assert_eq!(
        streamed_records(".steps.a.records[] | select(.x)"),
        Some(("a".into(), Some("select(.x)".into())))
    );
    assert_eq!(
        streamed_records(".steps.a.records | length"),
        Some(("a".into(), Some("length".into())))
    );
    assert_eq!(streamed_records(".steps.a.count"), None);
    assert_eq!(streamed_records("[.steps.a.records[]]"), None);
}

#[test]
fn a_dashed_step_id_in_dot_syntax_gets_a_hint() {
    let text = GOOD
        .replace("page_size = 100", "")
        .replace("id = \"all\"", "id = \"all-customers\"")
        + "\n[[step]]\nid = \"one\"\nget = \"stripe.customers\"\nkey = \"${{ .steps.all-customers.records[0].id }}\"\n";
    let d = first_error(&text);
    assert!(d.message.contains("written .steps[\"all-customers\"]"), "{d}");
}

#[test]
fn a_time_zone_and_a_jitter_parse_and_a_bad_zone_or_event_id_is_refused() -> Result<(), Diagnostics>
{
    let with = |extra: &str| {
        GOOD.replace(
            "[connections.stripe]",
            &format!("[trigger]\ncron = \"30 2 * * *\"\n{extra}\n\n[connections.stripe]"),
        )
    };
    let w = parse(&with("timezone = \"Europe/Berlin\"\njitter = \"30s\""))?;
    let cron = w.trigger.cron.as_ref().map(|c| (c.timezone, c.jitter));
    assert_eq!(cron, Some((Some(chrono_tz::Europe::Berlin), Duration::from_secs(30))));
    let d = first_error(&with("timezone = \"Mars/Olympus\""));
    assert!(d.message.contains("not an IANA time zone"), "{d}");
    let hook = GOOD.replace(
        "[connections.stripe]",
        "[trigger.webhook]\nverify = \"hmac-sha256\"\nheader = \"X-Sig\"\nsecret = \"env:S\"\nevent_id = \"meta..id\"\n\n[connections.stripe]",
    );
    let d = first_error(&hook);
    assert!(d.message.contains("event_id is a field of the event"), "{d}");
    let stripe = GOOD.replace(
        "[connections.stripe]",
        "[trigger.webhook]\nverify = \"stripe\"\nsecret = \"env:S\"\n\n[connections.stripe]",
    );
    let w = parse(&stripe)?;
    let event = w.trigger.webhook.as_ref().and_then(|h| h.event_id.clone());
    assert_eq!(
        event.map(|e| (e.path, e.required)),
        Some(("id".to_owned(), false)),
        "Stripe's event id by default"
    );
    Ok(())
}

const STATEFUL: &str = r#"
[workflow]
name = "incremental"

[state.since]
default = 0

[state.seen]

[connections.stripe]
plugin = "stripe"
credentials = "env:STRIPE_API_KEY"

[[step]]
id = "new"
list = "stripe.customers"
filter = { created = { gte = "${{ $state.since }}" } }
state = { seen = "${{ [$state.seen, ($page.records | map(.created) | max)] | max }}" }

[[step]]
id = "look"
get = "stripe.customers"
key = "cus_1"
state = { since = "${{ $steps.look.created // $state.seen }}" }
"#;

#[test]
fn state_is_declared_with_defaults_and_set_by_steps() -> Result<(), Diagnostics> {
    let w = parse(STATEFUL)?;
    let names: Vec<(&str, &serde_json::Value)> =
        w.state.iter().map(|s| (s.name.as_str(), &s.default)).collect();
    assert_eq!(names, [("seen", &serde_json::Value::Null), ("since", &serde_json::json!(0))]);
    assert_eq!(w.steps[0].state.len(), 1);
    // A step's `state` may read the step's own result; its other fields may not.
    assert_eq!(w.steps[1].state[0].0, "since");
    Ok(())
}

#[test]
fn a_step_setting_undeclared_state_is_refused() {
    let text = STATEFUL.replace("state = { since =", "state = { snice =");
    let d = first_error(&text);
    assert!(d.message.contains("sets state \"snice\", which the workflow does not declare"), "{d}");
}

#[test]
fn reading_undeclared_state_is_an_error_with_a_caret() {
    let text = STATEFUL.replace("gte = \"${{ $state.since }}\"", "gte = \"${{ $state.sicne }}\"");
    let d = first_error(&text);
    assert!(
        d.message.contains("unknown state value \"sicne\"; the workflow declares: seen, since"),
        "{d}"
    );
    assert_eq!(&d.source_line[d.column - 1..d.column - 1 + d.width], "sicne", "{d}");
}

#[test]
fn page_is_only_for_a_list_steps_state() {
    let text = STATEFUL.replace("$steps.look.created // $state.seen", "$page.cursor");
    let d = first_error(&text);
    assert!(d.message.contains("$page is set only in a list step's `state`"), "{d}");
    let text = STATEFUL.replace("gte = \"${{ $state.since }}\"", "gte = \"${{ $page }}\"");
    assert!(first_error(&text).message.contains("$page is set only"));
}

#[test]
fn a_fail_step_takes_a_message_and_no_op_fields() {
    let text = format!(
        "{GOOD}\n[[step]]\nid = \"guard\"\nwhen = \".steps.all.count == 0\"\nfail = \"nothing in ${{{{ .steps.all.count }}}}\"\n"
    );
    let w = parse(&text).unwrap_or_else(|d| panic!("{d}"));
    assert!(matches!(w.steps[1].action, Action::Fail { .. }));
    let wrong = format!("{GOOD}\n[[step]]\nid = \"guard\"\nfail = \"no\"\nmap = \".\"\n");
    assert!(first_error(&wrong).message.contains("`map` does not apply to a fail step"));
    let bad = format!("{GOOD}\n[[step]]\nid = \"guard\"\nfail = \"${{{{ .steps.nope }}}}\"\n");
    assert!(first_error(&bad).message.contains("no step \"nope\" above"));
}
