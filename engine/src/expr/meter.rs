//! The budget of one expression evaluation, kept per thread so that jaq's
//! interpreter and its values can charge it without a context to carry.
//!
//! jaq has no way to interrupt a filter. Every place where it does work
//! charges a step here instead: each term it runs (through the program
//! lookup, which [`super::value`] meters) and each operation on a value
//! (arithmetic, comparison, indexing, building arrays and objects). Values
//! charge the bytes they produce. Every [`CHECK_EVERY`] steps the clock and
//! the cancel flag are read (the clock first at the first such checkpoint,
//! so a short evaluation never reads it); the stack is checked at every
//! step. When
//! something runs out, the evaluation is unwound with
//! [`std::panic::resume_unwind`] (no panic hook, no message) to the
//! [`run`] that armed it, which turns it into an [`Exhausted`]. An
//! unwind is the only exit jq code cannot catch: a jaq error would be
//! swallowed by `try` or `?` and the loop would go on.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[cfg(not(panic = "unwind"))]
compile_error!(
    "expression budgets stop an evaluation by unwinding its stack; build weft with panic = \"unwind\""
);

/// Steps between two reads of the clock and of the cancel flag.
const CHECK_EVERY: u64 = 1024;

/// How deep values may nest. Dropping, comparing and printing a value
/// recurse once per level on whatever thread holds it (an async worker has
/// 2 MiB of stack), so the depth is bounded where values are built.
pub const MAX_VALUE_DEPTH: usize = 512;

/// What an evaluation ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// Evaluation steps.
    Steps(u64),
    /// Bytes of values produced.
    Bytes(u64),
    /// Outputs.
    Outputs(u64),
    /// Wall time.
    Time(Duration),
    /// Nesting depth of a value it built.
    Depth,
    /// Stack for its recursion.
    Stack,
    /// It was asked to stop (a cancelled run, a shutdown, a caller that
    /// gave up).
    Stopped,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exhausted::Steps(n) => {
                write!(f, "exceeded its budget of {} evaluation steps", thousands(*n))
            }
            Exhausted::Bytes(n) => {
                write!(f, "exceeded its budget of {} of values produced", byte_size(*n))
            }
            Exhausted::Outputs(n) => {
                write!(f, "produced more than its budget of {} outputs", thousands(*n))
            }
            Exhausted::Time(d) => {
                write!(f, "ran longer than its budget of {}", humantime::format_duration(*d))
            }
            Exhausted::Depth => {
                write!(f, "built a value nested deeper than {MAX_VALUE_DEPTH} levels")
            }
            Exhausted::Stack => write!(f, "recursed deeper than the evaluator's stack allows"),
            Exhausted::Stopped => {
                write!(f, "was stopped: the run was cancelled or the process is shutting down")
            }
        }
    }
}

/// `10000000` as `10,000,000`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn byte_size(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{} bytes", thousands(n))
    }
}

/// What one evaluation may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Evaluation steps.
    pub steps: u64,
    /// Bytes of values produced.
    pub bytes: u64,
    /// Wall time.
    pub time: Duration,
}

/// The unwind payload: the reason itself is kept in [`STATE`], so that
/// nothing is allocated while a budget is being enforced.
struct Unwind;

/// The hot part of the meter: plain cells, so reading them is one load.
struct State {
    armed: Cell<bool>,
    steps_left: Cell<u64>,
    bytes_left: Cell<u64>,
    /// The lowest stack address an evaluation may reach; 0 when unarmed.
    stack_floor: Cell<usize>,
    deadline: Cell<Option<Instant>>,
    limits: Cell<Limits>,
    exhausted: Cell<Option<Exhausted>>,
    /// The lowest stack address any evaluation on this thread may reach,
    /// set by the thread that owns the stack ([`set_stack_floor`]).
    thread_floor: Cell<usize>,
}

thread_local! {
    static STATE: State = const {
        State {
            armed: Cell::new(false),
            steps_left: Cell::new(u64::MAX),
            bytes_left: Cell::new(u64::MAX),
            stack_floor: Cell::new(0),
            deadline: Cell::new(None),
            limits: Cell::new(Limits { steps: 0, bytes: 0, time: Duration::ZERO }),
            exhausted: Cell::new(None),
            thread_floor: Cell::new(0),
        }
    };
    static CANCEL: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// An address inside the current stack frame.
#[inline(always)]
fn stack_position() -> usize {
    let marker = 0u8;
    std::ptr::addr_of!(marker) as usize
}

/// Declares that evaluations on this thread may use the stack down to
/// `budget` bytes below the caller's frame. Called once by each evaluation
/// thread as it starts.
pub(crate) fn set_stack_floor(budget: usize) {
    STATE.with(|s| s.thread_floor.set(stack_position().saturating_sub(budget)));
}

/// Charges one evaluation step.
#[inline]
pub(crate) fn step() {
    STATE.with(|s| {
        let left = s.steps_left.get();
        if left % CHECK_EVERY == 0 {
            checkpoint(s, left);
        }
        s.steps_left.set(left.wrapping_sub(1));
        if stack_position() < s.stack_floor.get() {
            exhaust(s, Exhausted::Stack);
        }
    });
}

/// Charges `n` steps at once (work a native does in one call).
pub(crate) fn steps(n: u64) {
    charge(n, 0);
}

/// Charges `steps` steps and `bytes` bytes at once: what building `steps`
/// slots of an array or object costs.
pub(crate) fn charge(steps: u64, bytes: u64) {
    STATE.with(|s| {
        if !s.armed.get() {
            return;
        }
        let left = s.steps_left.get();
        if steps > left {
            exhaust(s, Exhausted::Steps(s.limits.get().steps));
        }
        let after = left - steps;
        s.steps_left.set(after);
        // Crossing a checkpoint boundary checks as the single steps would.
        if after == 0 || left / CHECK_EVERY != after / CHECK_EVERY {
            checkpoint(s, after);
        }
        let bytes_left = s.bytes_left.get();
        if bytes > bytes_left {
            exhaust(s, Exhausted::Bytes(s.limits.get().bytes));
        }
        s.bytes_left.set(bytes_left - bytes);
    });
}

/// Charges `n` bytes of values about to be produced. Called before the
/// allocation, so a value that would not fit is never built.
#[inline]
pub(crate) fn bytes(n: u64) {
    STATE.with(|s| {
        let left = s.bytes_left.get();
        if n > left {
            if s.armed.get() {
                exhaust(s, Exhausted::Bytes(s.limits.get().bytes));
            }
            return;
        }
        s.bytes_left.set(left - n);
    });
}

/// Fails the evaluation if a value `depth` levels deep may not be built.
#[inline]
pub(crate) fn depth(depth: usize) {
    if depth > MAX_VALUE_DEPTH {
        STATE.with(|s| {
            if s.armed.get() {
                exhaust(s, Exhausted::Depth);
            }
        });
    }
}

/// Fails the evaluation with `reason` (the output count, which the caller
/// keeps).
pub(crate) fn fail(reason: Exhausted) {
    STATE.with(|s| {
        if s.armed.get() {
            exhaust(s, reason);
        }
    });
}

#[cold]
fn checkpoint(s: &State, left: u64) {
    if !s.armed.get() {
        // Unarmed: never run out.
        s.steps_left.set(u64::MAX);
        return;
    }
    if left == 0 {
        exhaust(s, Exhausted::Steps(s.limits.get().steps));
    }
    // The clock starts at the first checkpoint, a few microseconds in: an
    // evaluation shorter than that never reads it.
    let now = Instant::now();
    match s.deadline.get() {
        None => s.deadline.set(now.checked_add(s.limits.get().time)),
        Some(deadline) if now >= deadline => exhaust(s, Exhausted::Time(s.limits.get().time)),
        Some(_) => {}
    }
    if CANCEL.with(|c| c.borrow().as_ref().is_some_and(|flag| flag.load(Ordering::Relaxed))) {
        exhaust(s, Exhausted::Stopped);
    }
}

#[cold]
fn exhaust(s: &State, reason: Exhausted) {
    // Disarm first: whatever runs while the stack unwinds (drops) must not
    // unwind again, which would abort the process.
    s.armed.set(false);
    s.stack_floor.set(0);
    s.steps_left.set(u64::MAX);
    s.bytes_left.set(u64::MAX);
    s.exhausted.set(Some(reason));
    std::panic::resume_unwind(Box::new(Unwind));
}

/// How an evaluation run under a meter ended when it did not return.
#[derive(Debug)]
pub(crate) enum Interrupted {
    /// It ran out of something.
    Exhausted(Exhausted),
    /// The evaluator itself panicked (a bug in jaq or here): the message.
    Panicked(String),
}

/// Runs `job` with `cancel` as the flag that stops every evaluation in it
/// (set when the run is cancelled, the process shuts down, or the caller
/// stops waiting).
pub(crate) fn with_cancel<T>(cancel: &Arc<AtomicBool>, job: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CANCEL.with(|c| *c.borrow_mut() = None);
        }
    }
    CANCEL.with(|c| *c.borrow_mut() = Some(cancel.clone()));
    let _reset = Reset;
    job()
}

/// Runs one evaluation under `limits` on the current thread. Calls do not
/// nest.
pub(crate) fn run<T>(limits: Limits, evaluation: impl FnOnce() -> T) -> Result<T, Interrupted> {
    if CANCEL.with(|c| c.borrow().as_ref().is_some_and(|flag| flag.load(Ordering::Relaxed))) {
        return Err(Interrupted::Exhausted(Exhausted::Stopped));
    }
    STATE.with(|s| {
        s.limits.set(limits);
        s.steps_left.set(limits.steps);
        s.bytes_left.set(limits.bytes);
        s.deadline.set(None);
        s.exhausted.set(None);
        s.stack_floor.set(s.thread_floor.get());
        s.armed.set(true);
    });
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(evaluation));
    let reason = STATE.with(|s| {
        s.armed.set(false);
        s.stack_floor.set(0);
        s.steps_left.set(u64::MAX);
        s.bytes_left.set(u64::MAX);
        s.deadline.set(None);
        s.exhausted.take()
    });
    match result {
        Ok(value) => Ok(value),
        Err(payload) if payload.is::<Unwind>() => {
            Err(Interrupted::Exhausted(reason.unwrap_or(Exhausted::Stopped)))
        }
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(Interrupted::Panicked(message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(steps: u64, bytes: u64) -> Limits {
        Limits { steps, bytes, time: Duration::from_secs(60) }
    }

    #[test]
    fn steps_run_out_and_the_thread_is_unarmed_after() {
        let outcome = run(limits(10_000, u64::MAX), || {
            loop {
                step();
            }
        });
        assert!(
            matches!(outcome, Err(Interrupted::Exhausted(Exhausted::Steps(10_000)))),
            "{outcome:?}"
        );
        // Unarmed again: charging is free and never fails.
        for _ in 0..100_000 {
            step();
        }
        bytes(u64::MAX);
    }

    #[test]
    fn bytes_are_refused_before_they_are_built() {
        let outcome = run(limits(u64::MAX, 1000), || {
            bytes(600);
            bytes(600);
        });
        assert!(
            matches!(outcome, Err(Interrupted::Exhausted(Exhausted::Bytes(1000)))),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_set_cancel_flag_stops_the_loop_at_the_next_checkpoint() {
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let outcome = with_cancel(&cancel, || {
            run(limits(u64::MAX - 1, u64::MAX), || {
                let mut n = 0u64;
                loop {
                    n += 1;
                    if n == 5000 {
                        flag.store(true, Ordering::Relaxed);
                    }
                    step();
                }
            })
        });
        assert!(matches!(outcome, Err(Interrupted::Exhausted(Exhausted::Stopped))), "{outcome:?}");
    }

    #[test]
    fn a_deadline_stops_the_loop() {
        let started = Instant::now();
        let outcome = run(
            Limits { steps: u64::MAX - 1, bytes: u64::MAX, time: Duration::from_millis(50) },
            || loop {
                step();
            },
        );
        assert!(matches!(outcome, Err(Interrupted::Exhausted(Exhausted::Time(_)))), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(thousands(10_000_000), "10,000,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(
            Exhausted::Bytes(64 << 20).to_string(),
            "exceeded its budget of 64 MiB of values produced"
        );
    }
}
