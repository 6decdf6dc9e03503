//! Durable run state in sled: runs, their steps, and the pages a list step
//! has read. Every commit is flushed to disk before the caller goes on, so a
//! crash loses no completed work. Credentials never reach this module: it
//! stores workflow text, inputs, records and messages only.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sled::Transactional;

/// The on-disk format version. Bump it, and add a migration in
/// [`RunStore::open`], whenever a stored type changes shape.
pub const SCHEMA_VERSION: u32 = 1;

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

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason: e.to_string() })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own plain structs to JSON cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

impl RunStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new().path(dir).mode(sled::Mode::LowSpace).open()?;
        match db.get(SCHEMA_KEY)? {
            None => {
                db.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            Some(bytes) => {
                let found = <[u8; 4]>::try_from(bytes.as_ref()).map(u32::from_be_bytes).unwrap_or(0);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema { path: dir.display().to_string(), found });
                }
            }
        }
        Ok(RunStore { runs: db.open_tree("runs")?, steps: db.open_tree("steps")?, pages: db.open_tree("pages")?, db })
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
        }
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
