//! The threads expressions are evaluated on, apart from the async workers:
//! an evaluation may take up to its budget of steps and time, and a
//! runaway one must not stall the server's HTTP handling, timers or other
//! runs. Each thread has a large stack, of which evaluations may use
//! [`STACK_BUDGET`]; the rest is room for what runs below the meter (jaq's
//! printer, dropping a value [`super::meter::MAX_VALUE_DEPTH`] deep).

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use super::meter;

/// The stack of each evaluation thread. Only the pages an evaluation
/// touches are ever committed.
const THREAD_STACK: usize = 64 << 20;

/// How much of it an evaluation's recursion may use before it fails.
const STACK_BUDGET: usize = 40 << 20;

/// Work for an evaluation thread.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    queue: mpsc::Sender<Job>,
}

static POOL: OnceLock<Result<Pool, String>> = OnceLock::new();

/// How many evaluation threads: one per core, at least two (so one
/// expression at its budget does not hold up all others), at most eight.
fn thread_count() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8)
}

fn start() -> Result<Pool, String> {
    let (queue, jobs) = mpsc::channel::<Job>();
    let jobs = std::sync::Arc::new(Mutex::new(jobs));
    for i in 0..thread_count() {
        let jobs = jobs.clone();
        std::thread::Builder::new()
            .name(format!("weft-expr-{i}"))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                meter::set_stack_floor(STACK_BUDGET);
                loop {
                    let job = {
                        let receiver =
                            jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        receiver.recv()
                    };
                    let Ok(job) = job else { return };
                    // A job reports its own failures; a panic in one must
                    // not take the thread with it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .map_err(|e| format!("cannot start the expression evaluation threads: {e}"))?;
    }
    Ok(Pool { queue })
}

/// Queues `job` on an evaluation thread.
pub(crate) fn submit(job: Job) -> Result<(), String> {
    match POOL.get_or_init(start) {
        Ok(pool) => pool
            .queue
            .send(job)
            .map_err(|_| "the expression evaluation threads have stopped".to_owned()),
        Err(e) => Err(e.clone()),
    }
}
