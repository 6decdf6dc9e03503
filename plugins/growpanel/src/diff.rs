//! What an upsert sends: the updatable fields that differ from GrowPanel's
//! copy, and the checks a create must pass before it is sent.
//!
//! Kept free of I/O so the rules are unit-tested natively.

use serde_json::{Map, Value};

/// The fields `PUT /data/customers/{id}` accepts.
pub(crate) const UPDATABLE: &[&str] = &["name", "email", "custom_variables"];

/// The fields `POST /data/customers` requires, in the spec's order.
pub(crate) const REQUIRED_FOR_CREATE: &[&str] = &["id", "created_date", "country", "data_source"];

/// Fields that are never compared: the key itself, where the row lives, and
/// the import status GrowPanel echoes back.
const NOT_COMPARED: &[&str] = &["id", "data_source", "export_status", "export_error"];

/// The body of a PUT: each updatable field of `desired` that differs from
/// `current`; empty when the customer already matches.
///
/// `custom_variables` compare key by key, only on the keys `desired`
/// names, and are sent as `current`'s map with the desired keys laid over
/// it (a `null` value removes its key), so no other variable is lost
/// whether GrowPanel merges or replaces the map.
pub(crate) fn put_changes(
    desired: &Map<String, Value>,
    current: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for &field in UPDATABLE {
        let Some(want) = desired.get(field) else {
            continue;
        };
        let have = current.get(field);
        if field == "custom_variables" {
            if let Some(merged) = variables_change(want, have) {
                out.insert(field.to_owned(), merged);
            }
        } else if !same(want, have) {
            out.insert(field.to_owned(), want.clone());
        }
    }
    out
}

/// The fields of `desired` that differ from `current` but that no update
/// endpoint can change (`country`, `created_date`, ...).
pub(crate) fn unchangeable_differences(
    desired: &Map<String, Value>,
    current: &Map<String, Value>,
) -> Vec<String> {
    desired
        .iter()
        .filter(|(key, value)| {
            !UPDATABLE.contains(&key.as_str())
                && !NOT_COMPARED.contains(&key.as_str())
                && !same(value, current.get(key.as_str()))
        })
        .map(|(key, _)| key.clone())
        .collect()
}

/// The body of a create: `desired` without `null` fields, with
/// `data_source` defaulted to `source`; or the required fields it lacks.
pub(crate) fn for_create(
    desired: &Map<String, Value>,
    source: Option<&str>,
) -> Result<Map<String, Value>, Vec<&'static str>> {
    let mut body: Map<String, Value> = desired
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    if is_blank(body.get("data_source"))
        && let Some(source) = source.filter(|source| !source.is_empty())
    {
        body.insert("data_source".to_owned(), Value::String(source.to_owned()));
    }
    let missing: Vec<&'static str> = REQUIRED_FOR_CREATE
        .iter()
        .copied()
        .filter(|field| is_blank(body.get(*field)))
        .collect();
    if missing.is_empty() {
        Ok(body)
    } else {
        Err(missing)
    }
}

fn variables_change(want: &Value, have: Option<&Value>) -> Option<Value> {
    let had = match have {
        Some(Value::Object(had)) => had.clone(),
        _ => Map::new(),
    };
    match want {
        Value::Object(wanted) => {
            let differs = wanted
                .iter()
                .any(|(key, value)| !same(value, had.get(key.as_str())));
            differs.then(|| {
                let mut merged = had;
                for (key, value) in wanted {
                    if value.is_null() {
                        merged.remove(key);
                    } else {
                        merged.insert(key.clone(), value.clone());
                    }
                }
                Value::Object(merged)
            })
        }
        // `null` asks for no variables at all.
        Value::Null => (!had.is_empty()).then(|| Value::Object(Map::new())),
        // Not an object: let GrowPanel judge it.
        other => Some(other.clone()),
    }
}

/// Whether `want` already holds in `have`: `null` and `""` are the same,
/// scalars compare by their text (`5` matches `"5"`: custom variables are
/// strings), objects on the keys `want` gives.
pub(crate) fn same(want: &Value, have: Option<&Value>) -> bool {
    let have = have.unwrap_or(&Value::Null);
    match (want, have) {
        (Value::Object(wanted), Value::Object(had)) => wanted
            .iter()
            .all(|(key, value)| same(value, had.get(key.as_str()))),
        (Value::Object(wanted), _) => is_blank(Some(have)) && wanted.is_empty(),
        (Value::Array(wanted), Value::Array(had)) => {
            wanted.len() == had.len()
                && wanted
                    .iter()
                    .zip(had)
                    .all(|(value, was)| same(value, Some(was)))
        }
        (Value::Array(wanted), _) => wanted.is_empty() && is_blank(Some(have)),
        (_, Value::Object(_) | Value::Array(_)) => false,
        _ => text(want) == text(have),
    }
}

fn is_blank(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(text)) => text.is_empty(),
        Some(_) => false,
    }
}

fn text(value: &Value) -> String {
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

    fn current() -> Map<String, Value> {
        object(json!({
            "id": "cus_456", "name": "Beta LLC", "email": "billing@beta.example",
            "country": "US", "currency": "USD", "created_date": "2025-10-01T12:00:00.000Z",
            "custom_variables": {"tier": "gold", "region": "us"}, "cancel_date": null
        }))
    }

    #[test]
    fn the_record_read_back_is_unchanged() {
        assert_eq!(put_changes(&current(), &current()), Map::new());
        assert!(unchangeable_differences(&current(), &current()).is_empty());
    }

    #[test]
    fn only_updatable_fields_that_differ_are_sent() {
        let desired = object(
            json!({"id": "cus_456", "name": "Beta Inc", "email": "billing@beta.example",
            "country": "GB", "cancel_date": ""}),
        );
        assert_eq!(
            Value::Object(put_changes(&desired, &current())),
            json!({"name": "Beta Inc"})
        );
        assert_eq!(unchangeable_differences(&desired, &current()), ["country"]);
    }

    #[test]
    fn custom_variables_compare_on_the_keys_given_and_keep_the_rest() {
        let same_keys = object(json!({"custom_variables": {"tier": "gold"}}));
        assert_eq!(put_changes(&same_keys, &current()), Map::new());
        let changed =
            object(json!({"custom_variables": {"tier": "platinum", "region": null, "seats": 5}}));
        assert_eq!(
            Value::Object(put_changes(&changed, &current())),
            json!({"custom_variables": {"tier": "platinum", "seats": 5}})
        );
        let cleared = object(json!({"custom_variables": null}));
        assert_eq!(
            Value::Object(put_changes(&cleared, &current())),
            json!({"custom_variables": {}})
        );
    }

    #[test]
    fn null_and_empty_string_are_the_same() {
        let desired = object(json!({"name": "Beta LLC", "email": null}));
        let current = object(json!({"name": "Beta LLC", "email": ""}));
        assert_eq!(put_changes(&desired, &current), Map::new());
    }

    #[test]
    fn create_defaults_data_source_and_names_missing_fields() {
        let desired = object(
            json!({"id": "cus_1", "created_date": "2025-01-15", "country": "us", "email": null}),
        );
        assert_eq!(
            Value::Object(for_create(&desired, Some("ds_1")).expect("complete")),
            json!({"id": "cus_1", "created_date": "2025-01-15", "country": "us", "data_source": "ds_1"})
        );
        let partial = object(json!({"id": "cus_1", "country": ""}));
        assert_eq!(
            for_create(&partial, None),
            Err(vec!["created_date", "country", "data_source"])
        );
    }
}
