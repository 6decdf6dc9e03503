//! What an upsert sends: the updatable fields that differ from GrowPanel's
//! copy, and the checks a create must pass before it is sent.
//!
//! Kept free of I/O so the rules are unit-tested natively.

use serde_json::{Map, Value};
use weft_connector_sdk::same;

/// The fields `PUT /data/customers/{id}` accepts.
pub(crate) const UPDATABLE: &[&str] = &["name", "email", "custom_variables"];

/// The fields `POST /data/customers` requires, in the spec's order.
pub(crate) const REQUIRED_FOR_CREATE: &[&str] = &["id", "created_date", "country", "data_source"];

/// Fields that are never compared: the key itself, where the row lives, and
/// the import status GrowPanel echoes back.
const NOT_COMPARED: &[&str] = &["id", "data_source", "export_status", "export_error"];

/// Fields `POST /data/customers` types as strings.
const STRING_FIELDS: &[&str] =
    &["id", "name", "email", "created_date", "trial_started", "country", "state", "data_source"];

/// A value the spec's schema cannot carry, found before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotAString {
    /// The field, dotted (`custom_variables.seats`).
    pub(crate) field: String,
}

/// The body of a PUT: each updatable field of `desired` that does not
/// already hold in `current` (by the SDK's one rule, [`same::holds`]);
/// empty when the customer already matches.
///
/// The spec types `name`, `email` and every custom variable as a string
/// (not nullable): a blank value clears with `""`, and a number or boolean
/// is sent as its text (`5` as `"5"`, which the comparison already counts
/// as equal). `custom_variables` compare key by key, only on the keys
/// `desired` names, and are sent as `current`'s map with the desired keys
/// laid over it (a blank value removes its key), so no other variable is
/// lost whether GrowPanel merges or replaces the map. A value that has no
/// text (an object, a list) is refused as [`NotAString`].
pub(crate) fn put_changes(
    desired: &Map<String, Value>,
    current: &Map<String, Value>,
) -> Result<Map<String, Value>, NotAString> {
    let mut out = Map::new();
    for &field in UPDATABLE {
        let Some(want) = desired.get(field) else {
            continue;
        };
        let have = current.get(field);
        if field == "custom_variables" {
            if let Some(merged) = variables_change(want, have)? {
                out.insert(field.to_owned(), merged);
            }
        } else if !same::holds(want, have) {
            out.insert(field.to_owned(), Value::String(text(want, field)?));
        }
    }
    Ok(out)
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
                && !same::holds(value, current.get(key.as_str()))
        })
        .map(|(key, _)| key.clone())
        .collect()
}

/// Why a create cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CreateProblem {
    /// Required fields it lacks.
    Missing(Vec<&'static str>),
    /// A value the spec's schema cannot carry.
    NotAString(NotAString),
}

/// The body of a create: `desired` without blank fields, with
/// `data_source` defaulted to `source`, the string fields and custom
/// variables as strings (the spec types them so); or what stops it.
pub(crate) fn for_create(
    desired: &Map<String, Value>,
    source: Option<&str>,
) -> Result<Map<String, Value>, CreateProblem> {
    let mut body = Map::new();
    for (key, value) in desired {
        if same::is_blank(Some(value)) {
            continue;
        }
        let value = if key == "custom_variables" {
            match variables_change(value, None).map_err(CreateProblem::NotAString)? {
                Some(variables) => variables,
                None => continue,
            }
        } else if STRING_FIELDS.contains(&key.as_str()) {
            Value::String(text(value, key).map_err(CreateProblem::NotAString)?)
        } else {
            value.clone()
        };
        body.insert(key.clone(), value);
    }
    if same::is_blank(body.get("data_source"))
        && let Some(source) = source.filter(|source| !source.is_empty())
    {
        body.insert("data_source".to_owned(), Value::String(source.to_owned()));
    }
    let missing: Vec<&'static str> = REQUIRED_FOR_CREATE
        .iter()
        .copied()
        .filter(|field| same::is_blank(body.get(*field)))
        .collect();
    if missing.is_empty() { Ok(body) } else { Err(CreateProblem::Missing(missing)) }
}

/// The custom variables to send when `want` does not hold in `have`: the
/// current map with the desired keys laid over it, every value a string.
fn variables_change(want: &Value, have: Option<&Value>) -> Result<Option<Value>, NotAString> {
    let had = match have {
        Some(Value::Object(had)) => had.clone(),
        _ => Map::new(),
    };
    match want {
        Value::Object(wanted) => {
            let differs =
                wanted.iter().any(|(key, value)| !same::holds(value, had.get(key.as_str())));
            if !differs {
                return Ok(None);
            }
            let mut merged = Map::new();
            for (key, value) in had.iter().filter(|(key, _)| !wanted.contains_key(key.as_str())) {
                // GrowPanel's own values; text anyway, should it hold others.
                if let Ok(text) = text(value, key) {
                    merged.insert(key.clone(), Value::String(text));
                }
            }
            for (key, value) in wanted {
                if !same::is_blank(Some(value)) {
                    let field = format!("custom_variables.{key}");
                    merged.insert(key.clone(), Value::String(text(value, &field)?));
                }
            }
            Ok(Some(Value::Object(merged)))
        }
        // A blank asks for no variables at all.
        blank if same::is_blank(Some(blank)) => {
            Ok((!had.is_empty()).then(|| Value::Object(Map::new())))
        }
        _ => Err(NotAString { field: "custom_variables".into() }),
    }
}

/// The text GrowPanel's string fields carry for `value`: a blank is `""`,
/// a number or boolean its JSON text.
fn text(value: &Value, field: &str) -> Result<String, NotAString> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Number(number) => Ok(number.to_string()),
        Value::Bool(flag) => Ok(flag.to_string()),
        Value::Null => Ok(String::new()),
        Value::Array(items) if items.is_empty() => Ok(String::new()),
        Value::Object(fields) if fields.is_empty() => Ok(String::new()),
        Value::Array(_) | Value::Object(_) => Err(NotAString { field: field.to_owned() }),
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

    fn put(desired: &Map<String, Value>, current: &Map<String, Value>) -> Value {
        Value::Object(put_changes(desired, current).expect("strings"))
    }

    #[test]
    fn the_record_read_back_is_unchanged() {
        assert_eq!(put(&current(), &current()), json!({}));
        assert!(unchangeable_differences(&current(), &current()).is_empty());
    }

    #[test]
    fn only_updatable_fields_that_differ_are_sent() {
        let desired =
            object(json!({"id": "cus_456", "name": "Beta Inc", "email": "billing@beta.example",
            "country": "GB", "cancel_date": ""}));
        assert_eq!(put(&desired, &current()), json!({"name": "Beta Inc"}));
        assert_eq!(unchangeable_differences(&desired, &current()), ["country"]);
    }

    #[test]
    fn custom_variables_compare_on_the_keys_given_and_keep_the_rest() {
        let same_keys = object(json!({"custom_variables": {"tier": "gold"}}));
        assert_eq!(put(&same_keys, &current()), json!({}));
        let changed =
            object(json!({"custom_variables": {"tier": "platinum", "region": null, "seats": 5}}));
        assert_eq!(
            put(&changed, &current()),
            json!({"custom_variables": {"tier": "platinum", "seats": "5"}})
        );
        let cleared = object(json!({"custom_variables": null}));
        assert_eq!(put(&cleared, &current()), json!({"custom_variables": {}}));
    }

    #[test]
    fn null_and_empty_string_are_the_same() {
        let desired = object(json!({"name": "Beta LLC", "email": null}));
        let current = object(json!({"name": "Beta LLC", "email": ""}));
        assert_eq!(put(&desired, &current), json!({}));
    }

    #[test]
    fn clearing_a_field_sends_an_empty_string_never_null() {
        // The regression: `{"email": null, "name": null}`, which GrowPanel's
        // schema refuses (422 "name must be string").
        let desired = object(json!({"name": null, "email": null}));
        assert_eq!(put(&desired, &current()), json!({"name": "", "email": ""}));
    }

    #[test]
    fn custom_variables_numbers_and_booleans_are_sent_as_strings() {
        // The regression: `{"seats": 5, "vip": true}` went out as JSON
        // numbers and booleans (422 "custom_variables.seats must be string").
        let desired = object(json!({"custom_variables": {"seats": 5, "vip": true, "ratio": 0.5}}));
        assert_eq!(
            put(&desired, &current()),
            json!({"custom_variables": {"tier": "gold", "region": "us", "seats": "5",
                                        "vip": "true", "ratio": "0.5"}})
        );
        let already = object(json!({"custom_variables": {"seats": "5", "vip": "true"}}));
        let held = object(json!({"custom_variables": {"seats": 5, "vip": true}}));
        assert_eq!(put(&held, &already), json!({}));
        let create = object(json!({"id": 7, "created_date": "2025-01-15", "country": "us",
            "name": 42, "custom_variables": {"seats": 5, "gone": null}}));
        assert_eq!(
            Value::Object(for_create(&create, Some("ds_1")).expect("complete")),
            json!({"id": "7", "created_date": "2025-01-15", "country": "us", "name": "42",
                   "custom_variables": {"seats": "5"}, "data_source": "ds_1"})
        );
    }

    #[test]
    fn a_value_with_no_text_is_refused_before_sending() {
        let nested = object(json!({"custom_variables": {"seats": {"n": 5}}}));
        assert_eq!(
            put_changes(&nested, &current()),
            Err(NotAString { field: "custom_variables.seats".into() })
        );
        let listed = object(json!({"name": ["a"]}));
        assert_eq!(put_changes(&listed, &current()), Err(NotAString { field: "name".into() }));
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
            Err(CreateProblem::Missing(vec!["created_date", "country", "data_source"]))
        );
    }
}
