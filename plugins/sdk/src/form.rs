//! Form encoding (`application/x-www-form-urlencoded`) of a JSON object, in
//! the bracket style Stripe and Rack-like servers read.
//!
//! | JSON                                   | form                          |
//! | -------------------------------------- | ----------------------------- |
//! | `{"email": "a@b.c"}`                   | `email=a%40b.c`               |
//! | `{"metadata": {"plan": "pro"}}`        | `metadata[plan]=pro`          |
//! | `{"address": {"city": "Paris"}}`       | `address[city]=Paris`         |
//! | `{"items": [{"price": "p_1"}]}`        | `items[0][price]=p_1`         |
//! | `{"preferred_locales": ["en", "fr"]}`  | `preferred_locales[0]=en&preferred_locales[1]=fr` |
//! | `{"active": true}`                     | `active=true`                 |
//! | `{"phone": null}` / `{"metadata": ""}` | `phone=` / `metadata=`        |
//! | `{"preferred_locales": []}` / `{"invoice_settings": {}}` | nothing     |
//!
//! Fields come out in the order of the `serde_json::Map` (sorted by key
//! unless serde_json's `preserve_order` feature is on); form decoders do not
//! care.
//!
//! `null` and `""` become an empty value, which is how Stripe clears a
//! field (`metadata=` drops every key). An empty object or array becomes
//! nothing at all: the bracket style has no spelling for "a list of no
//! items", and `key=` would say "the string `""`", which Stripe refuses
//! for a parameter that is not a string ("value must be a slice (was:
//! string)"). To clear such a parameter, pass `""` for it explicitly, and
//! only where the API takes one (Stripe marks those with an `anyOf` that
//! holds `enum: [""]`). Send only the fields you mean to change.
//!
//! Keys and values are percent-encoded as in [`query`](crate::query); the
//! brackets that give the structure stay literal, as Stripe's own libraries
//! send them, so a body reads the same in a log line as in Stripe's docs.
//!
//! ```
//! use serde_json::json;
//! use weft_connector_sdk::form;
//!
//! let body = form::encode(&json!({
//!     "email": "jo@example.com",
//!     "metadata": {"internal id": "usr_001"},
//! }))?;
//! assert_eq!(body, "email=jo%40example.com&metadata[internal%20id]=usr_001");
//! # Ok::<(), weft_connector_sdk::Error>(())
//! ```

use serde_json::Value;

use crate::query::push_encoded;
use crate::{Error, Result};

/// The form body for `object`; [`Error::InvalidInput`] unless it is a JSON
/// object.
pub fn encode(object: &Value) -> Result<String> {
    let mut out = String::new();
    for (key, value) in flatten(object, true)? {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&key);
        out.push('=');
        push_encoded(&mut out, &value);
    }
    Ok(out)
}

/// The flattened `(key, value)` pairs of `object`, neither side
/// percent-encoded: `{"created": {"gte": 1}}` gives `("created[gte]", "1")`.
///
/// Use it to turn a JSON filter into query parameters:
///
/// ```
/// use serde_json::json;
/// use weft_connector_sdk::form;
///
/// let pairs = form::pairs(&json!({"created": {"gte": 1700000000}, "email": "a@b.c"}))?;
/// assert_eq!(pairs, [
///     ("created[gte]".to_string(), "1700000000".to_string()),
///     ("email".to_string(), "a@b.c".to_string()),
/// ]);
/// # Ok::<(), weft_connector_sdk::Error>(())
/// ```
pub fn pairs(object: &Value) -> Result<Vec<(String, String)>> {
    flatten(object, false)
}

fn flatten(object: &Value, encode_keys: bool) -> Result<Vec<(String, String)>> {
    let Value::Object(fields) = object else {
        return Err(Error::invalid_input(format!(
            "a form body must be a JSON object, not {}",
            kind(object)
        )));
    };
    let mut out = Vec::with_capacity(fields.len());
    let mut key = String::new();
    for (name, value) in fields {
        key.clear();
        push_segment(&mut key, name, encode_keys);
        walk(&mut key, value, encode_keys, &mut out);
    }
    Ok(out)
}

fn walk(key: &mut String, value: &Value, encode_keys: bool, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(fields) if !fields.is_empty() => {
            for (name, field) in fields {
                let len = key.len();
                key.push('[');
                push_segment(key, name, encode_keys);
                key.push(']');
                walk(key, field, encode_keys, out);
                key.truncate(len);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (index, item) in items.iter().enumerate() {
                let len = key.len();
                key.push('[');
                key.push_str(&index.to_string());
                key.push(']');
                walk(key, item, encode_keys, out);
                key.truncate(len);
            }
        }
        // Nothing to say for an empty container (see the module docs).
        Value::Object(_) | Value::Array(_) => {}
        other => out.push((key.clone(), scalar(other))),
    }
}

fn push_segment(key: &mut String, segment: &str, encode: bool) {
    if encode {
        push_encoded(key, segment);
    } else {
        key.push_str(segment);
    }
}

/// The form value of a scalar; empty for `null` (and for a container, which
/// the encoder never hands here).
pub(crate) fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Null | Value::Object(_) | Value::Array(_) => String::new(),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn enc(value: Value) -> String {
        encode(&value).expect("object")
    }

    #[test]
    fn metadata_becomes_bracketed_keys() {
        assert_eq!(
            enc(json!({"metadata": {"plan": "pro", "seats": 3}})),
            "metadata[plan]=pro&metadata[seats]=3"
        );
    }

    #[test]
    fn nested_objects_and_arrays_of_objects() {
        assert_eq!(
            enc(json!({
                "address": {"city": "Paris", "line1": "1 rue X"},
                "items": [{"price": "p_1", "quantity": 2}, {"price": "p_2"}],
            })),
            "address[city]=Paris&address[line1]=1%20rue%20X\
             &items[0][price]=p_1&items[0][quantity]=2&items[1][price]=p_2"
        );
    }

    #[test]
    fn arrays_of_scalars_are_indexed() {
        assert_eq!(
            enc(json!({"preferred_locales": ["en", "fr"]})),
            "preferred_locales[0]=en&preferred_locales[1]=fr"
        );
    }

    #[test]
    fn scalars_bools_numbers_and_null() {
        assert_eq!(
            enc(json!({"a": true, "b": false, "c": -1.5, "d": null, "e": 0})),
            "a=true&b=false&c=-1.5&d=&e=0"
        );
    }

    #[test]
    fn empty_objects_and_arrays_are_left_out_and_only_blank_scalars_clear() {
        // The regression: `preferred_locales=` and `invoice_settings=` were
        // sent for a customer read back from Stripe, which Stripe refuses.
        assert_eq!(
            enc(json!({"metadata": {}, "preferred_locales": [], "name": "Jo",
                       "invoice_settings": {"custom_fields": []}, "items": [{}]})),
            "name=Jo"
        );
        assert_eq!(enc(json!({"metadata": "", "phone": null})), "metadata=&phone=");
    }

    #[test]
    fn keys_and_values_are_percent_encoded_but_brackets_stay() {
        assert_eq!(
            enc(json!({"email": "jo+1@ex.com", "metadata": {"a b&c=[d]": "x+y é"}})),
            "email=jo%2B1%40ex.com&metadata[a%20b%26c%3D%5Bd%5D]=x%2By%20%C3%A9"
        );
    }

    #[test]
    fn empty_object_is_an_empty_body() {
        assert_eq!(enc(json!({})), "");
    }

    #[test]
    fn non_objects_are_invalid_input() {
        for value in [json!([1]), json!("x"), json!(null)] {
            assert!(matches!(encode(&value), Err(Error::InvalidInput(_))));
        }
    }

    #[test]
    fn pairs_are_not_encoded() {
        assert_eq!(
            pairs(&json!({"metadata": {"a b": "c&d"}})).expect("object"),
            [("metadata[a b]".to_string(), "c&d".to_string())]
        );
    }
}
