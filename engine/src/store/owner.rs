//! The one owner of the sled database: a thread that applies every read and
//! write in the order they are asked for, and one flusher thread that makes
//! writes durable in groups.
//!
//! Nothing of sled runs on the async workers. sled 0.34 can block a caller
//! for as long as a flush takes, and its `flush_async` deadlocks when several
//! run at once (spacejam/sled#1308): under a burst of run starts both tokio
//! workers ended up inside sled and the server stopped answering. Here a
//! caller sends a job and awaits its answer; a writer then awaits the flush
//! generation that covers its write. The owner applies every job waiting
//! before it asks for a flush, and the flusher calls the synchronous
//! `flush` in a loop, each call covering every write applied before it, so
//! concurrent commits share one fsync (a group commit) and there is never
//! more than one flush in flight.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use super::{Result, StoreError};

/// Jobs waiting for the owner thread, at most; a caller beyond that waits
/// to hand its job over (it does not block a thread while it waits).
const QUEUED_JOBS: usize = 1024;

/// Jobs the owner applies, at most, before it asks for a flush of their
/// writes (it asks sooner when no job waits).
const BATCH_JOBS: usize = 256;

/// The database as the owner thread holds it.
pub(super) struct Trees {
    pub(super) db: sled::Db,
    pub(super) runs: sled::Tree,
    pub(super) steps: sled::Tree,
    pub(super) pages: sled::Tree,
    pub(super) items: sled::Tree,
    pub(super) deliveries: sled::Tree,
    /// A row per run (what a list shows), by run id: the runs by time.
    pub(super) rows: sled::Tree,
    /// Run ids by workflow, status and trigger (see [`super::index`]).
    pub(super) index: sled::Tree,
    /// Who did what to a run, by run id and sequence.
    pub(super) history: sled::Tree,
    /// A run's HTTP figures per connection, by run id.
    pub(super) run_stats: sled::Tree,
    /// API tokens by id (see [`super::access`]).
    pub(super) tokens: sled::Tree,
    /// Console sessions by the SHA-256 of their cookie.
    pub(super) sessions: sled::Tree,
    /// Each workflow's state across runs, by workflow name (see
    /// [`super::state`]).
    pub(super) workflow_state: sled::Tree,
    /// Writes that asked for durability, counted: the generation of the last.
    written: u64,
    durability: Arc<Durability>,
}

impl Trees {
    /// Says that the writes applied so far must become durable; returns the
    /// flush generation that covers them (asked for once the jobs waiting
    /// now are applied).
    pub(super) fn written(&mut self) -> u64 {
        self.written += 1;
        self.written
    }
}

type Job = Box<dyn FnOnce(&mut Trees) + Send>;

/// Handle to the owner and flusher threads; dropping the last one stops
/// both after the jobs already queued and a last flush, and waits for them,
/// so the store's directory can be opened again at once.
pub(super) struct Owner {
    jobs: Option<mpsc::Sender<Job>>,
    durability: Arc<Durability>,
    owner: Option<JoinHandle<()>>,
    flusher: Option<JoinHandle<()>>,
}

impl Owner {
    /// Starts the threads over an open database.
    pub(super) fn start(db: sled::Db) -> Result<Owner> {
        let durability = Arc::new(Durability::new());
        let trees = Trees {
            runs: db.open_tree("runs")?,
            steps: db.open_tree("steps")?,
            pages: db.open_tree("pages")?,
            items: db.open_tree("items")?,
            // The tree's name predates deliveries being more than signatures.
            deliveries: db.open_tree("webhook_signatures")?,
            rows: db.open_tree(super::index::ROWS_TREE)?,
            index: db.open_tree(super::index::INDEX_TREE)?,
            history: db.open_tree("run_history")?,
            run_stats: db.open_tree("run_stats")?,
            tokens: db.open_tree("tokens")?,
            sessions: db.open_tree("sessions")?,
            workflow_state: db.open_tree("workflow_state")?,
            db: db.clone(),
            written: 0,
            durability: durability.clone(),
        };
        let unavailable = |e: std::io::Error| {
            StoreError::Unavailable(format!("cannot start a store thread: {e}"))
        };
        let flushing = durability.clone();
        let flusher = std::thread::Builder::new()
            .name("weft-store-flush".into())
            .spawn(move || flush_loop(&db, &flushing))
            .map_err(unavailable)?;
        let (sender, receiver) = mpsc::channel(QUEUED_JOBS);
        let owner = match std::thread::Builder::new()
            .name("weft-store".into())
            .spawn(move || own(trees, receiver))
        {
            Ok(owner) => owner,
            Err(e) => {
                durability.stop();
                let _ = flusher.join();
                return Err(unavailable(e));
            }
        };
        Ok(Owner { jobs: Some(sender), durability, owner: Some(owner), flusher: Some(flusher) })
    }

    /// Runs `f` on the owner thread and returns what it returned.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Trees) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |trees| {
            // A caller that gave up (a request that timed out) asked for
            // nothing any more: a run it did not see created is not created.
            if answer.is_closed() {
                return;
            }
            let _ = answer.send(f(trees));
        });
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the store is closing".into()))?;
        jobs.send(job)
            .await
            .map_err(|_| StoreError::Unavailable("the store thread has stopped".into()))?;
        answered.await.map_err(|_| {
            StoreError::Unavailable(
                "a store operation failed unexpectedly (its panic is in the log)".into(),
            )
        })?
    }

    /// Runs the write `f` on the owner thread and waits until it is durable.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Trees) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (value, generation) = self
            .call(move |trees| {
                let value = f(trees)?;
                Ok((value, trees.written()))
            })
            .await?;
        self.durability.wait(generation).await?;
        Ok(value)
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // The owner thread ends once its queue is closed and empty.
        drop(self.jobs.take());
        let me = std::thread::current().id();
        if let Some(owner) = self.owner.take()
            && owner.thread().id() != me
        {
            let _ = owner.join();
        }
        self.durability.stop();
        if let Some(flusher) = self.flusher.take()
            && flusher.thread().id() != me
        {
            let _ = flusher.join();
        }
    }
}

fn own(mut trees: Trees, mut jobs: mpsc::Receiver<Job>) {
    let mut asked = 0;
    while let Some(job) = jobs.blocking_recv() {
        apply(job, &mut trees);
        // The jobs waiting now are applied before a flush is asked for: a
        // sled transaction waits for a flush in progress (sled's
        // concurrency control), so a burst's writes go in together and
        // share the one flush that follows, rather than one flush each.
        let mut applied = 1;
        while applied < BATCH_JOBS
            && let Ok(job) = jobs.try_recv()
        {
            apply(job, &mut trees);
            applied += 1;
        }
        if trees.written > asked {
            asked = trees.written;
            trees.durability.request(asked);
        }
    }
}

fn apply(job: Job, trees: &mut Trees) {
    // A job that panics fails alone (its caller gets an error); the store
    // goes on for everyone else.
    if std::panic::catch_unwind(AssertUnwindSafe(|| job(trees))).is_err() {
        tracing::error!("run store: an operation panicked; it failed and the store goes on");
    }
}

/// What the flusher has made durable.
#[derive(Debug, Clone, Default)]
struct Flushed {
    /// Every write of this generation or before is on disk.
    through: u64,
    /// A flush failed: the disk refused, and no later write can be promised.
    failure: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct Requests {
    /// The newest generation a writer waits for.
    wanted: u64,
    /// The store is closing: flush what is wanted, then end.
    stop: bool,
}

/// Flush generations: writers ask, the flusher answers.
struct Durability {
    requests: Mutex<Requests>,
    wake: Condvar,
    flushed: watch::Sender<Flushed>,
}

impl Durability {
    fn new() -> Self {
        Durability {
            requests: Mutex::default(),
            wake: Condvar::new(),
            flushed: watch::Sender::new(Flushed::default()),
        }
    }

    fn request(&self, generation: u64) {
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        requests.wanted = requests.wanted.max(generation);
        self.wake.notify_one();
    }

    fn stop(&self) {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        self.wake.notify_one();
    }

    async fn wait(&self, generation: u64) -> Result<()> {
        let mut flushed = self.flushed.subscribe();
        let state = flushed
            .wait_for(|f| f.through >= generation || f.failure.is_some())
            .await
            .map_err(|_| StoreError::Unavailable("the store's flusher has stopped".into()))?;
        match (&state.failure, state.through >= generation) {
            (_, true) => Ok(()),
            (Some(failure), false) => Err(StoreError::Unavailable(format!(
                "writing to disk failed earlier, so nothing since is durable: {failure}"
            ))),
            (None, false) => Err(StoreError::Unavailable("the store's flusher has stopped".into())),
        }
    }
}

fn flush_loop(db: &sled::Db, durability: &Durability) {
    let mut done = 0;
    loop {
        let target = {
            let mut requests = durability.requests.lock().unwrap_or_else(PoisonError::into_inner);
            while requests.wanted <= done && !requests.stop {
                requests = durability.wake.wait(requests).unwrap_or_else(PoisonError::into_inner);
            }
            if requests.wanted <= done {
                return;
            }
            requests.wanted
        };
        // Every write of generation `target` was applied before it was
        // asked for, so this flush covers all of them.
        match db.flush() {
            Ok(_) => {
                done = target;
                durability.flushed.send_modify(|f| f.through = target);
            }
            Err(e) => {
                tracing::error!(error = %e, "run store: a flush failed; commits fail from now on");
                durability.flushed.send_modify(|f| f.failure = Some(e.to_string().into()));
                return;
            }
        }
    }
}
