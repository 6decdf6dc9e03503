//! The extracts committed in `sandbox/specs` are what the extractor makes
//! of the vendors' descriptions today: when `../shared/vendor-apis` is
//! there, each is regenerated and compared, so an extract cannot drift from
//! its description or from the extractor.

use std::path::Path;

use weft_spec_extract::{HAND_WRITTEN, VENDORS, extract, find_vendor_apis, specs_dir};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn every_committed_extract_is_what_the_extractor_makes_of_the_description() {
    let Some(vendor_apis) = find_vendor_apis(repo()) else {
        // On CI the descriptions must be there: this check must never pass
        // by not running.
        assert!(
            std::env::var("CI").map_or(true, |ci| ci != "true"),
            "CI=true but ../shared/vendor-apis is missing"
        );
        eprintln!(
            "skipping: no ../shared/vendor-apis beside the repository (set WEFT_VENDOR_APIS)"
        );
        return;
    };
    let mut stale = Vec::new();
    for vendor in VENDORS {
        let fresh = extract(vendor, &vendor_apis)
            .unwrap_or_else(|error| panic!("{}: {error}", vendor.name));
        let path = specs_dir(repo()).join(format!("{}.json", vendor.name));
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        if committed != fresh {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "out of date, regenerate with `cargo run -p weft-spec-extract`: {stale:?}"
    );
}

#[test]
fn every_extract_in_the_directory_is_generated_or_known_to_be_hand_written() {
    let mut names: Vec<String> = std::fs::read_dir(specs_dir(repo()))
        .expect("sandbox/specs")
        .filter_map(|entry| {
            entry.ok()?.file_name().to_str()?.strip_suffix(".json").map(str::to_owned)
        })
        .collect();
    names.sort();
    let mut known: Vec<String> = VENDORS
        .iter()
        .map(|v| v.name.to_owned())
        .chain(HAND_WRITTEN.iter().map(|n| (*n).to_owned()))
        .collect();
    known.sort();
    assert_eq!(names, known);
}
