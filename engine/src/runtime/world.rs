//! Reads a component's imports and exports before it is compiled, and
//! refuses one that imports what this host does not serve or does not
//! export the connector interface, naming exactly what is wrong and how to
//! build without it. Compiling an 18 MB Python component takes seconds;
//! a component that could never be instantiated is refused before that,
//! and never cached.

use wasmparser::{Parser, Payload};

/// The interface every connector exports.
pub(super) const PLUGIN_EXPORT: &str = "weft:connector/plugin@0.1.0";

/// The weft interfaces a connector may import.
const WEFT_IMPORTS: &[&str] =
    &["weft:connector/types@0.1.0", "weft:connector/http@0.1.0", "weft:connector/log@0.1.0"];

/// The WASI 0.2 packages the host links (`wasmtime_wasi::p2`), every one
/// deny-by-default: no environment, arguments, files, sockets or name
/// lookups. Any 0.2.x version is served (wasmtime matches them by semver).
const WASI_PACKAGES: &[&str] =
    &["wasi:cli/", "wasi:clocks/", "wasi:filesystem/", "wasi:io/", "wasi:random/", "wasi:sockets/"];

/// What a component imports and exports at its top level.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct World {
    /// Top-level import names (`wasi:io/streams@0.2.9`).
    pub imports: Vec<String>,
    /// Top-level export names (`weft:connector/plugin@0.1.0`).
    pub exports: Vec<String>,
}

impl World {
    /// Reads the top-level imports and exports of the component `wasm`.
    /// `None` when the bytes do not parse as a component: compiling them
    /// says what is wrong with them better than this reader would.
    pub(super) fn read(wasm: &[u8]) -> Result<Option<World>, String> {
        let mut world = World::default();
        // Nested modules and components come as payloads of their own,
        // each opened by a `Version` and closed by an `End`.
        let mut depth = 0usize;
        for payload in Parser::new(0).parse_all(wasm) {
            let Ok(payload) = payload else { return Ok(None) };
            match payload {
                Payload::Version { encoding, .. } => {
                    if depth == 0 && encoding == wasmparser::Encoding::Module {
                        return Err("it is a core wasm module, not a component: build it as a component (Rust: `--target wasm32-wasip2`; Python: componentize-py; JavaScript: componentize-js)".to_owned());
                    }
                    depth += 1;
                }
                Payload::End(_) => depth = depth.saturating_sub(1),
                Payload::ComponentImportSection(section) if depth == 1 => {
                    for import in section {
                        let Ok(import) = import else { return Ok(None) };
                        world.imports.push(import.name.name.to_owned());
                    }
                }
                Payload::ComponentExportSection(section) if depth == 1 => {
                    for export in section {
                        let Ok(export) = export else { return Ok(None) };
                        world.exports.push(export.name.name.to_owned());
                    }
                }
                _ => {}
            }
        }
        Ok(Some(world))
    }

    /// Why this host cannot run the component, or `None` when its imports
    /// are all served and it exports the connector interface.
    pub(super) fn refusal(&self) -> Option<String> {
        let unserved: Vec<&str> =
            self.imports.iter().map(String::as_str).filter(|name| !served(name)).collect();
        let mut reasons = Vec::new();
        if !unserved.is_empty() {
            let mut reason = format!(
                "it imports {}, which this host does not serve (it serves weft:connector@0.1.0's http, log and types, and WASI 0.2's cli, clocks, filesystem, io, random and sockets, all deny-by-default)",
                unserved.join(", ")
            );
            if unserved.iter().any(|name| name.starts_with("wasi:http/")) {
                reason.push_str(
                    "; a connector's HTTP goes through weft:connector/http (`http.send`), where the connection's hosts, credential, rate limits, retries and size caps apply: build without wasi:http (componentize-js: `--disable http fetch-event`; Rust: do not depend on a wasi:http client; Python: do not import wasi:http bindings)",
                );
            }
            reasons.push(reason);
        }
        if !self.exports.iter().any(|name| name == PLUGIN_EXPORT) {
            let same_interface: Vec<&str> = self
                .exports
                .iter()
                .map(String::as_str)
                .filter(|name| name.starts_with("weft:connector/plugin@"))
                .collect();
            reasons.push(if same_interface.is_empty() {
                format!(
                    "it does not export {PLUGIN_EXPORT} (it exports {}): build it for the world `connector` of weft:connector@0.1.0 or 0.2.0 (`weft plugin wit` writes the WIT)",
                    if self.exports.is_empty() { "nothing".to_owned() } else { self.exports.join(", ") }
                )
            } else {
                format!(
                    "it exports {}, a version this host does not serve; this host serves {PLUGIN_EXPORT}",
                    same_interface.join(", ")
                )
            });
        }
        (!reasons.is_empty()).then(|| reasons.join("; and "))
    }
}

/// Whether the host links the import `name`.
fn served(name: &str) -> bool {
    if WEFT_IMPORTS.contains(&name) {
        return true;
    }
    WASI_PACKAGES.iter().any(|package| {
        name.strip_prefix(package)
            .and_then(|rest| rest.split_once('@'))
            .is_some_and(|(_, version)| version == "0.2" || version.starts_with("0.2."))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(imports: &[&str], exports: &[&str]) -> World {
        World {
            imports: imports.iter().map(|s| (*s).to_owned()).collect(),
            exports: exports.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn a_connector_importing_weft_and_wasi_is_accepted() {
        let served = world(
            &["wasi:io/streams@0.2.12", "wasi:cli/stderr@0.2.0", "weft:connector/http@0.1.0"],
            &[PLUGIN_EXPORT],
        );
        assert_eq!(served.refusal(), None);
        // 0.2.0's world: 0.1.0's export and `lookup`.
        let with_lookup = world(
            &["weft:connector/types@0.1.0", "weft:connector/http@0.1.0"],
            &[PLUGIN_EXPORT, "weft:connector/lookup@0.2.0"],
        );
        assert_eq!(with_lookup.refusal(), None);
    }

    #[test]
    fn a_wasi_http_import_is_named_with_the_flag_that_drops_it() {
        let refused = world(
            &["wasi:http/types@0.2.10", "wasi:http/outgoing-handler@0.2.10", "wasi:io/poll@0.2.9"],
            &[PLUGIN_EXPORT],
        )
        .refusal()
        .unwrap_or_default();
        assert!(
            refused.contains("imports wasi:http/types@0.2.10, wasi:http/outgoing-handler@0.2.10,"),
            "{refused}"
        );
        assert!(refused.contains("--disable http fetch-event"), "{refused}");
        assert!(!refused.contains("wasi:io/poll"), "served imports are not named: {refused}");
    }

    #[test]
    fn a_missing_or_other_version_export_is_named() {
        let none = world(&[], &["wasi:cli/run@0.2.0"]).refusal().unwrap_or_default();
        assert!(none.contains("does not export weft:connector/plugin@0.1.0"), "{none}");
        assert!(none.contains("wasi:cli/run@0.2.0"), "{none}");
        let newer = world(&[], &["weft:connector/plugin@0.9.0"]).refusal().unwrap_or_default();
        assert!(newer.contains("weft:connector/plugin@0.9.0, a version"), "{newer}");
    }

    #[test]
    fn wasi_of_another_major_version_is_not_served() {
        assert!(!served("wasi:io/streams@0.3.0"));
        assert!(!served("wasi:io/streams"));
        assert!(served("wasi:random/random@0.2.6"));
        assert!(!served("weft:connector/http@0.2.0"));
    }

    #[test]
    fn a_core_module_is_refused_as_not_a_component() {
        // The smallest core module: magic and version 1.
        let module = b"\0asm\x01\0\0\0";
        let refused = World::read(module).err().unwrap_or_default();
        assert!(refused.contains("core wasm module, not a component"), "{refused}");
    }
}
