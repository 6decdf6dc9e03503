//! What each emulator stands in for, and what a connector checked against
//! it needs: the vendor it emulates (as connectors' manifests spell it),
//! sample records its API accepts for the write checks, and the settings
//! a connector needs against its demo data.
//!
//! Everything here is keyed by the emulator's name, [`Endpoint::vendor`]
//! (`"stripe"`, `"stripe-scim"`, ...): `weft plugin check --sandbox`
//! passes the emulator's name, so a third-party connector of the same
//! vendor API gets the same samples and settings as the built-in one.
//!
//! [`Endpoint::vendor`]: crate::Endpoint::vendor

/// Each emulator, by name, with the vendor it stands in for as connectors'
/// manifests spell it (the engine compares them ignoring case, spaces and
/// punctuation).
pub const EMULATED: &[(&str, &str)] = &[
    ("stripe", "Stripe"),
    ("stripe-scim", "Stripe"),
    ("baremetrics", "Baremetrics"),
    ("metronome", "Metronome"),
    ("growpanel", "GrowPanel"),
];

/// The vendor the emulator `emulator` stands in for.
pub fn vendor_of(emulator: &str) -> Option<&'static str> {
    EMULATED.iter().find(|(name, _)| *name == emulator).map(|(_, vendor)| *vendor)
}

/// Sample records the write checks may create, per resource, against the
/// emulator `emulator`: shaped as each vendor's API requires.
pub fn sample_records(emulator: &str) -> Vec<(String, serde_json::Value)> {
    let sample = |resource: &str, value: serde_json::Value| (resource.to_owned(), value);
    match emulator {
        "stripe" => vec![sample(
            "customers",
            serde_json::json!({ "email": "conformance@example.com", "name": "Conformance Check", "metadata": { "source": "weft" } }),
        )],
        "stripe-scim" => vec![sample(
            "team-members",
            serde_json::json!({
                "userName": "conformance@example.com",
                "name": { "givenName": "Conformance", "familyName": "Check" },
                "emails": [{ "value": "conformance@example.com", "primary": true }],
                "active": true
            }),
        )],
        "baremetrics" => vec![sample(
            "customers",
            serde_json::json!({ "oid": "weft-conformance-1", "name": "Conformance Check", "email": "conformance@example.com" }),
        )],
        "metronome" => vec![sample(
            "customers",
            serde_json::json!({ "name": "Conformance Check", "external_id": "weft-conformance-1", "ingest_aliases": ["weft-conformance-1"] }),
        )],
        "growpanel" => vec![sample(
            "customers",
            serde_json::json!({ "id": "weft-conformance-1", "name": "Conformance Check", "email": "conformance@example.com", "created_date": "2026-01-15", "country": "US" }),
        )],
        _ => Vec::new(),
    }
}

/// Settings a connector needs against the emulator `emulator` (GrowPanel's
/// demo data is all in one data source).
pub fn connector_settings(emulator: &str) -> Vec<(String, String)> {
    match emulator {
        "growpanel" => {
            vec![("source".to_owned(), crate::growpanel::DEMO_DATA_SOURCE.to_owned())]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Sandbox, SandboxOptions};

    #[tokio::test]
    async fn every_emulator_of_the_sandbox_has_a_vendor() {
        let sandbox = Sandbox::start(SandboxOptions { seed: 0, ..Default::default() })
            .await
            .expect("sandbox starts");
        for endpoint in sandbox.endpoints() {
            assert!(
                vendor_of(endpoint.vendor).is_some(),
                "emulator {} has no vendor in EMULATED",
                endpoint.vendor
            );
        }
        sandbox.shutdown().await;
    }

    #[test]
    fn every_emulator_has_a_sample_record_for_the_write_checks() {
        for (emulator, _) in EMULATED {
            assert!(!sample_records(emulator).is_empty(), "no sample for {emulator}");
        }
    }
}
