//! Corrections to the vendors' OpenAPI descriptions, each with its
//! evidence, applied to a copy before Prism loads it.
//!
//! Two lists: the response-side corrections below, and the request-side
//! ones the emulators' extracts carry (`sandbox/extract/src/lib.rs`, written
//! into `sandbox/specs/*.json` with their reasons), which are applied here
//! too so Prism and the emulator judge a request by the same corrected
//! description. The extractor checks its own list for staleness against
//! the description; here an extract's erratum already made by this list is
//! not made twice.
//!
//! A correction is made only where the description contradicts itself
//! (its schema against its own examples); where the emulator disagrees
//! with a consistent description, the emulator is fixed instead. Every
//! erratum must still be needed: one whose target is gone, or that no
//! longer changes anything, fails the test, so the list cannot go stale.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::super::support::TestResult;

/// What an erratum does to the schema at its pointer.
#[derive(Debug)]
enum Fix {
    /// OpenAPI 3.0's `nullable: true`.
    Nullable,
    /// Replaces the schema whole.
    Replace(Value),
}

#[derive(Debug)]
struct Erratum {
    /// JSON pointer into the description.
    pointer: String,
    fix: Fix,
}

/// The Baremetrics description is Konfig's rendering of Baremetrics'
/// reference, with each schema inferred from one example: nullability is
/// lost, and an example that is not valid JSON became `type: string`.
fn baremetrics() -> Vec<Erratum> {
    let mut errata = vec![
        // GET /v1/sources: the operation's own example answers
        // `"provider": "baremetrics", "provider_id": null` for the native
        // source; the schema was inferred from the Stripe source's string.
        Erratum {
            pointer:
                "/components/schemas/SourceListSourcesResponse_sources_inner/properties/provider_id"
                    .into(),
            fix: Fix::Nullable,
        },
        // GET /v1/{source_id}/subscriptions: the example Konfig read has a
        // trailing comma, so it became `type: string`; the example is an
        // object with a `subscriptions` array.
        Erratum {
            pointer: "/components/schemas/SourceGetSubscriptionsResponse".into(),
            fix: Fix::Replace(json!({
                "type": "object",
                "required": ["subscriptions"],
                "properties": { "subscriptions": { "type": "array", "items": { "type": "object" } } }
            })),
        },
    ];
    // A customer's `created` on create and update: the request schemas say
    // `type: string, format: date-time`, but their own descriptions say "A
    // unix timestamp", every answer types `created` as an integer
    // (`1492605754`), and the user-management guide says integer. The
    // connector sends the integer (converting an RFC 3339 date-time a
    // workflow gives); the schema is corrected to what the rest agrees on.
    for schema in ["SourceCreateCustomerRecordRequest", "SourceUpdateCustomerInformationRequest"] {
        errata.push(Erratum {
            pointer: format!("/components/schemas/{schema}/properties/created"),
            fix: Fix::Replace(json!({
                "type": "integer",
                "description": "A Unix timestamp of when this customer was created (seconds)."
            })),
        });
    }
    // A customer's `name`, `email` and `notes` are optional on create (only
    // `oid` is required) and `display_image` is a logo lookup that may find
    // none; the description's other renderings of the same customer object
    // (refunds', events') show `"notes": null`, so absent values are null.
    for schema in [
        "SourceGetCustomerListResponse_customers_inner",
        "SourceGetCustomerDetailsResponse_customer",
        "SourceCreateCustomerRecordResponse_customer",
        "SourceUpdateCustomerInformationResponse_customer",
    ] {
        for field in ["name", "email", "notes", "display_image"] {
            errata.push(Erratum {
                pointer: format!("/components/schemas/{schema}/properties/{field}"),
                fix: Fix::Nullable,
            });
        }
    }
    errata
}

fn errata_for(vendor: &str) -> Vec<Erratum> {
    match vendor {
        "baremetrics" => baremetrics(),
        _ => Vec::new(),
    }
}

/// Reads the description at `spec` (JSON or YAML), applies `vendor`'s
/// errata and writes the result as JSON into `dir`; returns its path.
pub fn corrected(vendor: &str, spec: &Path, dir: &Path) -> TestResult<PathBuf> {
    let text = std::fs::read_to_string(spec)
        .map_err(|e| format!("cannot read the {vendor} spec {}: {e}", spec.display()))?;
    let is_yaml = spec.extension().is_some_and(|ext| ext == "yaml" || ext == "yml");
    let mut document: Value =
        if is_yaml { serde_norway::from_str(&text)? } else { serde_json::from_str(&text)? };
    for erratum in errata_for(vendor) {
        let schema = document.pointer_mut(&erratum.pointer).ok_or_else(|| {
            format!(
                "{vendor} erratum {} no longer applies: the spec has no such schema",
                erratum.pointer
            )
        })?;
        let before = schema.clone();
        match &erratum.fix {
            Fix::Nullable => {
                let fields = schema.as_object_mut().ok_or_else(|| {
                    format!("{vendor} erratum {}: not a schema object", erratum.pointer)
                })?;
                fields.insert("nullable".into(), Value::Bool(true));
            }
            Fix::Replace(with) => *schema = with.clone(),
        }
        if *schema == before {
            return Err(format!(
                "{vendor} erratum {} is no longer needed: the spec already says so",
                erratum.pointer
            )
            .into());
        }
    }
    for (pointer, replacement) in extract_errata(vendor)? {
        let schema = document.pointer_mut(&pointer).ok_or_else(|| {
            format!(
                "{vendor}: the extract's erratum {pointer} does not apply to {}",
                spec.display()
            )
        })?;
        *schema = replacement;
    }
    let path = dir.join(format!("{vendor}-openapi.json"));
    std::fs::write(&path, serde_json::to_vec(&document)?)?;
    Ok(path)
}

/// The errata of `vendor`'s extract in `sandbox/specs`, as (pointer,
/// replacement); none for a vendor without one.
fn extract_errata(vendor: &str) -> TestResult<Vec<(String, Value)>> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("sandbox/specs").join(format!("{vendor}.json"));
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(Vec::new()) };
    let extract: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(extract["errata"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|erratum| {
            Some((erratum["pointer"].as_str()?.to_owned(), erratum["replacement"].clone()))
        })
        .collect())
}
