//! A for-each step: the step's op once per item, at most `concurrency` in
//! flight, each item committed as it completes (in groups, so a commit is
//! not an fsync per item). Items come from an expression or, streamed page
//! by page from the run store, from an earlier list step's records, so
//! memory stays flat whatever the count.
//!
//! On resume, items already committed are skipped and the step's counts
//! are recounted from the store; an item that finished at the vendor but
//! not in the store is sent again with the same idempotency key.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::ops::{self, CallError};
use super::plan::StepPlan;
use super::{RunCtx, StepCtx, StepEnd, StepError};
use crate::endpoint::Endpoint;
use crate::expr::{Budget, EvalError, Evaluator, Expr, Scope, Val, parse_val};
use crate::store::{ItemRecord, PageReader, RunStore, Status, StepCounts, StepState, StoreError};
use crate::workflow::{ForEach, Step, Workflow};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;

/// Items whose templates are rendered in one job on an evaluation thread.
const RENDER_BATCH: usize = 256;

/// Items committed in one group, at most.
const GROUP_ITEMS: usize = 1024;

/// Longest an item waits to be committed.
const GROUP_WAIT: Duration = Duration::from_millis(20);

/// Item errors kept in the step's output and message.
const ERRORS_KEPT: usize = 10;

/// Failures before any success that stop the step: the same mistake (a
/// wrong setting, a field every record lacks) repeated for every item
/// helps no one, and each costs the vendor's rate limit.
const FAILURES_BEFORE_ANY_SUCCESS: u64 = 10;

/// Where items come from.
enum Items<'a> {
    Listed(std::vec::IntoIter<Val>),
    Streamed {
        pages: Box<PageReader>,
        /// The source step's pages in the store (`RUN/INDEX`), for errors.
        key: String,
        then: Option<&'a Expr>,
        buffer: VecDeque<Val>,
        scope: &'a Scope,
        evaluator: Evaluator,
    },
}

/// Why there is no next item.
enum ItemsError {
    /// The items' expression failed, or was stopped.
    Eval(EvalError),
    /// The run store could not give a page of the source step's records
    /// (a page file that cannot be read, or that is damaged): not the
    /// step's failure, so the run stops where its last commit left it.
    Store(StoreError),
}

impl From<EvalError> for ItemsError {
    fn from(error: EvalError) -> Self {
        ItemsError::Eval(error)
    }
}

impl Items<'_> {
    async fn next(&mut self) -> Result<Option<Val>, ItemsError> {
        match self {
            Items::Listed(items) => Ok(items.next()),
            Items::Streamed { pages, key, then, buffer, scope, evaluator } => loop {
                if let Some(item) = buffer.pop_front() {
                    return Ok(Some(item));
                }
                let Some(page) = pages.next_page().await else { return Ok(None) };
                let page = page.map_err(ItemsError::Store)?;
                let corrupt = |reason: String| {
                    ItemsError::Store(StoreError::Corrupt { key: key.clone(), reason })
                };
                match then {
                    // The page's records through the expression, in one job
                    // on an evaluation thread; each record is an evaluation
                    // with a budget of its own. A page that does not parse
                    // comes back as the inner error.
                    Some(expr) => {
                        let (expr, scope) = ((*expr).clone(), (*scope).clone());
                        let outputs = evaluator
                            .run(move |session| {
                                let records = match page_records(&page) {
                                    Ok(records) => records,
                                    Err(reason) => return Ok(Err(reason)),
                                };
                                let mut outputs = Vec::new();
                                for record in records {
                                    outputs.extend(session.evaluate(|ev| {
                                        ev.all("for_each", &expr, record, &scope)
                                    })?);
                                }
                                Ok(Ok(outputs))
                            })
                            .await?
                            .map_err(corrupt)?;
                        buffer.extend(outputs);
                    }
                    None => buffer.extend(page_records(&page).map_err(corrupt)?),
                }
            },
        }
    }
}

/// The records of a page committed to the run store.
fn page_records(page: &str) -> Result<Vec<Val>, String> {
    parse_val(page)
        .map_err(|e| format!("a committed page is {e}"))?
        .into_items()
        .ok_or_else(|| "a committed page is not an array".to_owned())
}

async fn items<'a>(
    ctx: &RunCtx<'_>,
    workflow: &Workflow,
    step: &'a Step,
    store: &RunStore,
    run: &str,
    scope: &'a Scope,
) -> Result<Items<'a>, ItemsError> {
    match &step.for_each {
        Some(ForEach::Expr(expr)) => {
            let mut outputs = ctx.evaluator(step).outputs("for_each", expr, scope).await?;
            // One array output is the list of items; anything else is a
            // stream of items.
            if outputs.len() == 1 && outputs[0].is_array() {
                outputs = outputs.pop().and_then(Val::into_items).unwrap_or_default();
            }
            Ok(Items::Listed(outputs.into_iter()))
        }
        Some(ForEach::Records { step: source, then, .. }) => {
            let index = workflow
                .steps
                .iter()
                .position(|s| &s.id == source)
                .ok_or_else(|| EvalError::Failed(format!("for_each: no step {source:?}")))?;
            let pages = store.pages(run, index as u32).await.map_err(ItemsError::Store)?;
            Ok(Items::Streamed {
                pages: Box::new(pages),
                key: format!("{run}/{index}"),
                then: then.as_ref(),
                buffer: VecDeque::new(),
                scope,
                evaluator: ctx.evaluator(step),
            })
        }
        None => Err(EvalError::Failed("not a for-each step".into()).into()),
    }
}

pub(crate) async fn run(
    cx: StepCtx<'_>,
    endpoint: &dyn Endpoint,
    state: &mut StepState,
) -> Result<StepEnd, StepError> {
    let StepCtx { run: ctx, workflow, step, index, scope, .. } = cx;
    let resuming = state.items > 0 || ctx.store.items(ctx.run_id, index).next().await.is_some();
    let mut errors: Vec<String> = Vec::new();
    let mut plan = StepPlan::default();
    // Items committed before an interruption: a bit per item number.
    let mut done = ItemSet::default();
    if resuming {
        // Recount from what was committed: the step state is written
        // with each group, but only the items are the truth.
        state.counts = StepCounts::default();
        state.items = 0;
        let mut committed = ctx.store.items(ctx.run_id, index);
        while let Some(entry) = committed.next().await {
            let (n, record) = entry?;
            if done.insert(n) {
                tally(state, &record, &mut errors);
            }
        }
        if let Some(saved) = state.plan.clone() {
            plan = saved;
        }
    }
    let mut source = match items(ctx, workflow, step, ctx.store, ctx.run_id, scope).await {
        Ok(source) => source,
        Err(ItemsError::Eval(EvalError::Stopped)) => {
            return Ok(ctx.stop_reason().unwrap_or(StepEnd::Interrupted));
        }
        Err(ItemsError::Eval(e)) => return Err(e.into_message().into()),
        Err(ItemsError::Store(e)) => return Err(StepError::Store(e)),
    };
    // Templates are rendered a batch at a time before the items start, so
    // a stop may cut that short; an item in flight finishes whatever stops
    // the step, so what it evaluates (a template left to render when it
    // starts, a get's `map`) runs under the budget alone.
    let batch_evaluator = ctx.evaluator(step);
    let item_evaluator = Evaluator::new(Budget::for_timeout(step.timeout));
    let concurrency = step.concurrency.max(1) as usize;
    let mut in_flight = FuturesUnordered::new();
    let mut pending: Vec<(u64, ItemRecord)> = Vec::new();
    let mut last_commit = Instant::now();
    let mut next = 0u64;
    let mut exhausted = false;
    let mut fatal: Option<String> = None;
    let mut stopped: Option<StepEnd> = None;
    // The store failed to give the next items: start no more, let those in
    // flight finish and commit them, then stop the run to resume.
    let mut store_failure: Option<StoreError> = None;
    // Ten failures and no success yet: start no more items. Withdrawn if an
    // item still in flight succeeds (items finish out of order).
    let mut failing_alike = false;

    // Items whose templates are rendered, waiting for a place in flight.
    let mut ready: VecDeque<(u64, Scope, Option<ops::Rendered>)> = VecDeque::new();

    loop {
        while in_flight.len() < concurrency
            && (!exhausted || !ready.is_empty())
            && fatal.is_none()
            && !failing_alike
            && stopped.is_none()
            && store_failure.is_none()
        {
            if let Some(end) = ctx.stop_reason() {
                stopped = Some(end);
                break;
            }
            let Some((n, item_scope, rendered)) = ready.pop_front() else {
                // The next items, their templates rendered in one job.
                let mut batch = Vec::new();
                while batch.len() < RENDER_BATCH
                    && !exhausted
                    && stopped.is_none()
                    && store_failure.is_none()
                {
                    match source.next().await {
                        Ok(Some(item)) => {
                            let n = next;
                            next += 1;
                            if !done.contains(n) {
                                batch.push((n, scope.with_item_val(item)));
                            }
                        }
                        Ok(None) => exhausted = true,
                        Err(ItemsError::Eval(EvalError::Stopped)) => {
                            stopped = Some(ctx.stop_reason().unwrap_or(StepEnd::Interrupted))
                        }
                        Err(ItemsError::Eval(e)) => return Err(e.into_message().into()),
                        Err(ItemsError::Store(e)) => store_failure = Some(e),
                    }
                }
                if stopped.is_none() && store_failure.is_none() {
                    // No item of the batch has started: a stop drops it,
                    // and a resume renders it again.
                    match ops::render_batch(&batch_evaluator, step, batch).await {
                        Ok(rendered) => ready.extend(rendered),
                        Err(EvalError::Stopped) => {
                            stopped = Some(ctx.stop_reason().unwrap_or(StepEnd::Interrupted))
                        }
                        Err(e) => return Err(e.into_message().into()),
                    }
                }
                continue;
            };
            let evaluator = &item_evaluator;
            in_flight.push(async move {
                let result =
                    ops::item(cx, endpoint, evaluator, &item_scope, n, false, rendered).await;
                (n, result)
            });
        }
        let Some((n, result)) = in_flight.next().await else { break };
        let record = match result {
            // The run stopped while this item waited for a limit or a
            // retry: it is not recorded, so a resume sends it again under
            // the same idempotency key.
            Err(CallError { stopped: true, .. }) => {
                stopped.get_or_insert(ctx.stop_reason().unwrap_or(StepEnd::Interrupted));
                continue;
            }
            Ok(done) => {
                if let Some(entry) = done.plan {
                    plan.add(entry);
                }
                ItemRecord {
                    status: Status::Succeeded,
                    action: Some(done.action),
                    id: done.id,
                    error: None,
                }
            }
            Err(CallError { message, fatal: is_fatal, .. }) => {
                if is_fatal && fatal.is_none() {
                    fatal = Some(message.clone());
                }
                ItemRecord {
                    status: Status::Failed,
                    action: None,
                    id: None,
                    error: Some(format!("item {n}: {message}")),
                }
            }
        };
        tally(state, &record, &mut errors);
        let succeeded = state.items - state.counts.failed;
        failing_alike = succeeded == 0 && state.counts.failed >= FAILURES_BEFORE_ANY_SUCCESS;
        pending.push((n, record));
        if pending.len() >= GROUP_ITEMS || last_commit.elapsed() >= GROUP_WAIT {
            commit(ctx, step, state, &plan, &mut pending, &errors).await?;
            last_commit = Instant::now();
        }
    }
    commit(ctx, step, state, &plan, &mut pending, &errors).await?;
    if let Some(error) = store_failure {
        return Err(StepError::Store(error));
    }
    if fatal.is_none() && failing_alike && (!exhausted || !ready.is_empty()) {
        // Every item started has finished, and failed: they are the first
        // ones in item order, and some were left (unread, or rendered and
        // waiting).
        fatal = Some(format!(
            "the first {FAILURES_BEFORE_ANY_SUCCESS} items all failed, so the rest were not tried; first: {}",
            errors.first().map(String::as_str).unwrap_or("(no message)")
        ));
    }
    if let Some(message) = fatal {
        return Err(format!("stopped after {} items: {message}", state.items).into());
    }
    if let Some(end) = stopped {
        return Ok(end);
    }
    if state.counts.failed > 0 {
        return Err(format!(
            "{} of {} items failed; first: {}",
            state.counts.failed,
            state.items,
            errors.first().map(String::as_str).unwrap_or("(no message)")
        )
        .into());
    }
    Ok(StepEnd::Done)
}

/// A set of item numbers, a bit each: a million items cost 125 KB.
#[derive(Default)]
struct ItemSet {
    words: Vec<u64>,
}

impl ItemSet {
    /// Adds `n`; `false` if it was there.
    fn insert(&mut self, n: u64) -> bool {
        let (word, bit) = ((n / 64) as usize, n % 64);
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        let fresh = self.words[word] & (1 << bit) == 0;
        self.words[word] |= 1 << bit;
        fresh
    }

    fn contains(&self, n: u64) -> bool {
        self.words.get((n / 64) as usize).is_some_and(|w| w & (1 << (n % 64)) != 0)
    }
}

fn tally(state: &mut StepState, record: &ItemRecord, errors: &mut Vec<String>) {
    state.items += 1;
    match record.status {
        Status::Failed => {
            state.counts.failed += 1;
            if errors.len() < ERRORS_KEPT
                && let Some(e) = &record.error
            {
                errors.push(e.clone());
            }
        }
        _ => {
            if let Some(action) = &record.action {
                state.counts.add(*action);
            }
        }
    }
}

async fn commit(
    ctx: &RunCtx<'_>,
    step: &Step,
    state: &mut StepState,
    plan: &StepPlan,
    pending: &mut Vec<(u64, ItemRecord)>,
    errors: &[String],
) -> Result<(), StepError> {
    if pending.is_empty() {
        return Ok(());
    }
    state.output =
        Some(serde_json::json!({ "items": state.items, "counts": state.counts, "errors": errors }));
    if ctx.dry_run {
        state.plan = Some(plan.clone());
    }
    ctx.store.commit_items(ctx.run_id, state, pending).await?;
    pending.clear();
    ctx.observer.items_committed(step, state.items);
    Ok(())
}
