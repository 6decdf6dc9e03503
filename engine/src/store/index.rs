//! What a console lists and shows of runs without reading them whole: a
//! row per run, indexes of run ids by workflow, status and trigger, who did
//! what to a run (its history), and a run's HTTP figures per connection.
//!
//! The rows and the indexes change in the same sled transaction as the run
//! record they describe (see [`RunStore::create_run_by`],
//! [`RunStore::commit_run`], [`RunStore::fail_run`]), so a list never shows
//! a run in a status it is not in. Run ids start with their creation time
//! in hex, so every index is ordered by time within a value, and a page of
//! runs is a reverse range scan from a cursor (the last id shown): no scan
//! of the whole store, however many runs it holds. A filter the driving
//! index does not cover is checked on the rows, under a budget of rows
//! looked at per page; a page cut short by the budget says so and carries
//! a cursor to go on from.
//!
//! History lives beside the run record, not in it: the executor rewrites
//! the record whole from its own copy at every commit, and an entry added
//! to the record meanwhile would be lost.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::owner::Trees;
use super::{Result, RunRecord, SledStore, Status, StoreError, decode, encode};

/// The tree of rows, by run id.
pub(super) const ROWS_TREE: &str = "run_rows";
/// The tree of index entries.
pub(super) const INDEX_TREE: &str = "run_index";

/// Rows a page holds, at most.
pub const MAX_PAGE: usize = 500;

/// Rows looked at for one page, at most: a filter that matches few runs
/// far back ends a page early (with a cursor) instead of reading on.
pub const SCAN_BUDGET: usize = 5_000;

/// Characters of a run's error kept in its row.
const ROW_ERROR_CHARS: usize = 240;

/// A run as a list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRow {
    /// Run id.
    pub id: String,
    /// Workflow name.
    #[serde(rename = "w")]
    pub workflow: String,
    /// Status.
    #[serde(rename = "s")]
    pub status: Status,
    /// What started it.
    #[serde(rename = "t")]
    pub trigger: String,
    /// A dry run.
    #[serde(rename = "d", default)]
    pub dry_run: bool,
    /// Unix milliseconds.
    #[serde(rename = "c")]
    pub created_ms: u64,
    /// Unix milliseconds, when finished.
    #[serde(rename = "f", default)]
    pub finished_ms: Option<u64>,
    /// The start of its error.
    #[serde(rename = "e", default)]
    pub error: Option<String>,
    /// Resumes so far.
    #[serde(rename = "r", default)]
    pub resumes: u32,
    /// Asked to stop.
    #[serde(rename = "x", default)]
    pub cancel_requested: bool,
    /// Who started it: a token's name, `cron`, `webhook`, `cli`.
    #[serde(rename = "b", default)]
    pub started_by: Option<String>,
}

impl RunRow {
    /// The row of `run`, started by `started_by`.
    pub fn of(run: &RunRecord, started_by: Option<String>) -> Self {
        let error = run.error.as_ref().map(|e| match e.char_indices().nth(ROW_ERROR_CHARS) {
            Some((cut, _)) => format!("{}…", &e[..cut]),
            None => e.clone(),
        });
        RunRow {
            id: run.id.clone(),
            workflow: run.workflow.clone(),
            status: run.status,
            trigger: run.trigger.as_str().to_owned(),
            dry_run: run.dry_run,
            created_ms: run.created_ms,
            finished_ms: run.finished_ms,
            error,
            resumes: run.resumes,
            cancel_requested: run.cancel_requested,
            started_by,
        }
    }
}

/// One thing someone did to a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Who: a token's name, or `cron`, `webhook`, `cli`, `weft serve`.
    pub actor: String,
    /// What: `started`, `resume requested`, `cancel requested`, …
    pub action: String,
    /// More, when there is more to say (`dry run`, `re-run of RUN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl HistoryEntry {
    /// An entry stamped now.
    pub fn now(
        actor: impl Into<String>,
        action: impl Into<String>,
        detail: Option<String>,
    ) -> Self {
        HistoryEntry { at_ms: super::now_ms(), actor: actor.into(), action: action.into(), detail }
    }
}

/// What a run sent on one connection, over all its attempts: the vendor
/// requests, and the plugin calls that made them. `weft run --json`
/// prints an attempt's; the store keeps their sum for the console.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionTotals {
    /// The connection's plugin (built-in name or path).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub plugin: String,
    /// Requests sent to the vendor.
    pub requests: u64,
    /// Responses with status 429.
    pub throttled: u64,
    /// Requests sent again after a failure.
    pub retries: u64,
    /// Milliseconds spent waiting before sending (limiter, backoff).
    pub waited_ms: u64,
    /// Requests refused by the host before sending.
    pub denied: u64,
    /// Milliseconds spent in vendor requests, from sending to the whole
    /// answer.
    #[serde(default)]
    pub request_ms: u64,
    /// Requests by the class of their answer (`2xx`, `4xx`, `error` when
    /// none came); classes never seen are left out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub statuses: BTreeMap<String, u64>,
    /// Plugin calls by op (`list`, `get`, `upsert`, `upsert-batch`,
    /// `remove`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub calls: BTreeMap<String, CallTotals>,
    /// Plugin calls stopped, by cause (`cpu`, `memory`, `deadline`,
    /// `panic`, `other`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub traps: BTreeMap<String, u64>,
}

/// One op's plugin calls on one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallTotals {
    /// Calls made.
    pub calls: u64,
    /// Milliseconds they took in all, their vendor requests included.
    pub ms: u64,
    /// Milliseconds the longest took.
    pub max_ms: u64,
}

impl ConnectionTotals {
    /// Adds another attempt's figures to these.
    pub fn add(&mut self, other: &ConnectionTotals) {
        if !other.plugin.is_empty() {
            self.plugin.clone_from(&other.plugin);
        }
        self.requests += other.requests;
        self.throttled += other.throttled;
        self.retries += other.retries;
        self.waited_ms += other.waited_ms;
        self.denied += other.denied;
        self.request_ms += other.request_ms;
        for (class, n) in &other.statuses {
            *self.statuses.entry(class.clone()).or_default() += n;
        }
        for (op, add) in &other.calls {
            let sum = self.calls.entry(op.clone()).or_default();
            sum.calls += add.calls;
            sum.ms += add.ms;
            sum.max_ms = sum.max_ms.max(add.max_ms);
        }
        for (cause, n) in &other.traps {
            *self.traps.entry(cause.clone()).or_default() += n;
        }
    }

    /// Whether the attempt did anything on the connection worth keeping.
    pub fn is_empty(&self) -> bool {
        self.requests + self.denied == 0 && self.calls.is_empty() && self.traps.is_empty()
    }
}

/// Which runs to list: every filter given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    /// Only this workflow's.
    pub workflow: Option<String>,
    /// Only runs in this status.
    pub status: Option<Status>,
    /// Only runs started this way.
    pub trigger: Option<String>,
    /// Only runs created at or after this (Unix ms).
    pub created_from_ms: Option<u64>,
    /// Only runs created before this (Unix ms).
    pub created_to_ms: Option<u64>,
    /// Only runs whose id starts with this.
    pub id_prefix: Option<String>,
    /// Only runs older than this run id (the cursor of the page before).
    pub before: Option<String>,
    /// Rows per page (1 to [`MAX_PAGE`]).
    pub limit: usize,
}

/// A page of runs, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunPage {
    /// The rows.
    pub rows: Vec<RunRow>,
    /// Where the next (older) page starts (`RunQuery::before`), when there
    /// may be more.
    pub next: Option<String>,
    /// The page ended early: [`SCAN_BUDGET`] rows were looked at and fewer
    /// matched than asked for. Older matches may follow from `next`.
    pub cut_short: bool,
}

const BY_WORKFLOW: u8 = b'w';
const BY_STATUS: u8 = b's';
const BY_TRIGGER: u8 = b't';

fn index_prefix(kind: u8, value: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(value.len() + 2);
    key.push(kind);
    key.push(0);
    key.extend_from_slice(value.as_bytes());
    key.push(0);
    key
}

pub(super) fn index_keys(row: &RunRow) -> [Vec<u8>; 3] {
    let key = |kind, value: &str| {
        let mut key = index_prefix(kind, value);
        key.extend_from_slice(row.id.as_bytes());
        key
    };
    [
        key(BY_WORKFLOW, &row.workflow),
        key(BY_STATUS, row.status.as_str()),
        key(BY_TRIGGER, &row.trigger),
    ]
}

/// The first key after every key that starts with `prefix` (ids and index
/// values are text, so no key holds 0xff).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end.push(0xff);
    end
}

/// The start of the ids of runs created at `ms`.
fn time_key(ms: u64) -> Vec<u8> {
    format!("{ms:011x}").into_bytes()
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<StoreError>>;

/// Writes `row` and its index entries, dropping the entries of `old` that
/// changed, inside a transaction over the rows and the index.
pub(super) fn put_row(
    rows: &TransactionalTree,
    index: &TransactionalTree,
    old: Option<&RunRow>,
    row: &RunRow,
) -> TxResult<()> {
    let new_keys = index_keys(row);
    if let Some(old) = old {
        for key in index_keys(old) {
            if !new_keys.contains(&key) {
                index.remove(key)?;
            }
        }
    }
    for key in new_keys {
        index.insert(key, &[][..])?;
    }
    rows.insert(
        row.id.as_bytes(),
        encode(row).map_err(sled::transaction::ConflictableTransactionError::Abort)?,
    )?;
    Ok(())
}

/// The row stored for `id`, if any (inside a transaction).
pub(super) fn stored_row(rows: &TransactionalTree, id: &str) -> TxResult<Option<RunRow>> {
    match rows.get(id.as_bytes())? {
        // A row that does not decode is rewritten whole.
        Some(bytes) => Ok(decode::<RunRow>(id.as_bytes(), &bytes).ok()),
        None => Ok(None),
    }
}

/// Builds the rows and the index of every run in `db` (a store written
/// before they existed); returns the runs indexed.
pub(super) fn rebuild(db: &sled::Db) -> Result<usize> {
    let runs = db.open_tree("runs")?;
    let rows = db.open_tree(ROWS_TREE)?;
    let index = db.open_tree(INDEX_TREE)?;
    let mut batch_rows = sled::Batch::default();
    let mut batch_index = sled::Batch::default();
    let mut done = 0;
    for entry in runs.iter() {
        let (key, value) = entry?;
        let run: RunRecord = decode(&key, &value)?;
        let row = RunRow::of(&run, None);
        for key in index_keys(&row) {
            batch_index.insert(key, &[][..]);
        }
        batch_rows.insert(row.id.as_bytes(), encode(&row)?);
        done += 1;
        if done % 4096 == 0 {
            rows.apply_batch(std::mem::take(&mut batch_rows))?;
            index.apply_batch(std::mem::take(&mut batch_index))?;
        }
    }
    rows.apply_batch(batch_rows)?;
    index.apply_batch(batch_index)?;
    Ok(done)
}

fn matches(row: &RunRow, query: &RunQuery) -> bool {
    query.workflow.as_ref().is_none_or(|w| *w == row.workflow)
        && query.status.is_none_or(|s| s == row.status)
        && query.trigger.as_ref().is_none_or(|t| *t == row.trigger)
}

/// A page of runs for `query`, on the owner thread.
fn page(t: &Trees, query: &RunQuery) -> Result<RunPage> {
    let limit = query.limit.clamp(1, MAX_PAGE);
    // The bounds on run ids, from the time range, the cursor and the id.
    let mut low = query.created_from_ms.map(time_key).unwrap_or_default();
    let mut high: Option<Vec<u8>> = query.created_to_ms.map(time_key);
    let lower =
        |high: Option<Vec<u8>>, bound: Vec<u8>| Some(high.map_or(bound.clone(), |h| h.min(bound)));
    if let Some(before) = &query.before {
        high = lower(high, before.as_bytes().to_vec());
    }
    if let Some(prefix) = query.id_prefix.as_deref().filter(|p| !p.is_empty()) {
        low = low.max(prefix.as_bytes().to_vec());
        high = lower(high, prefix_end(prefix.as_bytes()));
    }
    // The index that narrows most, as a rule: unfinished and failed runs
    // are few, one workflow's runs fewer than all.
    let rare_status = query.status.filter(|s| *s != Status::Succeeded);
    let driving = match (&query.workflow, rare_status, &query.trigger) {
        (_, Some(status), _) => Some(index_prefix(BY_STATUS, status.as_str())),
        (Some(workflow), None, _) => Some(index_prefix(BY_WORKFLOW, workflow)),
        (None, None, Some(trigger)) => Some(index_prefix(BY_TRIGGER, trigger)),
        (None, None, None) => query.status.map(|s| index_prefix(BY_STATUS, s.as_str())),
    };
    let head = driving.clone().unwrap_or_default();
    let tree = if driving.is_some() { &t.index } else { &t.rows };
    let start = [head.as_slice(), &low].concat();
    let end = match &high {
        Some(high) => [head.as_slice(), high].concat(),
        None => prefix_end(&head),
    };
    let mut out = RunPage::default();
    if start >= end {
        return Ok(out);
    }
    let mut scanned = 0;
    // The id a page cut short by the budget goes on from.
    let mut cut = None;
    for entry in tree.range(start..end).rev() {
        let (key, value) = entry?;
        scanned += 1;
        let id = &key[head.len()..];
        let row: Option<RunRow> = if driving.is_some() {
            // An index entry without its row has nothing to show.
            t.rows.get(id)?.map(|bytes| decode(id, &bytes)).transpose()?
        } else {
            Some(decode(&key, &value)?)
        };
        if let Some(row) = row.filter(|r| matches(r, query)) {
            out.rows.push(row);
            if out.rows.len() > limit {
                break;
            }
        }
        if scanned >= SCAN_BUDGET {
            cut = Some(String::from_utf8_lossy(id).into_owned());
            break;
        }
    }
    if out.rows.len() > limit {
        out.rows.truncate(limit);
        out.next = out.rows.last().map(|r| r.id.clone());
    } else if let Some(at) = cut {
        out.cut_short = out.rows.len() < limit;
        out.next = Some(at);
    }
    Ok(out)
}

impl SledStore {
    /// A page of runs, newest first, through the indexes (see the module
    /// docs): its cost follows the page, not the store.
    pub async fn query_runs(&self, query: RunQuery) -> Result<RunPage> {
        self.owner.call(move |t| page(t, &query)).await
    }

    /// The row of one run.
    pub async fn run_row(&self, id: &str) -> Result<RunRow> {
        let key = id.to_owned();
        let bytes = self
            .owner
            .call(move |t| Ok(t.rows.get(key.as_bytes())?))
            .await?
            .ok_or_else(|| StoreError::UnknownRun(id.to_owned()))?;
        decode(id.as_bytes(), &bytes)
    }

    /// Adds an entry to a run's history, durably.
    pub async fn record_action(&self, run: &str, entry: &HistoryEntry) -> Result<()> {
        let (run, value) = (run.to_owned(), encode(entry)?);
        self.owner
            .write(move |t| {
                if !t.runs.contains_key(run.as_bytes())? {
                    return Err(StoreError::UnknownRun(run));
                }
                let key = history_key(&run, t.db.generate_id()?);
                t.history.insert(key, value)?;
                Ok(())
            })
            .await
    }

    /// A run's history, oldest first.
    pub async fn history(&self, run: &str) -> Result<Vec<HistoryEntry>> {
        let prefix = format!("{run}/").into_bytes();
        let entries = self
            .owner
            .call(move |t| {
                t.history
                    .scan_prefix(prefix)
                    .map(|e| e.map_err(StoreError::from))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        entries.iter().map(|(key, value)| decode(key, value)).collect()
    }

    /// Adds what an attempt of a run sent per connection to what earlier
    /// attempts sent, durably.
    pub async fn add_connection_totals(
        &self,
        run: &str,
        totals: &std::collections::BTreeMap<String, ConnectionTotals>,
    ) -> Result<()> {
        let (run, totals) = (run.to_owned(), totals.clone());
        self.owner
            .write(move |t| {
                let mut sum: std::collections::BTreeMap<String, ConnectionTotals> =
                    match t.run_stats.get(run.as_bytes())? {
                        Some(bytes) => decode(run.as_bytes(), &bytes)?,
                        None => Default::default(),
                    };
                for (name, add) in &totals {
                    sum.entry(name.clone()).or_default().add(add);
                }
                t.run_stats.insert(run.as_bytes(), encode(&sum)?)?;
                Ok(())
            })
            .await
    }

    /// What a run sent per connection, over its attempts so far (empty
    /// until an attempt ended).
    pub async fn connection_totals(
        &self,
        run: &str,
    ) -> Result<std::collections::BTreeMap<String, ConnectionTotals>> {
        let key = run.to_owned();
        match self.owner.call(move |t| Ok(t.run_stats.get(key.as_bytes())?)).await? {
            Some(bytes) => decode(run.as_bytes(), &bytes),
            None => Ok(Default::default()),
        }
    }
}

fn history_key(run: &str, seq: u64) -> Vec<u8> {
    format!("{run}/{seq:016x}").into_bytes()
}

/// The history key of a run's first entry, inside a creating transaction.
pub(super) fn first_history_key(run: &str, seq: u64) -> Vec<u8> {
    history_key(run, seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunStore;
    use crate::store::{RunTrigger, now_ms};

    fn record(id: &str, workflow: &str, status: Status, trigger: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            workflow: workflow.into(),
            workflow_hash: "h".into(),
            workflow_text: "[workflow]".into(),
            workflow_path: "w.toml".into(),
            inputs: serde_json::json!({}),
            status,
            created_ms: now_ms(),
            finished_ms: None,
            error: None,
            dry_run: false,
            trigger: RunTrigger::from(trigger.to_owned()),
            cancel_requested: false,
            resumes: 0,
            inputs_defaulted: Vec::new(),
        }
    }

    /// An id as `new_run_id` makes them, at `ms`.
    fn id_at(ms: u64, seq: u64) -> String {
        format!("{ms:011x}-{seq:05x}")
    }

    async fn seed(store: &RunStore, n: u64) -> Result<(), Box<dyn std::error::Error>> {
        for i in 0..n {
            let workflow = if i % 3 == 0 { "a" } else { "b" };
            let status = if i % 10 == 0 { Status::Failed } else { Status::Succeeded };
            let trigger = if i % 2 == 0 { "cron" } else { "api" };
            let mut run = record(&id_at(1_000_000 + i, i), workflow, status, trigger);
            run.created_ms = 1_000_000 + i;
            store
                .create_run_by(&run, &[], None, Some(if i % 2 == 0 { "cron" } else { "ops" }))
                .await?;
        }
        Ok(())
    }

    fn ids(page: &RunPage) -> Vec<u64> {
        page.rows.iter().map(|r| r.created_ms - 1_000_000).collect()
    }

    #[tokio::test]
    async fn pages_follow_the_cursor_newest_first_with_every_filter()
    -> Result<(), Box<dyn std::error::Error>> {
        for backend in crate::store::testing::backends(
            "pages_follow_the_cursor_newest_first_with_every_filter",
        )
        .await?
        {
            eprintln!(
                "pages_follow_the_cursor_newest_first_with_every_filter: on {}",
                backend.name
            );
            let store = backend.store.clone();
            seed(&store, 40).await?;
            let first = store.query_runs(RunQuery { limit: 5, ..RunQuery::default() }).await?;
            assert_eq!(ids(&first), vec![39, 38, 37, 36, 35]);
            let second = store
                .query_runs(RunQuery {
                    limit: 5,
                    before: first.next.clone(),
                    ..RunQuery::default()
                })
                .await?;
            assert_eq!(ids(&second), vec![34, 33, 32, 31, 30]);
            let failed_a = store
                .query_runs(RunQuery {
                    workflow: Some("a".into()),
                    status: Some(Status::Failed),
                    limit: 10,
                    ..RunQuery::default()
                })
                .await?;
            assert_eq!(ids(&failed_a), vec![30, 0]);
            assert_eq!(failed_a.next, None, "the last page says so");
            let cron_b = store
                .query_runs(RunQuery {
                    workflow: Some("b".into()),
                    trigger: Some("cron".into()),
                    limit: 3,
                    ..RunQuery::default()
                })
                .await?;
            assert_eq!(ids(&cron_b), vec![38, 34, 32]);
            assert_eq!(cron_b.rows[0].started_by.as_deref(), Some("cron"));
            let window = store
                .query_runs(RunQuery {
                    created_from_ms: Some(1_000_010),
                    created_to_ms: Some(1_000_013),
                    limit: 10,
                    ..RunQuery::default()
                })
                .await?;
            assert_eq!(ids(&window), vec![12, 11, 10]);
            let by_id = store
                .query_runs(RunQuery {
                    id_prefix: Some(id_at(1_000_007, 7)),
                    limit: 10,
                    ..RunQuery::default()
                })
                .await?;
            assert_eq!(ids(&by_id), vec![7]);
            let exact = store.query_runs(RunQuery { limit: 10, ..RunQuery::default() }).await?;
            assert_eq!(exact.rows.len(), 10);
            let all = store.query_runs(RunQuery { limit: 40, ..RunQuery::default() }).await?;
            assert_eq!(
                (all.rows.len(), all.next.as_deref()),
                (40, None),
                "no cursor to an empty page"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_status_change_moves_the_run_between_indexes()
    -> Result<(), Box<dyn std::error::Error>> {
        for backend in
            crate::store::testing::backends("a_status_change_moves_the_run_between_indexes").await?
        {
            eprintln!("a_status_change_moves_the_run_between_indexes: on {}", backend.name);
            let store = backend.store.clone();
            seed(&store, 3).await?;
            let id = id_at(1_000_001, 1);
            let mut run = store.run(&id).await?;
            run.status = Status::Running;
            store.commit_run(&run).await?;
            let running = store
                .query_runs(RunQuery {
                    status: Some(Status::Running),
                    limit: 10,
                    ..RunQuery::default()
                })
                .await?;
            assert_eq!(ids(&running), vec![1]);
            assert_eq!(
                running.rows[0].started_by.as_deref(),
                Some("ops"),
                "a commit keeps who started it"
            );
            store.fail_run(&id, "boom").await?;
            assert!(
                store
                    .query_runs(RunQuery {
                        status: Some(Status::Running),
                        limit: 10,
                        ..RunQuery::default()
                    })
                    .await?
                    .rows
                    .is_empty()
            );
            let failed = store
                .query_runs(RunQuery {
                    status: Some(Status::Failed),
                    limit: 10,
                    ..RunQuery::default()
                })
                .await?;
            assert_eq!(ids(&failed), vec![1, 0]);
            assert_eq!(store.unfinished_runs().await?.len(), 0);
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_rare_match_far_back_ends_the_page_early_with_a_cursor()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RunStore::open(dir.path())?;
        let n = SCAN_BUDGET as u64 + 20;
        for i in 0..n {
            let mut run = record(
                &id_at(1_000_000 + i, i),
                "a",
                Status::Succeeded,
                if i == 0 { "webhook" } else { "cron" },
            );
            run.created_ms = 1_000_000 + i;
            store.create_run_by(&run, &[], None, None).await?;
        }
        let query = RunQuery {
            workflow: Some("a".into()),
            trigger: Some("webhook".into()),
            limit: 10,
            ..RunQuery::default()
        };
        let first = store.query_runs(query.clone()).await?;
        assert!(first.rows.is_empty() && first.cut_short && first.next.is_some(), "{first:?}");
        let rest = store.query_runs(RunQuery { before: first.next, ..query }).await?;
        assert_eq!(ids(&rest), vec![0]);
        assert!(!rest.cut_short);
        Ok(())
    }

    #[tokio::test]
    async fn history_and_connection_totals_accumulate_per_run()
    -> Result<(), Box<dyn std::error::Error>> {
        for backend in
            crate::store::testing::backends("history_and_connection_totals_accumulate_per_run")
                .await?
        {
            eprintln!("history_and_connection_totals_accumulate_per_run: on {}", backend.name);
            let store = backend.store.clone();
            seed(&store, 1).await?;
            let id = id_at(1_000_000, 0);
            store.record_action(&id, &HistoryEntry::now("ops", "cancel requested", None)).await?;
            let history = store.history(&id).await?;
            let actions: Vec<_> =
                history.iter().map(|h| (h.actor.as_str(), h.action.as_str())).collect();
            assert_eq!(actions, vec![("cron", "started"), ("ops", "cancel requested")]);
            assert!(matches!(
                store.record_action("nope", &HistoryEntry::now("x", "y", None)).await,
                Err(StoreError::UnknownRun(_))
            ));
            let attempt = |max_ms| ConnectionTotals {
                plugin: "stripe".into(),
                requests: 3,
                throttled: 1,
                request_ms: 40,
                statuses: BTreeMap::from([("2xx".into(), 2), ("4xx".into(), 1)]),
                calls: BTreeMap::from([(
                    "list".into(),
                    super::CallTotals { calls: 2, ms: 50, max_ms },
                )]),
                traps: BTreeMap::from([("cpu".into(), 1)]),
                ..Default::default()
            };
            let first = BTreeMap::from([("stripe".to_owned(), attempt(30))]);
            let second = BTreeMap::from([("stripe".to_owned(), attempt(45))]);
            store.add_connection_totals(&id, &first).await?;
            store.add_connection_totals(&id, &second).await?;
            let sum = &store.connection_totals(&id).await?["stripe"];
            assert_eq!((sum.requests, sum.throttled, sum.request_ms), (6, 2, 80), "{sum:?}");
            assert_eq!(sum.plugin, "stripe");
            assert_eq!(sum.statuses, BTreeMap::from([("2xx".into(), 4), ("4xx".into(), 2)]));
            assert_eq!(sum.calls["list"], super::CallTotals { calls: 4, ms: 100, max_ms: 45 });
            assert_eq!(sum.traps["cpu"], 2);
        }
        Ok(())
    }

    #[test]
    fn a_store_from_before_the_indexes_is_indexed_when_opened()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        {
            let db = sled::open(dir.path())?;
            db.insert(super::super::SCHEMA_KEY, &2u32.to_be_bytes())?;
            let runs = db.open_tree("runs")?;
            for i in 0..3u64 {
                let run = record(&id_at(1_000_000 + i, i), "old", Status::Succeeded, "manual");
                runs.insert(run.id.as_bytes(), encode(&run)?)?;
            }
            db.flush()?;
        }
        let store = RunStore::open(dir.path())?;
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        let page = runtime.block_on(store.query_runs(RunQuery {
            workflow: Some("old".into()),
            limit: 10,
            ..RunQuery::default()
        }))?;
        assert_eq!(page.rows.len(), 3);
        Ok(())
    }
}
