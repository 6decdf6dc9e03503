//! Shared by the build scripts that need connector components: builds plugin
//! crates for `wasm32-wasip2` with a nested cargo into its own target dir
//! (the pattern of wasmtime's test-programs), so `cargo build` and `cargo
//! test` at the root need no separate step.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `packages` (cargo package names) and returns, per package, the path
/// of its `.wasm` component. `workspace` is the repository root.
pub fn build_plugins(workspace: &Path, packages: &[&str]) -> Vec<PathBuf> {
    println!("cargo:rerun-if-changed={}", workspace.join("plugins").display());
    println!("cargo:rerun-if-changed={}", workspace.join("wit").display());
    println!("cargo:rerun-if-changed={}", workspace.join("Cargo.lock").display());
    println!("cargo:rerun-if-env-changed=WEFT_PLUGIN_TARGET_DIR");

    // One target dir for every build script that builds plugins, so they
    // share compiled dependencies; never the outer build's own dir, whose
    // lock the outer cargo holds.
    let target_dir = std::env::var_os("WEFT_PLUGIN_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target").join("plugins"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "plugin", "--locked"])
        .arg("--target-dir")
        .arg(&target_dir);
    for package in packages {
        command.args(["-p", package]);
    }
    // Flags meant for the host build must not leak into the wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_LLVM_COV",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(var);
    }
    let status =
        command.status().unwrap_or_else(|e| panic!("cannot run cargo to build the plugins: {e}"));
    if !status.success() {
        panic!(
            "building the plugins {packages:?} for wasm32-wasip2 failed ({status}); is the target installed? \
             run `rustup target add wasm32-wasip2`"
        );
    }
    packages
        .iter()
        .map(|package| {
            target_dir
                .join("wasm32-wasip2")
                .join("plugin")
                .join(format!("{}.wasm", package.replace('-', "_")))
        })
        .collect()
}
