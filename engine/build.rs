//! Builds the first-party connectors so the `weft` binary can embed them.

#[path = "../build-support/plugins.rs"]
mod plugins;

use std::path::{Path, PathBuf};

/// The connectors shipped inside weft: (built-in name, cargo package).
const BUILTIN: &[(&str, &str)] = &[
    ("stripe", "weft-plugin-stripe"),
    ("stripe-scim", "weft-plugin-stripe-scim"),
    ("baremetrics", "weft-plugin-baremetrics"),
    ("metronome", "weft-plugin-metronome"),
    ("growpanel", "weft-plugin-growpanel"),
];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("engine/ sits in the workspace");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let packages: Vec<&str> = BUILTIN.iter().map(|(_, package)| *package).collect();
    let built = plugins::build_plugins(workspace, &packages);

    let mut table = String::from(
        "/// The connectors compiled into this binary: (name, component bytes).\npub static BUILTIN: &[(&str, &[u8])] = &[\n",
    );
    for ((name, _), wasm) in BUILTIN.iter().zip(&built) {
        let copy = out_dir.join(format!("{name}.wasm"));
        std::fs::copy(wasm, &copy)
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", wasm.display()));
        table.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", path_str(&copy)));
    }
    table.push_str("];\n");
    std::fs::write(out_dir.join("builtin.rs"), table).expect("cannot write builtin.rs");
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}
