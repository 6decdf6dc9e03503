//! A sync step: make the target resource look like the source.
//!
//! An external sort-merge, so memory stays flat whatever the record count:
//!
//! 1. the source is listed page by page; each record is mapped and keyed,
//!    and the mapped records are buffered and written as sorted runs in the
//!    step's scratch directory (the cursor is committed with each run);
//! 2. the target is listed into sorted runs the same way, at the same time
//!    (the two sides commit their runs one at a time);
//! 3. both sides are merged by key: a key only the source has is created, a
//!    key both have is updated when a field the mapped record sets differs
//!    and otherwise unchanged, a key only the target has is removed when
//!    `delete_missing` says so. Writes run `concurrency` at a time in
//!    groups of up to 500 writes and removals (or 50,000 keys); after each
//!    group the last key done and the counts are committed, durably while
//!    the next group is decided and sent.
//!
//! A crash in the middle redoes at most a run's worth of pages per side or
//! two groups of writes: writes carry idempotency keys derived from the run,
//! the step and the record's key, the connectors' upserts match existing
//! records, and removing a removed record is `already-absent`, so nothing
//! is written twice.

use std::path::Path;

use futures_util::StreamExt as _;
use futures_util::stream::{self, FuturesUnordered};
use serde_json::Value;

use super::ops::{CallError, with_retry};
use super::plan::{PlanEntry, PlannedAction, StepPlan, changed_fields, object_fields, values_at};
use super::sorted::{Buffer, Merged, run_path};
use super::{RunCtx, StepCtx, StepEnd, StepError, sync_idempotency_key};
use crate::connector::{
    BatchItem, ConnectorError, ListRequest, Op, Page, RemoveOutcome, ResourceSpec, UpsertAction,
    UpsertOutcome, UpsertRequest,
};
use crate::endpoint::Endpoint;
use crate::expr::{EvalError, Evaluator, Scope, Val, json_key_text};
use crate::runtime::Listed;
use crate::store::{Commit, StepState, StoreError, SyncPhase, SyncProgress};
use crate::workflow::{Action, Step, SyncSpec};

/// Records per batch upsert.
const BATCH: usize = 100;

/// Writes and removals the merge decides before it sends them and commits
/// the keys decided.
const GROUP: usize = 500;

/// Keys the merge decides at most before it commits them, writes or not:
/// a resume decides no more than these again.
const GROUP_KEYS: usize = 50_000;

/// Failed records kept in the step's output.
const ERRORS_KEPT: usize = 10;

/// What to do with one key.
struct Write {
    key: String,
    record: Value,
    action: PlannedAction,
    changes: Vec<String>,
    /// What the changed fields hold now (dry runs only).
    before: Option<Value>,
}

struct Tally<'a> {
    state: &'a mut StepState,
    plan: StepPlan,
    errors: Vec<String>,
    fatal: Option<String>,
    target_duplicates: u64,
    /// Writes are planned: an update keeps its fields' "before".
    dry_run: bool,
    /// The run was stopped while a write waited for a limit or a retry:
    /// its group is not committed, so a resume sends it again.
    stopped: bool,
}

impl Tally<'_> {
    fn failed(&mut self, key: &str, error: &CallError) {
        // Cut short by a cancel or shutdown, not refused by the vendor.
        if error.stopped {
            self.stopped = true;
            return;
        }
        self.state.counts.failed += 1;
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(format!("{key}: {}", error.message));
        }
        if error.fatal && self.fatal.is_none() {
            self.fatal = Some(error.message.clone());
        }
    }

    /// A key whose target record is already as wanted: nothing is sent.
    fn unchanged(&mut self, key: &str) {
        self.state.counts.unchanged += 1;
        if self.dry_run {
            self.plan.add(PlanEntry {
                action: PlannedAction::Unchanged,
                key: Some(key.to_owned()),
                changes: vec![],
                record: None,
                before: None,
                irreversible: false,
            });
        }
    }

    fn upserted(&mut self, action: UpsertAction) {
        match action {
            UpsertAction::Created => self.state.counts.created += 1,
            UpsertAction::Updated => self.state.counts.updated += 1,
            UpsertAction::Unchanged => self.state.counts.unchanged += 1,
        }
    }

    fn progress(&mut self) -> &mut SyncProgress {
        self.state.sync.get_or_insert_with(Default::default)
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
            self.state.plan = Some(self.plan.clone());
        }
    }
}

/// Which side a scan reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Target,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
}

/// Where a sync's source records come from.
pub(crate) enum Source<'a> {
    /// A connection's resource, listed.
    Endpoint(&'a dyn Endpoint),
    /// The committed pages of the earlier list step at this index.
    Step(u32),
}

pub(crate) async fn run(
    cx: StepCtx<'_>,
    spec: &SyncSpec,
    source: Source<'_>,
    target: &dyn Endpoint,
    state: &mut StepState,
) -> Result<StepEnd, StepError> {
    let StepCtx { run: ctx, step, index, scope, .. } = cx;
    let target_resource = target
        .manifest()
        .resource(&step.resource)
        .cloned()
        .ok_or_else(|| format!("no resource {}", step.target()))?;
    let source_resource = match (&source, spec.from.resource()) {
        (Source::Endpoint(endpoint), Some(from)) => Some(
            endpoint
                .manifest()
                .resource(&from.resource)
                .cloned()
                .ok_or_else(|| format!("no resource {from}"))?,
        ),
        _ => None,
    };
    let filter = match &spec.filter {
        Some(f) => match ctx.evaluator(step).render("sync.filter", f, scope).await {
            Ok(value) => Some(value.to_string()),
            Err(EvalError::Stopped) => {
                return Ok(ctx.stop_reason().unwrap_or(StepEnd::Interrupted));
            }
            Err(e) => return Err(e.into_message().into()),
        },
        None => None,
    };
    let dir = ctx.store.scratch_dir(ctx.run_id, index).await?;
    let plan = state.plan.clone().unwrap_or_default();
    let errors = state
        .output
        .as_ref()
        .and_then(|o| o.get("errors"))
        .and_then(|e| serde_json::from_value(e.clone()).ok())
        .unwrap_or_default();
    let target_duplicates = state
        .output
        .as_ref()
        .and_then(|o| o.get("target_duplicates"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    state.sync.get_or_insert_with(Default::default);
    let dry_run = ctx.dry_run;
    let mut tally =
        Tally { state, plan, errors, fatal: None, target_duplicates, dry_run, stopped: false };

    // Both sides are listed at once: they are independent until the
    // merge, and usually two vendors (or two accounts) answering apart.
    if matches!(tally.progress().phase, SyncPhase::Source | SyncPhase::Target) {
        let source_listing = if tally.progress().phase == SyncPhase::Target {
            // Read already.
            None
        } else {
            Some(match (&source, spec.from.resource(), &source_resource) {
                (Source::Endpoint(endpoint), Some(from), Some(resource_spec)) => Listing {
                    side: Side::Source,
                    feed: Feed::Endpoint {
                        endpoint: *endpoint,
                        spec: resource_spec,
                        filter: filter.clone(),
                    },
                    resource: from.resource.as_str(),
                },
                (Source::Step(source_index), ..) => {
                    let pages = ctx.store.pages(ctx.run_id, *source_index).await?;
                    Listing {
                        side: Side::Source,
                        feed: Feed::Store {
                            pages: Box::new(pages),
                            taken: 0,
                            key: format!("{}/{source_index}", ctx.run_id),
                        },
                        resource: spec.from.step().unwrap_or_default(),
                    }
                }
                _ => {
                    return Err(format!("sync.from {} has no source to read", spec.from).into());
                }
            })
        };
        let target_listing = Listing {
            side: Side::Target,
            feed: Feed::Endpoint { endpoint: target, spec: &target_resource, filter: None },
            resource: step.resource.as_str(),
        };
        let shared = tokio::sync::Mutex::new(&mut tally);
        let source_scan = async {
            match source_listing {
                Some(listing) => scan(cx, spec, listing, &dir, &shared).await,
                None => Ok(None),
            }
        };
        let target_scan = scan(cx, spec, target_listing, &dir, &shared);
        // The first side to fail ends the other: what it committed stands.
        let (source_end, target_end) = tokio::try_join!(source_scan, target_scan)?;
        if let Some(end) = source_end.or(target_end) {
            return Ok(end);
        }
    }

    if tally.progress().phase == SyncPhase::Merge
        && let Some(end) = merge(ctx, step, &target_resource, target, &dir, &mut tally).await?
    {
        return Ok(end);
    }

    tally.output();
    ctx.store.commit_step(ctx.run_id, tally.state).await?;
    ctx.store.remove_scratch(ctx.run_id, index).await?;
    if tally.state.counts.failed > 0 {
        return Err(format!(
            "{} records failed; first: {}",
            tally.state.counts.failed,
            tally.errors.first().map(String::as_str).unwrap_or("(no message)")
        )
        .into());
    }
    Ok(StepEnd::Done)
}

/// One side of a sync, as it is listed.
struct Listing<'a> {
    side: Side,
    feed: Feed<'a>,
    /// The resource listed (for a step's records, the step's id), for messages.
    resource: &'a str,
}

/// Where one side's pages come from.
enum Feed<'a> {
    /// A connector's list.
    Endpoint {
        endpoint: &'a dyn Endpoint,
        spec: &'a ResourceSpec,
        /// The source's `filter`, rendered.
        filter: Option<String>,
    },
    /// An earlier list step's pages in the run store. Its "cursor" is the
    /// number of pages read, so a resumed scan skips what it has written.
    Store {
        pages: Box<crate::store::PageReader>,
        /// Pages taken from `pages` so far.
        taken: u64,
        /// The pages' place in the store (`RUN/INDEX`), for errors.
        key: String,
    },
}

/// The prefix of a store feed's cursor.
const STORE_CURSOR: &str = "page:";

impl Feed<'_> {
    /// The plugin or store that answers, for messages.
    fn name(&self) -> String {
        match self {
            Feed::Endpoint { endpoint, .. } => endpoint.name().to_owned(),
            Feed::Store { key, .. } => format!("run store {key}"),
        }
    }

    /// The page after `cursor` (its records checked by [`key_page`], on
    /// an evaluation thread), and the next cursor.
    async fn next(
        &mut self,
        step: &Step,
        resource: &str,
        side: Side,
        cursor: Option<String>,
    ) -> Result<(Listed, Option<String>), StepError> {
        match self {
            Feed::Endpoint { endpoint, spec, filter } => {
                let request = ListRequest {
                    resource: resource.to_owned(),
                    cursor: cursor.clone(),
                    page_size: spec.max_page_size,
                    filter: filter.clone(),
                };
                let span = tracing::info_span!("page", resource, side = side.name());
                let (result, _) = {
                    use tracing::Instrument as _;
                    with_retry(&step.retry, step.timeout, || {
                        endpoint.list_unchecked(request.clone())
                    })
                    .instrument(span)
                    .await
                };
                let page = result.map_err(|e| {
                    format!("reading {} ({}): {}", resource, side.name(), e.message)
                })?;
                if page.next_cursor().is_some() && page.next_cursor() == cursor.as_deref() {
                    return Err(format!(
                        "plugin {} returned the cursor it was given; stopping to avoid an endless list",
                        endpoint.name()
                    )
                    .into());
                }
                let next_cursor = page.next_cursor().map(str::to_owned);
                Ok((page, next_cursor))
            }
            Feed::Store { pages, taken, key } => {
                let corrupt = |reason: String| -> StepError {
                    StoreError::Corrupt { key: key.clone(), reason }.into()
                };
                let done: u64 = match &cursor {
                    None => 0,
                    Some(c) => c
                        .strip_prefix(STORE_CURSOR)
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| corrupt(format!("a sync's source cursor is {c:?}")))?,
                };
                // A resumed scan: skip the pages whose records were written.
                while *taken < done {
                    match pages.next_page().await {
                        Some(page) => {
                            page?;
                            *taken += 1;
                        }
                        None => return Ok((Listed::checked(Page::default()), None)),
                    }
                }
                let Some(page) = pages.next_page().await else {
                    return Ok((Listed::checked(Page::default()), None));
                };
                *taken += 1;
                let values: Vec<Value> = serde_json::from_str(&page?)
                    .map_err(|e| corrupt(format!("a committed page is not an array: {e}")))?;
                // The store's own pages, checked when they were read.
                let records = values.iter().map(Value::to_string).collect();
                let next_cursor = Some(format!("{STORE_CURSOR}{}", done + 1));
                Ok((
                    Listed::checked(Page { records, next_cursor: next_cursor.clone() }),
                    next_cursor,
                ))
            }
        }
    }
}

/// Lists one side into sorted runs. A run is written when the buffer is
/// full and at the end, and only then is the cursor after its last page
/// committed: a resume re-reads the pages of the run that was not written.
async fn scan(
    cx: StepCtx<'_>,
    spec: &SyncSpec,
    listing: Listing<'_>,
    dir: &Path,
    shared: &tokio::sync::Mutex<&mut Tally<'_>>,
) -> Result<Option<StepEnd>, StepError> {
    let StepCtx { run: ctx, step, scope, .. } = cx;
    let Listing { side, mut feed, resource } = listing;
    let progress = shared.lock().await.progress().clone();
    let (mut cursor, mut pages, mut records, mut runs) = match side {
        Side::Source => (
            progress.source_cursor,
            progress.source_pages,
            progress.source_records,
            progress.source_runs,
        ),
        Side::Target => (
            progress.target_cursor,
            progress.target_pages,
            progress.target_records,
            progress.target_runs,
        ),
    };
    // Counts of what the buffer holds, committed with its run, and the
    // records it could not key: the other side's commits must not count
    // them before the pages they came from are committed.
    let mut buffer = Buffer::default();
    let (mut buffered_pages, mut buffered_records, mut buffered_read) = (0u32, 0u64, 0u64);
    let mut unkeyed = Unkeyed::default();
    let started = pages > 0 || runs > 0;
    let mut finished = started && cursor.is_none();
    let evaluator = ctx.evaluator(step);
    let feed_name = feed.name();
    // The page after the one being keyed is fetched while it is keyed (on
    // an evaluation thread): the vendor's time, the connector's scan and
    // the mapping overlap instead of adding up. Nothing of a page fetched
    // ahead is committed before it is keyed and buffered like any other,
    // so a stop or crash in between only reads it again.
    let mut fetched = None;
    if !finished {
        if let Some(end) = ctx.stop_reason() {
            return Ok(Some(end));
        }
        fetched = Some(feed.next(step, resource, side, cursor.clone()).await?);
    }
    while let Some((page_records, next_cursor)) = fetched.take() {
        if let Some(end) = ctx.stop_reason() {
            return Ok(Some(end));
        }
        let read = page_records.len() as u64;
        let keying = key_page(&evaluator, side, step, spec, scope, page_records, &feed_name);
        let ahead = async {
            match &next_cursor {
                Some(next) => Some(feed.next(step, resource, side, Some(next.clone())).await),
                None => None,
            }
        };
        let (keyed, ahead) = tokio::join!(keying, ahead);
        let keyed = match keyed {
            Ok(keyed) => keyed,
            Err(EvalError::Stopped) => {
                return Ok(Some(ctx.stop_reason().unwrap_or(StepEnd::Interrupted)));
            }
            Err(e) => return Err(e.into_message().into()),
        };
        for (key, text) in keyed {
            match (side, key) {
                (_, Some(key)) => {
                    buffer.push(key, text);
                    buffered_records += 1;
                }
                (Side::Source, None) => {
                    unkeyed.count += 1;
                    // Only the messages the step's output keeps are made.
                    if unkeyed.first.len() < ERRORS_KEPT {
                        unkeyed.first.push(CallError::new(format!(
                            "the mapped record has no `{}`: {}",
                            spec.key.text(),
                            shorten(&text)
                        )));
                    }
                }
                // A target record without the key is not the sync's.
                (Side::Target, None) => {}
            }
        }
        buffered_read += read;
        buffered_pages += 1;
        cursor = next_cursor;
        finished = cursor.is_none();
        if buffer.is_full() || finished {
            let mut written = None;
            if !buffer.is_empty() {
                // The store's scratch space failing is not the step's
                // failure: the run stops where it last committed, to resume.
                let path = run_path(dir, side.name(), runs);
                buffer.write_run(&path).map_err(|e| StoreError::Scratch {
                    path: dir.display().to_string(),
                    reason: format!("cannot write a sorted run: {e}"),
                })?;
                written = Some(path);
                runs += 1;
            }
            pages += buffered_pages;
            records += buffered_records;
            let mut tally = shared.lock().await;
            let Unkeyed { count, first } = std::mem::take(&mut unkeyed);
            for error in &first {
                tally.failed("(no key)", error);
            }
            tally.state.counts.failed += count - first.len() as u64;
            if side == Side::Source {
                tally.state.counts.read += buffered_read;
            }
            (buffered_pages, buffered_records, buffered_read) = (0, 0, 0);
            let p = tally.progress();
            match side {
                Side::Source => {
                    (p.source_cursor, p.source_pages, p.source_records, p.source_runs) =
                        (cursor.clone(), pages, records, runs)
                }
                Side::Target => {
                    (p.target_cursor, p.target_pages, p.target_records, p.target_runs) =
                        (cursor.clone(), pages, records, runs)
                }
            }
            if finished {
                p.phase = phase_after(p, side);
            }
            tally.output();
            ctx.store.commit_sorted_run(ctx.run_id, tally.state, written.as_deref()).await?;
            if side == Side::Source {
                ctx.observer.items_committed(step, tally.state.counts.read);
            }
        }
        // A failed read ahead fails the step only now, after the page
        // before it was kept, as when pages were read one after another.
        fetched = ahead.transpose()?;
    }
    // A side read to its end before a resume.
    if started && finished {
        let mut tally = shared.lock().await;
        let p = tally.progress();
        p.phase = phase_after(p, side);
    }
    Ok(None)
}

/// Source records a scan could not key since its last commit: how many,
/// and the messages of the first few.
#[derive(Default)]
struct Unkeyed {
    count: u64,
    first: Vec<CallError>,
}

/// The phase once `side` is read to its end (its cursor is gone): the
/// merge once both sides are, else the side still being read.
fn phase_after(p: &SyncProgress, side: Side) -> SyncPhase {
    let read = |pages: u32, runs: u32, cursor: &Option<String>| {
        (pages > 0 || runs > 0) && cursor.is_none()
    };
    let source_read = p.phase != SyncPhase::Source
        || side == Side::Source
        || read(p.source_pages, p.source_runs, &p.source_cursor);
    let target_read = side == Side::Target || read(p.target_pages, p.target_runs, &p.target_cursor);
    match (p.phase, source_read, target_read) {
        (SyncPhase::Merge | SyncPhase::Done, ..) => p.phase,
        (_, true, true) => SyncPhase::Merge,
        (_, true, false) => SyncPhase::Target,
        (_, false, _) => SyncPhase::Source,
    }
}

/// Merges the sorted sides and writes the differences, a group at a time.
async fn merge(
    ctx: &RunCtx<'_>,
    step: &Step,
    target_resource: &ResourceSpec,
    target: &dyn Endpoint,
    dir: &Path,
    tally: &mut Tally<'_>,
) -> Result<Option<StepEnd>, StepError> {
    let progress = tally.progress().clone();
    let mut sources = Merged::open(dir, "source", progress.source_runs)?;
    let mut targets = Merged::open(dir, "target", progress.target_runs)?;
    let done_through = progress.merged_through.clone();
    let irreversible = target_resource.is_irreversible(Op::Remove);
    let batch = target_resource.offers(Op::UpsertBatch);
    let mut source_group = sources.next_group()?;
    let mut target_group = targets.next_group()?;
    // The last group's commit, made durable while the next group is
    // decided and written: a crash before it lands redoes both groups,
    // under the same idempotency keys. Commits land in order.
    let mut committing: Option<Commit> = None;
    loop {
        if let Some(end) = ctx.stop_reason() {
            wait_commit(committing.take()).await?;
            return Ok(Some(end));
        }
        let mut writes = Vec::new();
        let mut removals = Vec::new();
        let mut last_key = None;
        let mut decided = 0;
        while writes.len() + removals.len() < GROUP && decided < GROUP_KEYS {
            let next_key = match (&source_group, &target_group) {
                (None, None) => break,
                (Some((s, _)), None) => s.clone(),
                (None, Some((t, _))) => t.clone(),
                (Some((s, _)), Some((t, _))) => s.min(t).clone(),
            };
            let from = if source_group.as_ref().is_some_and(|(k, _)| *k == next_key) {
                source_group.take().map(|(_, r)| r)
            } else {
                None
            };
            let to = if target_group.as_ref().is_some_and(|(k, _)| *k == next_key) {
                target_group.take().map(|(_, r)| r)
            } else {
                None
            };
            if from.is_some() {
                source_group = sources.next_group()?;
            }
            if to.is_some() {
                target_group = targets.next_group()?;
            }
            // Keys finished before an interruption.
            if done_through.as_ref().is_some_and(|d| next_key <= *d) {
                continue;
            }
            decide(
                &next_key,
                step,
                (from, to),
                target_resource,
                tally,
                &mut writes,
                &mut removals,
            )?;
            decided += 1;
            last_key = Some(next_key);
        }
        let Some(last_key) = last_key else { break };
        apply_writes(ctx, step, target, batch, writes, tally).await;
        remove(ctx, step, target, irreversible, removals, tally).await;
        // The group before this one is committed whatever became of this one.
        wait_commit(committing.take()).await?;
        if tally.stopped {
            // The group's keys past its last commit are done again (under
            // the same idempotency keys) if the run resumes.
            return Ok(Some(ctx.stop_reason().unwrap_or(StepEnd::Interrupted)));
        }
        if let Some(message) = tally.fatal.clone() {
            return Err(format!("stopped: {message}").into());
        }
        tally.progress().merged_through = Some(last_key);
        tally.output();
        committing = Some(ctx.store.start_commit(ctx.run_id, tally.state, None));
        // Progress is the keys merged so far (the source's read count
        // stands still while the merge writes).
        let c = &tally.state.counts;
        ctx.observer.items_committed(
            step,
            c.created + c.updated + c.unchanged + c.removed + c.absent + c.failed,
        );
    }
    wait_commit(committing.take()).await?;
    tally.progress().phase = SyncPhase::Done;
    Ok(None)
}

/// Waits for a merge group's commit, if one was started.
async fn wait_commit(commit: Option<Commit>) -> Result<(), StoreError> {
    match commit {
        Some(commit) => commit.wait().await,
        None => Ok(()),
    }
}

/// What one key calls for.
fn decide(
    key: &str,
    step: &Step,
    (from, to): (Option<Vec<String>>, Option<Vec<String>>),
    target_resource: &ResourceSpec,
    tally: &mut Tally<'_>,
    writes: &mut Vec<Write>,
    removals: &mut Vec<(String, String)>,
) -> Result<(), StepError> {
    let from = from.unwrap_or_default();
    let to = to.unwrap_or_default();
    for _ in from.iter().skip(1) {
        tally.failed(
            key,
            &CallError::new("another source record has the same key; the first one is synced"),
        );
    }
    let desired = match from.first() {
        Some(text) => Some(
            serde_json::from_str::<Value>(text)
                .map_err(|e| format!("sync: a sorted run holds a bad record: {e}"))?,
        ),
        None => None,
    };
    match (desired, to.first()) {
        (Some(record), None) => writes.push(Write {
            key: key.to_owned(),
            record,
            action: PlannedAction::Create,
            changes: vec![],
            before: None,
        }),
        (Some(mut record), Some(current)) => {
            // An update leaves out what is set only on create, and does not
            // compare it either.
            step.drop_create_only(&mut record);
            // A second target record with a key already matched is left
            // alone rather than guessed at.
            tally.target_duplicates += to.len() as u64 - 1;
            let current = target_fields(current, &record, &target_resource.id_field)
                .map_err(|e| format!("sync: a sorted run holds a bad record: {e}"))?;
            let changes = changed_fields(&record, &current);
            // Only a plan shows the before: a real run saves the copy.
            let before = if tally.dry_run { values_at(&current, &changes) } else { None };
            // Point the upsert at the record it updates.
            if let (Value::Object(fields), Some(id)) =
                (&mut record, current.get(&target_resource.id_field))
                && !fields.contains_key(&target_resource.id_field)
            {
                fields.insert(target_resource.id_field.clone(), id.clone());
            }
            if changes.is_empty() {
                tally.unchanged(key);
            } else {
                let action = PlannedAction::Update;
                writes.push(Write { key: key.to_owned(), record, action, changes, before });
            }
        }
        (None, Some(_)) if matches!(&step.action, Action::Sync(spec) if spec.delete_missing) => {
            // Every target record with a key no source record has goes.
            for current in &to {
                let id_only = Value::Object(serde_json::Map::new());
                let current = target_fields(current, &id_only, &target_resource.id_field)
                    .map_err(|e| format!("sync: a sorted run holds a bad record: {e}"))?;
                match current.get(&target_resource.id_field).and_then(json_key_text) {
                    Some(id) => removals.push((key.to_owned(), id)),
                    None => tally.failed(
                        key,
                        &CallError::new(format!(
                            "the target record has no `{}` to remove it by",
                            target_resource.id_field
                        )),
                    ),
                }
            }
        }
        (None, _) => {}
    }
    Ok(())
}

/// The target record `text` as far as comparing `desired` with it and
/// pointing an update at it need: the fields `desired` sets and the id.
/// Nothing else of the target is read ([`changed_fields`] leaves fields only
/// the target has alone), so the rest is skipped, not built. A desired
/// record or a target that is not an object is compared whole.
fn target_fields(text: &str, desired: &Value, id_field: &str) -> Result<Value, serde_json::Error> {
    if let Value::Object(wanted) = desired
        && let Some(fields) =
            object_fields(text, &|field| field == id_field || wanted.contains_key(field))?
    {
        return Ok(fields);
    }
    serde_json::from_str(text)
}

/// Keys a page of one side's records in one job on an evaluation thread,
/// each record an evaluation with a budget of its own: a source record is
/// mapped first and each result kept as JSON with its key, a target record
/// kept as it came with its key.
async fn key_page(
    evaluator: &Evaluator,
    side: Side,
    step: &Step,
    spec: &SyncSpec,
    scope: &Scope,
    records: Listed,
    plugin: &str,
) -> Result<Vec<(Option<String>, String)>, EvalError> {
    let map = if side == Side::Source { step.map.clone() } else { None };
    let key_expr = spec.key.clone();
    let key_field = match side {
        Side::Source => "sync.key".to_owned(),
        Side::Target => format!("sync.key (on a {} record)", step.target()),
    };
    // The resource the side reads, for a record the check refuses (a
    // store feed's records are checked already).
    let resource = match (side, spec.from.resource()) {
        (Side::Source, Some(from)) => from.resource.clone(),
        (Side::Source, None) => String::new(),
        (Side::Target, _) => step.resource.clone(),
    };
    let (scope, plugin) = (scope.clone(), plugin.to_owned());
    evaluator
        .run(move |session| {
            // The plugin's records are checked here, off the task that
            // reads the pages.
            let records = records
                .check()
                .map_err(|e| format!("reading {resource} ({}): {e}", side.name()))?
                .records;
            let mut keyed = Vec::with_capacity(records.len());
            for text in records {
                // Only what the expression that reads the record reads of it.
                let record = match (&map, side) {
                    (Some(map), Side::Source) => map.parse_input(&text),
                    (_, Side::Source) => Val::parse(&text),
                    (_, Side::Target) => key_expr.parse_input(&text),
                }
                .map_err(|e| format!("plugin {plugin}: list returned a record that is {e}"))?;
                session.evaluate(|ev| {
                    match &map {
                        Some(map) if side == Side::Source => {
                            for desired in ev.all("map", map, record, &scope)? {
                                let key = ev
                                    .first(&key_field, &key_expr, desired.clone(), &scope)?
                                    .and_then(|k| ev.key_text(&k));
                                // JSON, as the merge reads it back.
                                keyed.push((key, ev.json_text(&desired)));
                            }
                        }
                        _ if side == Side::Source => {
                            let key_value = ev
                                .first(&key_field, &key_expr, record.clone(), &scope)?
                                .and_then(|k| ev.key_text(&k));
                            keyed.push((key_value, ev.json_text(&record)));
                        }
                        _ => {
                            let key_value = ev
                                .first(&key_field, &key_expr, record, &scope)?
                                .and_then(|k| ev.key_text(&k));
                            keyed.push((key_value, text));
                        }
                    }
                    Ok(())
                })?;
            }
            Ok(keyed)
        })
        .await
}

fn shorten(text: &str) -> String {
    let mut text = text.to_owned();
    if text.len() > 120 {
        let cut = (0..=120).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Removes target records (or plans it).
async fn remove(
    ctx: &RunCtx<'_>,
    step: &Step,
    target: &dyn Endpoint,
    irreversible: bool,
    removals: Vec<(String, String)>,
    tally: &mut Tally<'_>,
) {
    if removals.is_empty() {
        return;
    }
    if ctx.dry_run {
        for (key, id) in removals {
            let shown = if key == id { key } else { format!("{key} ({id})") };
            tally.plan.add(PlanEntry {
                action: PlannedAction::Remove,
                key: Some(shown),
                changes: vec![],
                record: None,
                before: None,
                irreversible,
            });
        }
        return;
    }
    let results: Vec<(String, Result<RemoveOutcome, CallError>)> = stream::iter(removals)
        .map(|(key, id)| async move {
            let (result, _) =
                with_retry(&step.retry, step.timeout, || target.remove(&step.resource, &id)).await;
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

/// Sends a group's creates and updates (or plans them).
async fn apply_writes(
    ctx: &RunCtx<'_>,
    step: &Step,
    target: &dyn Endpoint,
    batch: bool,
    writes: Vec<Write>,
    tally: &mut Tally<'_>,
) {
    let mut to_send = Vec::new();
    for write in writes {
        if ctx.dry_run {
            tally.plan.add(PlanEntry {
                action: write.action,
                key: Some(write.key),
                changes: write.changes,
                record: Some(write.record),
                before: write.before,
                irreversible: false,
            });
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
    let (creates, updates): (Vec<Write>, Vec<Write>) =
        to_send.into_iter().partition(|w| w.action == PlannedAction::Create);
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
                let (result, _) =
                    with_retry(&step.retry, step.timeout, || target.upsert(request.clone())).await;
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

/// What one batch call answered: an outcome per item, or the call's error.
type BatchResult = Result<Vec<Result<UpsertOutcome, ConnectorError>>, CallError>;

async fn creates_in_batches(
    ctx: &RunCtx<'_>,
    step: &Step,
    target: &dyn Endpoint,
    creates: Vec<Write>,
    concurrency: usize,
    tally: &mut Tally<'_>,
) {
    if creates.is_empty() {
        return;
    }
    let mut chunks: Vec<Vec<Write>> = Vec::new();
    for write in creates {
        match chunks.last_mut() {
            Some(last) if last.len() < BATCH => last.push(write),
            _ => chunks.push(vec![write]),
        }
    }
    let results: Vec<(Vec<String>, BatchResult)> = stream::iter(chunks)
        .map(|chunk| async move {
            let keys: Vec<String> = chunk.iter().map(|w| w.key.clone()).collect();
            let items: Vec<BatchItem> = chunk
                .iter()
                .map(|w| BatchItem {
                    record: w.record.to_string(),
                    idempotency_key: sync_idempotency_key(ctx.run_id, &step.id, &w.key),
                })
                .collect();
            let (result, _) = with_retry(&step.retry, step.timeout, || {
                target.upsert_batch(&step.resource, items.clone())
            })
            .await;
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
                        Err(e) => {
                            let fatal = matches!(
                                e,
                                ConnectorError::Unauthorized(_) | ConnectorError::Forbidden(_)
                            );
                            tally.failed(
                                key,
                                &CallError { message: e.to_string(), fatal, stopped: false },
                            );
                        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Progress with the source and the target read to `source` and
    /// `target` pages, `None` for a side read to its end.
    fn progress(phase: SyncPhase, source: Option<u32>, target: Option<u32>) -> SyncProgress {
        let side = |read: Option<u32>| match read {
            Some(0) => (None, 0),
            Some(pages) => (Some(format!("after-{pages}")), pages),
            None => (None, 3),
        };
        let ((source_cursor, source_pages), (target_cursor, target_pages)) =
            (side(source), side(target));
        SyncProgress {
            phase,
            source_cursor,
            source_pages,
            source_runs: source_pages.min(1),
            target_cursor,
            target_pages,
            target_runs: target_pages.min(1),
            ..SyncProgress::default()
        }
    }

    #[test]
    fn the_merge_starts_only_once_both_sides_are_read_whichever_ends_first() {
        use SyncPhase::*;
        // The target ends first: the source is still being read.
        assert_eq!(phase_after(&progress(Source, Some(2), None), Side::Target), Source);
        // Then the source ends.
        assert_eq!(phase_after(&progress(Source, None, None), Side::Source), Merge);
        // The source ends first: the target is still being read.
        assert_eq!(phase_after(&progress(Source, None, Some(2)), Side::Source), Target);
        assert_eq!(phase_after(&progress(Target, None, None), Side::Target), Merge);
        // A target not started yet (no page) is not read, even with no cursor.
        assert_eq!(phase_after(&progress(Source, None, Some(0)), Side::Source), Target);
        // A resumed side read to its end before the crash moves nothing back.
        assert_eq!(phase_after(&progress(Merge, None, None), Side::Target), Merge);
        assert_eq!(phase_after(&progress(Done, None, None), Side::Source), Done);
    }
}
