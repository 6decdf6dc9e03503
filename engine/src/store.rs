//! Durable run state in sled: runs, their steps, the pages a list step has
//! read (the records in a page file per step, sled pointing at them with a
//! CRC of each page), the items of a for-each, and the webhook deliveries
//! already received; a sync's sorted runs are files in a scratch directory
//! beside them.
//!
//! One thread owns the database and applies every read and write in order;
//! one flusher makes writes durable, a flush covering every write before it
//! (see `owner`). The API is async: a caller hands its work over and
//! awaits the answer, so no async worker ever waits inside sled. Step, page
//! and run commits are durable before the caller goes on; for-each items
//! are committed in groups (see [`RunStore::commit_items`]), and an item
//! lost in the last group is redone on resume with the same idempotency
//! key, so the vendor does not write twice. Credentials never reach this
//! module: it stores workflow text, inputs, records and messages only.
//!
//! Beside the runs it keeps each workflow's state across runs (the
//! `state` module: a step's change commits with the step, compare-and-set
//! on the version its run read) and removes old runs on request (the
//! `retention` module: `weft runs prune`, `weft serve --retention`).
//!
//! Beside the runs it keeps what a console needs to list them without
//! reading them whole (a row per run, indexes by workflow, status and
//! trigger, each run's history and HTTP figures: see [`RunRow`]) and who may
//! use a server (tokens and sessions: see [`TokenRecord`]).
//!
//! The API names no sled type: the second backend, PostgreSQL (issue 16,
//! see [`postgres`]), keeps the same things behind the same methods (pages
//! as rows, sorted runs as rows fetched to each worker's own disk), so a
//! run that runs on one runs on the other.

mod access;
pub mod copy;
mod index;
mod owner;
pub mod plan;
pub mod postgres;
mod retention;
pub mod state;

pub use access::{Role, SessionRecord, TokenError, TokenRecord, valid_token_name};
pub use index::{
    CallTotals, ConnectionTotals, HistoryEntry, MAX_PAGE, RunPage, RunQuery, RunRow, SCAN_BUDGET,
};
pub use retention::PruneReport;
pub use state::{StateWrite, WorkflowState};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sled::Transactional;

use owner::Owner;

/// The on-disk format version. Bump it, and add a migration in
/// [`RunStore::open`], whenever a stored type changes shape.
pub const SCHEMA_VERSION: u32 = 3;

/// Memory sled may use for its page cache. sled's default (1 GiB) would
/// make a large sync look like a leak; the working set of a run is a page
/// or two and the keys of a sync index.
const CACHE_BYTES: u64 = 32 << 20;

const SCHEMA_KEY: &[u8] = b"schema_version";

/// Errors from the run store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("run store: {0}")]
    Sled(#[from] sled::Error),
    /// The store was written by another weft with a different format.
    #[error(
        "run store at {path} has schema version {found}; this weft reads version {SCHEMA_VERSION}"
    )]
    Schema {
        /// The store directory.
        path: String,
        /// The version found.
        found: u32,
    },
    /// A stored value does not decode.
    #[error("run store: corrupt entry {key}: {reason}")]
    Corrupt {
        /// Which entry.
        key: String,
        /// Why.
        reason: String,
    },
    /// A value could not be serialised for storing (a bug in weft):
    /// nothing was written.
    #[error("run store: cannot encode a {what} to store it: {reason}")]
    Encode {
        /// The type of the value.
        what: String,
        /// Why.
        reason: String,
    },
    /// No run with that id.
    #[error("no run with id {0}")]
    UnknownRun(String),
    /// The store's directory could not be measured.
    #[error("run store: cannot measure the size of {path}: {reason}")]
    Measure {
        /// The directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// A scratch directory could not be made or removed.
    #[error("run store: scratch directory {path}: {reason}")]
    Scratch {
        /// The directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// A list step's page file could not be written or read.
    #[error("run store: page file {path}: {reason}")]
    PageFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A list step's page does not match the checksum it was committed
    /// with: the page file was changed or damaged after the commit.
    #[error(
        "run store: page file {path}: page {page} (bytes {offset}..{end}) does not match the checksum it was committed with; the file was changed or damaged since, so the step's records cannot be trusted (start the run again)"
    )]
    PageChecksum {
        /// The file.
        path: String,
        /// The page's number in its step.
        page: u32,
        /// Where the page starts in the file.
        offset: u64,
        /// Where it ends.
        end: u64,
    },
    /// This webhook delivery was received before (its signature is
    /// remembered with the run it started).
    #[error(
        "this delivery to workflow {workflow:?} was already received (same signature); a replay starts nothing"
    )]
    Replay {
        /// The workflow whose webhook it was.
        workflow: String,
    },
    /// Another delivery of this event was received already (a sender's
    /// retry, signed anew): it starts nothing.
    #[error(
        "event {event:?} was already delivered to workflow {workflow:?}; this delivery starts nothing"
    )]
    DuplicateEvent {
        /// The workflow whose webhook it was.
        workflow: String,
        /// The event's id.
        event: String,
    },
    /// The store's threads cannot take work (closing, or a flush failed).
    #[error("run store: {0}")]
    Unavailable(String),
    /// PostgreSQL failed, or could not be reached.
    #[error("PostgreSQL run store: {what}: {reason}")]
    Postgres {
        /// What was being done.
        what: String,
        /// Why it failed (the server's message and SQLSTATE when it sent one).
        reason: String,
    },
    /// The PostgreSQL store's schema is not the one this weft knows.
    #[error("{0}")]
    PostgresSchema(String),
    /// A store location that is neither `sled:DIR` nor `postgres://…`, or
    /// a PostgreSQL URL that cannot be used.
    #[error("run store {given:?}: {reason}")]
    Location {
        /// The location given (any password removed).
        given: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// What this backend does not keep yet (PostgreSQL is being built up,
    /// issue 16): the run fails saying what, rather than losing state.
    #[error(
        "not yet supported on PostgreSQL: {what} (keep runs that need it on a sled store: --store sled:DIR)"
    )]
    Unsupported {
        /// What is missing.
        what: &'static str,
    },
    /// A step's change to its workflow's state was refused: another run
    /// (or a change by hand) changed the state since this run read it.
    #[error(
        "the state of workflow {workflow:?} changed since this run read it (version {read}, now {found}{}); this run's change is not applied",
        by.as_ref().map(|r| format!(", by run {r}")).unwrap_or_else(|| ", by hand".into())
    )]
    StateConflict {
        /// The workflow.
        workflow: String,
        /// The version the run read.
        read: u64,
        /// The version found.
        found: u64,
        /// The run that changed it, if a run did.
        by: Option<String>,
    },
    /// Another worker of the fleet started the run of this cron firing.
    #[error(
        "the cron firing of workflow {workflow:?} scheduled at {scheduled_ms} (Unix ms) was started by another worker"
    )]
    AlreadyFired {
        /// The workflow.
        workflow: String,
        /// The scheduled time of the firing, Unix ms.
        scheduled_ms: u64,
    },
    /// This process's lease on a run passed to another worker (it was
    /// cut off, or paused, longer than the lease): it commits nothing more
    /// of the run, which the other worker resumes.
    #[error(
        "run {run}: this worker's lease passed to another worker{}; this worker commits nothing more of the run",
        holder.as_deref().map(|h| format!(" ({h})")).unwrap_or_default()
    )]
    LeaseLost {
        /// The run.
        run: String,
        /// The worker holding it now, when one does.
        holder: Option<String>,
    },
    /// Another worker holds the run's lease and renews it: it is running
    /// the run.
    #[error(
        "run {run} is being run by worker {worker} (it holds the run's lease and renews it); it was not resumed here"
    )]
    Leased {
        /// The run.
        run: String,
        /// The worker holding it.
        worker: String,
    },
    /// Another process has the store open.
    #[error(
        "the run store at {path} is in use by another weft process (a `weft serve`?); stop it, point --state-dir elsewhere, or talk to the server"
    )]
    Locked {
        /// The store directory.
        path: String,
    },
}

impl StoreError {
    /// Whether the error is damage to what the store holds (a checksum
    /// that does not match, an entry that does not decode): trying again
    /// meets it again, so the run it belongs to cannot go on.
    pub fn is_damage(&self) -> bool {
        matches!(self, StoreError::PageChecksum { .. } | StoreError::Corrupt { .. })
    }
}

/// Result alias for this module.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where a run or step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not started.
    Pending,
    /// Under way (or interrupted, if the process died).
    Running,
    /// Finished well.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Skipped by a condition.
    Skipped,
    /// Stopped on request.
    Cancelled,
}

impl Status {
    /// Whether the status is final.
    pub fn is_finished(self) -> bool {
        !matches!(self, Status::Pending | Status::Running)
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
            Status::Cancelled => "cancelled",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(text: &str) -> Option<Status> {
        [
            Status::Pending,
            Status::Running,
            Status::Succeeded,
            Status::Failed,
            Status::Skipped,
            Status::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A run of a workflow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run id, sortable by creation time.
    pub id: String,
    /// Workflow name.
    pub workflow: String,
    /// SHA-256 of the workflow text the run started with.
    pub workflow_hash: String,
    /// The workflow text itself, so a resumed run uses the version it began with.
    pub workflow_text: String,
    /// Where the workflow was loaded from.
    pub workflow_path: String,
    /// The run's inputs.
    pub inputs: serde_json::Value,
    /// Status.
    pub status: Status,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Unix milliseconds, when finished.
    pub finished_ms: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Reads are real, writes are only planned.
    #[serde(default)]
    pub dry_run: bool,
    /// What started it.
    #[serde(default)]
    pub trigger: RunTrigger,
    /// Someone asked for the run to stop; it ends `cancelled` at the next
    /// page or item boundary.
    #[serde(default)]
    pub cancel_requested: bool,
    /// How many times the run was picked up again after an interruption.
    #[serde(default)]
    pub resumes: u32,
    /// The declared inputs the run was not given, which took their
    /// default (`$inputs_given` tells them apart). Empty on runs recorded
    /// before it was kept: every input counts as given there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs_defaulted: Vec<String>,
}

/// What started a run. Stored as its word (`manual`, `cron`, `webhook`,
/// `api`, `sandbox`); a word this version does not know (a newer weft's)
/// loads as [`RunTrigger::Other`] and is written back as it was, so a run
/// list never fails on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum RunTrigger {
    /// `weft run` (or a caller that did not say).
    #[default]
    Manual,
    /// `weft serve`'s scheduler.
    Cron,
    /// A signed webhook delivery to `weft serve`.
    Webhook,
    /// `POST /api/workflows/NAME/runs`.
    Api,
    /// `weft run --sandbox`, against in-process emulators: never resumed.
    Sandbox,
    /// A word this version does not know, kept as stored.
    Other(String),
}

impl RunTrigger {
    /// The word stored and shown.
    pub fn as_str(&self) -> &str {
        match self {
            RunTrigger::Manual => "manual",
            RunTrigger::Cron => "cron",
            RunTrigger::Webhook => "webhook",
            RunTrigger::Api => "api",
            RunTrigger::Sandbox => "sandbox",
            RunTrigger::Other(word) => word,
        }
    }
}

impl From<String> for RunTrigger {
    fn from(word: String) -> Self {
        match word.as_str() {
            "manual" => RunTrigger::Manual,
            "cron" => RunTrigger::Cron,
            "webhook" => RunTrigger::Webhook,
            "api" => RunTrigger::Api,
            "sandbox" => RunTrigger::Sandbox,
            _ => RunTrigger::Other(word),
        }
    }
}

impl From<RunTrigger> for String {
    fn from(trigger: RunTrigger) -> Self {
        match trigger {
            RunTrigger::Other(word) => word,
            known => known.as_str().to_owned(),
        }
    }
}

impl std::fmt::Display for RunTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts of what a step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCounts {
    /// Records read.
    pub read: u64,
    /// Records created.
    pub created: u64,
    /// Records updated.
    pub updated: u64,
    /// Records already as wanted.
    pub unchanged: u64,
    /// Records removed.
    pub removed: u64,
    /// Removes of records that were not there.
    pub absent: u64,
    /// Items that failed.
    pub failed: u64,
}

impl StepCounts {
    /// What these counts hold beyond `earlier` (counts of the same step
    /// before an attempt).
    pub fn minus(&self, earlier: &StepCounts) -> StepCounts {
        StepCounts {
            read: self.read.saturating_sub(earlier.read),
            created: self.created.saturating_sub(earlier.created),
            updated: self.updated.saturating_sub(earlier.updated),
            unchanged: self.unchanged.saturating_sub(earlier.unchanged),
            removed: self.removed.saturating_sub(earlier.removed),
            absent: self.absent.saturating_sub(earlier.absent),
            failed: self.failed.saturating_sub(earlier.failed),
        }
    }
}

/// The state of one step of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepState {
    /// Step id from the workflow.
    pub id: String,
    /// Position in the workflow.
    pub index: u32,
    /// Status.
    pub status: Status,
    /// Attempts made so far.
    pub attempts: u32,
    /// Unix milliseconds.
    pub started_ms: Option<u64>,
    /// Unix milliseconds.
    pub finished_ms: Option<u64>,
    /// What the step did.
    pub counts: StepCounts,
    /// Pages committed so far (list steps).
    pub pages: u32,
    /// The cursor after the last committed page (list steps).
    pub cursor: Option<String>,
    /// The step's result (get, upsert, remove), as JSON.
    pub output: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// Items a for-each has finished (committed).
    #[serde(default)]
    pub items: u64,
    /// Where a sync is.
    #[serde(default)]
    pub sync: Option<SyncProgress>,
    /// What a dry run would do.
    #[serde(default)]
    pub plan: Option<plan::StepPlan>,
    /// Whether a list step keeps its records in the store for later steps
    /// (it does not when no later step can read them).
    #[serde(default = "yes")]
    pub records_kept: bool,
    /// How much of a list step's output file the last commit covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_file: Option<OutputMark>,
    /// The step's change to its workflow's state, committed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_write: Option<StateWrite>,
}

fn yes() -> bool {
    true
}

/// The part of a list step's output file that its last commit covers: a
/// resume keeps those bytes if they are still what was written (the file is
/// not synced, so after a power loss they may not be) and appends after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputMark {
    /// Bytes written.
    pub bytes: u64,
    /// CRC-32 of those bytes.
    pub crc32: u32,
}

/// The phase of a sync step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncPhase {
    /// Reading the source, mapped, into sorted runs (and the target with
    /// it: both sides are listed at once; a side whose cursor is gone after
    /// its first page is read to its end).
    #[default]
    Source,
    /// The source is read; reading the rest of the target.
    Target,
    /// Merging both sides by key and writing the differences.
    Merge,
    /// Finished.
    Done,
}

/// How far a sync got. Each side's cursor is committed with the sorted run
/// that holds the pages before it; the merge commits the last key it
/// finished with the counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncProgress {
    /// The phase.
    pub phase: SyncPhase,
    /// Cursor of the source listing after the last page in a run.
    pub source_cursor: Option<String>,
    /// Source pages in runs.
    pub source_pages: u32,
    /// Mapped source records in runs.
    pub source_records: u64,
    /// Sorted runs of the source.
    pub source_runs: u32,
    /// Cursor of the target listing after the last page in a run.
    pub target_cursor: Option<String>,
    /// Target pages in runs.
    pub target_pages: u32,
    /// Target records in runs.
    pub target_records: u64,
    /// Sorted runs of the target.
    pub target_runs: u32,
    /// The last key the merge finished (writes done and counted).
    pub merged_through: Option<String>,
}

impl StepCounts {
    /// Adds one op's action. Every action is named here, so a new one
    /// cannot go uncounted by accident.
    pub fn add(&mut self, action: ItemAction) {
        match action {
            ItemAction::Created => self.created += 1,
            ItemAction::Updated => self.updated += 1,
            ItemAction::Unchanged => self.unchanged += 1,
            ItemAction::Removed => self.removed += 1,
            ItemAction::AlreadyAbsent => self.absent += 1,
            ItemAction::Found => self.read += 1,
            // A get that found nothing read nothing; a dry run's planned
            // writes are counted by its plan, not here.
            ItemAction::Absent
            | ItemAction::Create
            | ItemAction::Update
            | ItemAction::Upsert
            | ItemAction::Remove => {}
        }
    }
}

/// What one get, upsert or remove did, or (in a dry run) would do. Stored
/// in item records as the kebab-case word (`created`, `already-absent`); a
/// word not listed here does not load (the record is reported corrupt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ItemAction {
    /// An upsert created the record.
    Created,
    /// An upsert changed the record.
    Updated,
    /// The record was already as wanted (an upsert, or a dry run's plan).
    Unchanged,
    /// A remove deleted the record.
    Removed,
    /// A remove found nothing to delete (or, in a dry run, would).
    AlreadyAbsent,
    /// A get found the record.
    Found,
    /// A get found nothing.
    Absent,
    /// A dry run would create the record.
    Create,
    /// A dry run would update the record.
    Update,
    /// A dry run would upsert the record, the connector telling create from
    /// update.
    Upsert,
    /// A dry run would remove the record.
    Remove,
}

impl ItemAction {
    /// The word stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemAction::Created => "created",
            ItemAction::Updated => "updated",
            ItemAction::Unchanged => "unchanged",
            ItemAction::Removed => "removed",
            ItemAction::AlreadyAbsent => "already-absent",
            ItemAction::Found => "found",
            ItemAction::Absent => "absent",
            ItemAction::Create => "create",
            ItemAction::Update => "update",
            ItemAction::Upsert => "upsert",
            ItemAction::Remove => "remove",
        }
    }
}

impl std::fmt::Display for ItemAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The end of one for-each item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// `succeeded`, `failed` or `skipped`.
    #[serde(rename = "s")]
    pub status: Status,
    /// What the op did, or a dry run's plan.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ItemAction>,
    /// The record's id, when the op returned one.
    #[serde(rename = "id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Why it failed.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StepState {
    /// A step that has not started.
    pub fn pending(id: &str, index: u32) -> Self {
        StepState {
            id: id.to_owned(),
            index,
            status: Status::Pending,
            attempts: 0,
            started_ms: None,
            finished_ms: None,
            counts: StepCounts::default(),
            pages: 0,
            cursor: None,
            output: None,
            error: None,
            items: 0,
            sync: None,
            plan: None,
            records_kept: true,
            output_file: None,
            state_write: None,
        }
    }
}

/// A webhook delivery, remembered with the run it starts (in one
/// transaction), so that a replay is refused and a refused delivery (a
/// 422, a 503, a 500) can be sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The workflow whose webhook received it.
    pub workflow: String,
    /// The signature that proved it, hex.
    pub signature: String,
    /// The timestamp the sender signed (Unix seconds), when the scheme
    /// signs one; without it a replay is possible at any time, so the
    /// delivery is remembered for good.
    pub signed_at: Option<i64>,
    /// The event's id, when the workflow names one, and until when (Unix
    /// ms) it is remembered: another delivery of that id starts nothing.
    pub event: Option<(String, u64)>,
}

impl Delivery {
    fn key(&self) -> Vec<u8> {
        format!("{}/{}", self.workflow, self.signature).into_bytes()
    }

    /// The key and value of the event id: `e:` cannot start a signature,
    /// which is hex; the value is `E` and the last Unix ms it is kept.
    fn event_entry(&self) -> Option<(Vec<u8>, Vec<u8>, String)> {
        let (id, until) = self.event.as_ref()?;
        let key = format!("{}/e:{id}", self.workflow).into_bytes();
        let mut value = b"E".to_vec();
        value.extend_from_slice(&until.to_be_bytes());
        Some((key, value, id.clone()))
    }

    /// `N` (no signed timestamp: kept for good) or `T` and the signed Unix
    /// seconds. Stores before this kept 8 bytes: the first-seen Unix ms.
    fn value(&self) -> Vec<u8> {
        match self.signed_at {
            None => b"N".to_vec(),
            Some(at) => {
                let mut value = b"T".to_vec();
                value.extend_from_slice(&at.to_be_bytes());
                value
            }
        }
    }
}

/// How long past its window a remembered delivery is kept: clocks differ,
/// and a drop a little late costs a few bytes.
const DELIVERY_SLACK_SECS: i64 = 300;

/// Whether a remembered delivery can go: a replay of it is refused as stale
/// anyway. `value` as [`Delivery::value`] wrote it, or as older stores did.
fn delivery_expired(value: &[u8], tolerance: Duration, now_ms: u64) -> bool {
    let now = (now_ms / 1000) as i64;
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    match value {
        // An event id, kept until its window ends.
        [b'E', until @ ..] => {
            <[u8; 8]>::try_from(until).is_ok_and(|until| now_ms > u64::from_be_bytes(until))
        }
        // Signed at `at`: accepted again only while |now - at| <= tolerance.
        [b'T', at @ ..] => <[u8; 8]>::try_from(at).is_ok_and(|at| {
            now > i64::from_be_bytes(at)
                .saturating_add(tolerance)
                .saturating_add(DELIVERY_SLACK_SECS)
        }),
        // First seen at `seen` (older stores; the workflow's scheme signs a
        // timestamp, or the caller would not ask): it was signed within the
        // tolerance of `seen`.
        seen if seen.len() == 8 => <[u8; 8]>::try_from(seen).is_ok_and(|seen| {
            let seen = i64::try_from(u64::from_be_bytes(seen) / 1000).unwrap_or(i64::MAX);
            now > seen
                .saturating_add(tolerance.saturating_mul(2))
                .saturating_add(DELIVERY_SLACK_SECS)
        }),
        // No signed timestamp (`N`), or unreadable: kept.
        _ => false,
    }
}

/// The sled backend: one database in a directory, its owner thread, and
/// the page and scratch files beside it.
#[derive(Clone)]
pub(crate) struct SledStore {
    owner: Arc<Owner>,
    dir: PathBuf,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// The durable store of runs, on one of two backends: sled in a directory
/// (the default; one process at a time) or PostgreSQL (many processes,
/// issue 16; see [`postgres`] for what it holds so far). Cheap to clone:
/// clones share one database (one sled owner, or one connection pool).
#[derive(Clone)]
pub struct RunStore {
    backend: Backend,
}

/// Which database a [`RunStore`] is on. A match per call is all the
/// indirection the sled path pays.
#[derive(Clone)]
enum Backend {
    Sled(SledStore),
    Postgres(postgres::PgStore),
}

impl std::fmt::Debug for RunStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Sled(sled) => sled.fmt(f),
            Backend::Postgres(pg) => pg.fmt(f),
        }
    }
}

/// Calls the same method on whichever backend the store is on.
macro_rules! dispatch {
    ($store:expr, $backend:ident => $call:expr) => {
        match &$store.backend {
            Backend::Sled($backend) => $call,
            Backend::Postgres($backend) => $call,
        }
    };
}

/// Where a run store lives, as `--store` / `WEFT_STORE` name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `sled:DIR` (or a bare directory): the embedded store.
    Sled(PathBuf),
    /// `postgres://…` or `postgresql://…`: a PostgreSQL database.
    Postgres(String),
}

impl std::fmt::Display for StoreLocation {
    /// The location to show: a directory, or the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sled(dir) => write!(f, "{}", dir.display()),
            StoreLocation::Postgres(url) => f.write_str(&postgres::redact(url)),
        }
    }
}

impl StoreLocation {
    /// Parses `sled:DIR`, `postgres://…`/`postgresql://…`, or a bare
    /// directory (a path is a sled store, as `--state-dir` always was).
    pub fn parse(text: &str) -> Result<StoreLocation> {
        let text = text.trim();
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(text.to_owned()));
        }
        let dir = text.strip_prefix("sled:").unwrap_or(text);
        if dir.is_empty() || dir.contains("://") {
            return Err(StoreError::Location {
                given: postgres::redact(text),
                reason: "a store is `sled:DIR` or `postgres://USER@HOST:PORT/DATABASE`".into(),
            });
        }
        Ok(StoreLocation::Sled(PathBuf::from(dir)))
    }
}

impl RunStore {
    /// Opens (or creates) the sled store in `dir` and starts its owner and
    /// flusher threads. One process at a time: a second gets
    /// [`StoreError::Locked`].
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(RunStore { backend: Backend::Sled(SledStore::open(dir)?) })
    }

    /// Connects to the PostgreSQL store at `url` (see
    /// [`postgres`] for how the password is given) and checks
    /// its schema: one older than this weft's is refused until `weft store
    /// migrate`, one newer always.
    pub async fn open_postgres(url: &str) -> Result<Self> {
        Ok(RunStore { backend: Backend::Postgres(postgres::PgStore::open(url).await?) })
    }

    /// Opens the store at `location`, on its backend.
    pub async fn open_location(location: &StoreLocation) -> Result<Self> {
        match location {
            StoreLocation::Sled(dir) => RunStore::open(dir),
            StoreLocation::Postgres(url) => RunStore::open_postgres(url).await,
        }
    }

    /// The sled directory, for what lives beside a sled store (a server's
    /// address file); `None` on PostgreSQL.
    pub fn sled_dir(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sled(sled) => Some(&sled.dir),
            Backend::Postgres(_) => None,
        }
    }

    /// A new, unique, time-sortable run id.
    pub async fn new_run_id(&self) -> Result<String> {
        dispatch!(self, b => b.new_run_id().await)
    }

    /// Records a new run, durably. With a webhook `delivery`, the delivery
    /// is remembered in the same transaction, and a delivery remembered
    /// before is refused with [`StoreError::Replay`] (and no run): a
    /// delivery is remembered exactly when its run exists.
    pub async fn create_run(
        &self,
        run: &RunRecord,
        step_ids: &[String],
        delivery: Option<&Delivery>,
    ) -> Result<()> {
        self.create_run_by(run, step_ids, delivery, None).await
    }

    /// [`RunStore::create_run`], with who started the run recorded as the
    /// first entry of its history in the same transaction (the trigger
    /// when no one is named).
    pub async fn create_run_by(
        &self,
        run: &RunRecord,
        step_ids: &[String],
        delivery: Option<&Delivery>,
        actor: Option<&str>,
    ) -> Result<()> {
        dispatch!(self, b => b.create_run_by(run, step_ids, delivery, actor).await)
    }

    /// [`RunStore::create_run_by`] for a cron firing scheduled at
    /// `scheduled_ms`: on PostgreSQL the firing is recorded with the run
    /// (one transaction, a primary key on workflow and time), so that of
    /// the workers whose schedulers fire at once one starts the run and the
    /// others get [`StoreError::AlreadyFired`]. sled has one scheduler.
    pub async fn create_fired_run(
        &self,
        run: &RunRecord,
        step_ids: &[String],
        actor: Option<&str>,
        scheduled_ms: u64,
    ) -> Result<()> {
        match &self.backend {
            Backend::Sled(sled) => sled.create_run_by(run, step_ids, None, actor).await,
            Backend::Postgres(pg) => {
                pg.create_run_fired(run, step_ids, None, actor, Some(scheduled_ms)).await
            }
        }
    }

    /// Whether a run of `workflow` is unfinished (running, or pending),
    /// whichever worker has it.
    pub async fn workflow_unfinished(&self, workflow: &str) -> Result<bool> {
        for status in [Status::Running, Status::Pending] {
            let page = self
                .query_runs(RunQuery {
                    workflow: Some(workflow.to_owned()),
                    status: Some(status),
                    limit: 1,
                    ..RunQuery::default()
                })
                .await?;
            if !page.rows.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Replaces a run record, durably, and its row and index entries with
    /// it.
    pub async fn commit_run(&self, run: &RunRecord) -> Result<()> {
        dispatch!(self, b => b.commit_run(run).await)
    }

    /// Ends a run that cannot go on (its task panicked): `failed`, with
    /// `message`, durably. A run already finished is left as it is.
    pub async fn fail_run(&self, id: &str, message: &str) -> Result<RunRecord> {
        dispatch!(self, b => b.fail_run(id, message).await)
    }

    /// Replaces a step's state, durably, before the next step starts.
    pub async fn commit_step(&self, run: &str, step: &StepState) -> Result<()> {
        dispatch!(self, b => b.commit_step(run, step).await)
    }

    /// Opens a list step's page log to append pages to, positioned after
    /// the last committed page: bytes a crash left after it are dropped.
    /// See the sled backend for where pages go; PostgreSQL keeps them as
    /// rows, committed with the step's state.
    pub async fn page_log(&self, run: &str, step: &StepState) -> Result<PageLog> {
        dispatch!(self, b => b.page_log(run, step).await)
    }

    /// Starts committing the pages appended to `log` since its last commit
    /// (or, with no log, only the step's state) together with the step's
    /// state (its cursor and counts after the last of them), in one
    /// transaction after the page file is synced: a restart resumes after
    /// the last committed page, and a page appended but not committed is
    /// read again. It goes on in the background, so that the caller can
    /// read the next pages meanwhile. Start the next commit only after this
    /// one is waited for: commits of a step land in order.
    pub fn start_commit(&self, run: &str, step: &StepState, log: Option<&mut PageLog>) -> Commit {
        dispatch!(self, b => b.start_commit(run, step, log))
    }

    /// Every finished item of a for-each step, group by group (a group is
    /// in completion order, not item order), read from the store a few
    /// groups at a time.
    pub fn items(&self, run: &str, index: u32) -> ItemScan {
        dispatch!(self, b => b.items(run, index))
    }

    /// Records a group of finished items and the step's state, durably.
    /// The for-each calls it every few milliseconds rather than per item.
    /// Counts in the step state are a cache; a resumed step recounts from
    /// the items.
    pub async fn commit_items(
        &self,
        run: &str,
        step: &StepState,
        items: &[(u64, ItemRecord)],
    ) -> Result<()> {
        dispatch!(self, b => b.commit_items(run, step, items).await)
    }

    /// A directory for a step's scratch files (a sync's sorted runs),
    /// created if need be, holding every sorted run committed so far. On
    /// sled it is inside the store's directory; on PostgreSQL it is a
    /// temporary directory of this process, filled from the database with
    /// the runs it lacks (another worker may have written them).
    pub async fn scratch_dir(&self, run: &str, index: u32) -> Result<PathBuf> {
        match &self.backend {
            Backend::Sled(sled) => sled.scratch_dir(run, index),
            Backend::Postgres(pg) => pg.scratch_dir(run, index).await,
        }
    }

    /// Commits a step's state after a sorted run was written as `file` (in
    /// its [`RunStore::scratch_dir`], durably), or with no new file. On
    /// PostgreSQL the file's bytes are stored in the same transaction, so a
    /// resume on any worker finds every run the state counts.
    pub async fn commit_sorted_run(
        &self,
        run: &str,
        step: &StepState,
        file: Option<&Path>,
    ) -> Result<()> {
        match &self.backend {
            Backend::Sled(sled) => sled.commit_step(run, step).await,
            Backend::Postgres(pg) => pg.commit_sorted_run(run, step, file).await,
        }
    }

    /// Removes a step's scratch files (and, on PostgreSQL, its stored
    /// sorted runs).
    pub async fn remove_scratch(&self, run: &str, index: u32) -> Result<()> {
        match &self.backend {
            Backend::Sled(sled) => sled.remove_scratch(run, index),
            Backend::Postgres(pg) => pg.remove_scratch(run, index).await,
        }
    }

    /// Forgets deliveries of `workflow`, a webhook whose scheme signs a
    /// timestamp, that a replay can no longer pass: signed more than
    /// `tolerance` (and some slack) ago, so a replay is refused as stale.
    /// Deliveries without a signed timestamp are kept for good: a replay of
    /// one is possible at any time.
    pub async fn forget_deliveries(
        &self,
        workflow: &str,
        tolerance: Duration,
        now_ms: u64,
    ) -> Result<usize> {
        dispatch!(self, b => b.forget_deliveries(workflow, tolerance, now_ms).await)
    }

    /// Runs that have not finished: interrupted ones, to resume. Found
    /// through the status index, so a store of many finished runs costs
    /// nothing here.
    pub async fn unfinished_runs(&self) -> Result<Vec<RunRecord>> {
        let mut unfinished = Vec::new();
        for status in [Status::Running, Status::Pending] {
            let mut before = None;
            loop {
                let page = self
                    .query_runs(RunQuery {
                        status: Some(status),
                        before,
                        limit: MAX_PAGE,
                        ..RunQuery::default()
                    })
                    .await?;
                for row in &page.rows {
                    unfinished.push(self.run(&row.id).await?);
                }
                match page.next {
                    Some(next) => before = Some(next),
                    None => break,
                }
            }
        }
        unfinished.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(unfinished)
    }

    /// Whether several processes may share the store (PostgreSQL): runs
    /// then go through the queue and its leases.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// How long a run's lease lasts without a heartbeat (PostgreSQL;
    /// `WEFT_LEASE_SECS`, default 20 s); `None` on sled, which one process
    /// holds whole.
    pub fn lease(&self) -> Option<Duration> {
        match &self.backend {
            Backend::Sled(_) => None,
            Backend::Postgres(pg) => Some(pg.lease()),
        }
    }

    /// The store with leases of `lease` (PostgreSQL; sled ignores it), as
    /// a worker of a new name: call it before the store takes a lease.
    pub fn with_lease(self, lease: Duration) -> Self {
        match self.backend {
            Backend::Sled(_) => self,
            Backend::Postgres(pg) => RunStore { backend: Backend::Postgres(pg.with_lease(lease)) },
        }
    }

    /// The fleet's shared rate limits, on a store many workers share
    /// (PostgreSQL); `None` on sled, where one process paces alone.
    pub fn shared_limits(&self) -> Option<std::sync::Arc<dyn crate::limiter::SharedLimits>> {
        match &self.backend {
            Backend::Sled(_) => None,
            Backend::Postgres(pg) => Some(std::sync::Arc::new(pg.shared_limits())),
        }
    }

    /// This process's name as a worker (PostgreSQL), as leases show it.
    pub fn worker(&self) -> Option<&str> {
        match &self.backend {
            Backend::Sled(_) => None,
            Backend::Postgres(pg) => Some(pg.worker()),
        }
    }

    /// Claims a run for this process to resume. On PostgreSQL the run's
    /// lease is taken (waiting up to two leases for a dead worker's to
    /// pass; [`StoreError::Leased`] when its worker still renews it), its
    /// fence moves on, and the heartbeat renews it from now; every commit
    /// of the run checks the fence. On sled, one process holds the whole
    /// store: nothing to claim.
    pub async fn claim_run(&self, id: &str) -> Result<()> {
        match &self.backend {
            Backend::Sled(_) => Ok(()),
            Backend::Postgres(pg) => pg.claim_run(id).await,
        }
    }

    /// Claims a run as [`RunStore::claim_run`] does, but without waiting:
    /// [`StoreError::Leased`] at once while another worker's lease on it
    /// runs (for an API call, which answers now).
    pub async fn claim_run_now(&self, id: &str) -> Result<()> {
        match &self.backend {
            Backend::Sled(_) => Ok(()),
            Backend::Postgres(pg) => pg.claim_run_within(id, Duration::ZERO).await,
        }
    }

    /// The worker (another process on a shared store) whose lease on the
    /// run has not passed: the one running it now. Always `None` on sled,
    /// which one process holds.
    pub async fn lease_holder(&self, id: &str) -> Result<Option<String>> {
        match &self.backend {
            Backend::Sled(_) => Ok(None),
            Backend::Postgres(pg) => pg.lease_holder(id).await,
        }
    }

    /// Claims up to `limit` runs whose lease passed (their worker died or
    /// stopped), for this process to resume; PostgreSQL only (sled: none).
    pub async fn claim_runs(&self, limit: usize) -> Result<Vec<String>> {
        match &self.backend {
            Backend::Sled(_) => Ok(Vec::new()),
            Backend::Postgres(pg) => pg.claim_runs(limit).await,
        }
    }

    /// Stops renewing this process's lease on `run`, whose task ended
    /// without finishing it: the lease runs out (or is given up with the
    /// others at shutdown), and then any worker, this one too, may claim
    /// it again: a retry a lease later, not a loop. sled: nothing to do.
    pub async fn release_run(&self, run: &str) -> Result<()> {
        match &self.backend {
            Backend::Sled(_) => Ok(()),
            Backend::Postgres(pg) => pg.release_run(run).await,
        }
    }

    /// Cancels `token` if `run` leaves the queue while this process runs
    /// it (cancelled by another process: `weft runs cancel`, another
    /// worker's API): PostgreSQL's lease heartbeat notices within a
    /// quarter lease, so the run stops then, a wait for a vendor's
    /// `Retry-After` included, rather than at its next commit. sled:
    /// nothing to watch (one process holds the store).
    pub fn watch_cancel(&self, run: &str, token: &tokio_util::sync::CancellationToken) {
        if let Backend::Postgres(pg) = &self.backend {
            pg.watch_cancel(run, token);
        }
    }

    /// Stops watching `run` (see [`RunStore::watch_cancel`]).
    pub fn unwatch_cancel(&self, run: &str) {
        if let Backend::Postgres(pg) = &self.backend {
            pg.unwatch_cancel(run);
        }
    }

    /// Gives up this process's lease on `run` at once: the run stopped on
    /// request, unfinished, and any worker may resume it now. sled:
    /// nothing to do.
    pub async fn give_up_run(&self, run: &str) -> Result<()> {
        match &self.backend {
            Backend::Sled(_) => Ok(()),
            Backend::Postgres(pg) => pg.give_up_run(run).await,
        }
    }

    /// Gives up this process's leases, so that other workers resume its
    /// unfinished runs at once (a server stopping cleanly).
    pub async fn release_leases(&self) -> Result<()> {
        match &self.backend {
            Backend::Sled(_) => Ok(()),
            Backend::Postgres(pg) => pg.release_leases().await,
        }
    }

    /// One run.
    pub async fn run(&self, id: &str) -> Result<RunRecord> {
        dispatch!(self, b => b.run(id).await)
    }

    /// Every run, oldest first.
    pub async fn runs(&self) -> Result<Vec<RunRecord>> {
        dispatch!(self, b => b.runs().await)
    }

    /// The newest runs that `wanted` picks, newest first, at most `limit`:
    /// the store reads no further back than it must.
    pub async fn recent_runs(
        &self,
        limit: usize,
        wanted: impl Fn(&RunRecord) -> bool + Send + 'static,
    ) -> Result<Vec<RunRecord>> {
        dispatch!(self, b => b.recent_runs(limit, wanted).await)
    }

    /// The steps of a run, in workflow order.
    pub async fn steps(&self, run: &str) -> Result<Vec<StepState>> {
        dispatch!(self, b => b.steps(run).await)
    }

    /// The committed pages of a list step, each a JSON array of records,
    /// each checked against its CRC as it is read.
    pub async fn pages(&self, run: &str, index: u32) -> Result<PageReader> {
        dispatch!(self, b => b.pages(run, index).await)
    }

    /// A page of runs, newest first, through the indexes (see
    /// [`index`](self)): its cost follows the page, not the store.
    pub async fn query_runs(&self, query: RunQuery) -> Result<RunPage> {
        dispatch!(self, b => b.query_runs(query).await)
    }

    /// The row of one run.
    pub async fn run_row(&self, id: &str) -> Result<RunRow> {
        dispatch!(self, b => b.run_row(id).await)
    }

    /// Adds an entry to a run's history, durably.
    pub async fn record_action(&self, run: &str, entry: &HistoryEntry) -> Result<()> {
        dispatch!(self, b => b.record_action(run, entry).await)
    }

    /// A run's history, oldest first.
    pub async fn history(&self, run: &str) -> Result<Vec<HistoryEntry>> {
        dispatch!(self, b => b.history(run).await)
    }

    /// Adds what an attempt of a run sent per connection to what earlier
    /// attempts sent, durably.
    pub async fn add_connection_totals(
        &self,
        run: &str,
        totals: &std::collections::BTreeMap<String, ConnectionTotals>,
    ) -> Result<()> {
        dispatch!(self, b => b.add_connection_totals(run, totals).await)
    }

    /// What a run sent per connection, over its attempts so far (empty
    /// until an attempt ended).
    pub async fn connection_totals(
        &self,
        run: &str,
    ) -> Result<std::collections::BTreeMap<String, ConnectionTotals>> {
        dispatch!(self, b => b.connection_totals(run).await)
    }

    /// The state of `workflow` (empty, version 0, before its first change).
    pub async fn workflow_state(&self, workflow: &str) -> Result<WorkflowState> {
        dispatch!(self, b => b.workflow_state(workflow).await)
    }

    /// Changes `workflow`'s state by hand (`weft state set|reset`): `set`
    /// names set, or reset to their defaults (`None`); `reset_all` drops
    /// every value first. A run that read the state before is refused its
    /// next change ([`StoreError::StateConflict`]).
    pub async fn edit_workflow_state(
        &self,
        workflow: &str,
        set: &std::collections::BTreeMap<String, Option<serde_json::Value>>,
        reset_all: bool,
    ) -> Result<WorkflowState> {
        dispatch!(self, b => b.edit_workflow_state(workflow, set, reset_all).await)
    }

    /// Records a new token. Refused when an active token has its name.
    pub async fn create_token(&self, token: &TokenRecord) -> Result<(), TokenError> {
        if !valid_token_name(&token.name) {
            return Err(TokenError::BadName(token.name.clone()));
        }
        dispatch!(self, b => b.create_token(token).await)
    }

    /// Every token, active and revoked, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        dispatch!(self, b => b.tokens().await)
    }

    /// Whether any token is active.
    pub async fn has_active_tokens(&self) -> Result<bool> {
        dispatch!(self, b => b.has_active_tokens().await)
    }

    /// Bytes the store takes: its directory on disk (sled, page files and
    /// scratch included), or its PostgreSQL database.
    pub async fn size_bytes(&self) -> Result<u64> {
        dispatch!(self, b => b.size_bytes().await)
    }

    /// The token with this id, if any (revoked ones too).
    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        dispatch!(self, b => b.token(id).await)
    }

    /// Revokes the active token with this name (or id), and ends its
    /// sessions; returns it.
    pub async fn revoke_token(&self, name_or_id: &str) -> Result<TokenRecord, TokenError> {
        dispatch!(self, b => b.revoke_token(name_or_id).await)
    }

    /// Records a session under the hash of its cookie.
    pub async fn create_session(&self, cookie_sha256: &str, session: &SessionRecord) -> Result<()> {
        dispatch!(self, b => b.create_session(cookie_sha256, session).await)
    }

    /// The session under this cookie hash and its token, when both are
    /// live: not expired, the token not revoked. One trip to the store.
    pub async fn live_session(
        &self,
        cookie_sha256: &str,
        now_ms: u64,
    ) -> Result<Option<(SessionRecord, TokenRecord)>> {
        dispatch!(self, b => b.live_session(cookie_sha256, now_ms).await)
    }

    /// Ends a session.
    pub async fn end_session(&self, cookie_sha256: &str) -> Result<()> {
        dispatch!(self, b => b.end_session(cookie_sha256).await)
    }

    /// Drops sessions that expired before `now_ms`; returns how many.
    pub async fn forget_expired_sessions(&self, now_ms: u64) -> Result<usize> {
        dispatch!(self, b => b.forget_expired_sessions(now_ms).await)
    }

    #[cfg(test)]
    async fn with_trees<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut owner::Trees) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match &self.backend {
            Backend::Sled(sled) => sled.with_trees(f).await,
            Backend::Postgres(_) => Err(StoreError::Unsupported { what: "sled trees" }),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A step's change to its workflow's state, as a commit applies it: none
/// for a dry run's planned change.
struct StateChange {
    run: String,
    step: String,
    write: StateWrite,
}

fn state_change(run: &str, step: &StepState) -> Option<StateChange> {
    step.state_write.as_ref().filter(|w| !w.planned && !w.values.is_empty()).map(|write| {
        StateChange { run: run.to_owned(), step: step.id.clone(), write: write.clone() }
    })
}

fn abort(e: StoreError) -> sled::transaction::ConflictableTransactionError<StoreError> {
    sled::transaction::ConflictableTransactionError::Abort(e)
}

/// Applies a step's change to its workflow's state inside a commit's
/// transaction, or aborts it with the conflict.
fn apply_state(
    tree: &sled::transaction::TransactionalTree,
    change: &Option<StateChange>,
) -> std::result::Result<(), sled::transaction::ConflictableTransactionError<StoreError>> {
    let Some(change) = change else { return Ok(()) };
    let key = state::key(&change.write.workflow);
    let current = match tree.get(&key)? {
        Some(bytes) => decode(&key, &bytes).map_err(abort)?,
        None => WorkflowState::default(),
    };
    if let Some(next) = current.after(&change.run, &change.step, &change.write).map_err(abort)? {
        tree.insert(key.as_slice(), encode(&next).map_err(abort)?)?;
    }
    Ok(())
}

fn step_key(run: &str, index: u32) -> Vec<u8> {
    format!("{run}/{index:05}").into_bytes()
}

fn page_key(run: &str, index: u32, page: u32) -> Vec<u8> {
    format!("{run}/{index:05}/{page:09}").into_bytes()
}

fn item_group_key(run: &str, index: u32, group: u64) -> Vec<u8> {
    format!("{run}/{index:05}/{group:016x}").into_bytes()
}

/// The prefix of every step, page and item key of a run.
fn step_prefix_of_run(run: &str) -> Vec<u8> {
    format!("{run}/").into_bytes()
}

/// The prefix of a run's history keys.
fn history_prefix(run: &str) -> Vec<u8> {
    format!("{run}/").into_bytes()
}

fn step_prefix(run: &str, index: u32) -> Vec<u8> {
    format!("{run}/{index:05}/").into_bytes()
}

/// Bytes in the files under `dir`, subdirectories included (symbolic
/// links not followed).
fn directory_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                total = total.saturating_add(entry.metadata()?.len());
            }
        }
    }
    Ok(total)
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// The stored form of `value`. Our records serialise to JSON without
/// fail today; should one ever not, the write fails rather than storing an
/// empty value that would read back as corrupt (or, for a step, lose it).
fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Encode {
        what: std::any::type_name::<T>().to_owned(),
        reason: e.to_string(),
    })
}

/// Entries of `tree` under `prefix` after `after` (all of them from the
/// start when `None`), at most `limit`.
fn scan_from(
    tree: &sled::Tree,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<(sled::IVec, sled::IVec)>> {
    let mut out = Vec::new();
    let entries = match after {
        Some(after) => {
            tree.range::<&[u8], _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
        }
        None => tree.range::<&[u8], _>(prefix..),
    };
    for entry in entries {
        let (key, value) = entry?;
        if !key.starts_with(prefix) || out.len() >= limit {
            break;
        }
        out.push((key, value));
    }
    Ok(out)
}

impl SledStore {
    /// Bytes in the store's directory, walked on a blocking thread.
    pub(crate) async fn size_bytes(&self) -> Result<u64> {
        let dir = self.dir.clone();
        let path = dir.display().to_string();
        let measure = |reason: String| StoreError::Measure { path: path.clone(), reason };
        tokio::task::spawn_blocking(move || directory_size(&dir))
            .await
            .map_err(|e| measure(e.to_string()))?
            .map_err(|e| measure(e.to_string()))
    }

    /// Opens (or creates) the store in `dir` and starts its owner and
    /// flusher threads. One process at a time: a second gets
    /// [`StoreError::Locked`].
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::LowSpace)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock") =>
                {
                    StoreError::Locked { path: dir.display().to_string() }
                }
                other => StoreError::Sled(other),
            })?;
        match db.get(SCHEMA_KEY)? {
            None => {
                db.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            Some(bytes) => {
                let found =
                    <[u8; 4]>::try_from(bytes.as_ref()).map(u32::from_be_bytes).unwrap_or(0);
                // Versions 1 and 2 differ only by fields that version 3
                // reads with defaults and by the run rows and indexes, which
                // are built from the runs once.
                if found == 1 || found == 2 {
                    let indexed = index::rebuild(&db)?;
                    db.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                    db.flush()?;
                    tracing::info!(runs = indexed, store = %dir.display(), "run store upgraded to schema version {SCHEMA_VERSION}: runs indexed");
                } else if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema { path: dir.display().to_string(), found });
                }
            }
        }
        Ok(SledStore { owner: Arc::new(Owner::start(db)?), dir: dir.to_path_buf() })
    }

    /// A new, unique, time-sortable run id.
    pub async fn new_run_id(&self) -> Result<String> {
        // sled's id generator is unique across restarts; the time prefix sorts.
        let seq = self.owner.call(|t| Ok(t.db.generate_id()?)).await?;
        Ok(format!("{:011x}-{:05x}", now_ms(), seq & 0xf_ffff))
    }

    /// [`RunStore::create_run`], with who started the run recorded as the
    /// first entry of its history in the same transaction (the trigger
    /// when no one is named).
    pub async fn create_run_by(
        &self,
        run: &RunRecord,
        step_ids: &[String],
        delivery: Option<&Delivery>,
        actor: Option<&str>,
    ) -> Result<()> {
        let steps: Vec<(Vec<u8>, Vec<u8>)> = step_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                Ok((step_key(&run.id, i as u32), encode(&StepState::pending(id, i as u32))?))
            })
            .collect::<Result<_>>()?;
        let (run_key, run_value) = (run.id.clone().into_bytes(), encode(run)?);
        let delivery = delivery.map(|d| (d.key(), d.value(), d.workflow.clone(), d.event_entry()));
        let actor = actor.map(str::to_owned).unwrap_or_else(|| run.trigger.as_str().to_owned());
        let row = RunRow::of(run, Some(actor.clone()));
        let detail = match (run.dry_run, run.trigger.as_str()) {
            (true, trigger) => Some(format!("dry run, trigger {trigger}")),
            (false, trigger) => Some(format!("trigger {trigger}")),
        };
        let started = encode(&HistoryEntry {
            at_ms: run.created_ms,
            actor,
            action: "started".into(),
            detail,
        })?;
        self.owner
            .write(move |t| {
                let history_key = index::first_history_key(&row.id, t.db.generate_id()?);
                (&t.runs, &t.steps, &t.deliveries, &t.rows, &t.index, &t.history)
                    .transaction(|(runs, tx_steps, deliveries, rows, runs_index, history)| {
                        if let Some((key, value, workflow, event)) = &delivery {
                            if deliveries.get(key.as_slice())?.is_some() {
                                return sled::transaction::abort(StoreError::Replay {
                                    workflow: workflow.clone(),
                                });
                            }
                            if let Some((event_key, event_value, id)) = event {
                                if deliveries.get(event_key.as_slice())?.is_some() {
                                    return sled::transaction::abort(StoreError::DuplicateEvent {
                                        workflow: workflow.clone(),
                                        event: id.clone(),
                                    });
                                }
                                deliveries.insert(event_key.as_slice(), event_value.as_slice())?;
                            }
                            deliveries.insert(key.as_slice(), value.as_slice())?;
                        }
                        runs.insert(run_key.as_slice(), run_value.as_slice())?;
                        for (key, value) in &steps {
                            tx_steps.insert(key.as_slice(), value.as_slice())?;
                        }
                        let old = index::stored_row(rows, &row.id)?;
                        index::put_row(rows, runs_index, old.as_ref(), &row)?;
                        history.insert(history_key.as_slice(), started.as_slice())?;
                        Ok(())
                    })
                    .map_err(tx_error)
            })
            .await
    }

    /// Replaces a run record, durably, and its row and index entries with
    /// it.
    pub async fn commit_run(&self, run: &RunRecord) -> Result<()> {
        let run = run.clone();
        self.owner.write(move |t| put_run(t, &run)).await
    }

    /// Ends a run that cannot go on (its task panicked): `failed`, with
    /// `message`, durably. A run already finished is left as it is.
    pub async fn fail_run(&self, id: &str, message: &str) -> Result<RunRecord> {
        let (id, message) = (id.to_owned(), message.to_owned());
        self.owner
            .write(move |t| {
                let bytes =
                    t.runs.get(id.as_bytes())?.ok_or_else(|| StoreError::UnknownRun(id.clone()))?;
                let mut run: RunRecord = decode(id.as_bytes(), &bytes)?;
                if !run.status.is_finished() {
                    run.status = Status::Failed;
                    run.error = Some(message);
                    run.finished_ms = Some(now_ms());
                    put_run(t, &run)?;
                }
                Ok(run)
            })
            .await
    }

    /// Replaces a step's state, durably, before the next step starts.
    pub async fn commit_step(&self, run: &str, step: &StepState) -> Result<()> {
        let (key, value) = (step_key(run, step.index), encode(step)?);
        let change = state_change(run, step);
        self.owner
            .write(move |t| {
                if change.is_none() {
                    // The common case pays for no transaction.
                    t.steps.insert(key, value)?;
                    return Ok(());
                }
                (&t.steps, &t.workflow_state)
                    .transaction(|(steps, workflow_state)| {
                        apply_state(workflow_state, &change)?;
                        steps.insert(key.as_slice(), value.as_slice())?;
                        Ok(())
                    })
                    .map_err(tx_error)
            })
            .await
    }

    /// The state of `workflow`.
    pub async fn workflow_state(&self, workflow: &str) -> Result<WorkflowState> {
        let key = state::key(workflow);
        self.owner
            .call(move |t| match t.workflow_state.get(&key)? {
                Some(bytes) => decode(&key, &bytes),
                None => Ok(WorkflowState::default()),
            })
            .await
    }

    /// Every workflow's state, by workflow name (for `weft store copy`).
    pub(crate) async fn workflow_states(&self) -> Result<Vec<(String, WorkflowState)>> {
        self.owner
            .call(move |t| {
                t.workflow_state
                    .iter()
                    .map(|entry| {
                        let (key, bytes) = entry?;
                        let name = String::from_utf8_lossy(&key).into_owned();
                        Ok((name, decode(&key, &bytes)?))
                    })
                    .collect()
            })
            .await
    }

    /// Changes `workflow`'s state by hand.
    pub async fn edit_workflow_state(
        &self,
        workflow: &str,
        set: &std::collections::BTreeMap<String, Option<serde_json::Value>>,
        reset_all: bool,
    ) -> Result<WorkflowState> {
        let (key, set) = (state::key(workflow), set.clone());
        self.owner
            .write(move |t| {
                t.workflow_state
                    .transaction(|tree| {
                        let current = match tree.get(&key)? {
                            Some(bytes) => decode(&key, &bytes).map_err(abort)?,
                            None => WorkflowState::default(),
                        };
                        let next = current.edited(&set, reset_all);
                        tree.insert(key.as_slice(), encode(&next).map_err(abort)?)?;
                        Ok(next)
                    })
                    .map_err(tx_error)
            })
            .await
    }

    /// Opens a list step's page log to append pages to, positioned after
    /// the last committed page: bytes a crash left after it are dropped.
    ///
    /// Pages go to the step's page file (`pages/RUN/STEP.json` in the
    /// store's directory) as they are read, and are committed in groups by
    /// [`RunStore::start_commit`]. sled holds only a 21-byte pointer per
    /// page (offset, length, CRC-32): a 60 KB value in sled costs a copy of
    /// its whole leaf on every insert, which was most of an export's time
    /// in the store.
    pub async fn page_log(&self, run: &str, step: &StepState) -> Result<PageLog> {
        let path = self.page_file(run, step.index);
        let prefix = step_prefix(run, step.index);
        // The end of the last page that lives in the file (pages an older
        // store kept in sled itself do not).
        let offset = self
            .owner
            .call(move |t| {
                for entry in t.pages.scan_prefix(prefix).rev() {
                    let (key, value) = entry?;
                    if let Some(pointer) = PagePointer::decode(&value) {
                        // A damaged pointer must not wrap (or panic) into
                        // an offset the next page is written at.
                        return pointer.offset.checked_add(pointer.len).ok_or_else(|| {
                            StoreError::Corrupt {
                                key: String::from_utf8_lossy(&key).into_owned(),
                                reason: format!(
                                    "page pointer offset {} + length {} overflows",
                                    pointer.offset, pointer.len
                                ),
                            }
                        });
                    }
                }
                Ok(0)
            })
            .await?;
        let failed = |e: std::io::Error| StoreError::PageFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let parent = path.parent().unwrap_or(&path);
        std::fs::create_dir_all(parent).map_err(failed)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(failed)?;
        file.set_len(offset).map_err(failed)?;
        std::io::Seek::seek(&mut &file, std::io::SeekFrom::Start(offset)).map_err(failed)?;
        Ok(PageLog {
            next_page: step.pages,
            sink: PageSink::File {
                file: Arc::new(file),
                path,
                offset,
                pending: Vec::new(),
                dirs_synced: false,
            },
        })
    }

    /// Starts committing the pages appended to `log` since its last commit
    /// (or, with no log, only the step's state) together with the step's
    /// state (its cursor and counts after the last of them), in one
    /// transaction after the page file is synced: a restart resumes after
    /// the last committed page, and a page appended but not committed is
    /// read again. It goes on in the background, so that the caller can
    /// read the next pages meanwhile. Start the next commit only after this
    /// one is waited for: commits of a step land in order.
    pub fn start_commit(&self, run: &str, step: &StepState, log: Option<&mut PageLog>) -> Commit {
        let (keys, file, path, sync_dirs) = match log.map(|log| &mut log.sink) {
            Some(PageSink::File { file, path, pending, dirs_synced, .. }) => {
                let keys: Vec<(Vec<u8>, [u8; PagePointer::LEN])> = std::mem::take(pending)
                    .iter()
                    .map(|(page, pointer)| (page_key(run, step.index, *page), pointer.encode()))
                    .collect();
                let sync_dirs = !keys.is_empty() && !*dirs_synced;
                // Were this commit to fail, the step fails with it.
                *dirs_synced |= sync_dirs;
                (keys, Some(file.clone()), path.clone(), sync_dirs)
            }
            // A log is opened by the store it commits to: rows never reach sled.
            Some(PageSink::Rows { .. }) | None => {
                (Vec::new(), None, self.page_file(run, step.index), false)
            }
        };
        let (step_key, step_bytes) = (step_key(run, step.index), encode(step));
        let change = state_change(run, step);
        let shown = path.display().to_string();
        let store = self.clone();
        let task = tokio::spawn(async move {
            // Nothing is written, the page file's sync included, for a
            // state that cannot be stored.
            let step_bytes = step_bytes?;
            let file = file.filter(|_| !keys.is_empty());
            if file.is_some() || sync_dirs {
                // The page file's fsync is not sled's: a blocking thread
                // does it, so the owner thread goes on with other runs.
                let file_path = path.clone();
                tokio::task::spawn_blocking(move || -> Result<()> {
                    let path = file_path;
                    let failed = |e: std::io::Error| StoreError::PageFile {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    };
                    if let Some(file) = file {
                        file.sync_data().map_err(failed)?;
                    }
                    #[cfg(unix)]
                    if sync_dirs {
                        // The file's entry, its run's directory and `pages/`
                        // itself must be durable before sled points into it.
                        for dir in path.ancestors().skip(1).take(3) {
                            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(failed)?;
                        }
                    }
                    Ok(())
                })
                .await
                .map_err(|e| StoreError::PageFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })??;
            }
            store
                .owner
                .write(move |t| {
                    if change.is_none() {
                        return (&t.steps, &t.pages)
                            .transaction(|(steps, pages)| {
                                for (key, pointer) in &keys {
                                    pages.insert(key.as_slice(), &pointer[..])?;
                                }
                                steps.insert(step_key.as_slice(), step_bytes.as_slice())?;
                                Ok(())
                            })
                            .map_err(tx_error);
                    }
                    (&t.steps, &t.pages, &t.workflow_state)
                        .transaction(|(steps, pages, workflow_state)| {
                            apply_state(workflow_state, &change)?;
                            for (key, pointer) in &keys {
                                pages.insert(key.as_slice(), &pointer[..])?;
                            }
                            steps.insert(step_key.as_slice(), step_bytes.as_slice())?;
                            Ok(())
                        })
                        .map_err(tx_error)
                })
                .await
        });
        Commit { task, path: shown }
    }

    /// The file holding a list step's pages.
    fn page_file(&self, run: &str, index: u32) -> PathBuf {
        self.dir.join("pages").join(run).join(format!("{index:05}.json"))
    }

    /// Every finished item of a for-each step, group by group (a group is
    /// in completion order, not item order), read from the store a few
    /// groups at a time.
    pub fn items(&self, run: &str, index: u32) -> ItemScan {
        ItemScan {
            store: ItemSource::Sled(self.clone()),
            prefix: step_prefix(run, index),
            after: None,
            buffer: std::collections::VecDeque::new(),
            done: false,
        }
    }

    /// Records a group of finished items and the step's state, durably.
    /// The for-each calls it every few milliseconds rather than per item:
    /// one key and one flush cover the group (a key per item made sled
    /// clone a node per insert, most of the cost measured). Counts in the
    /// step state are a cache; a resumed step recounts from the items.
    pub async fn commit_items(
        &self,
        run: &str,
        step: &StepState,
        items: &[(u64, ItemRecord)],
    ) -> Result<()> {
        let change = state_change(run, step);
        let (run, index, group, step) =
            (run.to_owned(), step.index, encode(&items)?, encode(step)?);
        self.owner
            .write(move |t| {
                // sled's ids are unique across restarts, so a group never
                // overwrites one committed before a crash.
                let id = t.db.generate_id()?;
                let (group_key, step_key) =
                    (item_group_key(&run, index, id), step_key(&run, index));
                if change.is_none() {
                    t.items.insert(group_key, group)?;
                    t.steps.insert(step_key, step)?;
                    return Ok(());
                }
                (&t.items, &t.steps, &t.workflow_state)
                    .transaction(|(items, steps, workflow_state)| {
                        apply_state(workflow_state, &change)?;
                        items.insert(group_key.as_slice(), group.as_slice())?;
                        steps.insert(step_key.as_slice(), step.as_slice())?;
                        Ok(())
                    })
                    .map_err(tx_error)
            })
            .await
    }

    /// A directory for a step's scratch files (a sync's sorted runs),
    /// inside the store's directory, created if need be.
    pub fn scratch_dir(&self, run: &str, index: u32) -> Result<PathBuf> {
        let dir = self.dir.join("scratch").join(run).join(format!("{index:05}"));
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Scratch {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(dir)
    }

    /// Removes a step's scratch files.
    pub fn remove_scratch(&self, run: &str, index: u32) -> Result<()> {
        let dir = self.dir.join("scratch").join(run).join(format!("{index:05}"));
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Scratch { path: dir.display().to_string(), reason: e.to_string() })
            }
            _ => {
                // The run's directory goes when its last step's does.
                let _ = std::fs::remove_dir(self.dir.join("scratch").join(run));
                Ok(())
            }
        }
    }

    /// Forgets deliveries of `workflow`, a webhook whose scheme signs a
    /// timestamp, that a replay can no longer pass: signed more than
    /// `tolerance` (and some slack) ago, so a replay is refused as stale.
    /// Deliveries without a signed timestamp are kept for good: a replay of
    /// one is possible at any time. Works through the entries in chunks, so
    /// other store work is not held up behind it.
    pub async fn forget_deliveries(
        &self,
        workflow: &str,
        tolerance: Duration,
        now_ms: u64,
    ) -> Result<usize> {
        const CHUNK: usize = 4096;
        let prefix = format!("{workflow}/").into_bytes();
        let mut after: Option<Vec<u8>> = None;
        let mut dropped = 0;
        loop {
            let (prefix, from) = (prefix.clone(), after.take());
            let (gone, last) = self
                .owner
                .call(move |t| {
                    let entries = scan_from(&t.deliveries, &prefix, from.as_deref(), CHUNK)?;
                    let last = (entries.len() == CHUNK)
                        .then(|| entries.last().map(|(k, _)| k.to_vec()))
                        .flatten();
                    let mut batch = sled::Batch::default();
                    let mut gone = 0;
                    for (key, value) in entries {
                        if delivery_expired(&value, tolerance, now_ms) {
                            batch.remove(key);
                            gone += 1;
                        }
                    }
                    t.deliveries.apply_batch(batch)?;
                    Ok((gone, last))
                })
                .await?;
            dropped += gone;
            match last {
                Some(last) => after = Some(last),
                None => return Ok(dropped),
            }
        }
    }

    /// One run.
    pub async fn run(&self, id: &str) -> Result<RunRecord> {
        let key = id.to_owned();
        let bytes = self
            .owner
            .call(move |t| Ok(t.runs.get(key.as_bytes())?))
            .await?
            .ok_or_else(|| StoreError::UnknownRun(id.to_owned()))?;
        decode(id.as_bytes(), &bytes)
    }

    /// Every run, oldest first.
    pub async fn runs(&self) -> Result<Vec<RunRecord>> {
        let entries = self
            .owner
            .call(|t| {
                t.runs
                    .iter()
                    .map(|entry| entry.map_err(StoreError::from))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        entries.iter().map(|(key, value)| decode(key, value)).collect()
    }

    /// The newest runs that `wanted` picks, newest first, at most `limit`:
    /// the store reads no further back than it must.
    pub async fn recent_runs(
        &self,
        limit: usize,
        wanted: impl Fn(&RunRecord) -> bool + Send + 'static,
    ) -> Result<Vec<RunRecord>> {
        self.owner
            .call(move |t| {
                let mut out = Vec::new();
                for entry in t.runs.iter().rev() {
                    if out.len() >= limit {
                        break;
                    }
                    let (key, value) = entry?;
                    let run: RunRecord = decode(&key, &value)?;
                    if wanted(&run) {
                        out.push(run);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// The steps of a run, in workflow order.
    pub async fn steps(&self, run: &str) -> Result<Vec<StepState>> {
        let prefix = format!("{run}/").into_bytes();
        let entries = self
            .owner
            .call(move |t| {
                t.steps
                    .scan_prefix(prefix)
                    .map(|entry| entry.map_err(StoreError::from))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        entries.iter().map(|(key, value)| decode(key, value)).collect()
    }

    /// The committed pages of a list step, each a JSON array of records:
    /// the pointers come from the store at once, the pages from the page
    /// file as they are read, each checked against its CRC.
    pub async fn pages(&self, run: &str, index: u32) -> Result<PageReader> {
        let prefix = step_prefix(run, index);
        let entries = self
            .owner
            .call(move |t| {
                t.pages
                    .scan_prefix(prefix)
                    .map(|entry| entry.map_err(StoreError::from))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        Ok(PageReader {
            source: PageSource::File(FilePages {
                path: self.page_file(run, index),
                entries: entries.into_iter(),
                file: None,
            }),
        })
    }

    /// Every remembered webhook delivery, as stored (for a copy).
    pub(crate) async fn delivery_entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.owner
            .call(|t| {
                t.deliveries
                    .iter()
                    .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from))
                    .collect()
            })
            .await
    }

    #[cfg(test)]
    async fn with_trees<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut owner::Trees) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.owner.write(f).await
    }
}

/// The finished items of a for-each step; see [`RunStore::items`].
#[derive(Debug)]
pub struct ItemScan {
    store: ItemSource,
    prefix: Vec<u8>,
    /// The last group key read.
    after: Option<Vec<u8>>,
    buffer: std::collections::VecDeque<(u64, ItemRecord)>,
    done: bool,
}

/// Where an [`ItemScan`] reads groups from.
#[derive(Debug)]
enum ItemSource {
    /// sled, by key (`prefix`, `after`).
    Sled(SledStore),
    /// PostgreSQL, by group number.
    Postgres {
        store: postgres::PgStore,
        run: String,
        index: u32,
        /// The last group read.
        after: i64,
    },
}

impl ItemScan {
    /// Groups read from the store at a time.
    const GROUPS: usize = 64;

    /// The next item, `None` after the last.
    pub async fn next(&mut self) -> Option<Result<(u64, ItemRecord)>> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                return Some(Ok(item));
            }
            if self.done {
                return None;
            }
            let store = match &mut self.store {
                ItemSource::Sled(store) => store,
                ItemSource::Postgres { store, run, index, after } => {
                    let groups = match store.item_groups(run, *index, *after, Self::GROUPS).await {
                        Ok(groups) => groups,
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e));
                        }
                    };
                    self.done = groups.len() < Self::GROUPS;
                    for (group, items) in groups {
                        *after = group;
                        let key = format!("{run}/{index:05}/{group:016x}");
                        match decode::<Vec<(u64, ItemRecord)>>(key.as_bytes(), items.as_bytes()) {
                            Ok(group) => self.buffer.extend(group),
                            Err(e) => {
                                self.done = true;
                                return Some(Err(e));
                            }
                        }
                    }
                    continue;
                }
            };
            let (prefix, after) = (self.prefix.clone(), self.after.clone());
            let groups = match store
                .owner
                .call(move |t| scan_from(&t.items, &prefix, after.as_deref(), Self::GROUPS))
                .await
            {
                Ok(groups) => groups,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            self.done = groups.len() < Self::GROUPS;
            self.after = groups.last().map(|(key, _)| key.to_vec());
            for (key, value) in groups {
                match decode::<Vec<(u64, ItemRecord)>>(&key, &value) {
                    Ok(group) => self.buffer.extend(group),
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    /// Counts the items left.
    pub async fn count(mut self) -> Result<u64> {
        let mut n = 0;
        while let Some(item) = self.next().await {
            item?;
            n += 1;
        }
        Ok(n)
    }
}

/// The committed pages of a list step, in order; see [`RunStore::pages`].
/// On sled it reads the page file (not sled) as it goes; on PostgreSQL a
/// few pages at a time.
#[derive(Debug)]
pub struct PageReader {
    source: PageSource,
}

/// Where a [`PageReader`] reads pages from.
#[derive(Debug)]
enum PageSource {
    File(FilePages),
    Rows {
        store: postgres::PgStore,
        run: String,
        index: u32,
        /// The number of the next page to read.
        next: u32,
        buffer: std::collections::VecDeque<String>,
        done: bool,
    },
}

impl PageReader {
    /// Pages read from PostgreSQL at a time (60 KB or so each).
    const ROWS: u32 = 16;

    /// The next page (a JSON array of records), `None` after the last.
    pub async fn next_page(&mut self) -> Option<Result<String>> {
        match &mut self.source {
            PageSource::File(pages) => {
                let (key, value) = pages.entries.next()?;
                Some(pages.read(&key, &value))
            }
            PageSource::Rows { store, run, index, next, buffer, done } => {
                if buffer.is_empty() && !*done {
                    match store.page_rows(run, *index, *next, Self::ROWS).await {
                        Ok(rows) => {
                            *done = rows.len() < Self::ROWS as usize;
                            for (page, records) in rows {
                                if page != *next {
                                    *done = true;
                                    return Some(Err(StoreError::Corrupt {
                                        key: format!("{run}/{index:05}/{next:09}"),
                                        reason: format!(
                                            "page {next} is missing (the next stored is {page})"
                                        ),
                                    }));
                                }
                                *next += 1;
                                buffer.push_back(records);
                            }
                        }
                        Err(e) => {
                            *done = true;
                            return Some(Err(e));
                        }
                    }
                }
                buffer.pop_front().map(Ok)
            }
        }
    }

    /// Every page left, in memory: for tests and small steps only.
    pub async fn collect_all(mut self) -> Result<Vec<String>> {
        let mut pages = Vec::new();
        while let Some(page) = self.next_page().await {
            pages.push(page?);
        }
        Ok(pages)
    }
}

/// A sled step's pages: pointers from sled, records from the page file.
#[derive(Debug)]
struct FilePages {
    path: PathBuf,
    entries: std::vec::IntoIter<(sled::IVec, sled::IVec)>,
    file: Option<std::fs::File>,
}

impl FilePages {
    fn read(&mut self, key: &[u8], value: &[u8]) -> Result<String> {
        let corrupt = |reason: String| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
        };
        let bytes = match PagePointer::decode(value) {
            Some(pointer) => {
                let path = &self.path;
                let failed = |e: std::io::Error| StoreError::PageFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                };
                let file = match &mut self.file {
                    Some(file) => file,
                    None => self.file.insert(std::fs::File::open(path).map_err(failed)?),
                };
                let bytes = read_page(file, pointer).map_err(failed)?;
                if let Some(crc) = pointer.crc32
                    && crc32fast::hash(&bytes) != crc
                {
                    // The page's number is the last part of its key.
                    let page = std::str::from_utf8(key)
                        .ok()
                        .and_then(|k| k.rsplit('/').next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(u32::MAX);
                    return Err(StoreError::PageChecksum {
                        path: path.display().to_string(),
                        page,
                        offset: pointer.offset,
                        end: pointer.offset.saturating_add(pointer.len),
                    });
                }
                bytes
            }
            // Stores written before page files keep the records in sled.
            None => value.to_vec(),
        };
        String::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))
    }
}

/// Where a committed page's records are in its step's page file, and their
/// CRC-32. Encoded as `#`, offset and length (big-endian u64s) and the CRC
/// (big-endian u32); stores before the CRC wrote `@`, offset and length,
/// and a page stored in sled itself (before page files) is a JSON array
/// and starts with `[`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PagePointer {
    offset: u64,
    len: u64,
    /// `None` in pointers written before pages had a CRC.
    crc32: Option<u32>,
}

impl PagePointer {
    const LEN: usize = 21;

    fn encode(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = b'#';
        out[1..9].copy_from_slice(&self.offset.to_be_bytes());
        out[9..17].copy_from_slice(&self.len.to_be_bytes());
        out[17..].copy_from_slice(&self.crc32.unwrap_or(0).to_be_bytes());
        out
    }

    fn decode(value: &[u8]) -> Option<PagePointer> {
        let (tag, rest) = value.split_first()?;
        let (offset, rest) = rest.split_first_chunk::<8>()?;
        let (len, rest) = rest.split_first_chunk::<8>()?;
        let (offset, len) = (u64::from_be_bytes(*offset), u64::from_be_bytes(*len));
        match (*tag, rest) {
            (b'@', []) => Some(PagePointer { offset, len, crc32: None }),
            (b'#', crc) => Some(PagePointer {
                offset,
                len,
                crc32: Some(u32::from_be_bytes(crc.try_into().ok()?)),
            }),
            _ => None,
        }
    }
}

/// What the fuzz targets in `fuzz/` (and the test that replays their
/// corpora) reach of this module's decoding; not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    use super::{FilePages, ItemRecord, PagePointer, Result, RunRecord, StepState};

    /// A stored run decoded and encoded again.
    pub fn reencode_run(value: &[u8]) -> Result<Vec<u8>> {
        super::encode(&super::decode::<RunRecord>(b"fuzz", value)?)
    }

    /// A stored step decoded and encoded again.
    pub fn reencode_step(value: &[u8]) -> Result<Vec<u8>> {
        super::encode(&super::decode::<StepState>(b"fuzz", value)?)
    }

    /// A stored group of for-each items decoded and encoded again.
    pub fn reencode_items(value: &[u8]) -> Result<Vec<u8>> {
        super::encode(&super::decode::<Vec<(u64, ItemRecord)>>(b"fuzz", value)?)
    }

    /// Whether a remembered delivery stored as `value` can go.
    pub fn delivery_expired(value: &[u8], tolerance: std::time::Duration, now_ms: u64) -> bool {
        super::delivery_expired(value, tolerance, now_ms)
    }

    /// The sled value of a page pointer (`@` without a CRC, `#` with one).
    pub fn page_pointer(offset: u64, len: u64, crc32: Option<u32>) -> Vec<u8> {
        let encoded = PagePointer { offset, len, crc32 }.encode();
        match crc32 {
            Some(_) => encoded.to_vec(),
            None => [&b"@"[..], &encoded[1..17]].concat(),
        }
    }

    /// The page a sled value `value` under `key` stands for, read from the
    /// page file at `path` as [`super::RunStore::pages`] reads it.
    pub fn read_page(path: &Path, key: &[u8], value: &[u8]) -> Result<String> {
        let mut reader =
            FilePages { path: path.to_path_buf(), entries: Vec::new().into_iter(), file: None };
        reader.read(key, value)
    }
}

/// A commit under way; see [`RunStore::start_commit`].
#[derive(Debug)]
#[must_use = "a commit is durable only once waited for"]
pub struct Commit {
    task: tokio::task::JoinHandle<Result<()>>,
    path: String,
}

impl Commit {
    /// Waits until the commit is durable.
    pub async fn wait(self) -> Result<()> {
        self.task
            .await
            .map_err(|e| StoreError::PageFile { path: self.path, reason: e.to_string() })?
    }
}

/// A list step's pages, open for appending; see [`RunStore::page_log`].
#[derive(Debug)]
pub struct PageLog {
    /// The number of the next page.
    next_page: u32,
    sink: PageSink,
}

/// Where a [`PageLog`] puts pages until they are committed.
#[derive(Debug)]
enum PageSink {
    /// sled: the step's page file, sled pointing into it.
    File {
        file: Arc<std::fs::File>,
        path: PathBuf,
        /// Where the next page goes (the file's position: pages are
        /// written in order, by this log alone).
        offset: u64,
        /// Pages appended since the last commit.
        pending: Vec<(u32, PagePointer)>,
        /// Whether the directories above the file are known to be durable.
        dirs_synced: bool,
    },
    /// PostgreSQL: pages held until the commit writes them as rows.
    Rows {
        /// Pages appended since the last commit.
        pending: Vec<(u32, String)>,
    },
}

impl PageLog {
    /// Adds a page (on sled, written to the file, not yet synced; on
    /// PostgreSQL, held): it is durable once committed.
    pub fn append(&mut self, records_json: &str) -> Result<()> {
        match &mut self.sink {
            PageSink::File { file, path, offset, pending, .. } => {
                use std::io::Write;
                (&**file).write_all(records_json.as_bytes()).map_err(|e| StoreError::PageFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                let crc32 = Some(crc32fast::hash(records_json.as_bytes()));
                pending.push((
                    self.next_page,
                    PagePointer { offset: *offset, len: records_json.len() as u64, crc32 },
                ));
                *offset += records_json.len() as u64;
            }
            PageSink::Rows { pending } => pending.push((self.next_page, records_json.to_owned())),
        }
        self.next_page += 1;
        Ok(())
    }
}

fn read_page(file: &mut std::fs::File, pointer: PagePointer) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    // A damaged pointer can name any length: check it against the file
    // before allocating for it.
    let file_len = file.metadata()?.len();
    if pointer.offset.checked_add(pointer.len).is_none_or(|end| end > file_len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "the page at byte {} of {} bytes is past the end of the file ({file_len} bytes)",
                pointer.offset, pointer.len
            ),
        ));
    }
    let len = usize::try_from(pointer.len)
        .map_err(|_| std::io::Error::other("page length does not fit in memory"))?;
    let mut bytes = vec![0; len];
    file.seek(SeekFrom::Start(pointer.offset))?;
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Writes a run record with its row and index entries, in one
/// transaction; the row keeps who started the run.
fn put_run(t: &owner::Trees, run: &RunRecord) -> Result<()> {
    let (key, value) = (run.id.clone().into_bytes(), encode(run)?);
    (&t.runs, &t.rows, &t.index)
        .transaction(|(runs, rows, runs_index)| {
            let old = index::stored_row(rows, &run.id)?;
            let row = RunRow::of(run, old.as_ref().and_then(|o| o.started_by.clone()));
            runs.insert(key.as_slice(), value.as_slice())?;
            index::put_row(rows, runs_index, old.as_ref(), &row)?;
            Ok(())
        })
        .map_err(tx_error)
}

fn tx_error(e: sled::transaction::TransactionError<StoreError>) -> StoreError {
    match e {
        sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
        sled::transaction::TransactionError::Abort(e) => e,
    }
}

/// Each backend the store's tests run on: sled in a temporary directory,
/// and PostgreSQL in a schema of its own when `WEFT_TEST_POSTGRES` names a
/// server (required under `CI=true`; see [`postgres::scratch`]).
#[cfg(test)]
pub(crate) mod testing {
    use super::{RunStore, postgres::scratch};

    /// A store on one backend, and what it lives in.
    pub(crate) struct TestStore {
        /// `sled` or `postgres`, for messages.
        pub(crate) name: &'static str,
        pub(crate) store: RunStore,
        /// The sled directory, kept until the test ends.
        pub(crate) dir: Option<tempfile::TempDir>,
        /// The PostgreSQL schema, dropped when the test ends.
        pub(crate) schema: Option<scratch::ScratchSchema>,
    }

    /// The store in `dir` or `schema` opened again (a restarted process).
    pub(crate) async fn reopen(
        dir: Option<&tempfile::TempDir>,
        schema: Option<&scratch::ScratchSchema>,
    ) -> super::Result<RunStore> {
        match (dir, schema) {
            (Some(dir), _) => super::tests::reopen(dir.path()),
            (None, Some(schema)) => RunStore::open_postgres(&schema.url).await,
            (None, None) => Err(super::StoreError::Unavailable("no store to reopen".into())),
        }
    }

    /// A fresh store on each backend there is, sled first.
    pub(crate) async fn backends(test: &str) -> Result<Vec<TestStore>, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RunStore::open(dir.path())?;
        let mut out = vec![TestStore { name: "sled", store, dir: Some(dir), schema: None }];
        if let Some(url) = scratch::test_url(test)? {
            let schema = scratch::ScratchSchema::create(&url).await?;
            let store = RunStore::open_postgres(&schema.url).await?;
            out.push(TestStore { name: "postgres", store, dir: None, schema: Some(schema) });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens again a store this process has just closed. sled 0.34's
    /// background I/O threads can hold the directory's lock for a moment
    /// after the last handle is dropped (seen under load in CI), so the
    /// reopen waits for it, for a bounded time; a second process never
    /// meets this (its exit releases the lock).
    pub(super) fn reopen(dir: &Path) -> Result<RunStore> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match RunStore::open(dir) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    impl RunStore {
        /// Appends one page of a list step and commits it at once.
        pub(super) async fn commit_page(
            &self,
            run: &str,
            step: &StepState,
            records_json: &str,
        ) -> Result<()> {
            let mut before = step.clone();
            before.pages = step.pages.saturating_sub(1);
            let mut log = self.page_log(run, &before).await?;
            log.append(records_json)?;
            self.start_commit(run, step, Some(&mut log)).wait().await
        }

        async fn all_pages(&self, run: &str, index: u32) -> Result<Vec<String>> {
            self.pages(run, index).await?.collect_all().await
        }
    }

    /// A store in a temporary directory with one run of these steps.
    async fn store_with_run(
        steps: &[&str],
    ) -> Result<(tempfile::TempDir, RunStore, String), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RunStore::open(dir.path())?;
        let id = store.new_run_id().await?;
        store
            .create_run(&run(&id), &steps.iter().map(|s| s.to_string()).collect::<Vec<_>>(), None)
            .await?;
        Ok((dir, store, id))
    }

    fn run(id: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            workflow: "w".into(),
            workflow_hash: "h".into(),
            workflow_text: "[workflow]".into(),
            workflow_path: "w.toml".into(),
            inputs: serde_json::json!({}),
            status: Status::Running,
            created_ms: now_ms(),
            finished_ms: None,
            error: None,
            dry_run: false,
            trigger: RunTrigger::Manual,
            cancel_requested: false,
            resumes: 0,
            inputs_defaulted: Vec::new(),
        }
    }

    #[test]
    fn run_triggers_load_from_the_words_older_versions_wrote_and_unknown_ones_are_kept()
    -> Result<()> {
        let stored = serde_json::to_value(run("r1"))
            .map_err(|e| StoreError::Corrupt { key: "r1".into(), reason: e.to_string() })?;
        for (word, trigger) in [
            ("manual", RunTrigger::Manual),
            ("cron", RunTrigger::Cron),
            ("webhook", RunTrigger::Webhook),
            ("api", RunTrigger::Api),
            ("sandbox", RunTrigger::Sandbox),
            ("replay-v9", RunTrigger::Other("replay-v9".into())),
        ] {
            let mut old = stored.clone();
            old["trigger"] = word.into();
            let read: RunRecord = decode(b"r1", old.to_string().as_bytes())?;
            assert_eq!(read.trigger, trigger, "{word}");
            let written: serde_json::Value = decode(b"r1", &encode(&read)?)?;
            assert_eq!(written["trigger"], word, "written back as it was stored");
        }
        // Records from before the trigger was stored are manual runs.
        let mut oldest = stored;
        if let Some(fields) = oldest.as_object_mut() {
            fields.remove("trigger");
        }
        let read: RunRecord = decode(b"r1", oldest.to_string().as_bytes())?;
        assert_eq!(read.trigger, RunTrigger::Manual);
        Ok(())
    }

    #[test]
    fn a_step_plan_written_as_loose_json_loads_typed_and_is_written_back_the_same() -> Result<()> {
        // As an older version stored it: the plan a `serde_json::Value`,
        // keys sorted, zero counts kept, `irreversible_not_listed` absent.
        let stored = r#"{"attempts":1,"counts":{"absent":0,"created":0,"failed":0,"read":0,"removed":0,"unchanged":1,"updated":0},"cursor":null,"error":null,"finished_ms":2,"id":"push","index":1,"items":3,"output":null,"pages":0,"plan":{"already_absent":0,"create":1,"irreversible":[{"action":"remove","irreversible":true,"key":"cus_9"}],"remove":1,"samples":[{"action":"create","key":"cus_1","record":{"id":"cus_1","name":"Ada"}},{"action":"update","changes":["name"],"key":"cus_2","record":{"id":"cus_2"}}],"unchanged":1,"update":1,"upsert":0},"records_kept":true,"started_ms":1,"status":"succeeded","sync":null}"#;
        let state: StepState = decode(b"run/00001", stored.as_bytes())?;
        let plan = state.plan.clone().ok_or_else(|| StoreError::Corrupt {
            key: "run/00001".into(),
            reason: "no plan".into(),
        })?;
        assert_eq!((plan.create, plan.update, plan.remove, plan.unchanged), (1, 1, 1, 1));
        assert_eq!(plan.samples[1].action, plan::PlannedAction::Update);
        assert_eq!(plan.samples[1].changes, vec!["name".to_owned()]);
        assert_eq!(plan.irreversible[0].key.as_deref(), Some("cus_9"));
        let written: serde_json::Value = decode(b"k", &encode(&state)?)?;
        let old: serde_json::Value = decode(b"k", stored.as_bytes())?;
        assert_eq!(written, old, "the same JSON, field for field");
        // A plan that names only some counts (any older shape) still loads.
        let sparse = stored.replace(r#""already_absent":0,"create":1,"#, "");
        let state: StepState = decode(b"run/00001", sparse.as_bytes())?;
        assert_eq!(state.plan.map(|p| (p.create, p.already_absent)), Some((0, 0)));
        Ok(())
    }

    #[test]
    fn a_value_that_does_not_serialise_is_an_error_not_an_empty_value() {
        // The regression: `encode` answered `unwrap_or_default()`, an empty
        // value that sled would have stored in the record's place.
        struct Unstorable;
        impl Serialize for Unstorable {
            fn serialize<S: serde::Serializer>(
                &self,
                _: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("not storable"))
            }
        }
        let encoded = encode(&Unstorable);
        assert!(
            matches!(&encoded, Err(StoreError::Encode { what, reason }) if what.ends_with("Unstorable") && reason.contains("not storable")),
            "{encoded:?}"
        );
    }

    #[test]
    fn item_actions_are_stored_as_the_words_older_versions_wrote() -> Result<()> {
        let words = [
            (ItemAction::Created, "created"),
            (ItemAction::Updated, "updated"),
            (ItemAction::Unchanged, "unchanged"),
            (ItemAction::Removed, "removed"),
            (ItemAction::AlreadyAbsent, "already-absent"),
            (ItemAction::Found, "found"),
            (ItemAction::Absent, "absent"),
            (ItemAction::Create, "create"),
            (ItemAction::Update, "update"),
            (ItemAction::Upsert, "upsert"),
            (ItemAction::Remove, "remove"),
        ];
        for (action, word) in words {
            let stored = format!(r#"[[7,{{"s":"succeeded","a":"{word}","id":"x"}}]]"#);
            let read: Vec<(u64, ItemRecord)> = decode(b"k", stored.as_bytes())?;
            assert_eq!(read[0].1.action, Some(action), "{word}");
            assert_eq!(action.as_str(), word);
            let record = ItemRecord {
                status: Status::Succeeded,
                action: Some(action),
                id: Some("x".into()),
                error: None,
            };
            assert_eq!(encode(&vec![(7u64, record)])?, stored.as_bytes(), "{word}");
        }
        Ok(())
    }

    #[test]
    fn a_misspelt_item_action_is_a_corrupt_record_not_an_uncounted_one() {
        // The regression: the action was a string and the count of a word
        // it did not know fell through `_ => {}`, so the item vanished from
        // the step's counts without a word.
        let stored = br#"[[0,{"s":"succeeded","a":"creatd"}]]"#;
        let read = decode::<Vec<(u64, ItemRecord)>>(b"run/00000/0", stored);
        assert!(
            matches!(&read, Err(StoreError::Corrupt { key, reason }) if key == "run/00000/0" && reason.contains("creatd")),
            "{read:?}"
        );
    }

    #[tokio::test]
    async fn items_are_recorded_in_groups_and_read_back_in_order()
    -> Result<(), Box<dyn std::error::Error>> {
        for backend in
            crate::store::testing::backends("items_are_recorded_in_groups_and_read_back_in_order")
                .await?
        {
            eprintln!("items_are_recorded_in_groups_and_read_back_in_order: on {}", backend.name);
            let testing::TestStore { store, dir, schema, .. } = backend;
            let id = store.new_run_id().await?;
            store.create_run(&run(&id), &["each".into()], None).await?;
            let step = StepState::pending("each", 0);
            let done = |n| {
                (
                    n,
                    ItemRecord {
                        status: Status::Succeeded,
                        action: Some(ItemAction::Created),
                        id: Some(format!("cus_{n}")),
                        error: None,
                    },
                )
            };
            store.commit_items(&id, &step, &[done(2), done(0)]).await?;
            store.commit_items(&id, &step, &[done(1)]).await?;
            let mut items = Vec::new();
            {
                let mut scan = store.items(&id, 0);
                while let Some(item) = scan.next().await {
                    let (n, record) = item?;
                    items.push((n, record.id));
                }
            }
            items.sort();
            assert_eq!(
                items,
                vec![
                    (0, Some("cus_0".into())),
                    (1, Some("cus_1".into())),
                    (2, Some("cus_2".into()))
                ]
            );
            drop(store);
            let reopened = testing::reopen(dir.as_ref(), schema.as_ref()).await?;
            assert_eq!(reopened.items(&id, 0).count().await?, 3, "groups survive a reopen");
        }
        Ok(())
    }

    #[tokio::test]
    async fn items_are_read_back_a_chunk_of_groups_at_a_time_across_chunk_ends()
    -> Result<(), Box<dyn std::error::Error>> {
        for backend in crate::store::testing::backends(
            "items_are_read_back_a_chunk_of_groups_at_a_time_across_chunk_ends",
        )
        .await?
        {
            eprintln!(
                "items_are_read_back_a_chunk_of_groups_at_a_time_across_chunk_ends: on {}",
                backend.name
            );
            let store = backend.store.clone();
            let id = store.new_run_id().await?;
            store.create_run(&run(&id), &["each".into(), "other".into()], None).await?;
            let step = StepState::pending("each", 0);
            let groups = ItemScan::GROUPS as u64 * 2 + 3;
            for g in 0..groups {
                store
                    .commit_items(
                        &id,
                        &step,
                        &[
                            (
                                g * 2,
                                ItemRecord {
                                    status: Status::Succeeded,
                                    action: None,
                                    id: None,
                                    error: None,
                                },
                            ),
                            (
                                g * 2 + 1,
                                ItemRecord {
                                    status: Status::Failed,
                                    action: None,
                                    id: None,
                                    error: Some("x".into()),
                                },
                            ),
                        ],
                    )
                    .await?;
            }
            store
                .commit_items(
                    &id,
                    &StepState::pending("other", 1),
                    &[(
                        0,
                        ItemRecord { status: Status::Skipped, action: None, id: None, error: None },
                    )],
                )
                .await?;
            assert_eq!(
                store.items(&id, 0).count().await?,
                groups * 2,
                "every group of the step, none of the next step's"
            );
            assert_eq!(store.items(&id, 1).count().await?, 1);
            assert_eq!(store.items(&id, 2).count().await?, 0);
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_share_flushes_and_all_survive_a_reopen()
    -> Result<(), Box<dyn std::error::Error>> {
        for backend in crate::store::testing::backends(
            "concurrent_commits_share_flushes_and_all_survive_a_reopen",
        )
        .await?
        {
            eprintln!(
                "concurrent_commits_share_flushes_and_all_survive_a_reopen: on {}",
                backend.name
            );
            // The test's only handle, so that dropping it closes the store.
            let testing::TestStore { store, dir, schema, .. } = backend;
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..200 {
                let store = store.clone();
                tasks.spawn(async move {
                    let id = store.new_run_id().await?;
                    store.create_run(&run(&id), &["a".into()], None).await?;
                    let mut step = StepState::pending("a", 0);
                    step.status = Status::Succeeded;
                    store.commit_step(&id, &step).await?;
                    Ok::<_, StoreError>(id)
                });
            }
            let mut ids = Vec::new();
            while let Some(id) = tasks.join_next().await {
                ids.push(id??);
            }
            drop(store);
            let store = testing::reopen(dir.as_ref(), schema.as_ref()).await?;
            assert_eq!(store.runs().await?.len(), 200);
            for id in ids {
                assert_eq!(store.steps(&id).await?[0].status, Status::Succeeded);
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn an_operation_that_panics_fails_alone_and_the_store_goes_on()
    -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, store, id) = store_with_run(&["a"]).await?;
        let failed = store.with_trees(|_| -> Result<()> { panic!("injected") }).await;
        assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
        assert_eq!(store.run(&id).await?.id, id);
        store.commit_step(&id, &StepState::pending("a", 0)).await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_run_keeps_its_message_and_a_finished_one_is_left_alone()
    -> Result<(), Box<dyn std::error::Error>> {
        for backend in crate::store::testing::backends(
            "a_failed_run_keeps_its_message_and_a_finished_one_is_left_alone",
        )
        .await?
        {
            eprintln!(
                "a_failed_run_keeps_its_message_and_a_finished_one_is_left_alone: on {}",
                backend.name
            );
            let store = backend.store.clone();
            let id = store.new_run_id().await?;
            store.create_run(&run(&id), &["a".into()], None).await?;
            let failed = store.fail_run(&id, "internal error: boom").await?;
            assert_eq!(
                (failed.status, failed.error.as_deref()),
                (Status::Failed, Some("internal error: boom"))
            );
            let again = store.fail_run(&id, "other").await?;
            assert_eq!(again.error.as_deref(), Some("internal error: boom"));
            assert!(matches!(store.fail_run("nope", "x").await, Err(StoreError::UnknownRun(_))));
        }
        Ok(())
    }

    #[tokio::test]
    async fn scratch_dirs_live_in_the_store_and_go_when_removed()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RunStore::open(dir.path())?;
        let scratch = store.scratch_dir("r1", 2).await?;
        assert!(scratch.starts_with(dir.path()));
        std::fs::write(scratch.join("source-00000.jsonl"), "x")?;
        store.remove_scratch("r1", 2).await?;
        assert!(!scratch.exists());
        assert!(!dir.path().join("scratch").join("r1").exists());
        store.remove_scratch("r1", 2).await?;
        Ok(())
    }

    fn delivery(workflow: &str, signature: &str, signed_at: Option<i64>) -> Delivery {
        Delivery { workflow: workflow.into(), signature: signature.into(), signed_at, event: None }
    }

    #[tokio::test]
    async fn a_state_change_commits_with_its_step_and_only_on_the_version_its_run_read()
    -> Result<(), Box<dyn std::error::Error>> {
        const NAME: &str =
            "a_state_change_commits_with_its_step_and_only_on_the_version_its_run_read";
        for backend in crate::store::testing::backends(NAME).await? {
            eprintln!("{NAME}: on {}", backend.name);
            state_changes_on(&backend.store).await?;
        }
        Ok(())
    }

    async fn state_changes_on(store: &RunStore) -> Result<(), Box<dyn std::error::Error>> {
        let (a, b) = (store.new_run_id().await?, store.new_run_id().await?);
        for id in [&a, &b] {
            store.create_run(&run(id), &["copy".to_owned()], None).await?;
        }
        let change = |since: i64, planned: bool| StateWrite {
            workflow: "w".into(),
            base: 0,
            values: std::collections::BTreeMap::from([(
                "since".to_owned(),
                serde_json::json!(since),
            )]),
            before: std::collections::BTreeMap::new(),
            planned,
        };
        let mut step = StepState::pending("copy", 0);
        // A dry run's change is shown in the step, never applied.
        step.state_write = Some(change(1, true));
        store.commit_step(&a, &step).await?;
        assert_eq!(store.workflow_state("w").await?.version, 0);
        // Run a commits its change with the step, then again page by page.
        step.state_write = Some(change(5, false));
        store.commit_step(&a, &step).await?;
        step.state_write = Some(change(9, false));
        let item = ItemRecord { status: Status::Succeeded, action: None, id: None, error: None };
        store.commit_items(&a, &step, &[(0, item)]).await?;
        let state = store.workflow_state("w").await?;
        assert_eq!((state.version, state.values.get("since")), (2, Some(&serde_json::json!(9))));
        assert_eq!(state.run.as_deref(), Some(a.as_str()));
        let kept = store.steps(&a).await?;
        assert_eq!(
            kept[0].state_write.as_ref().map(|w| w.values.clone()),
            Some(change(9, false).values)
        );
        // Run b read version 0 too: refused, and its step is not written.
        let mut other = StepState::pending("copy", 0);
        other.status = Status::Succeeded;
        other.state_write = Some(change(7, false));
        let refused = store.commit_step(&b, &other).await;
        assert!(
            matches!(refused, Err(StoreError::StateConflict { read: 0, found: 2, .. })),
            "{refused:?}"
        );
        assert_eq!(
            store.steps(&b).await?[0].status,
            Status::Pending,
            "nothing of the refused commit"
        );
        assert_eq!(
            store.workflow_state("w").await?.values.get("since"),
            Some(&serde_json::json!(9))
        );
        // A change by hand wins over the run that read before it.
        let set = std::collections::BTreeMap::from([("since".to_owned(), None)]);
        let edited = store.edit_workflow_state("w", &set, false).await?;
        assert_eq!((edited.version, edited.values.len(), edited.run.clone()), (3, 0, None));
        step.state_write = Some(change(11, false));
        assert!(matches!(
            store.commit_step(&a, &step).await,
            Err(StoreError::StateConflict { .. })
        ));
        Ok(())
    }

    #[tokio::test]
    async fn an_event_delivered_again_with_a_new_signature_starts_nothing_until_its_window_ends()
    -> Result<(), Box<dyn std::error::Error>> {
        const NAME: &str =
            "an_event_delivered_again_with_a_new_signature_starts_nothing_until_its_window_ends";
        for backend in crate::store::testing::backends(NAME).await? {
            eprintln!("{NAME}: on {}", backend.name);
            event_ids_on(&backend.store).await?;
        }
        Ok(())
    }

    async fn event_ids_on(store: &RunStore) -> Result<(), Box<dyn std::error::Error>> {
        let with_event = |signature: &str, id: &str, until: u64| Delivery {
            event: Some((id.into(), until)),
            ..delivery("w", signature, Some(1_000))
        };
        let first = store.new_run_id().await?;
        store
            .create_run(&run(&first), &["a".into()], Some(&with_event("sig1", "evt_1", 5_000_000)))
            .await?;
        let retry = store.new_run_id().await?;
        let refused = store
            .create_run(&run(&retry), &["a".into()], Some(&with_event("sig2", "evt_1", 5_000_000)))
            .await;
        assert!(
            matches!(refused, Err(StoreError::DuplicateEvent { ref event, .. }) if event == "evt_1"),
            "{refused:?}"
        );
        assert!(
            matches!(store.run(&retry).await, Err(StoreError::UnknownRun(_))),
            "no run recorded"
        );
        let refused_signature = store.run(&first).await.is_ok()
            && store
                .create_run(&run(&retry), &["a".into()], Some(&delivery("w", "sig2", Some(1_000))))
                .await
                .is_ok();
        assert!(refused_signature, "the retry's signature was not remembered by the refusal");
        let other = store.new_run_id().await?;
        store
            .create_run(&run(&other), &["a".into()], Some(&with_event("sig3", "evt_2", 5_000_000)))
            .await?;
        // Past its window (and past the signatures' tolerance), the event
        // id is forgotten.
        let tolerance = Duration::from_secs(300);
        store.forget_deliveries("w", tolerance, 5_000_001).await?;
        let later = store.new_run_id().await?;
        store
            .create_run(&run(&later), &["a".into()], Some(&with_event("sig4", "evt_1", 9_000_000)))
            .await?;
        assert!(
            delivery_expired(b"E\0\0\0\0\0\0\0\x05", tolerance, 6)
                && !delivery_expired(b"E\0\0\0\0\0\0\0\x05", tolerance, 5)
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_delivery_is_remembered_with_its_run_and_a_replay_records_nothing()
    -> Result<(), Box<dyn std::error::Error>> {
        for backend in crate::store::testing::backends(
            "a_delivery_is_remembered_with_its_run_and_a_replay_records_nothing",
        )
        .await?
        {
            eprintln!(
                "a_delivery_is_remembered_with_its_run_and_a_replay_records_nothing: on {}",
                backend.name
            );
            let store = backend.store.clone();
            let first = store.new_run_id().await?;
            store
                .create_run(&run(&first), &["a".into()], Some(&delivery("w", "sig1", None)))
                .await?;
            let second = store.new_run_id().await?;
            let replay = store
                .create_run(&run(&second), &["a".into()], Some(&delivery("w", "sig1", None)))
                .await;
            assert!(matches!(replay, Err(StoreError::Replay { .. })), "{replay:?}");
            assert!(
                matches!(store.run(&second).await, Err(StoreError::UnknownRun(_))),
                "a replay creates no run"
            );
            assert!(store.steps(&second).await?.is_empty(), "nor its steps");
            // Another workflow's webhook may see the same signature.
            store
                .create_run(&run(&second), &["a".into()], Some(&delivery("other", "sig1", None)))
                .await?;
            assert_eq!(store.runs().await?.len(), 2);
        }
        Ok(())
    }

    #[tokio::test]
    async fn deliveries_without_a_signed_timestamp_are_kept_for_good_and_timed_ones_until_stale()
    -> Result<(), Box<dyn std::error::Error>> {
        for backend in crate::store::testing::backends(
            "deliveries_without_a_signed_timestamp_are_kept_for_good_and_timed_ones_until_stale",
        )
        .await?
        {
            eprintln!(
                "deliveries_without_a_signed_timestamp_are_kept_for_good_and_timed_ones_until_stale: on {}",
                backend.name
            );
            let store = backend.store.clone();
            let tolerance = Duration::from_secs(300);
            let now_secs = 1_800_000_000i64;
            let create = |d: Delivery| {
                let store = store.clone();
                async move {
                    let id = store.new_run_id().await?;
                    store.create_run(&run(&id), &[], Some(&d)).await
                }
            };
            create(delivery("w", "untimed", None)).await?;
            create(delivery("w", "old", Some(now_secs - 3600))).await?;
            create(delivery("w", "fresh", Some(now_secs - 10))).await?;
            // A store from before signed timestamps were kept: first seen, ms.
            let seen_long_ago = ((now_secs - 7200) as u64 * 1000).to_be_bytes();
            let seen_just_now = ((now_secs - 5) as u64 * 1000).to_be_bytes();
            // (sled only: PostgreSQL stores never held that form.)
            let legacy = backend.dir.is_some();
            if legacy {
                store
                    .with_trees(move |t| {
                        t.deliveries.insert(b"w/legacy-old", &seen_long_ago[..])?;
                        t.deliveries.insert(b"w/legacy-new", &seen_just_now[..])?;
                        Ok(())
                    })
                    .await?;
            }
            let now_ms = now_secs as u64 * 1000;
            assert_eq!(
                store.forget_deliveries("w", tolerance, now_ms).await?,
                if legacy { 2 } else { 1 },
                "the hour-old delivery and the two-hour-old legacy one"
            );
            // Ten years on, the untimed delivery is still refused as a replay
            // (before, every signature was forgotten after two days).
            let ten_years = now_ms + 10 * 365 * 86_400_000;
            store.forget_deliveries("w", tolerance, ten_years).await?;
            let again = create(delivery("w", "untimed", None)).await;
            assert!(matches!(again, Err(StoreError::Replay { .. })), "{again:?}");
            create(delivery("w", "fresh", Some(now_secs - 10))).await?;
        }
        Ok(())
    }

    #[test]
    fn delivery_expiry_follows_the_signed_timestamp() {
        let tolerance = Duration::from_secs(300);
        let at = |secs: i64| delivery("w", "s", Some(secs)).value();
        let now_ms = 1_000_000 * 1000;
        assert!(
            !delivery_expired(&at(1_000_000 - 300 - DELIVERY_SLACK_SECS), tolerance, now_ms),
            "still inside the window with its slack"
        );
        assert!(delivery_expired(&at(1_000_000 - 301 - DELIVERY_SLACK_SECS), tolerance, now_ms));
        assert!(
            !delivery_expired(&at(1_000_000 + 299), tolerance, now_ms),
            "signed in the future: kept"
        );
        assert!(!delivery_expired(b"N", tolerance, u64::MAX));
        assert!(!delivery_expired(b"garbage", tolerance, u64::MAX), "what cannot be read is kept");
    }

    #[tokio::test]
    async fn pages_live_in_a_page_file_and_bytes_a_crash_left_are_overwritten()
    -> Result<(), Box<dyn std::error::Error>> {
        let (dir, store, id) = store_with_run(&["all"]).await?;
        let mut step = StepState::pending("all", 0);
        step.pages = 1;
        store.commit_page(&id, &step, r#"[{"id":"cus_1"}]"#).await?;
        // A crash after the page file grew but before sled took the pointer.
        let file = dir.path().join("pages").join(&id).join("00000.json");
        let mut bytes = std::fs::read(&file)?;
        bytes.extend_from_slice(br#"[{"id":"torn"#);
        std::fs::write(&file, &bytes)?;
        drop(store);
        let store = RunStore::open(dir.path())?;
        step.pages = 2;
        store.commit_page(&id, &step, r#"[{"id":"cus_2"}]"#).await?;
        let pages = store.all_pages(&id, 0).await?;
        assert_eq!(pages, vec![r#"[{"id":"cus_1"}]"#.to_owned(), r#"[{"id":"cus_2"}]"#.to_owned()]);
        assert_eq!(std::fs::metadata(&file)?.len(), 32, "the torn tail is gone");
        // sled holds pointers with a CRC, not records.
        let lengths = store
            .with_trees(|t| {
                t.pages.iter().values().map(|v| Ok(v?.len())).collect::<Result<Vec<_>>>()
            })
            .await?;
        assert_eq!(lengths, vec![PagePointer::LEN; 2]);
        Ok(())
    }

    #[tokio::test]
    async fn a_flipped_byte_in_a_page_file_fails_the_read_naming_the_file_and_the_page()
    -> Result<(), Box<dyn std::error::Error>> {
        let (dir, store, id) = store_with_run(&["all"]).await?;
        let mut step = StepState::pending("all", 0);
        step.pages = 1;
        store.commit_page(&id, &step, r#"[{"id":"cus_1"}]"#).await?;
        step.pages = 2;
        store.commit_page(&id, &step, r#"[{"id":"cus_2"}]"#).await?;
        let file = dir.path().join("pages").join(&id).join("00000.json");
        let mut bytes = std::fs::read(&file)?;
        // `cus_2` becomes `cus_3`: still JSON, still an id, the wrong one.
        let at = bytes.iter().rposition(|b| *b == b'2').ok_or("a 2 in the file")?;
        bytes[at] ^= 0x01;
        std::fs::write(&file, &bytes)?;
        let mut pages = store.pages(&id, 0).await?;
        assert_eq!(
            pages.next_page().await.transpose()?.as_deref(),
            Some(r#"[{"id":"cus_1"}]"#),
            "the intact page reads"
        );
        let err = pages
            .next_page()
            .await
            .ok_or("a second page")?
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(&file.display().to_string())
                && err.contains("page 1 (bytes 16..32)")
                && err.contains("checksum"),
            "{err}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn pages_kept_by_older_stores_in_sled_or_without_a_crc_still_read()
    -> Result<(), Box<dyn std::error::Error>> {
        let (dir, store, id) = store_with_run(&["all"]).await?;
        // Page 0 in sled itself (before page files); page 1 in the file
        // under a pointer without a CRC (before CRCs); page 2 new.
        let legacy = r#"[{"id":"crcless"}]"#;
        let file = dir.path().join("pages").join(&id).join("00000.json");
        std::fs::create_dir_all(file.parent().ok_or("a parent")?)?;
        std::fs::write(&file, legacy)?;
        let mut pointer = [0u8; 17];
        pointer[0] = b'@';
        pointer[9..].copy_from_slice(&(legacy.len() as u64).to_be_bytes());
        let (k0, k1) = (page_key(&id, 0, 0), page_key(&id, 0, 1));
        store
            .with_trees(move |t| {
                t.pages.insert(k0, &br#"[{"id":"old"}]"#[..])?;
                t.pages.insert(k1, &pointer[..])?;
                Ok(())
            })
            .await?;
        let mut step = StepState::pending("all", 0);
        step.pages = 3;
        store.commit_page(&id, &step, r#"[{"id":"new"}]"#).await?;
        let pages = store.all_pages(&id, 0).await?;
        assert_eq!(
            pages,
            vec![r#"[{"id":"old"}]"#.to_owned(), legacy.to_owned(), r#"[{"id":"new"}]"#.to_owned()]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_last_page_pointer_whose_end_overflows_is_a_corrupt_entry_not_a_panic()
    -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, store, id) = store_with_run(&["all"]).await?;
        // An old-style pointer (no CRC): '@', offset, length.
        let mut pointer = [0u8; 17];
        pointer[0] = b'@';
        pointer[1..9].copy_from_slice(&(u64::MAX - 4).to_be_bytes());
        pointer[9..].copy_from_slice(&16u64.to_be_bytes());
        let key = page_key(&id, 0, 0);
        store
            .with_trees(move |t| {
                t.pages.insert(key, &pointer[..])?;
                Ok(())
            })
            .await?;
        let mut step = StepState::pending("all", 0);
        step.pages = 1;
        let err = store
            .commit_page(&id, &step, r#"[{"id":"next"}]"#)
            .await
            .err()
            .ok_or("a commit after a damaged pointer was accepted")?
            .to_string();
        assert!(err.contains("corrupt entry") && err.contains("overflows"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn committed_steps_and_pages_survive_a_reopen() -> Result<(), Box<dyn std::error::Error>>
    {
        for backend in
            crate::store::testing::backends("committed_steps_and_pages_survive_a_reopen").await?
        {
            let name = backend.name;
            let id = {
                let store = backend.store.clone();
                let id = store.new_run_id().await?;
                store.create_run(&run(&id), &["a".into(), "b".into()], None).await?;
                let mut step = StepState::pending("a", 0);
                step.status = Status::Running;
                step.pages = 1;
                step.cursor = Some("cus_9".into());
                store.commit_page(&id, &step, r#"[{"id":"cus_9"}]"#).await?;
                // Two pages in one commit, then one appended that the
                // process dies before committing.
                let mut log = store.page_log(&id, &step).await?;
                log.append(r#"[{"id":"cus_10"}]"#)?;
                log.append(r#"[{"id":"cus_11"}]"#)?;
                step.pages = 3;
                step.cursor = Some("cus_11".into());
                store.start_commit(&id, &step, Some(&mut log)).wait().await?;
                log.append(r#"[{"id":"lost"}]"#)?;
                id
            };
            // A restarted process (sled: one at a time, so the first goes).
            drop(backend.store);
            let store =
                crate::store::testing::reopen(backend.dir.as_ref(), backend.schema.as_ref())
                    .await?;
            let steps = store.steps(&id).await?;
            assert_eq!(steps.len(), 2, "{name}");
            assert_eq!(steps[0].cursor.as_deref(), Some("cus_11"), "{name}");
            assert_eq!(steps[1].status, Status::Pending, "{name}");
            assert_eq!(
                store.all_pages(&id, 0).await?,
                [r#"[{"id":"cus_9"}]"#, r#"[{"id":"cus_10"}]"#, r#"[{"id":"cus_11"}]"#],
                "{name}: the committed pages, in order, nothing uncommitted"
            );
            // The resumed list appends after the last committed page.
            let mut log = store.page_log(&id, &steps[0]).await?;
            log.append(r#"[{"id":"cus_12"}]"#)?;
            let mut step = steps[0].clone();
            step.pages = 4;
            store.start_commit(&id, &step, Some(&mut log)).wait().await?;
            let pages = store.all_pages(&id, 0).await?;
            assert_eq!(pages.len(), 4, "{name}: {pages:?}");
            assert_eq!(pages[3], r#"[{"id":"cus_12"}]"#, "{name}");
            assert_eq!(store.run(&id).await?.status, Status::Running, "{name}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn sorted_runs_committed_by_one_process_are_there_for_another()
    -> Result<(), Box<dyn std::error::Error>> {
        for backend in crate::store::testing::backends(
            "sorted_runs_committed_by_one_process_are_there_for_another",
        )
        .await?
        {
            let name = backend.name;
            let store = backend.store.clone();
            let id = store.new_run_id().await?;
            store.create_run(&run(&id), &["sync".into()], None).await?;
            let dir = store.scratch_dir(&id, 0).await?;
            let mut step = StepState::pending("sync", 0);
            step.status = Status::Running;
            let mut written = Vec::new();
            for (n, text) in ["a\n", "bb\n"].into_iter().enumerate() {
                let file = dir.join(format!("source-{n:05}.jsonl"));
                std::fs::write(&file, text)?;
                step.sync.get_or_insert_with(Default::default).source_runs = n as u32 + 1;
                store.commit_sorted_run(&id, &step, Some(&file)).await?;
                written.push((file, text));
            }
            // A run written but not committed: the process died.
            std::fs::write(dir.join("source-00002.jsonl"), "lost\n")?;
            match backend.schema.as_ref() {
                // Another process, with a disk of its own, resumes.
                Some(schema) => {
                    let other = RunStore::open_postgres(&schema.url).await?;
                    assert_eq!(
                        other.steps(&id).await?[0].sync.as_ref().map(|s| s.source_runs),
                        Some(2)
                    );
                    let there = other.scratch_dir(&id, 0).await?;
                    assert_ne!(there, dir, "{name}: each process has its own scratch space");
                    for (file, text) in &written {
                        let local = there.join(file.file_name().ok_or("no file name")?);
                        assert_eq!(&std::fs::read_to_string(local)?, text, "{name}");
                    }
                    assert!(!there.join("source-00002.jsonl").exists(), "{name}");
                    // A copy that differs from the committed one is fetched again.
                    std::fs::write(there.join("source-00001.jsonl"), "b\n")?;
                    other.scratch_dir(&id, 0).await?;
                    assert_eq!(std::fs::read_to_string(there.join("source-00001.jsonl"))?, "bb\n");
                    other.remove_scratch(&id, 0).await?;
                    assert!(!there.exists(), "{name}");
                    let again = store.scratch_dir(&id, 0).await?;
                    let left: Vec<_> = std::fs::read_dir(&again)?.collect();
                    assert!(left.is_empty() || again == dir, "{name}: none stored any more");
                }
                None => {
                    assert!(dir.starts_with(backend.dir.as_ref().ok_or("no dir")?.path()));
                    store.remove_scratch(&id, 0).await?;
                    assert!(!dir.exists(), "{name}");
                    store.remove_scratch(&id, 0).await?;
                }
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn recent_runs_come_newest_first_filtered_and_bounded()
    -> Result<(), Box<dyn std::error::Error>> {
        for backend in
            crate::store::testing::backends("recent_runs_come_newest_first_filtered_and_bounded")
                .await?
        {
            eprintln!("recent_runs_come_newest_first_filtered_and_bounded: on {}", backend.name);
            let store = backend.store.clone();
            for (n, workflow) in ["a", "b", "a", "a"].iter().enumerate() {
                let mut record = run(&format!("r{n}"));
                record.workflow = (*workflow).into();
                store.create_run(&record, &[], None).await?;
            }
            let ids = |runs: Vec<RunRecord>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
            assert_eq!(ids(store.recent_runs(2, |r| r.workflow == "a").await?), vec!["r3", "r2"]);
            assert_eq!(ids(store.recent_runs(10, |_| true).await?), vec!["r3", "r2", "r1", "r0"]);
        }
        Ok(())
    }

    #[test]
    fn a_store_from_another_schema_version_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        {
            let db = sled::open(dir.path())?;
            db.insert(SCHEMA_KEY, &99u32.to_be_bytes())?;
            db.flush()?;
        }
        let err = reopen(dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("schema version 99"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn run_ids_are_unique_and_sort_by_time() -> Result<(), Box<dyn std::error::Error>> {
        for backend in
            crate::store::testing::backends("run_ids_are_unique_and_sort_by_time").await?
        {
            eprintln!("run_ids_are_unique_and_sort_by_time: on {}", backend.name);
            let store = backend.store.clone();
            let a = store.new_run_id().await?;
            let b = store.new_run_id().await?;
            assert_ne!(a, b);
            assert!(a <= b || a[..11] == b[..11]);
        }
        Ok(())
    }
}
