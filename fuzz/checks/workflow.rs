//! Workflow files: parsing and checking any text gives a workflow or
//! diagnostics, never a panic, and every diagnostic points inside the file
//! (a line that exists, a column on it, the source line quoted as it is).

use std::collections::BTreeMap;
use std::path::Path;

use weft::connector::{AuthScheme, Manifest, Op, ResourceSpec, Setting};
use weft::workflow::{Diagnostics, Workflow};

/// Checks one input: the bytes as a workflow file (lossily UTF-8, as a file
/// read with `read_to_string` would have been refused otherwise).
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Workflow::parse(Path::new("fuzz.toml"), &text) {
        Ok(workflow) => {
            if let Err(diagnostics) = workflow.check_against(&manifests(&workflow)) {
                assert_inside(&text, &diagnostics);
            }
        }
        Err(diagnostics) => assert_inside(&text, &diagnostics),
    }
}

/// One manifest per connection, serving a `customers` resource with every
/// op (one irreversible), a page size limit and a required setting, so the
/// checks against manifests have something to find.
fn manifests(workflow: &Workflow) -> BTreeMap<String, Manifest> {
    let resource = ResourceSpec {
        name: "customers".into(),
        description: String::new(),
        ops: vec![Op::List, Op::Get, Op::Upsert, Op::Remove],
        irreversible: vec![Op::Remove],
        max_page_size: 100,
        default_page_size: 10,
        id_field: "id".into(),
    };
    let manifest = Manifest {
        name: "fuzz".into(),
        version: "0".into(),
        vendor: "fuzz".into(),
        description: String::new(),
        default_base_url: "http://127.0.0.1:1".into(),
        extra_hosts: Vec::new(),
        auth: AuthScheme::Bearer,
        resources: vec![resource],
        rate_limits: Vec::new(),
        settings: vec![Setting {
            name: "region".into(),
            description: String::new(),
            required: true,
        }],
    };
    workflow.connections.keys().map(|name| (name.clone(), manifest.clone())).collect()
}

fn assert_inside(text: &str, diagnostics: &Diagnostics) {
    assert!(!diagnostics.0.is_empty(), "an error with no diagnostic");
    let lines: Vec<&str> = text.split('\n').collect();
    for d in &diagnostics.0 {
        assert!(d.line >= 1 && d.line <= lines.len(), "line {} of {}: {d:?}", d.line, lines.len());
        let line = lines[d.line - 1];
        // `source_line` is the line without its terminator.
        assert_eq!(d.source_line, line, "{d:?}");
        let chars = line.chars().count();
        assert!(d.column >= 1 && d.column <= chars + 1, "column {} of {chars}: {d:?}", d.column);
        assert!(d.width >= 1 && d.column - 1 + d.width <= chars + 1, "width {}: {d:?}", d.width);
        // Rendering it must not panic either.
        let _ = d.to_string();
    }
}
