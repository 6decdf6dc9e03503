//! The one rule for "unchanged": whether a value a workflow wants already
//! holds in the value a vendor has.
//!
//! Every built-in connector decides `unchanged` with `holds`, and the
//! engine's dry-run plans and syncs compile this very file (it depends on
//! `serde_json` alone for that reason), so a dry run, a real run and a
//! second sync agree on what would change. A connector may add rules of
//! its own on top (fields it never compares, fields it cannot change), but
//! not other notions of equality.
//!
//! The rules, `want` against `have`:
//!
//! 1. **Blank is nothing.** `null`, `""`, `[]`, `{}`, an object whose
//!    fields are all blank (`{"footer": null}`) and an absent field all
//!    mean "no value", and any blank holds in any blank. Vendors read a
//!    cleared field back as `null`, `""`, an empty container or an object
//!    of nulls (Stripe's `invoice_settings`), and take `""` to clear one,
//!    so the spelling carries no change.
//! 2. **Objects match on the fields `want` names.** Each field must hold
//!    in `have`'s field of that name (absent reads as blank); fields only
//!    `have` has are left alone, as an upsert leaves them. So `{}` holds in
//!    any object, and an object whose fields are all blank holds in a
//!    blank `have`.
//! 3. **Arrays compare whole**: the same length, element by element, in
//!    order (order means something: Stripe's `preferred_locales` are
//!    ranked).
//! 4. **Numbers compare by value**: `5`, `5.0` and `5e0` are one; integers
//!    exactly, however large.
//! 5. **A scalar against a scalar of another type compares as text**, the
//!    way a form body or a string-typed field carries it: `5` holds in
//!    `"5"` and `"5.0"`, `true` in `"true"`. Strings compare exactly: case
//!    and spaces count.
//! 6. Nothing else holds: a scalar never holds in a non-empty object or
//!    array, nor a container in a non-blank scalar.

use serde_json::{Number, Value};

/// Whether `want` already holds in `have` (`None`: the field is absent),
/// per the rules of this module.
pub fn holds(want: &Value, have: Option<&Value>) -> bool {
    let have = have.unwrap_or(&Value::Null);
    if is_blank(Some(want)) && is_blank(Some(have)) {
        return true;
    }
    match (want, have) {
        (Value::Object(wanted), Value::Object(had)) => {
            wanted.iter().all(|(key, value)| holds(value, had.get(key.as_str())))
        }
        (Value::Object(wanted), other) => {
            is_blank(Some(other)) && wanted.values().all(|value| holds(value, None))
        }
        (Value::Array(wanted), Value::Array(had)) => {
            wanted.len() == had.len()
                && wanted.iter().zip(had).all(|(value, was)| holds(value, Some(was)))
        }
        // A blank against a non-blank container, or a container against a
        // non-blank scalar (or the other way round): a change.
        (Value::Array(_), _) | (_, Value::Object(_) | Value::Array(_)) => false,
        (Value::Number(a), Value::Number(b)) => same_number(a, b),
        (Value::Number(number), Value::String(text))
        | (Value::String(text), Value::Number(number)) => number_text(number, text),
        _ => scalar_text(want) == scalar_text(have),
    }
}

/// Whether `value` is blank: absent, `null`, `""`, `[]`, or an object whose
/// fields are all blank (`{}` among them).
pub fn is_blank(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(text)) => text.is_empty(),
        Some(Value::Array(items)) => items.is_empty(),
        Some(Value::Object(fields)) => fields.values().all(|field| is_blank(Some(field))),
        Some(Value::Bool(_) | Value::Number(_)) => false,
    }
}

/// The fields of `desired` that do not hold in `current`, as dotted paths
/// (`metadata.plan`); `"."` when the two are not objects and differ.
/// Objects are walked field by field, so a change deep inside one names
/// that field, not the whole object.
pub fn changed_fields(desired: &Value, current: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect_changes(desired, Some(current), "", &mut out);
    out
}

fn collect_changes(desired: &Value, current: Option<&Value>, path: &str, out: &mut Vec<String>) {
    match (desired, current) {
        (Value::Object(want), Some(Value::Object(have))) => {
            for (key, value) in want {
                let sub = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                collect_changes(value, have.get(key.as_str()), &sub, out);
            }
        }
        _ if !holds(desired, current) => {
            out.push(if path.is_empty() { ".".to_owned() } else { path.to_owned() })
        }
        _ => {}
    }
}

fn same_number(a: &Number, b: &Number) -> bool {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        return a == b;
    }
    if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
        return a == b;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// A number against the text a string field holds: equal when the text is
/// a JSON number of the same value (`"5"`, `"5.0"`, `"5e0"` for `5`).
fn number_text(number: &Number, text: &str) -> bool {
    if number.to_string() == text {
        return true;
    }
    // Strict JSON number syntax: " 5", "0x5" and "inf" are text, not
    // numbers (the parser would skip the spaces around one).
    let starts = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
    let ends = text.ends_with(|c: char| c.is_ascii_digit());
    if !(starts && ends) {
        return false;
    }
    match serde_json::from_str::<Number>(text) {
        Ok(parsed) => same_number(number, &parsed),
        Err(_) => false,
    }
}

/// A scalar as the text a form body or a string-typed field carries.
fn scalar_text(value: &Value) -> String {
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

    /// The rules as a table: `(want, have, holds)`; `have` `None` is an
    /// absent field. The SDK and the engine both run it.
    fn table() -> Vec<(Value, Option<Value>, bool)> {
        vec![
            // 1. Blank is nothing.
            (json!(null), None, true),
            (json!(""), None, true),
            (json!(null), Some(json!("")), true),
            (json!(""), Some(json!(null)), true),
            (json!([]), Some(json!(null)), true),
            (json!({}), Some(json!("")), true),
            (json!(null), Some(json!([])), true),
            (json!(""), Some(json!({})), true),
            (json!(null), Some(json!("x")), false),
            (json!(""), Some(json!(0)), false),
            (json!(null), Some(json!(false)), false),
            (json!(null), Some(json!(["en"])), false),
            (json!(null), Some(json!({"plan": "pro"})), false),
            (json!(null), Some(json!({"footer": null, "fields": []})), true),
            (json!({"footer": ""}), Some(json!({"custom": {"a": null}})), true),
            (json!(null), Some(json!({"footer": "Thanks"})), false),
            (json!([]), Some(json!([null])), false),
            (json!("x"), None, false),
            (json!(0), None, false),
            (json!(false), Some(json!(null)), false),
            // 2. Objects on the fields `want` names.
            (json!({"a": 1}), Some(json!({"a": 1, "b": 2})), true),
            (json!({}), Some(json!({"a": 1})), true),
            (json!({"a": null}), Some(json!({"b": 2})), true),
            (json!({"a": ""}), Some(json!({"a": null})), true),
            (json!({"a": {"b": "5"}}), Some(json!({"a": {"b": 5, "c": 1}})), true),
            (json!({"a": 2}), Some(json!({"a": 1})), false),
            (json!({"a": 1}), Some(json!({})), false),
            (json!({"a": null, "b": ""}), Some(json!(null)), true),
            (json!({"a": null}), None, true),
            (json!({"a": 1}), Some(json!(null)), false),
            (json!({"a": 1}), Some(json!("x")), false),
            (json!({}), Some(json!("x")), false),
            // 3. Arrays whole, in order.
            (json!(["en", "fr"]), Some(json!(["en", "fr"])), true),
            (json!(["fr", "en"]), Some(json!(["en", "fr"])), false),
            (json!(["en"]), Some(json!(["en", "fr"])), false),
            (json!([1, "2"]), Some(json!(["1", 2.0])), true),
            (json!([{"a": 1}]), Some(json!([{"a": 1, "b": 2}])), true),
            (json!([]), Some(json!(["en"])), false),
            (json!(["en"]), Some(json!(null)), false),
            (json!(["en"]), Some(json!("en")), false),
            // 4. Numbers by value.
            (json!(5), Some(json!(5.0)), true),
            (json!(0), Some(json!(-0.0)), true),
            (json!(1e3), Some(json!(1000)), true),
            (json!(u64::MAX), Some(json!(u64::MAX)), true),
            (json!(u64::MAX), Some(json!(u64::MAX - 1)), false),
            (json!(i64::MIN), Some(json!(i64::MIN)), true),
            (json!(5), Some(json!(6)), false),
            (json!(0.1), Some(json!(0.10000001)), false),
            // 5. Scalars of other types as text; strings exactly.
            (json!(5), Some(json!("5")), true),
            (json!("5"), Some(json!(5)), true),
            (json!(5), Some(json!("5.0")), true),
            (json!("5e0"), Some(json!(5)), true),
            (json!(12345678901234567891_u64), Some(json!("12345678901234567891")), true),
            (json!(12345678901234567891_u64), Some(json!("12345678901234567890")), false),
            (json!(5), Some(json!(" 5")), false),
            (json!(5), Some(json!("five")), false),
            (json!(5), Some(json!("inf")), false),
            (json!(true), Some(json!("true")), true),
            (json!("false"), Some(json!(false)), true),
            (json!(true), Some(json!(1)), false),
            (json!(true), Some(json!("True")), false),
            (json!("Ada"), Some(json!("Ada")), true),
            (json!("Ada"), Some(json!("ada")), false),
            (json!("Ada"), Some(json!("Ada ")), false),
            // 6. Nothing else.
            (json!("x"), Some(json!({"x": 1})), false),
            (json!("x"), Some(json!(["x"])), false),
            (json!(1), Some(json!([1])), false),
        ]
    }

    #[test]
    fn every_rule_of_the_table_holds() {
        let mut wrong = Vec::new();
        for (want, have, expected) in table() {
            if holds(&want, have.as_ref()) != expected {
                wrong.push(format!("holds({want}, {have:?}) should be {expected}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn changed_fields_name_the_paths_that_differ() {
        let current = json!({"id": "c1", "name": "Ada", "email": "ada@x", "phone": "",
            "metadata": {"plan": "pro", "seats": "3"}, "extra": true});
        assert!(
            changed_fields(&json!({"name": "Ada", "metadata": {"plan": "pro"}}), &current)
                .is_empty()
        );
        assert_eq!(
            changed_fields(&json!({"name": "Ada L", "metadata": {"seats": 4}}), &current),
            ["metadata.seats", "name"]
        );
        assert_eq!(changed_fields(&json!({"phone": "1"}), &current), ["phone"]);
        assert!(
            changed_fields(&json!({"phone": null, "fax": "", "tags": []}), &current).is_empty()
        );
        assert!(changed_fields(&json!({"metadata": {"seats": 3.0}}), &current).is_empty());
        assert_eq!(changed_fields(&json!({"metadata": null}), &current), ["metadata"]);
        assert_eq!(changed_fields(&json!("a"), &json!("b")), ["."]);
    }
}
