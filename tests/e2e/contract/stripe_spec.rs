//! Stripe's contract, checked without Prism (which cannot load spec3.json
//! in reasonable time): a customers-only extract of the description — the
//! `/v1/customers` paths and every schema they reach — turned into JSON
//! Schema and judged with the `jsonschema` crate.
//!
//! Requests: the path and method must be an operation of the extract, each
//! query parameter a declared one with a valid value, and a POST's
//! form-encoded body (`metadata[k]=v`, `preferred_locales[0]=en`) valid
//! against the operation's form schema, which allows no other field, as
//! Stripe answers "Received unknown parameter". Form values are text, so
//! each is read as the type its schema asks for before validation.
//! Responses: the JSON body against the schema of its status (or
//! `default`, Stripe's error object).

use std::collections::BTreeMap;
use std::path::Path;

use jsonschema::{Draft, Validator};
use serde_json::{Map, Value, json};

use super::super::support::TestResult;
use super::recorder::Exchange;

/// The paths of the extract: what the Stripe connector may call.
const CUSTOMER_PATHS: &[&str] =
    &["/v1/customers", "/v1/customers/{customer}", "/v1/customers/search"];

const SCHEMAS: &str = "#/components/schemas/";

/// One operation of the extract.
#[derive(Debug)]
struct Operation {
    method: String,
    template: &'static str,
    /// Query parameters by name.
    query: BTreeMap<String, Value>,
    /// The form body's schema, when the operation takes one.
    form: Option<Value>,
    /// Response schemas by status (`"200"`, `"default"`).
    responses: BTreeMap<String, Value>,
}

/// The customers-only extract, ready to judge exchanges.
pub struct StripeSpec {
    operations: Vec<Operation>,
    /// `{"components": {"schemas": {...}}}`, in JSON Schema terms.
    schemas: Value,
    validators: std::sync::Mutex<BTreeMap<String, std::sync::Arc<Validator>>>,
}

impl std::fmt::Debug for StripeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeSpec")
            .field("operations", &self.operations.len())
            .finish_non_exhaustive()
    }
}

impl StripeSpec {
    /// Extracts the customer operations and the schemas they reach from
    /// Stripe's `spec3.json`.
    pub fn load(spec3: &Path) -> TestResult<StripeSpec> {
        let text = std::fs::read_to_string(spec3)
            .map_err(|e| format!("cannot read Stripe's spec {}: {e}", spec3.display()))?;
        let document: Value = serde_json::from_str(&text)?;
        let all = document
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .ok_or("spec3.json has no components.schemas")?;

        let mut operations = Vec::new();
        let mut wanted = Vec::new();
        for &template in CUSTOMER_PATHS {
            let item = document["paths"]
                .get(template)
                .and_then(Value::as_object)
                .ok_or_else(|| format!("spec3.json has no path {template}"))?;
            for (method, operation) in item {
                collect_refs(operation, &mut wanted);
                let query = operation["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "query")
                    .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["schema"].clone())))
                    .collect();
                let form = operation
                    .pointer("/requestBody/content/application~1x-www-form-urlencoded/schema")
                    .cloned()
                    .map(|s| to_json_schema(&s));
                let responses = operation["responses"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(status, r)| {
                        Some((
                            status.clone(),
                            to_json_schema(r.pointer("/content/application~1json/schema")?),
                        ))
                    })
                    .collect();
                operations.push(Operation {
                    method: method.to_uppercase(),
                    template,
                    query,
                    form,
                    responses,
                });
            }
        }
        // Every schema the customer operations reach, and only those.
        let mut extract = Map::new();
        while let Some(name) = wanted.pop() {
            if extract.contains_key(&name) {
                continue;
            }
            let schema = all
                .get(&name)
                .ok_or_else(|| format!("spec3.json refers to a missing schema {name}"))?;
            collect_refs(schema, &mut wanted);
            extract.insert(name, to_json_schema(schema));
        }
        Ok(StripeSpec {
            operations,
            schemas: json!({ "components": { "schemas": extract } }),
            validators: Default::default(),
        })
    }

    /// How many schemas the extract holds.
    pub fn schema_count(&self) -> usize {
        self.schemas["components"]["schemas"].as_object().map_or(0, Map::len)
    }

    /// What is wrong with one exchange, each as a line that names the part
    /// and what the spec says.
    pub fn check(&self, exchange: &Exchange) -> Vec<String> {
        let Some((operation, _)) = self.operation(&exchange.method, &exchange.path) else {
            let known: Vec<String> =
                self.operations.iter().map(|o| format!("{} {}", o.method, o.template)).collect();
            return vec![format!(
                "the extract has no operation {} {}; it has {}",
                exchange.method,
                exchange.path,
                known.join(", ")
            )];
        };
        let mut problems = Vec::new();
        self.check_query(operation, &exchange.query, &mut problems);
        self.check_body(operation, exchange, &mut problems);
        self.check_response(operation, exchange, &mut problems);
        problems
    }

    fn operation(&self, method: &str, path: &str) -> Option<(&Operation, Vec<String>)> {
        self.operations
            .iter()
            .filter(|o| o.method == method)
            .find_map(|o| Some((o, match_template(o.template, path)?)))
    }

    fn check_query(&self, operation: &Operation, query: &str, problems: &mut Vec<String>) {
        let mut values = Map::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            insert_form_pair(&mut values, &key, &value);
        }
        for (name, value) in values {
            match operation.query.get(&name) {
                None => problems.push(format!(
                    "request query: `{name}` is not a parameter of {} {} (it takes {})",
                    operation.method,
                    operation.template,
                    operation.query.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
                Some(schema) => {
                    let schema = to_json_schema(schema);
                    let value = coerce(&value, &schema, &self.schemas);
                    for error in self.errors(&schema, &value) {
                        problems.push(format!("request query `{name}`{error}"));
                    }
                }
            }
        }
    }

    fn check_body(&self, operation: &Operation, exchange: &Exchange, problems: &mut Vec<String>) {
        if exchange.request_body.is_empty() {
            return;
        }
        if !exchange.request_type.starts_with("application/x-www-form-urlencoded") {
            problems.push(format!(
                "request body: Stripe takes application/x-www-form-urlencoded, not {:?}",
                exchange.request_type
            ));
            return;
        }
        let Some(schema) = &operation.form else {
            problems.push(format!(
                "request body: {} {} takes no body",
                operation.method, operation.template
            ));
            return;
        };
        let mut fields = Map::new();
        for (key, value) in form_urlencoded::parse(exchange.request_body.as_bytes()) {
            insert_form_pair(&mut fields, &key, &value);
        }
        let body = coerce(&Value::Object(fields), schema, &self.schemas);
        for error in self.errors(schema, &body) {
            problems.push(format!("request body{error}"));
        }
    }

    fn check_response(
        &self,
        operation: &Operation,
        exchange: &Exchange,
        problems: &mut Vec<String>,
    ) {
        let status = exchange.status.to_string();
        let Some(schema) =
            operation.responses.get(&status).or_else(|| operation.responses.get("default"))
        else {
            problems.push(format!(
                "response: status {status} is not in the spec for {} {}",
                operation.method, operation.template
            ));
            return;
        };
        if !exchange.response_type.starts_with("application/json") {
            problems.push(format!(
                "response: content-type {:?}, the spec says application/json",
                exchange.response_type
            ));
            return;
        }
        let body: Value = match serde_json::from_str(&exchange.response_body) {
            Ok(body) => body,
            Err(e) => {
                problems.push(format!("response: not JSON ({e})"));
                return;
            }
        };
        for error in self.errors(schema, &body) {
            problems.push(format!("response {status}{error}"));
        }
    }

    /// Validation errors of `instance` against `schema` (which may `$ref`
    /// the extract's schemas), each as `` at `/path`: message``.
    fn errors(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let validator = match self.validator(schema) {
            Ok(validator) => validator,
            Err(e) => return vec![format!(": the extract's schema does not compile: {e}")],
        };
        validator
            .iter_errors(instance)
            .map(|error| format!(" at `{}`: {error}", error.instance_path()))
            .collect()
    }

    fn validator(&self, schema: &Value) -> Result<std::sync::Arc<Validator>, String> {
        let key = schema.to_string();
        let mut cache = self.validators.lock().map_err(|e| e.to_string())?;
        if let Some(validator) = cache.get(&key) {
            return Ok(validator.clone());
        }
        // The schema sits beside the extract, so its `#/components/...`
        // references resolve inside the same document.
        let mut root = self.schemas.clone();
        if let (Some(fields), Some(own)) = (root.as_object_mut(), schema.as_object()) {
            for (keyword, value) in own {
                fields.insert(keyword.clone(), value.clone());
            }
        }
        let validator = std::sync::Arc::new(
            jsonschema::options()
                .with_draft(Draft::Draft7)
                .build(&root)
                .map_err(|e| e.to_string())?,
        );
        cache.insert(key, validator.clone());
        Ok(validator)
    }
}

/// The path parameters when `path` matches `template`.
fn match_template(template: &str, path: &str) -> Option<Vec<String>> {
    let wanted: Vec<&str> = template.split('/').collect();
    let given: Vec<&str> = path.split('/').collect();
    if wanted.len() != given.len() {
        return None;
    }
    let mut parameters = Vec::new();
    for (want, have) in wanted.iter().zip(&given) {
        if want.starts_with('{') && want.ends_with('}') {
            if have.is_empty() {
                return None;
            }
            parameters.push((*have).to_owned());
        } else if want != have {
            return None;
        }
    }
    Some(parameters)
}

/// Names of the component schemas `value` refers to.
fn collect_refs(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                match (key.as_str(), field) {
                    ("$ref", Value::String(target)) => {
                        if let Some(name) = target.strip_prefix(SCHEMAS) {
                            into.push(name.to_owned());
                        }
                    }
                    _ => collect_refs(field, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, into)),
        _ => {}
    }
}

/// An OpenAPI 3.0 schema in JSON Schema terms: `nullable: true` becomes
/// "or null"; the rest (type, properties, required, enum, anyOf, items,
/// additionalProperties, maxLength, pattern) means the same, and the `x-`
/// extensions and unknown formats (`unix-time`) are ignored by validators.
/// One deliberate tightening: objects that list their properties allow no
/// others, as Stripe behaves (see below).
fn to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(fields) => {
            let mut converted = Map::new();
            let mut nullable = false;
            for (key, value) in fields {
                match key.as_str() {
                    "nullable" => nullable = value == &Value::Bool(true),
                    k if k.starts_with("x-") => {}
                    // Inside `properties` the keys are field names, not keywords.
                    "properties" => {
                        let properties = value
                            .as_object()
                            .map(|p| {
                                p.iter()
                                    .map(|(name, s)| (name.clone(), to_json_schema(s)))
                                    .collect()
                            })
                            .unwrap_or_default();
                        converted.insert(key.clone(), Value::Object(properties));
                    }
                    "description" | "title" | "example" => {}
                    _ => {
                        converted.insert(key.clone(), to_json_schema(value));
                    }
                }
            }
            // Stripe answers only the fields its objects list, and refuses
            // unknown parameters at any depth ("Received unknown parameter:
            // address[floor]"): an object that lists its properties allows
            // no other.
            if converted.contains_key("properties")
                && !converted.contains_key("additionalProperties")
            {
                converted.insert("additionalProperties".into(), Value::Bool(false));
            }
            if nullable {
                json!({ "anyOf": [Value::Object(converted), { "type": "null" }] })
            } else {
                Value::Object(converted)
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

/// Adds one decoded form pair to `fields`, reading the bracket syntax:
/// `a[b][c]=v` nests objects, `a[]=v` appends and `a[0]=v` indexes an array.
fn insert_form_pair(fields: &mut Map<String, Value>, key: &str, value: &str) {
    let (name, rest) = match key.find('[') {
        Some(at) => (&key[..at], &key[at..]),
        None => (key, ""),
    };
    let mut segments = Vec::new();
    let mut rest = rest;
    while let Some(inner) = rest.strip_prefix('[') {
        let Some(end) = inner.find(']') else { break };
        segments.push(&inner[..end]);
        rest = &inner[end + 1..];
    }
    let slot = fields.entry(name.to_owned()).or_insert(Value::Null);
    insert_at(slot, &segments, value);
}

fn insert_at(slot: &mut Value, segments: &[&str], value: &str) {
    let Some((first, rest)) = segments.split_first() else {
        *slot = Value::String(value.to_owned());
        return;
    };
    let is_index = first.is_empty() || first.bytes().all(|b| b.is_ascii_digit());
    if is_index {
        if !slot.is_array() {
            *slot = Value::Array(Vec::new());
        }
        let Value::Array(items) = slot else { return };
        let index = first.parse::<usize>().unwrap_or(items.len());
        while items.len() <= index {
            items.push(Value::Null);
        }
        insert_at(&mut items[index], rest, value);
    } else {
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        let Value::Object(fields) = slot else { return };
        insert_at(fields.entry((*first).to_owned()).or_insert(Value::Null), rest, value);
    }
}

/// Reads the text leaves of a decoded form as the types `schema` asks
/// for: `"100"` becomes 100 where only an integer is allowed, `"true"` a
/// boolean; a string stays a string wherever a string (or that exact enum
/// value) is allowed.
fn coerce(value: &Value, schema: &Value, root: &Value) -> Value {
    let branches = flatten(schema, root, 0);
    match value {
        Value::String(text) => {
            let allows = |kind: &str| {
                branches.iter().any(|b| {
                    b["type"] == kind
                        || b["type"].as_array().is_some_and(|t| t.iter().any(|t| t == kind))
                })
            };
            let in_enum = branches
                .iter()
                .any(|b| b["enum"].as_array().is_some_and(|e| e.iter().any(|v| v == text)));
            if allows("string") || in_enum {
                return value.clone();
            }
            if allows("integer")
                && let Ok(number) = text.parse::<i64>()
            {
                return Value::from(number);
            }
            if allows("number")
                && let Some(number) =
                    text.parse::<f64>().ok().and_then(serde_json::Number::from_f64)
            {
                return Value::Number(number);
            }
            if allows("boolean") && (text == "true" || text == "false") {
                return Value::Bool(text == "true");
            }
            value.clone()
        }
        Value::Object(fields) => {
            let coerced = fields
                .iter()
                .map(|(name, field)| {
                    let sub = branches.iter().find_map(|b| {
                        b["properties"].get(name).cloned().or_else(|| {
                            b.get("additionalProperties").filter(|a| a.is_object()).cloned()
                        })
                    });
                    (
                        name.clone(),
                        sub.map_or_else(|| field.clone(), |sub| coerce(field, &sub, root)),
                    )
                })
                .collect();
            Value::Object(coerced)
        }
        Value::Array(items) => {
            let sub = branches.iter().find_map(|b| b.get("items").cloned());
            Value::Array(
                items
                    .iter()
                    .map(|item| {
                        sub.as_ref().map_or_else(|| item.clone(), |sub| coerce(item, sub, root))
                    })
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

/// The alternatives `schema` stands for: `$ref`s resolved and `anyOf` /
/// `oneOf` spread out.
fn flatten(schema: &Value, root: &Value, depth: usize) -> Vec<Value> {
    if depth > 16 {
        return Vec::new();
    }
    if let Some(target) = schema["$ref"].as_str() {
        let pointer = target.trim_start_matches('#');
        return root.pointer(pointer).map(|s| flatten(s, root, depth + 1)).unwrap_or_default();
    }
    let mut out = Vec::new();
    for keyword in ["anyOf", "oneOf"] {
        if let Some(branches) = schema[keyword].as_array() {
            for branch in branches {
                out.extend(flatten(branch, root, depth + 1));
            }
        }
    }
    if out.is_empty() {
        out.push(schema.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_pairs_nest_as_stripe_reads_them() {
        let mut fields = Map::new();
        for (key, value) in form_urlencoded::parse(b"email=a%40b.c&metadata[plan]=pro&preferred_locales[0]=en&preferred_locales[1]=fr&expand[]=x&metadata[a]=") {
            insert_form_pair(&mut fields, &key, &value);
        }
        assert_eq!(
            Value::Object(fields),
            json!({ "email": "a@b.c", "metadata": { "plan": "pro", "a": "" }, "preferred_locales": ["en", "fr"], "expand": ["x"] })
        );
    }

    #[test]
    fn form_text_is_read_as_the_type_the_schema_asks_for() {
        let root = json!({ "components": { "schemas": { "n": { "type": "integer" } } } });
        let schema = json!({ "type": "object", "properties": {
            "balance": { "$ref": "#/components/schemas/n" },
            "name": { "type": "string" },
            "metadata": { "anyOf": [{ "type": "object", "additionalProperties": { "type": "string" } }, { "enum": [""], "type": "string" }] },
            "flag": { "type": "boolean" }
        }});
        let value =
            json!({ "balance": "100", "name": "100", "metadata": { "n": "1" }, "flag": "true" });
        assert_eq!(
            coerce(&value, &schema, &root),
            json!({ "balance": 100, "name": "100", "metadata": { "n": "1" }, "flag": true })
        );
    }

    #[test]
    fn nullable_becomes_or_null() {
        let converted = to_json_schema(
            &json!({ "type": "string", "nullable": true, "x-stripe": 1, "description": "d" }),
        );
        assert_eq!(converted, json!({ "anyOf": [{ "type": "string" }, { "type": "null" }] }));
    }

    #[test]
    fn an_object_that_lists_its_properties_allows_no_other() {
        let converted = to_json_schema(
            &json!({ "type": "object", "properties": { "a": { "type": "string" } } }),
        );
        assert_eq!(converted["additionalProperties"], false);
        let metadata = to_json_schema(
            &json!({ "type": "object", "additionalProperties": { "type": "string" } }),
        );
        assert_eq!(metadata["additionalProperties"], json!({ "type": "string" }));
    }

    #[test]
    fn templates_match_whole_segments() {
        assert_eq!(
            match_template("/v1/customers/{customer}", "/v1/customers/cus_1"),
            Some(vec!["cus_1".to_owned()])
        );
        assert_eq!(match_template("/v1/customers/{customer}", "/v1/customers"), None);
        assert_eq!(match_template("/v1/customers", "/v1/customers/"), None);
    }
}
