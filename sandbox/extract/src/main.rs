//! `cargo run -p weft-spec-extract`: writes the extracts of the vendors'
//! descriptions into `sandbox/specs`, or with `--check` says which differ
//! from the committed ones without writing.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use weft_spec_extract::{VENDORS, extract, find_vendor_apis, specs_dir};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("weft-spec-extract: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => bail!("unknown argument {other:?}; usage: weft-spec-extract [--check]"),
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let vendor_apis = find_vendor_apis(&repo)
        .context("no vendor descriptions: set WEFT_VENDOR_APIS or put them at ../shared/vendor-apis beside the repository")?;
    let dir = specs_dir(&repo);
    let mut differ = Vec::new();
    for vendor in VENDORS {
        let text = extract(vendor, &vendor_apis)
            .with_context(|| format!("failed to extract {}", vendor.name))?;
        let path = dir.join(format!("{}.json", vendor.name));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed == text {
            continue;
        }
        differ.push(path.display().to_string());
        if !check {
            std::fs::write(&path, &text)
                .with_context(|| format!("failed to write {}", path.display()))?;
            eprintln!("wrote {} ({} bytes)", path.display(), text.len());
        }
    }
    if check && !differ.is_empty() {
        eprintln!("out of date: {}", differ.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    if differ.is_empty() {
        eprintln!("every extract in {} is current", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
