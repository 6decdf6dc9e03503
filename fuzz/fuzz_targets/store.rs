//! Fuzz target: see `fuzz/checks/store.rs` for the property it checks.
#![no_main]

#[path = "../checks/store.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
