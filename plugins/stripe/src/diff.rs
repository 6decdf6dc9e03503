//! What an upsert sends: the fields of a desired customer that differ from
//! Stripe's copy, and the fields a create may carry.
//!
//! Kept free of I/O so the rules are unit-tested natively.

use serde_json::{Map, Value};
use weft_connector_sdk::same;

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

/// Fields of a customer that Stripe takes on update only: a create would
/// answer "Received unknown parameter". `default_source` is in every
/// customer Stripe returns, so a record read from one account and created
/// in another would otherwise always fail.
pub(crate) const UPDATE_ONLY: &[&str] = &[
    "default_source",
    "bank_account",
    "card",
    "default_alipay_account",
    "default_bank_account",
    "default_card",
];

/// How a parameter of `POST /v1/customers[/{id}]` takes an empty value, per
/// Stripe's OpenAPI description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmptyValue {
    /// A string (or an enum that lists `""`): `key=` sets it empty, which
    /// Stripe reads back as `null`.
    Text,
    /// An `anyOf` holding `enum: [""]`: `key=` clears the whole parameter.
    Clears,
    /// No empty value: Stripe refuses `key=` (an array, an object, an
    /// integer, an enum without `""`); the text says which.
    Refused(&'static str),
}

/// How the parameter at `path` (`["invoice_settings", "footer"]`) takes an
/// empty value. Array indices are any segment.
pub(crate) fn empty_value(path: &[&str]) -> EmptyValue {
    use EmptyValue::{Clears, Refused, Text};
    match path {
        ["address" | "shipping" | "metadata"]
        | ["invoice_settings", "custom_fields" | "rendering_options"]
        | ["tax", "ip_address"] => Clears,
        ["preferred_locales" | "expand" | "tax_id_data"] => Refused("a list"),
        ["invoice_settings" | "tax" | "cash_balance"] => Refused("an object"),
        ["balance" | "next_invoice_sequence"] => Refused("an integer"),
        ["shipping", "address"] | ["invoice_settings", "custom_fields", _] => Refused("an object"),
        ["cash_balance", "settings"] => Refused("an object"),
        ["cash_balance", "settings", "reconciliation_mode"] => {
            Refused("one of automatic, manual, merchant_default")
        }
        _ => Text,
    }
}

/// The body of a create: the desired record without read-only and
/// update-only fields, and without blank values (`null`, `""`, `[]`,
/// `{}`) at any depth, nor objects left empty by dropping them: nothing
/// exists yet to clear, and Stripe refuses an empty value for a list or
/// an object (`preferred_locales=`), which every customer it returns has.
pub(crate) fn for_create(desired: &Map<String, Value>) -> Map<String, Value> {
    desired
        .iter()
        .filter(|(key, _)| {
            !READ_ONLY.contains(&key.as_str()) && !UPDATE_ONLY.contains(&key.as_str())
        })
        .filter_map(|(key, value)| Some((key.clone(), without_blanks(value)?)))
        .collect()
}

/// `value` without its blank object fields, recursively; `None` when
/// nothing is left. Array items stay where they are (dropping one would
/// move the others).
fn without_blanks(value: &Value) -> Option<Value> {
    match value {
        Value::Object(fields) => {
            let kept: Map<String, Value> = fields
                .iter()
                .filter_map(|(key, field)| Some((key.clone(), without_blanks(field)?)))
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        other if same::is_blank(Some(other)) => None,
        other => Some(other.clone()),
    }
}

/// A change the update would have to make that Stripe cannot: clearing a
/// parameter that takes no empty value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unclearable {
    /// The parameter, dotted (`invoice_settings.custom_fields.0`).
    pub(crate) field: String,
    /// What Stripe takes there instead (`a list`).
    pub(crate) takes: &'static str,
}

/// The body of an update: each writable field of `desired` that does not
/// already hold in `current` (by the SDK's one rule, [`same::holds`]);
/// empty when the customer already matches. Fails when the update would
/// have to clear a parameter Stripe takes no empty value for.
///
/// Only what the desired record says matters:
///
/// - `metadata` is compared key by key and only differing keys are sent,
///   because Stripe merges metadata on update: keys the desired record does
///   not name stay as they are. A `null` or `""` metadata value unsets its
///   key; `"metadata": null` or `""` clears them all (sent as `metadata=`).
/// - Other nested objects (`address`, `shipping`, `invoice_settings`) match
///   when every field the desired record gives matches; when one differs,
///   the desired object is sent without the blank fields that are blank in
///   Stripe's copy too (nothing to clear there).
/// - A blank value (`null`, `""`, `[]`, `{}`) where Stripe's copy has one
///   clears the field: sent as `""` where Stripe takes an empty value
///   ([`empty_value`]), refused as [`Unclearable`] where it does not
///   (`preferred_locales`, `invoice_settings`, `balance`, ...).
/// - Parameters Stripe never returns (`coupon`, `source`, `promotion_code`,
///   `tax`) always count as a change unless blank.
pub(crate) fn changes(
    desired: &Map<String, Value>,
    current: &Map<String, Value>,
) -> Result<Map<String, Value>, Unclearable> {
    let mut out = Map::new();
    for (key, want) in desired {
        if READ_ONLY.contains(&key.as_str()) || CREATE_ONLY.contains(&key.as_str()) {
            continue;
        }
        let have = current.get(key);
        let want = if key == "metadata" {
            match metadata_keys_that_differ(want, have) {
                Some(differing) => differing,
                None => continue,
            }
        } else {
            want.clone()
        };
        if same::holds(&want, have) {
            continue;
        }
        let mut path = vec![key.as_str()];
        if let Some(value) = for_wire(&mut path, &want, have)? {
            out.insert(key.clone(), value);
        }
    }
    Ok(out)
}

/// Metadata merges on update: only the keys that differ are sent. `None`
/// when the desired keys all hold.
fn metadata_keys_that_differ(want: &Value, have: Option<&Value>) -> Option<Value> {
    let Value::Object(wanted) = want else {
        // Not an object: clear-all when blank, else let Stripe judge it.
        return Some(want.clone());
    };
    let had = have.and_then(Value::as_object);
    let differing: Map<String, Value> = wanted
        .iter()
        .filter(|(key, value)| !same::holds(value, had.and_then(|had| had.get(key.as_str()))))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    (!differing.is_empty()).then_some(Value::Object(differing))
}

/// What goes on the wire for `want` at `path`, given Stripe's `have`:
/// blanks that clear something become `""` (or [`Unclearable`]), blanks
/// with nothing to clear are left out (`None`).
fn for_wire<'a>(
    path: &mut Vec<&'a str>,
    want: &'a Value,
    have: Option<&Value>,
) -> Result<Option<Value>, Unclearable> {
    // A non-empty object is walked field by field even when all its fields
    // are blank: `{"metadata": {"plan": null}}` unsets one key, it does not
    // clear them all.
    let empty = match want {
        Value::Object(fields) => fields.is_empty(),
        other => same::is_blank(Some(other)),
    };
    if empty {
        if same::is_blank(have) {
            return Ok(None);
        }
        return match empty_value(path) {
            EmptyValue::Refused(takes) => Err(Unclearable { field: path.join("."), takes }),
            EmptyValue::Text | EmptyValue::Clears => Ok(Some(Value::String(String::new()))),
        };
    }
    let Value::Object(wanted) = want else {
        return Ok(Some(want.clone()));
    };
    let had = have.and_then(Value::as_object);
    let mut out = Map::new();
    for (key, value) in wanted {
        path.push(key.as_str());
        let field = for_wire(path, value, had.and_then(|had| had.get(key.as_str())));
        path.pop();
        if let Some(field) = field? {
            out.insert(key.clone(), field);
        }
    }
    Ok((!out.is_empty()).then_some(Value::Object(out)))
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
        match changes(&object(desired), &object(current)) {
            Ok(changes) => Value::Object(changes),
            Err(refused) => panic!("refused: {refused:?}"),
        }
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
        assert_eq!(diff(desired, current()), json!({"name": "Joanna", "phone": "+331"}));
    }

    #[test]
    fn metadata_compares_only_the_keys_given() {
        assert_eq!(diff(json!({"metadata": {"plan": "pro"}}), current()), json!({}));
        assert_eq!(diff(json!({"metadata": {"seats": 3}}), current()), json!({}));
        assert_eq!(diff(json!({"metadata": {}}), current()), json!({}));
        assert_eq!(
            diff(json!({"metadata": {"plan": "pro", "seats": "4", "new": "x"}}), current()),
            json!({"metadata": {"new": "x", "seats": "4"}})
        );
    }

    #[test]
    fn metadata_keys_are_unset_with_null_or_empty() {
        assert_eq!(
            diff(json!({"metadata": {"plan": null, "gone": null}}), current()),
            json!({"metadata": {"plan": ""}})
        );
        assert_eq!(
            diff(json!({"metadata": {"plan": ""}}), current()),
            json!({"metadata": {"plan": ""}})
        );
    }

    #[test]
    fn blank_metadata_clears_all_only_when_some_exist() {
        assert_eq!(diff(json!({"metadata": null}), current()), json!({"metadata": ""}));
        assert_eq!(diff(json!({"metadata": ""}), current()), json!({"metadata": ""}));
        assert_eq!(diff(json!({"metadata": null}), json!({"metadata": {}})), json!({}));
    }

    #[test]
    fn nested_objects_match_on_the_fields_given_and_are_sent_whole() {
        assert_eq!(
            diff(json!({"address": {"city": "Paris", "line2": null}}), current()),
            json!({})
        );
        assert_eq!(
            diff(json!({"address": {"city": "Lyon", "country": "FR"}}), current()),
            json!({"address": {"city": "Lyon", "country": "FR"}})
        );
        assert_eq!(diff(json!({"invoice_settings": {"footer": null}}), current()), json!({}));
        assert_eq!(diff(json!({"shipping": {"name": null}}), current()), json!({}));
        assert_eq!(
            diff(json!({"shipping": {"name": "Jo"}}), current()),
            json!({"shipping": {"name": "Jo"}})
        );
    }

    #[test]
    fn null_and_empty_string_are_the_same() {
        assert_eq!(diff(json!({"phone": "", "description": null}), current()), json!({}));
        assert_eq!(diff(json!({"name": null}), current()), json!({"name": ""}));
    }

    #[test]
    fn scalars_compare_by_form_text_and_numbers_by_value() {
        assert_eq!(diff(json!({"balance": "0"}), current()), json!({}));
        assert_eq!(diff(json!({"balance": 0.0}), current()), json!({}));
        assert_eq!(diff(json!({"balance": 100}), current()), json!({"balance": 100}));
    }

    #[test]
    fn arrays_compare_whole() {
        assert_eq!(diff(json!({"preferred_locales": []}), current()), json!({}));
        assert_eq!(diff(json!({"preferred_locales": null}), current()), json!({}));
        assert_eq!(
            diff(json!({"preferred_locales": ["fr"]}), current()),
            json!({"preferred_locales": ["fr"]})
        );
    }

    #[test]
    fn write_only_parameters_always_count_as_changes() {
        assert_eq!(diff(json!({"coupon": "SAVE"}), current()), json!({"coupon": "SAVE"}));
    }

    #[test]
    fn create_drops_read_only_and_null_fields() {
        let desired = object(json!({"id": "cus_x", "object": "customer", "email": "a@b.c",
            "phone": null, "metadata": {"k": "v"}, "test_clock": "clock_1"}));
        assert_eq!(
            Value::Object(for_create(&desired)),
            json!({"email": "a@b.c", "metadata": {"k": "v"}, "test_clock": "clock_1"})
        );
    }

    #[test]
    fn create_from_a_customer_read_back_sends_no_empty_container() {
        // The regression: `preferred_locales=` and the blank fields of
        // `invoice_settings` made Stripe answer 400 to a copy of a listed
        // customer.
        let body = Value::Object(for_create(&object(current())));
        assert_eq!(
            body,
            json!({"email": "jo@example.com", "name": "Jo", "balance": 0,
                   "metadata": {"plan": "pro", "seats": "3"},
                   "address": {"city": "Paris", "country": "FR", "line1": "1 rue X",
                               "postal_code": "75001"},
                   "tax_exempt": "none"})
        );
        let no_name = object(json!({"email": null, "name": "", "default_source": "card_1",
            "preferred_locales": [], "invoice_settings": {"footer": null}, "metadata": {"a": ""}}));
        assert_eq!(Value::Object(for_create(&no_name)), json!({}));
    }

    #[test]
    fn clearing_sends_an_empty_value_only_where_stripe_takes_one() {
        let had = json!({"email": "jo@example.com", "preferred_locales": ["fr"], "balance": 10,
            "address": {"city": "Paris", "line2": "Apt 1"}, "shipping": {"name": "Jo"},
            "invoice_settings": {"footer": "Thanks", "custom_fields": [{"name": "a", "value": "b"}],
                                 "default_payment_method": null}});
        assert_eq!(
            diff(
                json!({"address": null, "shipping": "", "email": null, "metadata": null}),
                had.clone()
            ),
            json!({"address": "", "shipping": "", "email": ""})
        );
        assert_eq!(
            diff(json!({"address": {"city": "Paris", "line2": null}}), had.clone()),
            json!({"address": {"city": "Paris", "line2": ""}})
        );
        assert_eq!(
            diff(
                json!({"invoice_settings": {"footer": null, "custom_fields": [],
                                             "default_payment_method": null}}),
                had.clone()
            ),
            json!({"invoice_settings": {"footer": "", "custom_fields": ""}})
        );
        for (desired, field, takes) in [
            (json!({"preferred_locales": []}), "preferred_locales", "a list"),
            (json!({"preferred_locales": null}), "preferred_locales", "a list"),
            (json!({"balance": null}), "balance", "an integer"),
            (json!({"invoice_settings": null}), "invoice_settings", "an object"),
        ] {
            let refused = changes(&object(desired.clone()), &object(had.clone()));
            assert_eq!(refused, Err(Unclearable { field: field.into(), takes }), "{desired}");
        }
    }

    #[test]
    fn blanks_with_nothing_to_clear_are_not_sent() {
        let had = json!({"preferred_locales": [], "balance": 0, "invoice_settings":
            {"custom_fields": null, "footer": null}, "shipping": null});
        assert_eq!(
            diff(
                json!({"preferred_locales": null, "invoice_settings": {"custom_fields": [],
                        "footer": ""}, "shipping": {}, "tax": null}),
                had
            ),
            json!({})
        );
    }

    #[test]
    fn every_parameter_that_takes_no_empty_value_is_a_list_object_or_integer_of_the_spec() {
        // The spec's emptyable parameters (an `anyOf` with `enum: [""]`).
        for path in [
            &["address"][..],
            &["shipping"],
            &["metadata"],
            &["invoice_settings", "custom_fields"],
            &["invoice_settings", "rendering_options"],
            &["tax", "ip_address"],
        ] {
            assert_eq!(empty_value(path), EmptyValue::Clears, "{path:?}");
        }
        for path in [
            &["name"][..],
            &["email"],
            &["phone"],
            &["description"],
            &["tax_exempt"],
            &["address", "line2"],
            &["metadata", "plan"],
            &["invoice_settings", "footer"],
        ] {
            assert_eq!(empty_value(path), EmptyValue::Text, "{path:?}");
        }
    }
}
