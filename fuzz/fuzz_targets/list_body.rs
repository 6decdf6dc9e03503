//! Fuzz target: see `fuzz/checks/list_body.rs` for the property it checks.
#![no_main]

#[path = "../checks/list_body.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
