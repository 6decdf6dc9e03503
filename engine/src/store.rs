//! Durable run state in sled: runs, their steps, the pages a list step has
//! read (the records in a page file per step, sled pointing at them), the
//! items of a for-each, and the webhook signatures already seen; a sync's
//! sorted runs are files in a scratch directory beside them. Step and page
//! commits are flushed to disk before the caller goes on; for-each items are flushed in groups
//! (see [`RunStore::commit_items`]), and an item lost in the last group is
//! redone on resume with the same idempotency key, so the vendor does not
//! write twice. Credentials never reach this module: it stores workflow
//! text, inputs, records and messages only.

use std::path::{Path, PathBuf};
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
    /// Whether a list step keeps its records in the store for later steps
    /// (it does not when no later step can read them).
    #[serde(default = "yes")]
    pub records_kept: bool,
    /// How much of a list step's output file the last commit covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_file: Option<OutputMark>,
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
    /// Reading the source, mapped, into sorted runs.
    #[default]
    Source,
    /// Reading the target into sorted runs.
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
    signatures: sled::Tree,
    dir: PathBuf,
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
            signatures: db.open_tree("webhook_signatures")?,
            dir: dir.to_path_buf(),
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

    /// Opens a list step's page log to append pages to, positioned after
    /// the last committed page: bytes a crash left after it are dropped.
    ///
    /// Pages go to the step's page file (`pages/RUN/STEP.json` in the
    /// store's directory) as they are read, and are committed in groups by
    /// [`RunStore::start_commit`]. sled holds only a 17-byte pointer per
    /// page: a 60 KB value in sled costs a copy of its whole leaf on every
    /// insert, which was most of an export's time in the store.
    pub fn page_log(&self, run: &str, step: &StepState) -> Result<PageLog> {
        let path = self.page_file(run, step.index);
        let failed = |e: std::io::Error| StoreError::PageFile { path: path.display().to_string(), reason: e.to_string() };
        // The end of the last page that lives in the file (pages an older
        // store kept in sled itself do not).
        let mut offset = 0;
        for entry in self.pages.scan_prefix(step_prefix(run, step.index)).rev() {
            let (_, value) = entry?;
            if let Some(pointer) = PagePointer::decode(&value) {
                offset = pointer.offset + pointer.len;
                break;
            }
        }
        let parent = path.parent().unwrap_or(&path);
        std::fs::create_dir_all(parent).map_err(failed)?;
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(failed)?;
        file.set_len(offset).map_err(failed)?;
        std::io::Seek::seek(&mut &file, std::io::SeekFrom::Start(offset)).map_err(failed)?;
        Ok(PageLog { file: std::sync::Arc::new(file), path, offset, next_page: step.pages, pending: Vec::new(), dirs_synced: false })
    }

    /// Starts committing the pages appended to `log` since its last commit
    /// (or, with no log, only the step's state) together with the step's
    /// state (its cursor and counts after the last of them), in one
    /// transaction after the page file is synced: a restart resumes after
    /// the last committed page, and a page appended but not committed is
    /// read again. It runs on a blocking thread, so that the caller can read
    /// the next pages meanwhile. Start the next commit only after this one
    /// is waited for: commits of a step land in order.
    pub fn start_commit(&self, run: &str, step: &StepState, log: Option<&mut PageLog>) -> Commit {
        let (keys, file, path, sync_dirs) = match log {
            Some(log) => {
                let keys: Vec<(Vec<u8>, [u8; 17])> =
                    std::mem::take(&mut log.pending).iter().map(|(page, pointer)| (page_key(run, step.index, *page), pointer.encode())).collect();
                let sync_dirs = !keys.is_empty() && !log.dirs_synced;
                // Were this commit to fail, the step fails with it.
                log.dirs_synced |= sync_dirs;
                (keys, Some(log.file.clone()), log.path.clone(), sync_dirs)
            }
            None => (Vec::new(), None, self.page_file(run, step.index), false),
        };
        let (steps, pages, db) = (self.steps.clone(), self.pages.clone(), self.db.clone());
        let (step_key, step_bytes) = (step_key(run, step.index), encode(step));
        let shown = path.display().to_string();
        // One blocking task syncs, commits and flushes: sled's own
        // flush_async wakes every idle thread of its pool for each flush.
        let task = tokio::task::spawn_blocking(move || -> Result<()> {
            let failed = |e: std::io::Error| StoreError::PageFile { path: path.display().to_string(), reason: e.to_string() };
            if let Some(file) = file.filter(|_| !keys.is_empty()) {
                file.sync_data().map_err(failed)?;
            }
            #[cfg(unix)]
            if sync_dirs {
                // The file's entry, its run's directory and `pages/` itself
                // must be durable before sled points into the file.
                for dir in path.ancestors().skip(1).take(3) {
                    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(failed)?;
                }
            }
            (&steps, &pages)
                .transaction(|(steps, pages)| {
                    for (key, pointer) in &keys {
                        pages.insert(key.as_slice(), &pointer[..])?;
                    }
                    steps.insert(step_key.as_slice(), step_bytes.as_slice())?;
                    Ok(())
                })
                .map_err(tx_error)?;
            db.flush()?;
            Ok(())
        });
        Commit { task, path: shown }
    }

    /// The file holding a list step's pages.
    fn page_file(&self, run: &str, index: u32) -> PathBuf {
        self.dir.join("pages").join(run).join(format!("{index:05}.json"))
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

    /// A directory for a step's scratch files (a sync's sorted runs),
    /// inside the store's directory, created if need be.
    pub fn scratch_dir(&self, run: &str, index: u32) -> Result<PathBuf> {
        let dir = self.dir.join("scratch").join(run).join(format!("{index:05}"));
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Scratch { path: dir.display().to_string(), reason: e.to_string() })?;
        Ok(dir)
    }

    /// Removes a step's scratch files.
    pub fn remove_scratch(&self, run: &str, index: u32) -> Result<()> {
        let dir = self.dir.join("scratch").join(run).join(format!("{index:05}"));
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Scratch { path: dir.display().to_string(), reason: e.to_string() }),
            _ => {
                // The run's directory goes when its last step's does.
                let _ = std::fs::remove_dir(self.dir.join("scratch").join(run));
                Ok(())
            }
        }
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
        let path = self.page_file(run, index);
        let mut file: Option<std::fs::File> = None;
        self.pages.scan_prefix(format!("{run}/{index:05}/").as_bytes()).map(move |entry| {
            let (key, value) = entry?;
            let corrupt = |reason: String| StoreError::Corrupt { key: String::from_utf8_lossy(&key).into_owned(), reason };
            let bytes = match PagePointer::decode(&value) {
                Some(pointer) => {
                    let failed = |e: std::io::Error| StoreError::PageFile { path: path.display().to_string(), reason: e.to_string() };
                    let file = match &mut file {
                        Some(file) => file,
                        None => file.insert(std::fs::File::open(&path).map_err(failed)?),
                    };
                    read_page(file, pointer).map_err(failed)?
                }
                // Stores written before page files keep the records in sled.
                None => value.to_vec(),
            };
            String::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))
        })
    }
}

/// Where a committed page's records are in its step's page file. Encoded as
/// `@`, offset and length (big-endian u64s): a page stored in sled itself
/// (before page files) is a JSON array and starts with `[`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PagePointer {
    offset: u64,
    len: u64,
}

impl PagePointer {
    fn encode(self) -> [u8; 17] {
        let mut out = [0u8; 17];
        out[0] = b'@';
        out[1..9].copy_from_slice(&self.offset.to_be_bytes());
        out[9..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    fn decode(value: &[u8]) -> Option<PagePointer> {
        let (tag, rest) = value.split_first()?;
        let (offset, len) = rest.split_first_chunk::<8>()?;
        let len: &[u8; 8] = len.try_into().ok()?;
        (*tag == b'@').then(|| PagePointer { offset: u64::from_be_bytes(*offset), len: u64::from_be_bytes(*len) })
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
        self.task.await.map_err(|e| StoreError::PageFile { path: self.path, reason: e.to_string() })?
    }
}

/// A list step's page file, open for appending; see [`RunStore::page_log`].
#[derive(Debug)]
pub struct PageLog {
    file: std::sync::Arc<std::fs::File>,
    path: PathBuf,
    /// Where the next page goes (the file's position: pages are written in
    /// order, by this log alone).
    offset: u64,
    /// The number of the next page.
    next_page: u32,
    /// Pages appended since the last commit.
    pending: Vec<(u32, PagePointer)>,
    /// Whether the directories above the file are known to be durable.
    dirs_synced: bool,
}

impl PageLog {
    /// Writes a page to the file (not yet synced, not yet committed).
    pub fn append(&mut self, records_json: &str) -> Result<()> {
        use std::io::Write;
        (&*self.file)
            .write_all(records_json.as_bytes())
            .map_err(|e| StoreError::PageFile { path: self.path.display().to_string(), reason: e.to_string() })?;
        self.pending.push((self.next_page, PagePointer { offset: self.offset, len: records_json.len() as u64 }));
        self.offset += records_json.len() as u64;
        self.next_page += 1;
        Ok(())
    }

    /// Pages appended and not yet committed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Bytes appended and not yet committed.
    pub fn pending_bytes(&self) -> u64 {
        self.pending.iter().map(|(_, p)| p.len).sum()
    }
}

fn read_page(file: &mut std::fs::File, pointer: PagePointer) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let len = usize::try_from(pointer.len).map_err(|_| std::io::Error::other("page length does not fit in memory"))?;
    let mut bytes = vec![0; len];
    file.seek(SeekFrom::Start(pointer.offset))?;
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn tx_error(e: sled::transaction::TransactionError) -> StoreError {
    match e {
        sled::transaction::TransactionError::Storage(e) | sled::transaction::TransactionError::Abort(e) => StoreError::Sled(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl RunStore {
        /// Appends one page of a list step and commits it at once.
        async fn commit_page(&self, run: &str, step: &StepState, records_json: &str) -> Result<()> {
            let mut before = step.clone();
            before.pages = step.pages.saturating_sub(1);
            let mut log = self.page_log(run, &before)?;
            log.append(records_json)?;
            self.start_commit(run, step, Some(&mut log)).wait().await
        }
    }

    /// A store in a temporary directory with one run of these steps.
    async fn store_with_run(steps: &[&str]) -> Result<(tempfile::TempDir, RunStore, String), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RunStore::open(dir.path())?;
        let id = store.new_run_id()?;
        store.create_run(&run(&id), &steps.iter().map(|s| s.to_string()).collect::<Vec<_>>()).await?;
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
            trigger: "manual".into(),
            cancel_requested: false,
            resumes: 0,
        }
    }

    #[tokio::test]
    async fn items_are_recorded_in_groups_and_read_back_in_order() -> Result<(), Box<dyn std::error::Error>> {
        let (dir, store, id) = store_with_run(&["each"]).await?;
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
    async fn scratch_dirs_live_in_the_store_and_go_when_removed() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RunStore::open(dir.path())?;
        let scratch = store.scratch_dir("r1", 2)?;
        assert!(scratch.starts_with(dir.path()));
        std::fs::write(scratch.join("source-00000.jsonl"), "x")?;
        store.remove_scratch("r1", 2)?;
        assert!(!scratch.exists());
        assert!(!dir.path().join("scratch").join("r1").exists());
        store.remove_scratch("r1", 2)?;
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
    async fn pages_live_in_a_page_file_and_bytes_a_crash_left_are_overwritten() -> Result<(), Box<dyn std::error::Error>> {
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
        let pages: Vec<String> = store.pages(&id, 0).collect::<Result<_>>()?;
        assert_eq!(pages, vec![r#"[{"id":"cus_1"}]"#.to_owned(), r#"[{"id":"cus_2"}]"#.to_owned()]);
        assert_eq!(std::fs::metadata(&file)?.len(), 32, "the torn tail is gone");
        // sled holds pointers, not records.
        assert!(store.pages.iter().values().all(|v| v.map(|v| v.len() == 17).unwrap_or(false)));
        Ok(())
    }

    #[tokio::test]
    async fn pages_kept_in_sled_by_older_stores_still_read() -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, store, id) = store_with_run(&["all"]).await?;
        store.pages.insert(page_key(&id, 0, 0), &br#"[{"id":"old"}]"#[..])?;
        let mut step = StepState::pending("all", 0);
        step.pages = 2;
        store.commit_page(&id, &step, r#"[{"id":"new"}]"#).await?;
        let pages: Vec<String> = store.pages(&id, 0).collect::<Result<_>>()?;
        assert_eq!(pages, vec![r#"[{"id":"old"}]"#.to_owned(), r#"[{"id":"new"}]"#.to_owned()]);
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
