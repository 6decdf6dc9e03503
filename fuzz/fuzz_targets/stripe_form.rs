//! Fuzz target: see `fuzz/checks/stripe_form.rs` for the property it checks.
#![no_main]

#[path = "../checks/stripe_form.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
