//! Durable run state in sled: runs, their steps, the pages a list step has
//! read, the items of a for-each, the index a sync diffs against, and the
//! webhook signatures already seen. Step and page commits are flushed to
//! disk before the caller goes on; for-each items are flushed in groups
//! (see [`RunStore::commit_items`]), and an item lost in the last group is
//! redone on resume with the same idempotency key, so the vendor does not
//! write twice. Credentials never reach this module: it stores workflow
//! text, inputs, records and messages only.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sled::Transactional;

/// The on-disk format version. Bump it, and add a migration in
/// [`RunStore::open`], whenever a stored type changes shape.
pub const SCHEMA_VERSION: u32 = 2;

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
    #[error("run store at {path} has schema version {found}; this weft reads version {SCHEMA_VERSION}")]
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
    /// No run with that id.
    #[error("no run with id {0}")]
    UnknownRun(String),
    /// Another process has the store open.
    #[error("the run store at {path} is in use by another weft process (a `weft serve`?); stop it, point --state-dir elsewhere, or talk to the server")]
    Locked {
        /// The store directory.
        path: String,
    },
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
    /// What started it: `manual`, `cron`, `webhook` or `api`.
    #[serde(default = "manual")]
    pub trigger: String,
    /// Someone asked for the run to stop; it ends `cancelled` at the next
    /// page or item boundary.
    #[serde(default)]
    pub cancel_requested: bool,
    /// How many times the run was picked up again after an interruption.
    #[serde(default)]
    pub resumes: u32,
}

fn manual() -> String {
    "manual".to_owned()
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
    pub plan: Option<serde_json::Value>,
}

/// The phase of a sync step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncPhase {
    /// Reading the source, mapped, into the index.
    #[default]
    Source,
    /// Reading the target and updating (or removing) what differs.
    Target,
    /// Creating the source records no target record matched.
    Create,
    /// Finished.
    Done,
}

/// How far a sync got: each side's cursor, committed with its page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncProgress {
    /// The phase.
    pub phase: SyncPhase,
    /// Cursor of the source listing.
    pub source_cursor: Option<String>,
    /// Source pages read.
    pub source_pages: u32,
    /// Mapped source records indexed.
    pub source_records: u64,
    /// Cursor of the target listing.
    pub target_cursor: Option<String>,
    /// Target pages done.
    pub target_pages: u32,
    /// Target records read.
    pub target_records: u64,
}

/// The end of one for-each item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// `succeeded`, `failed` or `skipped`.
    #[serde(rename = "s")]
    pub status: Status,
    /// What the op did: `created`, `updated`, `unchanged`, `removed`,
    /// `already-absent`, `read`, `absent`, or a dry run's plan.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The record's id, when the op returned one.
    #[serde(rename = "id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Why it failed.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a sync did with one source key, remembered so a resumed sync does
/// not create what a target record already matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeenMark {
    /// A target record has the key (updated or unchanged).
    Matched,
    /// The create phase wrote it.
    Created,
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
        }
    }
}

/// The durable store of runs.
#[derive(Debug, Clone)]
pub struct RunStore {
    db: sled::Db,
    runs: sled::Tree,
    steps: sled::Tree,
    pages: sled::Tree,
    items: sled::Tree,
    sync_index: sled::Tree,
    sync_seen: sled::Tree,
    signatures: sled::Tree,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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

fn step_prefix(run: &str, index: u32) -> Vec<u8> {
    format!("{run}/{index:05}/").into_bytes()
}

fn sync_key(run: &str, index: u32, key: &str) -> Vec<u8> {
    let mut k = step_prefix(run, index);
    k.extend_from_slice(key.as_bytes());
    k
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason: e.to_string() })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own plain structs to JSON cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

impl RunStore {
    /// Opens (or creates) the store in `dir`. One process at a time: a
    /// second gets [`StoreError::Locked`].
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new().path(dir).mode(sled::Mode::LowSpace).cache_capacity(CACHE_BYTES).open().map_err(|e| match e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("could not acquire lock") => {
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
                let found = <[u8; 4]>::try_from(bytes.as_ref()).map(u32::from_be_bytes).unwrap_or(0);
                // Version 1 differs only by fields that version 2 reads
                // with defaults; the upgrade is the version number.
                if found == 1 {
                    db.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                    db.flush()?;
                } else if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema { path: dir.display().to_string(), found });
                }
            }
        }
        Ok(RunStore {
            runs: db.open_tree("runs")?,
            steps: db.open_tree("steps")?,
            pages: db.open_tree("pages")?,
            items: db.open_tree("items")?,
            sync_index: db.open_tree("sync_index")?,
            sync_seen: db.open_tree("sync_seen")?,
            signatures: db.open_tree("webhook_signatures")?,
            db,
        })
    }

    /// A new, unique, time-sortable run id.
    pub fn new_run_id(&self) -> Result<String> {
        // sled's id generator is unique across restarts; the time prefix sorts.
        let seq = self.db.generate_id()?;
        Ok(format!("{:011x}-{:05x}", now_ms(), seq & 0xf_ffff))
    }

    /// Records a new run, durably.
    pub async fn create_run(&self, run: &RunRecord, step_ids: &[String]) -> Result<()> {
        let steps: Vec<(Vec<u8>, Vec<u8>)> = step_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (step_key(&run.id, i as u32), encode(&StepState::pending(id, i as u32))))
            .collect();
        (&self.runs, &self.steps)
            .transaction(|(runs, tx_steps)| {
                runs.insert(run.id.as_bytes(), encode(run))?;
                for (key, value) in &steps {
                    tx_steps.insert(key.as_slice(), value.as_slice())?;
                }
                Ok(())
            })
            .map_err(tx_error)?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Replaces a run record, durably.
    pub async fn commit_run(&self, run: &RunRecord) -> Result<()> {
        self.runs.insert(run.id.as_bytes(), encode(run))?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Replaces a step's state, durably, before the next step starts.
    pub async fn commit_step(&self, run: &str, step: &StepState) -> Result<()> {
        self.steps.insert(step_key(run, step.index), encode(step))?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Commits one page of a list step together with the step's new cursor,
    /// in one transaction: a restart resumes after the last committed page.
    pub async fn commit_page(&self, run: &str, step: &StepState, records_json: &str) -> Result<()> {
        let page_key = page_key(run, step.index, step.pages.saturating_sub(1));
        let step_bytes = encode(step);
        (&self.steps, &self.pages)
            .transaction(|(steps, pages)| {
                pages.insert(page_key.as_slice(), records_json.as_bytes())?;
                steps.insert(step_key(run, step.index), step_bytes.as_slice())?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Every finished item of a for-each step, group by group (a group is
    /// in completion order, not item order).
    pub fn items(&self, run: &str, index: u32) -> impl Iterator<Item = Result<(u64, ItemRecord)>> + use<> {
        self.items.scan_prefix(step_prefix(run, index)).flat_map(|entry| {
            let decoded: Result<Vec<(u64, ItemRecord)>> = entry.map_err(StoreError::from).and_then(|(key, value)| decode(&key, &value));
            match decoded {
                Ok(group) => group.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            }
        })
    }

    /// Records a group of finished items and the step's state, durably.
    /// The for-each calls it every few milliseconds rather than per item:
    /// one key and one flush cover the group (a key per item made sled
    /// clone a node per insert, most of the cost measured). Counts in the
    /// step state are a cache; a resumed step recounts from the items.
    pub async fn commit_items(&self, run: &str, step: &StepState, items: &[(u64, ItemRecord)]) -> Result<()> {
        // sled's ids are unique across restarts, so a group never
        // overwrites one committed before a crash.
        let group = self.db.generate_id()?;
        self.items.insert(item_group_key(run, step.index, group), encode(&items))?;
        self.steps.insert(step_key(run, step.index), encode(step))?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Adds one page of mapped source records to a sync's index, with the
    /// step's new cursor, in one transaction.
    pub async fn commit_sync_index(&self, run: &str, step: &StepState, entries: &[(String, String)]) -> Result<()> {
        let step_bytes = encode(step);
        (&self.steps, &self.sync_index)
            .transaction(|(steps, index)| {
                for (key, record) in entries {
                    index.insert(sync_key(run, step.index, key), record.as_bytes())?;
                }
                steps.insert(step_key(run, step.index), step_bytes.as_slice())?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// The mapped source record a sync indexed under `key`.
    pub fn sync_indexed(&self, run: &str, index: u32, key: &str) -> Result<Option<String>> {
        let k = sync_key(run, index, key);
        self.sync_index.get(&k)?.map(|v| String::from_utf8(v.to_vec()).map_err(|e| StoreError::Corrupt { key: key.to_owned(), reason: e.to_string() })).transpose()
    }

    /// What a sync has done with source `key`, if anything.
    pub fn sync_seen(&self, run: &str, index: u32, key: &str) -> Result<Option<SeenMark>> {
        Ok(self.sync_seen.get(sync_key(run, index, key))?.map(|v| if v.as_ref() == b"c" { SeenMark::Created } else { SeenMark::Matched }))
    }

    /// Marks keys a sync has handled, with the step's new state, in one
    /// transaction.
    pub async fn commit_sync_seen(&self, run: &str, step: &StepState, keys: &[(String, SeenMark)]) -> Result<()> {
        let step_bytes = encode(step);
        (&self.steps, &self.sync_seen)
            .transaction(|(steps, seen)| {
                for (key, mark) in keys {
                    let value: &[u8] = if *mark == SeenMark::Created { b"c" } else { b"m" };
                    seen.insert(sync_key(run, step.index, key), value)?;
                }
                steps.insert(step_key(run, step.index), step_bytes.as_slice())?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// The indexed source records no target record matched (and not yet
    /// created), in key order.
    pub fn sync_unseen(&self, run: &str, index: u32) -> impl Iterator<Item = Result<(String, String)>> + use<> {
        let prefix = step_prefix(run, index);
        let skip = prefix.len();
        let seen = self.sync_seen.clone();
        self.sync_index.scan_prefix(prefix).filter_map(move |entry| {
            let result = (|| {
                let (key, value) = entry?;
                if seen.contains_key(&key)? {
                    return Ok(None);
                }
                let name = String::from_utf8_lossy(&key[skip..]).into_owned();
                Ok(Some((name, String::from_utf8_lossy(&value).into_owned())))
            })();
            result.transpose()
        })
    }

    /// Drops a finished sync's index and marks, a thousand keys at a time:
    /// one batch of every key held a 100k-record index twice over in
    /// memory (950 MB measured), where chunks stay flat.
    pub fn clear_sync(&self, run: &str, index: u32) -> Result<()> {
        const CHUNK: usize = 1000;
        for tree in [&self.sync_index, &self.sync_seen] {
            loop {
                let keys: Vec<sled::IVec> = tree.scan_prefix(step_prefix(run, index)).keys().take(CHUNK).collect::<std::result::Result<_, _>>()?;
                if keys.is_empty() {
                    break;
                }
                let mut batch = sled::Batch::default();
                for key in keys {
                    batch.remove(key);
                }
                tree.apply_batch(batch)?;
            }
        }
        Ok(())
    }

    /// Remembers a webhook signature; `false` when it was seen before (a
    /// replay).
    pub async fn remember_signature(&self, workflow: &str, signature: &str, now_ms: u64) -> Result<bool> {
        let key = format!("{workflow}/{signature}");
        let fresh = self.signatures.compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(&now_ms.to_be_bytes()[..]))?.is_ok();
        if fresh {
            self.db.flush_async().await?;
        }
        Ok(fresh)
    }

    /// Forgets signatures of `workflow` first seen before `before_ms`: past
    /// the tolerance window their timestamps are refused anyway.
    pub fn forget_signatures(&self, workflow: &str, before_ms: u64) -> Result<usize> {
        let mut batch = sled::Batch::default();
        let mut dropped = 0;
        for entry in self.signatures.scan_prefix(format!("{workflow}/").as_bytes()) {
            let (k, v) = entry?;
            let seen = <[u8; 8]>::try_from(v.as_ref()).map(u64::from_be_bytes).unwrap_or(0);
            if seen < before_ms {
                batch.remove(k);
                dropped += 1;
            }
        }
        self.signatures.apply_batch(batch)?;
        Ok(dropped)
    }

    /// Runs that have not finished: interrupted ones, to resume.
    pub fn unfinished_runs(&self) -> Result<Vec<RunRecord>> {
        Ok(self.runs()?.into_iter().filter(|r| !r.status.is_finished()).collect())
    }

    /// One run.
    pub fn run(&self, id: &str) -> Result<RunRecord> {
        let bytes = self.runs.get(id.as_bytes())?.ok_or_else(|| StoreError::UnknownRun(id.to_owned()))?;
        decode(id.as_bytes(), &bytes)
    }

    /// Every run, oldest first.
    pub fn runs(&self) -> Result<Vec<RunRecord>> {
        self.runs.iter().map(|entry| {
            let (key, value) = entry?;
            decode(&key, &value)
        }).collect()
    }

    /// The steps of a run, in workflow order.
    pub fn steps(&self, run: &str) -> Result<Vec<StepState>> {
        self.steps
            .scan_prefix(format!("{run}/").as_bytes())
            .map(|entry| {
                let (key, value) = entry?;
                decode(&key, &value)
            })
            .collect()
    }

    /// The committed pages of a list step, each a JSON array of records.
    pub fn pages(&self, run: &str, index: u32) -> impl Iterator<Item = Result<String>> + use<> {
        self.pages.scan_prefix(format!("{run}/{index:05}/").as_bytes()).map(|entry| {
            let (key, value) = entry?;
            String::from_utf8(value.to_vec())
                .map_err(|e| StoreError::Corrupt { key: String::from_utf8_lossy(&key).into_owned(), reason: e.to_string() })
        })
    }
}

fn tx_error(e: sled::transaction::TransactionError) -> StoreError {
    match e {
        sled::transaction::TransactionError::Storage(e) | sled::transaction::TransactionError::Abort(e) => StoreError::Sled(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            trigger: "manual".into(),
            cancel_requested: false,
            resumes: 0,
        }
    }

    #[tokio::test]
    async fn items_are_recorded_in_groups_and_read_back_in_order() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RunStore::open(dir.path())?;
        let id = store.new_run_id()?;
        store.create_run(&run(&id), &["each".into()]).await?;
        let step = StepState::pending("each", 0);
        let done = |n| (n, ItemRecord { status: Status::Succeeded, action: Some("created".into()), id: Some(format!("cus_{n}")), error: None });
        store.commit_items(&id, &step, &[done(2), done(0)]).await?;
        store.commit_items(&id, &step, &[done(1)]).await?;
        let mut items: Vec<(u64, Option<String>)> = store.items(&id, 0).map(|r| r.map(|(n, i)| (n, i.id))).collect::<Result<_>>()?;
        items.sort();
        assert_eq!(items, vec![(0, Some("cus_0".into())), (1, Some("cus_1".into())), (2, Some("cus_2".into()))]);
        drop(store);
        let reopened = RunStore::open(dir.path())?;
        assert_eq!(reopened.items(&id, 0).count(), 3, "groups survive a reopen");
        Ok(())
    }

    #[tokio::test]
    async fn a_sync_index_yields_what_no_target_record_matched() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RunStore::open(dir.path())?;
        let id = store.new_run_id()?;
        store.create_run(&run(&id), &["sync".into()]).await?;
        let step = StepState::pending("sync", 0);
        let entries: Vec<(String, String)> = ["a", "b", "c"].iter().map(|k| (k.to_string(), format!("{{\"id\":\"{k}\"}}"))).collect();
        store.commit_sync_index(&id, &step, &entries).await?;
        store.commit_sync_seen(&id, &step, &[("b".into(), SeenMark::Matched)]).await?;
        assert_eq!(store.sync_indexed(&id, 0, "a")?.as_deref(), Some("{\"id\":\"a\"}"));
        assert_eq!(store.sync_seen(&id, 0, "b")?, Some(SeenMark::Matched));
        let unseen: Vec<String> = store.sync_unseen(&id, 0).map(|r| r.map(|(k, _)| k)).collect::<Result<_>>()?;
        assert_eq!(unseen, vec!["a".to_owned(), "c".to_owned()]);
        store.clear_sync(&id, 0)?;
        assert_eq!(store.sync_indexed(&id, 0, "a")?, None);
        Ok(())
    }

    #[tokio::test]
    async fn a_replayed_signature_is_recognised() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RunStore::open(dir.path())?;
        assert!(store.remember_signature("w", "sig1", 1_000).await?);
        assert!(!store.remember_signature("w", "sig1", 2_000).await?);
        assert!(store.remember_signature("other", "sig1", 2_000).await?);
        assert!(store.remember_signature("w", "sig2", 10_000).await?);
        // Forgotten once older than the window, and only those.
        assert_eq!(store.forget_signatures("w", 5_000)?, 1);
        assert!(store.remember_signature("w", "sig1", 10_001).await?);
        assert!(!store.remember_signature("w", "sig2", 10_002).await?);
        Ok(())
    }

    #[tokio::test]
    async fn committed_steps_and_pages_survive_a_reopen() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let id = {
            let store = RunStore::open(dir.path())?;
            let id = store.new_run_id()?;
            store.create_run(&run(&id), &["a".into(), "b".into()]).await?;
            let mut step = StepState::pending("a", 0);
            step.status = Status::Running;
            step.pages = 1;
            step.cursor = Some("cus_9".into());
            store.commit_page(&id, &step, r#"[{"id":"cus_9"}]"#).await?;
            id
        };
        let store = RunStore::open(dir.path())?;
        let steps = store.steps(&id)?;
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].cursor.as_deref(), Some("cus_9"));
        assert_eq!(steps[1].status, Status::Pending);
        let pages: Vec<String> = store.pages(&id, 0).collect::<Result<_>>()?;
        assert_eq!(pages, vec![r#"[{"id":"cus_9"}]"#.to_owned()]);
        assert_eq!(store.run(&id)?.status, Status::Running);
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
        let err = RunStore::open(dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("schema version 99"), "{err}");
        Ok(())
    }

    #[test]
    fn run_ids_are_unique_and_sort_by_time() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RunStore::open(dir.path())?;
        let a = store.new_run_id()?;
        let b = store.new_run_id()?;
        assert_ne!(a, b);
        assert!(a <= b || a[..11] == b[..11]);
        Ok(())
    }
}
