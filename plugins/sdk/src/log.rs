//! Diagnostics recorded by the host with the run, through the `log` import.
//!
//! The host may drop lines past a per-call budget, so log what helps explain
//! a run (which key an upsert matched on, a vendor quirk that was worked
//! around), not every request. Never log a record's personal data in full.
//!
//! ```no_run
//! use weft_connector_sdk::log;
//!
//! log::info("matched customer by email");
//! log::warn(&format!("{} customers share that email; refusing to guess", 2));
//! ```

pub use crate::wit::weft::connector0_1_0::log::Level;

/// Records `message` at `level`.
pub fn log(level: Level, message: &str) {
    write(level, message);
}

/// Records fine-grained detail.
pub fn trace(message: &str) {
    write(Level::Trace, message);
}

/// Records detail useful when debugging.
pub fn debug(message: &str) {
    write(Level::Debug, message);
}

/// Records normal progress.
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// Records something odd that did not fail the call.
pub fn warn(message: &str) {
    write(Level::Warn, message);
}

/// Records a failure.
pub fn error(message: &str) {
    write(Level::Error, message);
}

#[cfg(target_arch = "wasm32")]
fn write(level: Level, message: &str) {
    crate::wit::weft::connector0_1_0::log::log(level, message);
}

// Outside the host (native unit tests of connector logic) there is no log
// import; standard error is the nearest thing.
#[cfg(not(target_arch = "wasm32"))]
fn write(level: Level, message: &str) {
    eprintln!("[{level:?}] {message}");
}
