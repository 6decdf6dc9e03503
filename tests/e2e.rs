//! End-to-end tests of the whole system: real wasm components, a real sled
//! directory, and the vendor emulators over loopback HTTP. One test binary,
//! as in ripgrep, so the suite links once.

mod e2e {
    pub mod support;

    mod browser;
    mod conformance;
    mod console;
    mod contract;
    mod durability;
    mod expressions;
    mod fidelity;
    mod language;
    mod limits;
    mod metrics;
    mod output_files;
    mod plugins;
    mod sandboxing;
    mod schema;
    mod serve;
    mod state;
    mod stripe;
    mod templated;
    mod vendors;
    mod workflows;
}
