//! What an operator trusts by running a plugin, as `weft plugin inspect`
//! shows it: gathered from the manifest the plugin reports and the imports
//! its component declares, so a reviewer reads one list instead of the
//! plugin's source.

use serde::Serialize;

use crate::runtime::Plugin;

/// The capabilities a plugin asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// The component's SHA-256, the digest a connection pins with
    /// `plugin = { path, sha256 }`.
    pub sha256: String,
    /// Vendor, from the manifest.
    pub vendor: String,
    /// Connector version, from the manifest.
    pub version: String,
    /// Hosts the plugin may reach: its default base URL's host (a
    /// connection's `base_url` replaces it) and its `extra_hosts`. The host
    /// refuses every other host unless a connection's `allow_hosts` adds it.
    pub hosts: Vec<String>,
    /// Every op, as `resource.op`.
    pub ops: Vec<String>,
    /// The ops that cannot be undone, as `resource.op`: a step must allow
    /// them explicitly.
    pub irreversible: Vec<String>,
    /// Settings a connection hands the plugin.
    pub settings: Vec<String>,
    /// Host interfaces the component imports.
    pub imports: Vec<String>,
}

impl Capabilities {
    /// The capabilities of a loaded plugin.
    pub fn of(plugin: &Plugin) -> Capabilities {
        let manifest = plugin.manifest();
        let base_host = url::Url::parse(&manifest.default_base_url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned));
        let hosts = base_host.into_iter().chain(manifest.extra_hosts.iter().cloned()).collect();
        let mut ops = Vec::new();
        let mut irreversible = Vec::new();
        for resource in &manifest.resources {
            for op in &resource.ops {
                ops.push(format!("{}.{op}", resource.name));
                if resource.is_irreversible(*op) {
                    irreversible.push(format!("{}.{op}", resource.name));
                }
            }
        }
        Capabilities {
            sha256: plugin.digest().to_owned(),
            vendor: manifest.vendor.clone(),
            version: manifest.version.clone(),
            hosts,
            ops,
            irreversible,
            settings: manifest.settings.iter().map(|s| s.name.clone()).collect(),
            imports: plugin.imports().to_vec(),
        }
    }
}
