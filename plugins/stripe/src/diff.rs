//! What an upsert sends: the fields of a desired customer that differ from
//! Stripe's copy, and the fields a create may carry.
//!
//! Kept free of I/O so the rules are unit-tested natively.

use serde_json::{Map, Value};

/// Fields Stripe sets itself. A desired record may carry them (a record
/// read from Stripe and written back, say); they are neither compared nor
/// sent. `currency` is here because the OpenAPI description accepts it on
/// neither create nor update, although the user-management guide calls it
/// updatable: the spec wins, Stripe sets it with the first invoice.
pub(crate) const READ_ONLY: &[&str] = &[
    "id",
    "object",
    "created",
    "livemode",
    "deleted",
    "currency",
    "delinquent",
    "discount",
    "invoice_credit_balance",
    "sources",
    "subscriptions",
    "tax_ids",
];

/// Parameters Stripe takes on create only; an update would reject them.
pub(crate) const CREATE_ONLY: &[&str] = &["test_clock", "payment_method", "tax_id_data"];

/// The body of a create: the desired record without read-only fields and
/// without `null` fields (nothing exists yet to clear).
pub(crate) fn for_create(desired: &Map<String, Value>) -> Map<String, Value> {
    desired
        .iter()
        .filter(|(key, value)| !READ_ONLY.contains(&key.as_str()) && !value.is_null())
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// The body of an update: each writable field of `desired` whose value
/// differs from `current`'s; empty when the customer already matches.
///
/// Only what the desired record says matters:
///
/// - `metadata` is compared key by key and only differing keys are sent,
///   because Stripe merges metadata on update: keys the desired record does
///   not name stay as they are. A `null` or `""` metadata value unsets its
///   key; `"metadata": null` or `""` clears them all (sent as `metadata=`).
/// - Other nested objects (`address`, `shipping`, `invoice_settings`) match
///   when every field the desired record gives matches; when one differs,
///   the desired object is sent as given.
/// - `null` and `""` are the same (Stripe clears a field with an empty value
///   and reads it back as `null`); scalars compare by their form text, so
///   `5` matches `"5"` and `true` matches `"true"`.
/// - Parameters Stripe never returns (`coupon`, `source`, `promotion_code`,
///   `tax`) always count as a change.
pub(crate) fn changes(
    desired: &Map<String, Value>,
    current: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, want) in desired {
        if READ_ONLY.contains(&key.as_str()) || CREATE_ONLY.contains(&key.as_str()) {
            continue;
        }
        let have = current.get(key);
        if key == "metadata" {
            if let Some(change) = metadata_change(want, have) {
                out.insert(key.clone(), change);
            }
        } else if !same(want, have) {
            out.insert(key.clone(), want.clone());
        }
    }
    out
}

fn metadata_change(want: &Value, have: Option<&Value>) -> Option<Value> {
    match want {
        Value::Object(wanted) => {
            let had = match have {
                Some(Value::Object(had)) => Some(had),
                _ => None,
            };
            let differing: Map<String, Value> = wanted
                .iter()
                .filter(|(key, value)| !same(value, had.and_then(|had| had.get(key.as_str()))))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            (!differing.is_empty()).then_some(Value::Object(differing))
        }
        // Not an object: clear-all when blank, else let Stripe judge it.
        _ => (!same(want, have)).then(|| {
            if is_blank(want) {
                Value::String(String::new())
            } else {
                want.clone()
            }
        }),
    }
}

/// Whether `want` already holds in `have` (see [`changes`]).
fn same(want: &Value, have: Option<&Value>) -> bool {
    let have = have.unwrap_or(&Value::Null);
    match (want, have) {
        (Value::Object(wanted), Value::Object(had)) => wanted
            .iter()
            .all(|(key, value)| same(value, had.get(key.as_str()))),
        (Value::Object(wanted), _) => {
            is_blank(have) && wanted.values().all(|value| same(value, None))
        }
        (Value::Array(wanted), Value::Array(had)) => {
            wanted.len() == had.len()
                && wanted
                    .iter()
                    .zip(had)
                    .all(|(value, was)| same(value, Some(was)))
        }
        (Value::Array(wanted), _) => wanted.is_empty() && is_blank(have),
        (_, Value::Object(had)) => is_blank(want) && had.is_empty(),
        (_, Value::Array(had)) => is_blank(want) && had.is_empty(),
        (Value::Number(a), Value::Number(b)) => a == b || a.as_f64() == b.as_f64(),
        _ => form_text(want) == form_text(have),
    }
}

fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(text) => text.is_empty(),
        _ => false,
    }
}

/// A scalar as a form body would carry it.
fn form_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn diff(desired: Value, current: Value) -> Value {
        Value::Object(changes(&object(desired), &object(current)))
    }

    const CURRENT: &str = r#"{
        "id": "cus_1", "object": "customer", "created": 1700000000, "livemode": false,
        "email": "jo@example.com", "name": "Jo", "phone": null, "balance": 0,
        "currency": "usd", "description": null, "preferred_locales": [],
        "metadata": {"plan": "pro", "seats": "3"},
        "address": {"city": "Paris", "country": "FR", "line1": "1 rue X", "line2": null,
                    "postal_code": "75001", "state": null},
        "invoice_settings": {"custom_fields": null, "default_payment_method": null,
                             "footer": null, "rendering_options": null},
        "shipping": null, "tax_exempt": "none"
    }"#;

    fn current() -> Value {
        serde_json::from_str(CURRENT).expect("fixture")
    }

    #[test]
    fn the_record_read_back_is_unchanged() {
        assert_eq!(diff(current(), current()), json!({}));
    }

    #[test]
    fn read_only_and_create_only_fields_are_ignored() {
        let desired = json!({"id": "cus_other", "object": "x", "created": 1, "livemode": true,
            "deleted": true, "currency": "eur", "test_clock": "clock_1", "email": "jo@example.com"});
        assert_eq!(diff(desired, current()), json!({}));
    }

    #[test]
    fn only_changed_fields_are_sent() {
        let desired = json!({"email": "jo@example.com", "name": "Joanna", "phone": "+331"});
        assert_eq!(
            diff(desired, current()),
            json!({"name": "Joanna", "phone": "+331"})
        );
    }

    #[test]
    fn metadata_compares_only_the_keys_given() {
        assert_eq!(
            diff(json!({"metadata": {"plan": "pro"}}), current()),
            json!({})
        );
        assert_eq!(
            diff(json!({"metadata": {"seats": 3}}), current()),
            json!({})
        );
        assert_eq!(diff(json!({"metadata": {}}), current()), json!({}));
        assert_eq!(
            diff(
                json!({"metadata": {"plan": "pro", "seats": "4", "new": "x"}}),
                current()
            ),
            json!({"metadata": {"new": "x", "seats": "4"}})
        );
    }

    #[test]
    fn metadata_keys_are_unset_with_null_or_empty() {
        assert_eq!(
            diff(json!({"metadata": {"plan": null, "gone": null}}), current()),
            json!({"metadata": {"plan": null}})
        );
        assert_eq!(
            diff(json!({"metadata": {"plan": ""}}), current()),
            json!({"metadata": {"plan": ""}})
        );
    }

    #[test]
    fn blank_metadata_clears_all_only_when_some_exist() {
        assert_eq!(
            diff(json!({"metadata": null}), current()),
            json!({"metadata": ""})
        );
        assert_eq!(
            diff(json!({"metadata": ""}), current()),
            json!({"metadata": ""})
        );
        assert_eq!(
            diff(json!({"metadata": null}), json!({"metadata": {}})),
            json!({})
        );
    }

    #[test]
    fn nested_objects_match_on_the_fields_given_and_are_sent_whole() {
        assert_eq!(
            diff(
                json!({"address": {"city": "Paris", "line2": null}}),
                current()
            ),
            json!({})
        );
        assert_eq!(
            diff(
                json!({"address": {"city": "Lyon", "country": "FR"}}),
                current()
            ),
            json!({"address": {"city": "Lyon", "country": "FR"}})
        );
        assert_eq!(
            diff(json!({"invoice_settings": {"footer": null}}), current()),
            json!({})
        );
        assert_eq!(
            diff(json!({"shipping": {"name": null}}), current()),
            json!({})
        );
        assert_eq!(
            diff(json!({"shipping": {"name": "Jo"}}), current()),
            json!({"shipping": {"name": "Jo"}})
        );
    }

    #[test]
    fn null_and_empty_string_are_the_same() {
        assert_eq!(
            diff(json!({"phone": "", "description": null}), current()),
            json!({})
        );
        assert_eq!(
            diff(json!({"name": null}), current()),
            json!({"name": null})
        );
    }

    #[test]
    fn scalars_compare_by_form_text_and_numbers_by_value() {
        assert_eq!(diff(json!({"balance": "0"}), current()), json!({}));
        assert_eq!(diff(json!({"balance": 0.0}), current()), json!({}));
        assert_eq!(
            diff(json!({"balance": 100}), current()),
            json!({"balance": 100})
        );
    }

    #[test]
    fn arrays_compare_whole() {
        assert_eq!(diff(json!({"preferred_locales": []}), current()), json!({}));
        assert_eq!(
            diff(json!({"preferred_locales": null}), current()),
            json!({})
        );
        assert_eq!(
            diff(json!({"preferred_locales": ["fr"]}), current()),
            json!({"preferred_locales": ["fr"]})
        );
    }

    #[test]
    fn write_only_parameters_always_count_as_changes() {
        assert_eq!(
            diff(json!({"coupon": "SAVE"}), current()),
            json!({"coupon": "SAVE"})
        );
    }

    #[test]
    fn create_drops_read_only_and_null_fields() {
        let desired = object(
            json!({"id": "cus_x", "object": "customer", "email": "a@b.c",
            "phone": null, "metadata": {"k": "v"}, "test_clock": "clock_1"}),
        );
        assert_eq!(
            Value::Object(for_create(&desired)),
            json!({"email": "a@b.c", "metadata": {"k": "v"}, "test_clock": "clock_1"})
        );
    }
}
