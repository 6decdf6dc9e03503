//! Reading text as the JSON types a schema asks for: a query string's
//! values and Stripe's form fields arrive as text, and `limit=5` is the
//! integer 5 only because the schema says `limit` is an integer.
//!
//! Text that fits none of the allowed types is kept as a string, so that
//! validation refuses it and names the type it wanted (`preferred_locales=`
//! stays `""` where an array is required).

use serde_json::{Map, Value};

/// Branches nested deeper than this are not looked into; the extracts nest
/// `anyOf` two levels at most.
const MAX_BRANCH_DEPTH: usize = 8;

/// The alternatives `schema` allows: its `anyOf` / `oneOf` branches,
/// flattened, or the schema itself.
pub(crate) fn branches(schema: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    collect_branches(schema, 0, &mut out);
    out
}

fn collect_branches<'a>(schema: &'a Value, depth: usize, out: &mut Vec<&'a Value>) {
    let nested = ["anyOf", "oneOf"]
        .iter()
        .filter_map(|keyword| schema.get(keyword).and_then(Value::as_array))
        .flatten();
    let mut any = false;
    if depth < MAX_BRANCH_DEPTH {
        for branch in nested {
            any = true;
            collect_branches(branch, depth + 1, out);
        }
    }
    if !any {
        out.push(schema);
    }
}

/// Whether one of `schema`'s alternatives takes values of JSON type `kind`
/// (`"string"`, `"integer"`, `"object"`, ...).
pub(crate) fn allows(schema: &Value, kind: &str) -> bool {
    branches(schema).into_iter().any(|branch| branch_allows(branch, kind))
}

fn branch_allows(branch: &Value, kind: &str) -> bool {
    match branch.get("type") {
        Some(Value::String(declared)) => {
            declared == kind || (declared == "number" && kind == "integer")
        }
        Some(Value::Array(declared)) => declared
            .iter()
            .any(|declared| declared == kind || (declared == "number" && kind == "integer")),
        // No type: an enum's values say which, else anything goes.
        _ => match branch.get("enum").and_then(Value::as_array) {
            Some(values) => values.iter().any(|value| type_of(value) == kind),
            None => true,
        },
    }
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(number) if number.is_i64() || number.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `text` as the scalar `schema` asks for: a string where a string is
/// allowed, else an integer, number or boolean when the text reads as one,
/// else the text itself, for validation to refuse.
pub(crate) fn scalar(text: &str, schema: &Value) -> Value {
    if allows(schema, "string") {
        return Value::String(text.to_owned());
    }
    if allows(schema, "integer")
        && let Ok(integer) = text.parse::<i64>()
    {
        return Value::from(integer);
    }
    if allows(schema, "number")
        && let Some(number) = text.parse::<f64>().ok().and_then(serde_json::Number::from_f64)
    {
        return Value::Number(number);
    }
    if allows(schema, "boolean") && (text == "true" || text == "false") {
        return Value::Bool(text == "true");
    }
    Value::String(text.to_owned())
}

/// The schema of field `name` of an object `schema` allows: its declared
/// property, else its `additionalProperties` schema.
pub(crate) fn property<'a>(schema: &'a Value, name: &str) -> Option<&'a Value> {
    branches(schema).into_iter().find_map(|branch| {
        branch
            .get("properties")
            .and_then(|properties| properties.get(name))
            .or_else(|| branch.get("additionalProperties").filter(|extra| extra.is_object()))
    })
}

/// The schema of the items of an array `schema` allows.
pub(crate) fn items(schema: &Value) -> Option<&Value> {
    branches(schema)
        .into_iter()
        .find_map(|branch| branch.get("items").filter(|items| items.is_object()))
}

/// A query string read as OpenAPI's default style (`form`, exploded): each
/// parameter `parameters` (an object schema) names, from the pairs with its
/// name, as its schema's type; an array parameter from every pair, the
/// others from the last one. Parameters it does not name are kept as text
/// only when `keep_unknown` (so a closed schema refuses them); otherwise
/// they are left out, as OpenAPI allows them.
pub(crate) fn query(pairs: &[(String, String)], parameters: &Value, keep_unknown: bool) -> Value {
    let empty = Map::new();
    let declared = parameters.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    let mut out = Map::new();
    for (name, schema) in declared {
        let mut values = pairs.iter().filter(|(key, _)| key == name).map(|(_, value)| value);
        if allows(schema, "array") && !allows(schema, "string") {
            let item = items(schema).unwrap_or(&Value::Null);
            let list: Vec<Value> = values.map(|value| scalar(value, item)).collect();
            if !list.is_empty() {
                out.insert(name.clone(), Value::Array(list));
            }
        } else if let Some(last) = values.next_back() {
            out.insert(name.clone(), scalar(last, schema));
        }
    }
    if keep_unknown {
        for (name, value) in pairs {
            if !declared.contains_key(name) {
                out.insert(name.clone(), Value::String(value.clone()));
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn text_takes_the_type_the_schema_asks_for() {
        assert_eq!(scalar("5", &json!({ "type": "integer" })), json!(5));
        assert_eq!(scalar("5", &json!({ "type": "string" })), json!("5"));
        assert_eq!(scalar("true", &json!({ "type": "boolean" })), json!(true));
        assert_eq!(scalar("1.5", &json!({ "type": "number" })), json!(1.5));
        // Fits nothing: kept as text for validation to refuse.
        assert_eq!(scalar("ten", &json!({ "type": "integer" })), json!("ten"));
        assert_eq!(scalar("", &json!({ "type": "array" })), json!(""));
        // Stripe's emptyable: an object, or the empty string.
        let emptyable =
            json!({ "anyOf": [{ "type": "object" }, { "type": "string", "enum": [""] }] });
        assert_eq!(scalar("", &emptyable), json!(""));
    }

    #[test]
    fn a_query_reads_arrays_from_every_pair_and_the_rest_from_the_last() {
        let parameters = json!({ "type": "object", "properties": {
            "limit": { "type": "integer" },
            "ids": { "type": "array", "items": { "type": "string" } },
            "archived": { "type": "boolean" },
        }});
        let pairs: Vec<(String, String)> = [
            ("limit", "5"),
            ("ids", "a"),
            ("ids", "b"),
            ("archived", "true"),
            ("limit", "7"),
            ("other", "x"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(
            query(&pairs, &parameters, false),
            json!({ "limit": 7, "ids": ["a", "b"], "archived": true })
        );
        assert_eq!(query(&pairs, &parameters, true)["other"], "x");
    }

    #[test]
    fn property_and_item_schemas_are_found_through_any_of() {
        let schema = json!({ "anyOf": [
            { "type": "object", "properties": { "a": { "type": "integer" } }, "additionalProperties": { "type": "string" } },
            { "type": "array", "items": { "type": "boolean" } },
        ]});
        assert_eq!(property(&schema, "a"), Some(&json!({ "type": "integer" })));
        assert_eq!(property(&schema, "b"), Some(&json!({ "type": "string" })));
        assert_eq!(items(&schema), Some(&json!({ "type": "boolean" })));
    }
}
