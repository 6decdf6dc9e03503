//! A sync step: make the target resource look like the source.
//!
//! Three phases, each durable page by page:
//!
//! 1. the source is listed, each record mapped and keyed, into an index in
//!    the run store (sled, not memory: a million records cost disk, not
//!    RAM; and the mapped records are only the fields the sync sets, far
//!    smaller than a vendor's whole record). Two source records with one
//!    key are a failure of the second;
//! 2. the target is listed page by page; each record is keyed and looked
//!    up in the index: a match whose fields differ is updated, a match that
//!    already agrees is unchanged, no match is removed when
//!    `delete_missing` says so. The page's writes run `concurrency` at a
//!    time, and the matched keys are marked together with the cursor;
//! 3. every indexed source record no target record matched is created,
//!    through the connector's batch upsert when it has one.
//!
//! A crash in the middle of a page redoes that page: writes carry
//! idempotency keys derived from the run, the step and the record's key,
//! the connectors' upserts match existing records, and a remove of a
//! removed record is `already-absent`, so nothing is written twice.

use std::collections::HashSet;

use futures_util::StreamExt as _;
use futures_util::stream::{self, FuturesUnordered};
use serde_json::Value;

use super::ops::{CallError, with_retry};
use super::plan::{PlanEntry, PlannedAction, StepPlan, changed_fields};
use super::{RunCtx, StepEnd, key_text, sync_idempotency_key};
use crate::connector::{BatchItem, ConnectorError, ListRequest, Op, RemoveOutcome, UpsertAction, UpsertOutcome, UpsertRequest};
use crate::endpoint::Endpoint;
use crate::expr::{Scope, from_val, parse_val};
use crate::store::{SeenMark, StepState, SyncPhase};
use crate::workflow::{Step, SyncSpec};

/// Records per batch upsert.
const BATCH: usize = 100;

/// Source records created per commit in the create phase.
const CREATE_GROUP: usize = 500;

/// Failed records kept in the step's output.
const ERRORS_KEPT: usize = 10;

/// What to do with one source record.
struct Write {
    key: String,
    record: Value,
    action: PlannedAction,
    changes: Vec<String>,
}

struct Tally<'a> {
    state: &'a mut StepState,
    plan: StepPlan,
    errors: Vec<String>,
    fatal: Option<String>,
    target_duplicates: u64,
}

impl Tally<'_> {
    fn failed(&mut self, key: &str, error: &CallError) {
        self.state.counts.failed += 1;
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(format!("{key}: {}", error.message));
        }
        if error.fatal && self.fatal.is_none() {
            self.fatal = Some(error.message.clone());
        }
    }

    fn upserted(&mut self, action: UpsertAction) {
        match action {
            UpsertAction::Created => self.state.counts.created += 1,
            UpsertAction::Updated => self.state.counts.updated += 1,
            UpsertAction::Unchanged => self.state.counts.unchanged += 1,
        }
    }

    fn output(&mut self) {
        let progress = self.state.sync.clone().unwrap_or_default();
        self.state.output = Some(serde_json::json!({
            "counts": self.state.counts,
            "source_records": progress.source_records,
            "target_records": progress.target_records,
            "target_duplicates": self.target_duplicates,
            "errors": self.errors,
        }));
        if !self.plan.samples.is_empty() || self.plan.writes() > 0 || self.plan.unchanged > 0 {
            self.state.plan = serde_json::to_value(&self.plan).ok();
        }
    }
}

#[expect(clippy::too_many_arguments, reason = "the parts of one step, borrowed for its duration")]
pub(crate) async fn run(
    ctx: &RunCtx<'_>,
    step: &Step,
    spec: &SyncSpec,
    index: u32,
    source: &dyn Endpoint,
    target: &dyn Endpoint,
    state: &mut StepState,
    scope: &Scope,
) -> Result<StepEnd, String> {
    let target_resource = target.manifest().resource(&step.resource).cloned().ok_or_else(|| format!("no resource {}", step.target()))?;
    let source_resource =
        source.manifest().resource(&spec.from.resource).cloned().ok_or_else(|| format!("no resource {}", spec.from))?;
    let filter = match &spec.filter {
        Some(f) => Some(f.render(scope).map_err(|e| format!("sync.filter: {e}"))?.to_string()),
        None => None,
    };
    let plan = state.plan.as_ref().and_then(|p| serde_json::from_value::<StepPlan>(p.clone()).ok()).unwrap_or_default();
    let errors = state.output.as_ref().and_then(|o| o.get("errors")).and_then(|e| serde_json::from_value(e.clone()).ok()).unwrap_or_default();
    state.sync.get_or_insert_with(Default::default);
    let target_duplicates = state.output.as_ref().and_then(|o| o.get("target_duplicates")).and_then(Value::as_u64).unwrap_or(0);
    let mut tally = Tally { state, plan, errors, fatal: None, target_duplicates };

    // 1. The source, mapped, into the index.
    while phase(&tally) == SyncPhase::Source {
        if let Some(end) = ctx.stop_reason() {
            return Ok(end);
        }
        let cursor = tally.state.sync.as_ref().and_then(|p| p.source_cursor.clone());
        let request = ListRequest { resource: spec.from.resource.clone(), cursor: cursor.clone(), page_size: source_resource.max_page_size, filter: filter.clone() };
        let (result, _) = with_retry(&step.retry, step.timeout, || source.list(request.clone())).await;
        let page = result.map_err(|e| format!("reading {}: {}", spec.from, e.message))?;
        if page.next_cursor.is_some() && page.next_cursor == cursor {
            return Err(format!("plugin {} returned the cursor it was given; stopping to avoid an endless list", source.name()));
        }
        tally.state.counts.read += page.records.len() as u64;
        let mut entries: Vec<(String, String)> = Vec::with_capacity(page.records.len());
        let mut page_keys = HashSet::new();
        for text in &page.records {
            let record = parse_val(text).map_err(|e| format!("plugin {}: list returned a record that is {e}", source.name()))?;
            let mapped = match &step.map {
                Some(map) => map.run(record, scope).map_err(|e| format!("map: {e}"))?,
                None => vec![record],
            };
            for desired in mapped {
                let key = spec.key.run(desired.clone(), scope).map_err(|e| format!("sync.key: {e}"))?.first().and_then(key_text);
                let Some(key) = key else {
                    tally.failed("(no key)", &CallError::new(format!("the mapped record has no `{}`: {}", spec.key.text(), shorten(&from_val(&desired)))));
                    continue;
                };
                let duplicate = !page_keys.insert(key.clone()) || ctx.store.sync_indexed(ctx.run_id, index, &key).map_err(|e| e.to_string())?.is_some();
                if duplicate {
                    tally.failed(&key, &CallError::new("another source record has the same key; the first one is synced"));
                    continue;
                }
                entries.push((key, desired.to_string()));
            }
        }
        let progress = tally.state.sync.get_or_insert_with(Default::default);
        progress.source_pages += 1;
        progress.source_records += entries.len() as u64;
        progress.source_cursor = page.next_cursor;
        if progress.source_cursor.is_none() {
            progress.phase = SyncPhase::Target;
        }
        tally.output();
        ctx.store.commit_sync_index(ctx.run_id, tally.state, &entries).await.map_err(|e| e.to_string())?;
        ctx.observer.items_committed(step, tally.state.counts.read);
    }

    // 2. The target, page by page: update what differs, remove what the
    // source no longer has.
    let irreversible = target_resource.is_irreversible(Op::Remove);
    while phase(&tally) == SyncPhase::Target {
        if let Some(end) = ctx.stop_reason() {
            return Ok(end);
        }
        let cursor = tally.state.sync.as_ref().and_then(|p| p.target_cursor.clone());
        let request = ListRequest { resource: step.resource.clone(), cursor: cursor.clone(), page_size: target_resource.max_page_size, filter: None };
        let (result, _) = with_retry(&step.retry, step.timeout, || target.list(request.clone())).await;
        let page = result.map_err(|e| format!("reading {}: {}", step.target(), e.message))?;
        if page.next_cursor.is_some() && page.next_cursor == cursor {
            return Err(format!("plugin {} returned the cursor it was given; stopping to avoid an endless list", target.name()));
        }
        let mut writes = Vec::new();
        let mut removals = Vec::new();
        let mut matched: Vec<(String, SeenMark)> = Vec::new();
        let mut page_keys = HashSet::new();
        for text in &page.records {
            let current_val = parse_val(text).map_err(|e| format!("plugin {}: list returned a record that is {e}", target.name()))?;
            let key = spec.key.run(current_val.clone(), scope).map_err(|e| format!("sync.key on a {} record: {e}", step.target()))?;
            let Some(key) = key.first().and_then(key_text) else { continue };
            let current = from_val(&current_val);
            let seen_before = !page_keys.insert(key.clone()) || ctx.store.sync_seen(ctx.run_id, index, &key).map_err(|e| e.to_string())?.is_some();
            if seen_before {
                // A second target record with a key already matched: leave
                // it alone rather than guess which is the real one.
                tally.target_duplicates += 1;
                continue;
            }
            match ctx.store.sync_indexed(ctx.run_id, index, &key).map_err(|e| e.to_string())? {
                Some(indexed) => {
                    let desired: Value = serde_json::from_str(&indexed).map_err(|e| format!("run store: an indexed record does not parse: {e}"))?;
                    let changes = changed_fields(&desired, &current);
                    let mut record = desired;
                    // Point the upsert at the record it updates.
                    if let (Value::Object(fields), Some(id)) = (&mut record, current.get(&target_resource.id_field))
                        && !fields.contains_key(&target_resource.id_field)
                    {
                        fields.insert(target_resource.id_field.clone(), id.clone());
                    }
                    let action = if changes.is_empty() { PlannedAction::Unchanged } else { PlannedAction::Update };
                    matched.push((key.clone(), SeenMark::Matched));
                    writes.push(Write { key, record, action, changes });
                }
                None if spec.delete_missing => match current.get(&target_resource.id_field).and_then(|v| key_text(&crate::expr::to_val(v))) {
                    Some(id) => removals.push((key, id)),
                    None => tally.failed(&key, &CallError::new(format!("the target record has no `{}` to remove it by", target_resource.id_field))),
                },
                None => {}
            }
        }
        apply_writes(ctx, step, target, false, writes, &mut tally).await;
        remove(ctx, step, target, irreversible, removals, &mut tally).await;
        if let Some(message) = tally.fatal.clone() {
            return Err(format!("stopped: {message}"));
        }
        let progress = tally.state.sync.get_or_insert_with(Default::default);
        progress.target_pages += 1;
        progress.target_records += page.records.len() as u64;
        progress.target_cursor = page.next_cursor;
        if progress.target_cursor.is_none() {
            progress.phase = SyncPhase::Create;
        }
        tally.output();
        ctx.store.commit_sync_seen(ctx.run_id, tally.state, &matched).await.map_err(|e| e.to_string())?;
    }

    // 3. What the target lacks.
    let batch = target_resource.offers(Op::UpsertBatch);
    while phase(&tally) == SyncPhase::Create {
        if let Some(end) = ctx.stop_reason() {
            return Ok(end);
        }
        let group: Vec<(String, String)> = ctx.store.sync_unseen(ctx.run_id, index).take(CREATE_GROUP).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
        if group.is_empty() {
            tally.state.sync.get_or_insert_with(Default::default).phase = SyncPhase::Done;
            tally.output();
            ctx.store.commit_sync_seen(ctx.run_id, tally.state, &[]).await.map_err(|e| e.to_string())?;
            break;
        }
        let mut writes = Vec::with_capacity(group.len());
        let mut marks = Vec::with_capacity(group.len());
        for (key, text) in group {
            let record: Value = serde_json::from_str(&text).map_err(|e| format!("run store: an indexed record does not parse: {e}"))?;
            marks.push((key.clone(), SeenMark::Created));
            writes.push(Write { key, record, action: PlannedAction::Create, changes: vec![] });
        }
        apply_writes(ctx, step, target, batch, writes, &mut tally).await;
        if let Some(message) = tally.fatal.clone() {
            return Err(format!("stopped: {message}"));
        }
        tally.output();
        ctx.store.commit_sync_seen(ctx.run_id, tally.state, &marks).await.map_err(|e| e.to_string())?;
    }

    tally.output();
    ctx.store.clear_sync(ctx.run_id, index).map_err(|e| e.to_string())?;
    if tally.state.counts.failed > 0 {
        return Err(format!(
            "{} records failed; first: {}",
            tally.state.counts.failed,
            tally.errors.first().map(String::as_str).unwrap_or("(no message)")
        ));
    }
    Ok(StepEnd::Done)
}

/// Removes target records (or plans it).
async fn remove(ctx: &RunCtx<'_>, step: &Step, target: &dyn Endpoint, irreversible: bool, removals: Vec<(String, String)>, tally: &mut Tally<'_>) {
    if removals.is_empty() {
        return;
    }
    if ctx.dry_run {
        for (key, id) in removals {
            let shown = if key == id { key } else { format!("{key} ({id})") };
            tally.plan.add(PlanEntry { action: PlannedAction::Remove, key: Some(shown), changes: vec![], record: None, irreversible });
        }
        return;
    }
    let results: Vec<(String, Result<RemoveOutcome, CallError>)> = stream::iter(removals)
        .map(|(key, id)| async move {
            let (result, _) = with_retry(&step.retry, step.timeout, || target.remove(&step.resource, &id)).await;
            (key, result)
        })
        .buffer_unordered(step.concurrency.max(1) as usize)
        .collect()
        .await;
    for (key, result) in results {
        match result {
            Ok(RemoveOutcome::Removed) => tally.state.counts.removed += 1,
            Ok(RemoveOutcome::AlreadyAbsent) => tally.state.counts.absent += 1,
            Err(e) => tally.failed(&key, &e),
        }
    }
}

fn phase(tally: &Tally<'_>) -> SyncPhase {
    tally.state.sync.as_ref().map(|p| p.phase).unwrap_or_default()
}

fn shorten(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 120 {
        let cut = (0..=120).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Sends a page's creates and updates (or plans them).
async fn apply_writes(ctx: &RunCtx<'_>, step: &Step, target: &dyn Endpoint, batch: bool, writes: Vec<Write>, tally: &mut Tally<'_>) {
    let mut to_send = Vec::new();
    for write in writes {
        if write.action == PlannedAction::Unchanged {
            tally.state.counts.unchanged += 1;
            if ctx.dry_run {
                tally.plan.add(PlanEntry { action: write.action, key: Some(write.key), changes: vec![], record: None, irreversible: false });
            }
            continue;
        }
        if ctx.dry_run {
            tally.plan.add(PlanEntry { action: write.action, key: Some(write.key), changes: write.changes, record: Some(write.record), irreversible: false });
            continue;
        }
        to_send.push(write);
    }
    if to_send.is_empty() {
        return;
    }
    let concurrency = step.concurrency.max(1) as usize;
    // A vendor's bulk endpoint creates (GrowPanel's array POST replaces a
    // row whole); updates go one by one through the connector's upsert,
    // which changes only what it can and merges the rest.
    let (creates, updates): (Vec<Write>, Vec<Write>) = to_send.into_iter().partition(|w| w.action == PlannedAction::Create);
    let to_send = if batch {
        creates_in_batches(ctx, step, target, creates, concurrency, tally).await;
        updates
    } else {
        creates.into_iter().chain(updates).collect()
    };
    let mut in_flight = FuturesUnordered::new();
    let mut queue = to_send.into_iter();
    loop {
        while in_flight.len() < concurrency {
            let Some(write) = queue.next() else { break };
            in_flight.push(async move {
                let request = UpsertRequest {
                    resource: step.resource.clone(),
                    record: write.record.to_string(),
                    idempotency_key: sync_idempotency_key(ctx.run_id, &step.id, &write.key),
                };
                let (result, _) = with_retry(&step.retry, step.timeout, || target.upsert(request.clone())).await;
                (write.key, result)
            });
        }
        let Some((key, result)) = in_flight.next().await else { break };
        match result {
            Ok(outcome) => tally.upserted(outcome.action),
            Err(e) => tally.failed(&key, &e),
        }
    }
}

async fn creates_in_batches(ctx: &RunCtx<'_>, step: &Step, target: &dyn Endpoint, creates: Vec<Write>, concurrency: usize, tally: &mut Tally<'_>) {
    if creates.is_empty() {
        return;
    }
    let chunks: Vec<Vec<Write>> = creates.into_iter().fold(Vec::new(), |mut chunks: Vec<Vec<Write>>, w| {
            match chunks.last_mut() {
                Some(last) if last.len() < BATCH => last.push(w),
                _ => chunks.push(vec![w]),
            }
            chunks
        });
        let results: Vec<(Vec<String>, Result<Vec<Result<UpsertOutcome, ConnectorError>>, CallError>)> = stream::iter(chunks)
            .map(|chunk| async move {
                let keys: Vec<String> = chunk.iter().map(|w| w.key.clone()).collect();
                let items: Vec<BatchItem> = chunk
                    .iter()
                    .map(|w| BatchItem { record: w.record.to_string(), idempotency_key: sync_idempotency_key(ctx.run_id, &step.id, &w.key) })
                    .collect();
                let (result, _) = with_retry(&step.retry, step.timeout, || target.upsert_batch(&step.resource, items.clone())).await;
                (keys, result)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (keys, result) in results {
            match result {
                Ok(outcomes) => {
                    for (key, outcome) in keys.iter().zip(outcomes) {
                        match outcome {
                            Ok(o) => tally.upserted(o.action),
                            Err(e) => tally.failed(key, &CallError { message: e.to_string(), fatal: matches!(e, ConnectorError::Unauthorized(_) | ConnectorError::Forbidden(_)) }),
                        }
                    }
                }
                Err(e) => {
                    for key in &keys {
                        tally.failed(key, &e);
                    }
                }
            }
        }
}
