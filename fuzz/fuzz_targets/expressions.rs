//! Fuzz target: see `fuzz/checks/expressions.rs` for the property it checks.
#![no_main]

#[path = "../checks/expressions.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
