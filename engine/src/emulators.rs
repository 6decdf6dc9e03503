//! Which of the sandbox's vendor emulators stands in for a connector, in
//! `weft run --sandbox` and `weft plugin check --sandbox`.
//!
//! A connector names its vendor in its manifest (`vendor = "GrowPanel"`),
//! so a third-party connector (`acme-growpanel.wasm`) finds the GrowPanel
//! emulator as the built-in one does. Where one vendor has several
//! emulators (Stripe's customers API and its Dashboard SCIM API), the
//! emulator named like the connector wins, and otherwise the connection
//! says which with `sandbox = "stripe-scim"`. A connector with no emulator
//! is refused: a sandbox run never reaches a real vendor. Which vendor each
//! emulator stands in for is the emulator crate's to say
//! ([`weft_sandbox::vendors`]).

use weft_sandbox::Endpoint;
use weft_sandbox::vendors::vendor_of as emulated_vendor;

use crate::connector::Manifest;

/// Why no emulator could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmulatorError {
    /// The emulator asked for by name does not exist.
    #[error("the sandbox has no emulator named {asked:?}; it has {available}")]
    Unknown {
        /// The name asked for.
        asked: String,
        /// Every emulator, with its vendor.
        available: String,
    },
    /// No emulator stands in for the connector's vendor.
    #[error(
        "the sandbox has no emulator for {connector} (vendor {vendor:?}); it has {available}; if one of them serves the same API, name it with `sandbox = \"NAME\"` on the connection (`--emulator NAME` for `weft plugin check`)"
    )]
    NoVendor {
        /// The connector's name.
        connector: String,
        /// Its manifest's vendor.
        vendor: String,
        /// Every emulator, with its vendor.
        available: String,
    },
    /// Several emulators stand in for the vendor and none is named like
    /// the connector.
    #[error(
        "vendor {vendor:?} of {connector} has several emulators in the sandbox ({candidates}); name one with `sandbox = \"NAME\"` on the connection (`--emulator NAME` for `weft plugin check`)"
    )]
    Ambiguous {
        /// The connector's name.
        connector: String,
        /// Its manifest's vendor.
        vendor: String,
        /// The emulators of that vendor.
        candidates: String,
    },
}

/// The emulator of `endpoints` that stands in for the connector of
/// `manifest`: the one `asked` names, else the one of its vendor (the one
/// named like the connector when the vendor has several).
pub fn choose<'a>(
    endpoints: &'a [Endpoint],
    manifest: &Manifest,
    asked: Option<&str>,
) -> Result<&'a Endpoint, EmulatorError> {
    if let Some(asked) = asked {
        return endpoints.iter().find(|e| e.vendor == asked).ok_or_else(|| {
            EmulatorError::Unknown { asked: asked.to_owned(), available: available(endpoints) }
        });
    }
    let vendor = plain(&manifest.vendor);
    let candidates: Vec<&Endpoint> = endpoints
        .iter()
        .filter(|e| emulated_vendor(e.vendor).is_some_and(|v| plain(v) == vendor))
        .collect();
    match candidates.as_slice() {
        [only] => Ok(only),
        [] => Err(EmulatorError::NoVendor {
            connector: manifest.name.clone(),
            vendor: manifest.vendor.clone(),
            available: available(endpoints),
        }),
        several => several.iter().copied().find(|e| e.vendor == manifest.name).ok_or_else(|| {
            EmulatorError::Ambiguous {
                connector: manifest.name.clone(),
                vendor: manifest.vendor.clone(),
                candidates: several.iter().map(|e| e.vendor).collect::<Vec<_>>().join(", "),
            }
        }),
    }
}

/// `stripe (Stripe), growpanel (GrowPanel), …`
fn available(endpoints: &[Endpoint]) -> String {
    endpoints
        .iter()
        .map(|e| format!("{} ({})", e.vendor, emulated_vendor(e.vendor).unwrap_or("?")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Lower-case letters and digits only: `Grow Panel` and `growpanel` are one.
fn plain(name: &str) -> String {
    name.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::AuthScheme;

    fn endpoints() -> Vec<Endpoint> {
        weft_sandbox::vendors::EMULATED
            .iter()
            .map(|(name, _)| Endpoint {
                vendor: name,
                base_url: format!("http://127.0.0.1/{name}"),
                api_key: "k".into(),
            })
            .collect()
    }

    fn manifest(name: &str, vendor: &str) -> Manifest {
        Manifest {
            name: name.into(),
            version: "1".into(),
            vendor: vendor.into(),
            description: String::new(),
            default_base_url: "https://api.example.com".into(),
            extra_hosts: vec![],
            auth: AuthScheme::Bearer,
            resources: vec![],
            rate_limits: vec![],
            settings: vec![],
        }
    }

    fn chosen(
        name: &str,
        vendor: &str,
        asked: Option<&str>,
    ) -> Result<&'static str, EmulatorError> {
        let endpoints = endpoints();
        choose(&endpoints, &manifest(name, vendor), asked).map(|e| e.vendor)
    }

    #[test]
    fn a_third_party_connector_finds_the_emulator_of_its_vendor() {
        assert_eq!(chosen("acme-growpanel", "GrowPanel", None), Ok("growpanel"));
        assert_eq!(chosen("bm", "baremetrics", None), Ok("baremetrics"));
        assert_eq!(chosen("growpanel", "Grow Panel", None), Ok("growpanel"));
    }

    #[test]
    fn the_built_ins_find_their_own_emulator_even_when_a_vendor_has_two() {
        assert_eq!(chosen("stripe", "Stripe", None), Ok("stripe"));
        assert_eq!(chosen("stripe-scim", "Stripe", None), Ok("stripe-scim"));
    }

    #[test]
    fn an_ambiguous_or_unknown_vendor_is_refused_and_lists_the_emulators() {
        let ambiguous = chosen("acme-stripe", "Stripe", None).expect_err("two Stripe emulators");
        assert!(ambiguous.to_string().contains("stripe, stripe-scim"), "{ambiguous}");
        assert_eq!(chosen("acme-stripe", "Stripe", Some("stripe")), Ok("stripe"));
        let unknown = chosen("acme", "Acme", None).expect_err("no Acme emulator");
        let text = unknown.to_string();
        assert!(
            text.contains("growpanel (GrowPanel)") && text.contains("stripe-scim (Stripe)"),
            "{text}"
        );
        let misnamed = chosen("acme", "Acme", Some("grow-panel")).expect_err("no such emulator");
        assert!(misnamed.to_string().contains("no emulator named \"grow-panel\""), "{misnamed}");
    }
}
