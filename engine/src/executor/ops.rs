//! One get, upsert or remove — a step's, or one for-each item's — with the
//! step's retries and timeout, or its plan in a dry run.

use std::future::Future;
use std::time::Duration;

use rand::Rng as _;
use serde_json::Value;

use super::plan::{PlanEntry, PlannedAction, changed_fields, values_at};
use super::{StepCtx, idempotency_key};
use crate::connector::{ConnectorError, RemoveOutcome, UpsertAction, UpsertRequest};
use crate::endpoint::Endpoint;
use crate::expr::{EvalError, Evaluator, Scope, Template, to_val};
use crate::runtime::RuntimeError;
use crate::store::ItemAction;
use crate::workflow::{Action, Step, StepRetry};

/// A failed call, and whether every further item would fail the same way
/// (a bad credential), so a for-each stops instead of repeating it.
#[derive(Debug, Clone)]
pub(crate) struct CallError {
    pub(crate) message: String,
    pub(crate) fatal: bool,
    /// The run was stopped (cancelled, or the process stopping) while the
    /// call waited for a limit's slot or a retry: not the vendor's
    /// failure. An item that ends so is not recorded, so a resume does it
    /// again under the same idempotency key.
    pub(crate) stopped: bool,
}

impl CallError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        CallError { message: message.into(), fatal: false, stopped: false }
    }
}

/// What one op did.
#[derive(Debug, Clone)]
pub(crate) struct OpResult {
    /// What it did, or a dry run's planned action.
    pub(crate) action: ItemAction,
    /// The record's id, when known.
    pub(crate) id: Option<String>,
    /// What the step exposes as its output.
    pub(crate) output: Value,
    /// A dry run's plan.
    pub(crate) plan: Option<PlanEntry>,
}

/// Runs `call` with the step's timeout, retrying per `retry` when the
/// failure is one a retry can cure (the connector says transient or rate
/// limited, or the timeout struck).
pub(crate) async fn with_retry<T, F, Fut>(
    retry: &StepRetry,
    timeout: Option<Duration>,
    mut call: F,
) -> (Result<T, CallError>, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RuntimeError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = match timeout {
            Some(limit) => match tokio::time::timeout(limit, call()).await {
                Ok(result) => result.map_err(|e| (classify(&e), e.to_string())),
                Err(_) => Err((
                    Class::Retryable,
                    format!("timed out after {}", humantime::format_duration(limit)),
                )),
            },
            None => call().await.map_err(|e| (classify(&e), e.to_string())),
        };
        match outcome {
            Ok(value) => return (Ok(value), attempt),
            Err((_, message)) if crate::http::wait_cut_short() => {
                return (Err(CallError { message, fatal: false, stopped: true }), attempt);
            }
            Err((class, message)) if class == Class::Retryable && attempt < retry.attempts => {
                let ceiling =
                    retry.backoff.saturating_mul(1 << (attempt - 1).min(20)).min(retry.max_backoff);
                let wait = Duration::from_micros(
                    rand::rng()
                        .random_range(0..=ceiling.as_micros().min(u128::from(u64::MAX)) as u64),
                );
                tracing::info!(attempt, wait_ms = wait.as_millis() as u64, error = %message, "retrying the call");
                if crate::http::unless_stopped(tokio::time::sleep(wait)).await.is_none() {
                    return (Err(CallError { message, fatal: false, stopped: true }), attempt);
                }
            }
            Err((class, message)) => {
                let message = if attempt > 1 {
                    format!("{message} (after {attempt} tries)")
                } else {
                    message
                };
                return (
                    Err(CallError { message, fatal: class == Class::Fatal, stopped: false }),
                    attempt,
                );
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Retryable,
    Final,
    /// Every further call would fail the same way.
    Fatal,
}

fn classify(error: &RuntimeError) -> Class {
    match error.connector_error() {
        Some(e) if e.is_retryable() => Class::Retryable,
        Some(ConnectorError::Unauthorized(_) | ConnectorError::Forbidden(_)) => Class::Fatal,
        _ => Class::Final,
    }
}

fn key_of(value: Value, what: &str) -> Result<String, CallError> {
    match value {
        Value::String(s) if !s.is_empty() => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Err(CallError::new(format!("`{what}` is null; it must name a record"))),
        Value::String(_) => {
            Err(CallError::new(format!("`{what}` is empty; it must name a record")))
        }
        other => Err(CallError::new(format!("`{what}` must be a string or a number, not {other}"))),
    }
}

fn parse_record(text: &str, plugin: &str, op: &str) -> Result<Value, CallError> {
    serde_json::from_str(text).map_err(|e| {
        CallError::new(format!("plugin {plugin}: {op} returned a record that is not JSON: {e}"))
    })
}

/// The id an upsert with `create_only` fields looks its record up by: only
/// with it can the engine tell a create from an update.
fn create_only_id(desired: &Value, id_field: &str) -> Result<String, CallError> {
    id_of(desired, id_field).ok_or_else(|| {
        CallError::new(format!(
            "create_only needs the record's `{id_field}` to tell a create from an update; the record has none"
        ))
    })
}

fn id_of(record: &Value, id_field: &str) -> Option<String> {
    match record.get(id_field)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// The op's template (`key` of a get or remove, `record` of an upsert)
/// rendered for one item ahead of its call, or why it could not be.
pub(crate) type Rendered = Result<Value, CallError>;

/// Renders the op's template for a batch of items in one job on an
/// evaluation thread (each item an evaluation with a budget of its own),
/// so a for-each over 100k items costs a job per batch, not per item.
///
/// A template that runs out of its budget would do so for the items after
/// it too, each costing the budget: it fails its item fatally (the
/// for-each stops) and the rest of the batch is not tried. After a jq
/// error the rest are left to render when their call starts (`None`).
pub(crate) async fn render_batch(
    evaluator: &Evaluator,
    step: &Step,
    items: Vec<(u64, Scope)>,
) -> Result<Vec<(u64, Scope, Option<Rendered>)>, EvalError> {
    let (field, template) = match &step.action {
        Action::Get { key } | Action::Remove { key } => ("key", key.clone()),
        Action::Upsert { record } => ("record", record.clone()),
        Action::List { .. } | Action::Sync(_) | Action::Fail { .. } => {
            return Ok(items.into_iter().map(|(n, scope)| (n, scope, None)).collect());
        }
    };
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let scopes: Vec<Scope> = items.iter().map(|(_, scope)| scope.clone()).collect();
    let rendered = evaluator
        .run(move |session| {
            let mut rendered: Vec<Option<Rendered>> = Vec::with_capacity(scopes.len());
            let mut after: Option<Option<Rendered>> = None;
            for scope in &scopes {
                if let Some(rest) = &after {
                    rendered.push(rest.clone());
                    continue;
                }
                match session.try_evaluate(|ev| ev.render(field, &template, scope)) {
                    Ok(value) => rendered.push(Some(Ok(value))),
                    Err(EvalError::Stopped) => return Err(EvalError::Stopped.to_string()),
                    Err(EvalError::Exhausted(message)) => {
                        after = Some(Some(Err(CallError { message: format!("not tried: the template ran out of its budget on an earlier item ({message})"), fatal: true, stopped: false })));
                        rendered.push(Some(Err(CallError { message, fatal: true, stopped: false })));
                    }
                    Err(EvalError::Failed(message)) => {
                        after = Some(None);
                        rendered.push(Some(Err(CallError::new(message))));
                    }
                }
            }
            Ok(rendered)
        })
        .await?;
    Ok(items.into_iter().zip(rendered).map(|((n, scope), r)| (n, scope, r)).collect())
}

/// The value of the op's `template`: rendered ahead when `rendered` is
/// given, else now.
async fn template_value(
    evaluator: &Evaluator,
    field: &str,
    template: &Template,
    scope: &Scope,
    rendered: Option<Rendered>,
) -> Result<Value, CallError> {
    match rendered {
        Some(rendered) => rendered,
        None => Ok(evaluator.render(field, template, scope).await?),
    }
}

impl From<EvalError> for CallError {
    /// An expression that ran out of its budget would for every item: it
    /// stops a for-each at once.
    fn from(error: EvalError) -> Self {
        let fatal = matches!(error, EvalError::Exhausted(_));
        CallError { message: error.into_message(), fatal, stopped: false }
    }
}

/// Runs the step's op once (with its retries) in `scope`; `item` numbers
/// the write's idempotency key; `evaluator` evaluates its templates (unless
/// `rendered` brings the template's value) and `map`.
/// `keep_output` builds the step's output value; a for-each keeps only each
/// item's action and id, so it skips that work.
pub(crate) async fn item(
    cx: StepCtx<'_>,
    endpoint: &dyn Endpoint,
    evaluator: &Evaluator,
    scope: &Scope,
    item: u64,
    keep_output: bool,
    rendered: Option<Rendered>,
) -> Result<OpResult, CallError> {
    use tracing::Instrument as _;
    // One span an item (traces): its number in the step, never its value.
    let span = tracing::info_span!("item", item);
    item_untraced(cx, endpoint, evaluator, scope, item, keep_output, rendered)
        .instrument(span)
        .await
}

async fn item_untraced(
    cx: StepCtx<'_>,
    endpoint: &dyn Endpoint,
    evaluator: &Evaluator,
    scope: &Scope,
    item: u64,
    keep_output: bool,
    rendered: Option<Rendered>,
) -> Result<OpResult, CallError> {
    let StepCtx { run: ctx, step, .. } = cx;
    let resource = endpoint.manifest().resource(&step.resource).ok_or_else(|| {
        CallError::new(format!("plugin {} has no resource {}", endpoint.name(), step.resource))
    })?;
    let plugin = endpoint.name();
    match &step.action {
        Action::Get { key } => {
            let id = key_of(template_value(evaluator, "key", key, scope, rendered).await?, "key")?;
            let (result, _) =
                with_retry(&step.retry, step.timeout, || endpoint.get(&step.resource, &id)).await;
            let output = match result? {
                Some(text) => {
                    let record = parse_record(&text, plugin, "get")?;
                    match &step.map {
                        Some(map) => evaluator.first("map", map, to_val(&record), scope).await?,
                        None => record,
                    }
                }
                None => Value::Null,
            };
            let action = if output.is_null() { ItemAction::Absent } else { ItemAction::Found };
            Ok(OpResult { action, id: Some(id), output, plan: None })
        }
        Action::Upsert { record } => {
            let desired = template_value(evaluator, "record", record, scope, rendered).await?;
            if !desired.is_object() {
                return Err(CallError::new(format!("`record` must be an object, not {desired}")));
            }
            if ctx.dry_run {
                return plan_upsert(step, endpoint, &resource.id_field, desired).await;
            }
            let mut desired = desired;
            if !step.create_only.is_empty() {
                // Whether this write creates decides what it sends: the
                // record it would update is looked up by its id.
                let id = create_only_id(&desired, &resource.id_field)?;
                let (found, _) =
                    with_retry(&step.retry, step.timeout, || endpoint.get(&step.resource, &id))
                        .await;
                if found?.is_some() {
                    step.drop_create_only(&mut desired);
                }
            }
            let desired_text = desired.to_string();
            drop(desired);
            let request = UpsertRequest {
                resource: step.resource.clone(),
                record: desired_text,
                idempotency_key: idempotency_key(ctx.run_id, &step.id, item),
            };
            let (result, _) =
                with_retry(&step.retry, step.timeout, || endpoint.upsert(request.clone())).await;
            let outcome = result?;
            let record = parse_record(&outcome.record, plugin, "upsert")?;
            let action = match outcome.action {
                UpsertAction::Created => ItemAction::Created,
                UpsertAction::Updated => ItemAction::Updated,
                UpsertAction::Unchanged => ItemAction::Unchanged,
            };
            let id = id_of(&record, &resource.id_field);
            let output = if keep_output {
                serde_json::json!({ "action": outcome.action, "record": record })
            } else {
                Value::Null
            };
            Ok(OpResult { action, id, output, plan: None })
        }
        Action::Remove { key } => {
            let id = key_of(template_value(evaluator, "key", key, scope, rendered).await?, "key")?;
            let irreversible = resource.is_irreversible(crate::connector::Op::Remove);
            if ctx.dry_run {
                let (result, _) =
                    with_retry(&step.retry, step.timeout, || endpoint.get(&step.resource, &id))
                        .await;
                let present = result?.is_some();
                let action =
                    if present { PlannedAction::Remove } else { PlannedAction::AlreadyAbsent };
                let entry = PlanEntry {
                    action,
                    key: Some(id.clone()),
                    changes: vec![],
                    record: None,
                    before: None,
                    irreversible: irreversible && present,
                };
                return Ok(OpResult {
                    action: action.into(),
                    id: Some(id.clone()),
                    output: serde_json::json!({ "plan": action, "id": id }),
                    plan: Some(entry),
                });
            }
            let (result, _) =
                with_retry(&step.retry, step.timeout, || endpoint.remove(&step.resource, &id))
                    .await;
            let outcome = result?;
            let action = match outcome {
                RemoveOutcome::Removed => ItemAction::Removed,
                RemoveOutcome::AlreadyAbsent => ItemAction::AlreadyAbsent,
            };
            Ok(OpResult {
                action,
                id: Some(id.clone()),
                output: serde_json::json!({ "outcome": outcome, "id": id }),
                plan: None,
            })
        }
        Action::List { .. } | Action::Sync(_) | Action::Fail { .. } => {
            Err(CallError::new(format!("a {} step is not run per item", step.action.name())))
        }
    }
}

/// What an upsert would do: with the id in the record, a get tells create
/// from update and which fields differ. Without one, a connector that
/// exports `lookup` (`weft:connector@0.2.0`) says which record the upsert
/// would match, by its own rule, so the plan names that record's id and the
/// steps after it see the id as they would in the real run; otherwise the
/// connector would match on its own terms (its manifest says which) and the
/// plan says "upsert".
async fn plan_upsert(
    step: &Step,
    endpoint: &dyn Endpoint,
    id_field: &str,
    desired: Value,
) -> Result<OpResult, CallError> {
    let Some(id) = id_of(&desired, id_field) else {
        if !step.create_only.is_empty() {
            create_only_id(&desired, id_field)?;
        }
        if endpoint.offers_lookup()
            && let Some(found) = look_up(step, endpoint, &desired).await?
        {
            return plan_looked(step, endpoint.name(), id_field, desired, found);
        }
        return Ok(planned_without_id(PlannedAction::Upsert, desired));
    };
    let (result, _) =
        with_retry(&step.retry, step.timeout, || endpoint.get(&step.resource, &id)).await;
    let (action, changes, before) = match result? {
        None => (PlannedAction::Create, vec![], None),
        Some(text) => {
            let current = parse_record(&text, endpoint.name(), "get")?;
            let mut desired = desired.clone();
            step.drop_create_only(&mut desired);
            let changes = changed_fields(&desired, &current);
            let before = values_at(&current, &changes);
            (
                if changes.is_empty() { PlannedAction::Unchanged } else { PlannedAction::Update },
                changes,
                before,
            )
        }
    };
    let entry = PlanEntry {
        action,
        key: Some(id.clone()),
        changes,
        record: Some(desired.clone()),
        before,
        irreversible: false,
    };
    Ok(OpResult {
        action: action.into(),
        id: Some(id),
        output: serde_json::json!({ "plan": action, "record": desired }),
        plan: Some(entry),
    })
}

/// The plan of an upsert that names no record: a create, or an upsert the
/// connector will resolve.
fn planned_without_id(action: PlannedAction, desired: Value) -> OpResult {
    let entry = PlanEntry {
        action,
        key: None,
        changes: vec![],
        record: Some(desired.clone()),
        before: None,
        irreversible: false,
    };
    OpResult {
        action: action.into(),
        id: None,
        output: serde_json::json!({ "plan": action, "record": desired }),
        plan: Some(entry),
    }
}

/// What a connector's `lookup` said of an upsert without an id.
enum Looked {
    /// It would update this record (JSON text).
    Matched(String),
    /// It would create one.
    Create,
}

/// Asks the connector which record an upsert of `desired` would update.
/// `None` when it cannot tell (`unsupported`): the plan is then an upsert
/// of unknown outcome, as for a connector built for 0.1.0.
async fn look_up(
    step: &Step,
    endpoint: &dyn Endpoint,
    desired: &Value,
) -> Result<Option<Looked>, CallError> {
    let text = desired.to_string();
    let (result, _) = with_retry(&step.retry, step.timeout, || async {
        match endpoint.lookup(&step.resource, &text).await {
            Ok(Some(found)) => Ok(Some(Looked::Matched(found))),
            Ok(None) => Ok(Some(Looked::Create)),
            Err(error)
                if matches!(error.connector_error(), Some(ConnectorError::Unsupported(_))) =>
            {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    })
    .await;
    result
}

/// The plan of an upsert whose record the connector's `lookup` found (or
/// found none of: a create).
fn plan_looked(
    step: &Step,
    plugin: &str,
    id_field: &str,
    desired: Value,
    found: Looked,
) -> Result<OpResult, CallError> {
    let Looked::Matched(text) = found else {
        return Ok(planned_without_id(PlannedAction::Create, desired));
    };
    let current = parse_record(&text, plugin, "lookup")?;
    let id = id_of(&current, id_field).ok_or_else(|| {
        CallError::new(format!(
            "plugin {plugin}: lookup returned a record without its `{id_field}`"
        ))
    })?;
    let mut sent = desired.clone();
    step.drop_create_only(&mut sent);
    let changes = changed_fields(&sent, &current);
    let before = values_at(&current, &changes);
    let action = if changes.is_empty() { PlannedAction::Unchanged } else { PlannedAction::Update };
    // What the vendor would hold after the write, as the real run's output
    // has it: the matched record with the desired fields laid over it.
    let mut after = current;
    overlay(&mut after, sent);
    let entry = PlanEntry {
        action,
        key: Some(id.clone()),
        changes,
        record: Some(desired),
        before,
        irreversible: false,
    };
    Ok(OpResult {
        action: action.into(),
        id: Some(id.clone()),
        output: serde_json::json!({ "plan": action, "id": id, "record": after }),
        plan: Some(entry),
    })
}

/// Lays `desired` over `record` as an upsert would: objects field by
/// field, everything else replaced.
fn overlay(record: &mut Value, desired: Value) {
    match (record, desired) {
        (Value::Object(record), Value::Object(desired)) => {
            for (field, value) in desired {
                match record.get_mut(&field) {
                    Some(held) if held.is_object() && value.is_object() => overlay(held, value),
                    _ => {
                        record.insert(field, value);
                    }
                }
            }
        }
        (record, desired) => *record = desired,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::future::BoxFuture;
    use serde_json::json;

    use super::*;
    use crate::connector::{
        AuthScheme, BatchItem, ListRequest, Manifest, Page, RemoveOutcome, UpsertOutcome,
    };
    use crate::endpoint::BatchOutcomes;
    use crate::workflow::Workflow;

    /// A connection whose `lookup` answers `found` (or is unsupported),
    /// and which fails every other op: a plan must not call them.
    struct Looking {
        manifest: Manifest,
        offers: bool,
        found: Option<Option<&'static str>>,
        lookups: AtomicUsize,
    }

    fn refused<T: Send + 'static>(op: &'static str) -> BoxFuture<'static, Result<T, RuntimeError>> {
        let error = RuntimeError::Connector {
            plugin: "fake".into(),
            op,
            error: ConnectorError::Fatal(format!("{op} was not expected")),
        };
        Box::pin(std::future::ready(Err(error)))
    }

    impl Endpoint for Looking {
        fn manifest(&self) -> &Manifest {
            &self.manifest
        }
        fn name(&self) -> &str {
            "fake"
        }
        fn list(&self, _: ListRequest) -> BoxFuture<'_, Result<Page, RuntimeError>> {
            refused("list")
        }
        fn get<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<String>, RuntimeError>> {
            refused("get")
        }
        fn upsert(&self, _: UpsertRequest) -> BoxFuture<'_, Result<UpsertOutcome, RuntimeError>> {
            refused("upsert")
        }
        fn upsert_batch<'a>(
            &'a self,
            _: &'a str,
            _: Vec<BatchItem>,
        ) -> BoxFuture<'a, Result<BatchOutcomes, RuntimeError>> {
            refused("upsert-batch")
        }
        fn remove<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<RemoveOutcome, RuntimeError>> {
            refused("remove")
        }
        fn offers_lookup(&self) -> bool {
            self.offers
        }
        fn lookup<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<String>, RuntimeError>> {
            self.lookups.fetch_add(1, Ordering::Relaxed);
            let answer = match self.found {
                Some(found) => Ok(found.map(str::to_owned)),
                None => Err(RuntimeError::Connector {
                    plugin: "fake".into(),
                    op: "lookup",
                    error: ConnectorError::Unsupported("no rule".into()),
                }),
            };
            Box::pin(std::future::ready(answer))
        }
    }

    fn looking(offers: bool, found: Option<Option<&'static str>>) -> Looking {
        let manifest = Manifest {
            name: "fake".into(),
            version: "0.0.0".into(),
            vendor: "Nobody".into(),
            description: String::new(),
            default_base_url: "http://127.0.0.1".into(),
            extra_hosts: Vec::new(),
            auth: AuthScheme::None,
            resources: Vec::new(),
            rate_limits: Vec::new(),
            settings: Vec::new(),
        };
        Looking { manifest, offers, found, lookups: AtomicUsize::new(0) }
    }

    fn upsert_step() -> Step {
        let text = r#"
[workflow]
name = "plan"
[connections.fake]
plugin = "fake"
[[step]]
id = "write"
upsert = "fake.users"
record = { email = "a@b.c" }
"#;
        let workflow = Workflow::parse(Path::new("plan.toml"), text).expect("workflow");
        workflow.steps[0].clone()
    }

    async fn plan(endpoint: &Looking, desired: Value) -> OpResult {
        plan_upsert(&upsert_step(), endpoint, "id", desired).await.expect("plan")
    }

    #[tokio::test]
    async fn an_upsert_without_an_id_is_planned_by_what_the_lookup_found() {
        let desired = json!({"email": "a@b.c", "name": "Ada", "tags": {"vip": true}});
        let matched =
            looking(true, Some(Some(r#"{"id":"u1","email":"a@b.c","name":"A","tags":{"x":1}}"#)));
        let result = plan(&matched, desired.clone()).await;
        assert_eq!(result.id.as_deref(), Some("u1"));
        let entry = result.plan.expect("plan");
        assert_eq!((entry.action, entry.key.as_deref()), (PlannedAction::Update, Some("u1")));
        assert_eq!(entry.changes, ["name", "tags.vip"]);
        assert_eq!(
            result.output["record"],
            json!({"id": "u1", "email": "a@b.c", "name": "Ada", "tags": {"x": 1, "vip": true}}),
            "the record as the write would leave it"
        );

        let create = plan(&looking(true, Some(None)), desired.clone()).await;
        assert_eq!(create.plan.map(|p| p.action), Some(PlannedAction::Create));

        // Unsupported, or not exported at all: an upsert of unknown outcome.
        for endpoint in [looking(true, None), looking(false, Some(Some("{}")))] {
            let result = plan(&endpoint, desired.clone()).await;
            assert_eq!(result.plan.map(|p| p.action), Some(PlannedAction::Upsert));
            assert_eq!(endpoint.lookups.load(Ordering::Relaxed), usize::from(endpoint.offers));
        }

        let nameless = looking(true, Some(Some(r#"{"email":"a@b.c"}"#)));
        let error = plan_upsert(&upsert_step(), &nameless, "id", desired).await.err();
        assert!(
            error.is_some_and(|e| e.message.contains("without its `id`")),
            "a found record must carry its id"
        );
    }
}
