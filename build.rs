//! Builds the test-only plugins the end-to-end tests load from disk.

#[path = "build-support/plugins.rs"]
mod plugins;

use std::path::PathBuf;

fn main() {
    let workspace =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let built = plugins::build_plugins(&workspace, &["weft-plugin-hostile"]);
    println!("cargo:rustc-env=WEFT_HOSTILE_WASM={}", built[0].display());
}
