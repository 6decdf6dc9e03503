//! Extracts the request side of the vendors' OpenAPI descriptions: for
//! each operation a weft emulator serves, its path and query parameters
//! and its body, as JSON Schema with every `$ref` resolved, so the
//! emulators can validate each request they answer without
//! `../shared/vendor-apis` (the extracts are committed in `sandbox/specs`
//! and compiled into the binary).
//!
//! What the conversion does, and why:
//!
//! - OpenAPI 3.0 schemas become JSON Schema: `nullable: true` adds `null`
//!   to the allowed types, a boolean `exclusiveMinimum` becomes the number
//!   form; 3.1 (GrowPanel) already is JSON Schema;
//! - what validation does not read is dropped (descriptions, examples,
//!   defaults, `x-` extensions), which keeps the extracts small;
//! - `$ref`s are inlined; a schema that refers to itself is cut after
//!   [`MAX_REF_RECURSION`] levels into `{}` (anything), and the cut is
//!   listed in the extract (Stripe's responses recurse; its request bodies
//!   do not, so nothing is cut today);
//! - parameters become one object schema per location (`path`, `query`),
//!   so a request's parameters validate as one value;
//! - Stripe refuses parameters it does not know at any depth ("Received
//!   unknown parameter: `address[floor]`"), which its description does not
//!   say: every Stripe object schema that lists its properties is closed
//!   (`additionalProperties: false`), query strings included. The other
//!   vendors' objects stay open, as OpenAPI reads them;
//! - where a description is wrong, an [`Erratum`] replaces the schema
//!   before extraction, with the reason beside it and in the extract.
//!   An erratum that no longer finds its target, or no longer changes
//!   anything, is an error, so the list cannot go stale.

#![deny(missing_docs)]

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// How many times one `$ref` may be expanded inside itself before it is
/// cut to `{}`: deep enough for any request a connector sends.
pub const MAX_REF_RECURSION: usize = 2;

/// What can go wrong while extracting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A description could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A description is not JSON or YAML.
    #[error("{path} is not valid {format}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// `JSON` or `YAML`.
        format: &'static str,
        /// The parser's message.
        message: String,
    },
    /// The description lacks something the extraction needs.
    #[error("{vendor}: {message}")]
    Description {
        /// The vendor whose description it is.
        vendor: &'static str,
        /// What is missing or malformed, and where.
        message: String,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a vendor refuses parameters and body fields its description does
/// not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownParameters {
    /// As OpenAPI reads a description: what is not listed is allowed.
    Allowed,
    /// Refused at every depth, query string included (Stripe).
    Refused,
}

/// A correction to a vendor's description, applied before extraction.
#[derive(Debug, Clone, PartialEq)]
pub struct Erratum {
    /// JSON pointer into the description.
    pub pointer: &'static str,
    /// The schema that replaces the one at `pointer`.
    pub replacement: Value,
    /// Why the description is wrong, with the evidence.
    pub why: &'static str,
}

/// One vendor's description and the operations its emulator serves.
#[derive(Debug)]
pub struct Vendor {
    /// The extract's file stem in `sandbox/specs`, and the emulator's name.
    pub name: &'static str,
    /// The description, relative to `vendor-apis`.
    pub file: &'static str,
    /// Prefix of the description's server URL that the emulator serves in
    /// its paths (Metronome's server is `https://api.metronome.com/v1`).
    pub server_path: &'static str,
    /// `(METHOD, path as the description spells it)`, in the order served.
    pub operations: &'static [(&'static str, &'static str)],
    /// Whether unknown parameters are refused.
    pub unknown_parameters: UnknownParameters,
    /// Corrections to the description.
    pub errata: fn() -> Vec<Erratum>,
}

fn no_errata() -> Vec<Erratum> {
    Vec::new()
}

/// Baremetrics' description is Konfig's rendering of its reference, with
/// each schema inferred from one example (see `tests/e2e/contract/errata.rs`
/// for the response-side corrections).
fn baremetrics_errata() -> Vec<Erratum> {
    const WHY: &str = "the description's own text says \"a unix timestamp of when this customer was \
        created\", the seed guide gives `created integer Unix timestamp`, and every customer the \
        description shows answers `created` as an integer (1492605754); the `date-time` string \
        type is Konfig's reading of the placeholder example \"NOW\". The integer is kept.";
    vec![
        Erratum {
            pointer: "/components/schemas/SourceCreateCustomerRecordRequest/properties/created",
            replacement: json!({ "type": "integer" }),
            why: WHY,
        },
        Erratum {
            pointer: "/components/schemas/SourceUpdateCustomerInformationRequest/properties/created",
            replacement: json!({ "type": "integer" }),
            why: WHY,
        },
    ]
}

/// Every vendor with a description in `vendor-apis`. Stripe SCIM has none;
/// its extract (`stripe-scim.json`) is written by hand from RFC 7643/7644.
pub const VENDORS: &[Vendor] = &[
    Vendor {
        name: "stripe",
        file: "stripe/spec3.json",
        server_path: "",
        operations: &[
            ("GET", "/v1/customers"),
            ("POST", "/v1/customers"),
            ("GET", "/v1/customers/search"),
            ("GET", "/v1/customers/{customer}"),
            ("POST", "/v1/customers/{customer}"),
            ("DELETE", "/v1/customers/{customer}"),
        ],
        unknown_parameters: UnknownParameters::Refused,
        errata: no_errata,
    },
    Vendor {
        name: "baremetrics",
        file: "baremetrics/openapi.yaml",
        server_path: "",
        operations: &[
            ("GET", "/v1/sources"),
            ("GET", "/v1/attributes/fields"),
            ("GET", "/v1/{source_id}/customers"),
            ("POST", "/v1/{source_id}/customers"),
            ("GET", "/v1/{source_id}/customers/{oid}"),
            ("PUT", "/v1/{source_id}/customers/{customer_oid}"),
            ("DELETE", "/v1/{source_id}/customers/{oid}"),
            ("GET", "/v1/{source_id}/subscriptions"),
        ],
        unknown_parameters: UnknownParameters::Allowed,
        errata: baremetrics_errata,
    },
    Vendor {
        name: "metronome",
        file: "metronome/openapi.json",
        server_path: "/v1",
        operations: &[
            ("GET", "/customers"),
            ("POST", "/customers"),
            ("POST", "/customers/archive"),
            ("GET", "/customers/{customer_id}"),
            ("POST", "/customers/{customer_id}/setName"),
            ("POST", "/customers/{customer_id}/setIngestAliases"),
            ("POST", "/customers/{customer_id}/updateConfig"),
            ("GET", "/customers/{customer_id}/plans"),
        ],
        unknown_parameters: UnknownParameters::Allowed,
        errata: no_errata,
    },
    Vendor {
        name: "growpanel",
        file: "growpanel/openapi.json",
        server_path: "",
        operations: &[
            ("GET", "/data/customers"),
            ("POST", "/data/customers"),
            ("GET", "/data/customers/{id}"),
            ("PUT", "/data/customers/{id}"),
            ("DELETE", "/data/customers/{id}"),
        ],
        unknown_parameters: UnknownParameters::Allowed,
        errata: no_errata,
    },
];

/// Extracts that are written by hand and must not be generated over.
pub const HAND_WRITTEN: &[&str] = &["stripe-scim"];

/// The vendors' descriptions: `WEFT_VENDOR_APIS` when set, else
/// `../shared/vendor-apis` beside the repository at `repo`, else beside the
/// repository it was cloned from (a clone in a temporary directory has no
/// `../shared` of its own); `None` when none of them exists.
pub fn find_vendor_apis(repo: &Path) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WEFT_VENDOR_APIS") {
        return Some(path.into());
    }
    let beside = repo.join("../shared/vendor-apis");
    if beside.is_dir() {
        return Some(beside);
    }
    let origin = std::process::Command::new("git")
        .args(["remote", "get-url", "origin"])
        .current_dir(repo)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))?;
    let from_origin = origin.join("../shared/vendor-apis");
    from_origin.is_dir().then_some(from_origin)
}

/// Where the extracts live in the repository at `repo`.
pub fn specs_dir(repo: &Path) -> PathBuf {
    repo.join("sandbox/specs")
}

/// Reads `vendor`'s description from `vendor_apis` and returns its
/// extract as the text committed in `sandbox/specs/{name}.json`.
///
/// # Errors
///
/// When the description cannot be read or parsed, lacks an operation or a
/// schema the extraction needs, or an erratum no longer applies.
pub fn extract(vendor: &Vendor, vendor_apis: &Path) -> Result<String> {
    let path = vendor_apis.join(vendor.file);
    let text = std::fs::read_to_string(&path)
        .map_err(|source| Error::Read { path: path.clone(), source })?;
    let document: Value = if vendor.file.ends_with(".yaml") {
        serde_norway::from_str(&text).map_err(|e| Error::Parse {
            path: path.clone(),
            format: "YAML",
            message: e.to_string(),
        })?
    } else {
        serde_json::from_str(&text).map_err(|e| Error::Parse {
            path: path.clone(),
            format: "JSON",
            message: e.to_string(),
        })?
    };
    let extract = extract_document(vendor, document)?;
    Ok(to_text(&extract))
}

/// The committed form of an extract: two-space indented JSON, keys sorted,
/// one trailing newline.
pub fn to_text(extract: &Value) -> String {
    let mut text = serde_json::to_string_pretty(extract).unwrap_or_default();
    text.push('\n');
    text
}

/// The extract of `vendor`'s parsed description.
///
/// # Errors
///
/// As [`extract`], less the reading.
pub fn extract_document(vendor: &Vendor, mut document: Value) -> Result<Value> {
    let fail = |message: String| Error::Description { vendor: vendor.name, message };
    let errata = (vendor.errata)();
    for erratum in &errata {
        let target = document.pointer_mut(erratum.pointer).ok_or_else(|| {
            fail(format!(
                "erratum {} no longer applies: the description has no such schema",
                erratum.pointer
            ))
        })?;
        if *target == erratum.replacement {
            return Err(fail(format!(
                "erratum {} is no longer needed: the description already says so",
                erratum.pointer
            )));
        }
        *target = erratum.replacement.clone();
    }
    let version = document["openapi"].as_str().unwrap_or_default().to_owned();
    let mut converter = Converter {
        document: &document,
        vendor: vendor.name,
        openapi_30: version.starts_with("3.0"),
        close_objects: vendor.unknown_parameters == UnknownParameters::Refused,
        stack: Vec::new(),
        cuts: Vec::new(),
    };
    let mut operations = Vec::new();
    for &(method, path) in vendor.operations {
        let item = document["paths"]
            .get(path)
            .ok_or_else(|| fail(format!("the description has no path {path}")))?;
        let operation = item
            .get(method.to_ascii_lowercase())
            .ok_or_else(|| fail(format!("the description has no operation {method} {path}")))?;
        operations.push(converter.operation(method, path, vendor.server_path, item, operation)?);
    }
    let mut extract = Map::new();
    extract.insert("vendor".into(), vendor.name.into());
    extract.insert(
        "source".into(),
        json!({
            "file": vendor.file,
            "openapi": version,
            "version": document.pointer("/info/version").cloned().unwrap_or(Value::Null),
        }),
    );
    extract.insert(
        "generated_by".into(),
        "cargo run -p weft-spec-extract (sandbox/extract); do not edit by hand".into(),
    );
    extract.insert(
        "unknown_parameters".into(),
        match vendor.unknown_parameters {
            UnknownParameters::Allowed => "allowed",
            UnknownParameters::Refused => "refused",
        }
        .into(),
    );
    extract.insert(
        "errata".into(),
        errata
            .iter()
            .map(|erratum| json!({ "pointer": erratum.pointer, "replacement": erratum.replacement, "why": erratum.why }))
            .collect(),
    );
    converter.cuts.sort();
    converter.cuts.dedup();
    extract.insert("recursion_cut".into(), json!(converter.cuts));
    extract.insert("operations".into(), Value::Array(operations));
    Ok(Value::Object(extract))
}

/// Turns the description's schemas into self-contained JSON Schema.
struct Converter<'a> {
    document: &'a Value,
    vendor: &'static str,
    openapi_30: bool,
    close_objects: bool,
    /// The `$ref`s being expanded, outermost first.
    stack: Vec<String>,
    /// `$ref`s cut for recursing too deep.
    cuts: Vec<String>,
}

/// Keywords kept as they are: everything validation reads that holds no
/// subschema. Everything else that is not a subschema keyword is dropped.
const PLAIN_KEYWORDS: &[&str] = &[
    "type",
    "required",
    "enum",
    "const",
    "format",
    "pattern",
    "maxLength",
    "minLength",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxProperties",
    "minProperties",
    "multipleOf",
    "minimum",
    "maximum",
];

impl Converter<'_> {
    fn fail(&self, message: String) -> Error {
        Error::Description { vendor: self.vendor, message }
    }

    /// The object `reference` (`#/components/...`) points at.
    fn resolve(&self, reference: &str) -> Result<&Value> {
        reference
            .strip_prefix('#')
            .and_then(|pointer| self.document.pointer(pointer))
            .ok_or_else(|| self.fail(format!("unresolvable $ref {reference}")))
    }

    /// Follows `$ref`s until a non-reference object.
    fn dereference<'v>(&'v self, mut value: &'v Value) -> Result<&'v Value> {
        for _ in 0..16 {
            match value.get("$ref").and_then(Value::as_str) {
                Some(reference) => value = self.resolve(reference)?,
                None => return Ok(value),
            }
        }
        Err(self.fail("a $ref chain longer than 16".into()))
    }

    fn operation(
        &mut self,
        method: &str,
        path: &str,
        server_path: &str,
        item: &Value,
        operation: &Value,
    ) -> Result<Value> {
        let at = format!("{method} {path}");
        // Path-level parameters apply unless the operation redefines them.
        let mut parameters: Vec<(String, String, Value)> = Vec::new();
        for list in [item.get("parameters"), operation.get("parameters")] {
            for parameter in list.and_then(Value::as_array).into_iter().flatten() {
                let parameter = self.dereference(parameter)?;
                let name = parameter["name"]
                    .as_str()
                    .ok_or_else(|| self.fail(format!("{at}: a parameter without a name")))?;
                let location = parameter["in"].as_str().unwrap_or_default();
                parameters.retain(|(n, l, _)| !(n == name && l == location));
                parameters.push((name.to_owned(), location.to_owned(), parameter.clone()));
            }
        }
        let mut out = Map::new();
        out.insert("method".into(), method.into());
        out.insert("path".into(), format!("{server_path}{path}").into());
        out.insert(
            "operation_id".into(),
            operation.get("operationId").cloned().unwrap_or(Value::Null),
        );
        for location in ["path", "query"] {
            let mut properties = Map::new();
            let mut required = Vec::new();
            for (name, _, parameter) in parameters.iter().filter(|(_, l, _)| l == location) {
                let schema = parameter
                    .get("schema")
                    .ok_or_else(|| self.fail(format!("{at}: parameter {name} has no schema")))?;
                properties.insert(name.clone(), self.schema(schema)?);
                if parameter["required"] == Value::Bool(true) || location == "path" {
                    required.push(Value::String(name.clone()));
                }
            }
            let mut object =
                json!({ "type": "object", "properties": properties, "required": required });
            if self.close_objects {
                object["additionalProperties"] = Value::Bool(false);
            }
            out.insert(format!("{location}_parameters"), object);
        }
        let body = match operation.get("requestBody") {
            None => Value::Null,
            Some(body) => {
                let body = self.dereference(body)?.clone();
                let content = body["content"]
                    .as_object()
                    .ok_or_else(|| self.fail(format!("{at}: a request body without content")))?;
                let [(media_type, media)] = content.iter().collect::<Vec<_>>()[..] else {
                    return Err(self.fail(format!(
                        "{at}: the emulators take one media type; the body offers {}",
                        content.len()
                    )));
                };
                let schema = media
                    .get("schema")
                    .ok_or_else(|| self.fail(format!("{at}: body {media_type} has no schema")))?;
                json!({
                    "media_type": media_type,
                    "required": body["required"] == Value::Bool(true),
                    "schema": self.schema(schema)?,
                })
            }
        };
        out.insert("body".into(), body);
        Ok(Value::Object(out))
    }

    /// `schema` as self-contained JSON Schema.
    fn schema(&mut self, schema: &Value) -> Result<Value> {
        let Value::Object(fields) = schema else {
            // `true` / `false` schemas, or `additionalProperties: true`.
            return Ok(schema.clone());
        };
        if let Some(reference) = fields.get("$ref").and_then(Value::as_str) {
            let depth = self.stack.iter().filter(|seen| *seen == reference).count();
            if depth >= MAX_REF_RECURSION {
                self.cuts.push(reference.to_owned());
                return Ok(json!({}));
            }
            let target = self.resolve(reference)?.clone();
            self.stack.push(reference.to_owned());
            let converted = self.schema(&target);
            self.stack.pop();
            return converted;
        }
        let mut out = Map::new();
        for (keyword, value) in fields {
            match keyword.as_str() {
                "properties" | "patternProperties" => {
                    let mut properties = Map::new();
                    for (name, property) in value.as_object().into_iter().flatten() {
                        properties.insert(name.clone(), self.schema(property)?);
                    }
                    out.insert(keyword.clone(), Value::Object(properties));
                }
                "items" | "additionalProperties" | "not" | "contains" | "propertyNames" => {
                    out.insert(keyword.clone(), self.schema(value)?);
                }
                "anyOf" | "oneOf" | "allOf" | "prefixItems" => {
                    let mut branches = Vec::new();
                    for branch in value.as_array().into_iter().flatten() {
                        branches.push(self.schema(branch)?);
                    }
                    out.insert(keyword.clone(), Value::Array(branches));
                }
                "exclusiveMinimum" | "exclusiveMaximum" if value.is_boolean() => {
                    // OpenAPI 3.0: a flag on `minimum` / `maximum`.
                    let bound = if keyword == "exclusiveMinimum" { "minimum" } else { "maximum" };
                    if value == &Value::Bool(true)
                        && let Some(limit) = fields.get(bound)
                    {
                        out.insert(keyword.clone(), limit.clone());
                    }
                }
                "exclusiveMinimum" | "exclusiveMaximum" => {
                    out.insert(keyword.clone(), value.clone());
                }
                plain if PLAIN_KEYWORDS.contains(&plain) => {
                    out.insert(keyword.clone(), value.clone());
                }
                // Documentation, examples, defaults, extensions, and
                // OpenAPI-only keywords validation does not read.
                _ => {}
            }
        }
        // A boolean exclusive bound replaced its inclusive one.
        for (exclusive, bound) in [("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")]
        {
            if fields.get(exclusive) == Some(&Value::Bool(true)) {
                out.remove(bound);
            }
        }
        if self.openapi_30 && fields.get("nullable") == Some(&Value::Bool(true)) {
            out = nullable(out);
        }
        if self.close_objects
            && out.contains_key("properties")
            && !out.contains_key("additionalProperties")
        {
            out.insert("additionalProperties".into(), Value::Bool(false));
        }
        Ok(Value::Object(out))
    }
}

/// OpenAPI 3.0's `nullable: true` in JSON Schema terms.
fn nullable(mut schema: Map<String, Value>) -> Map<String, Value> {
    if let Some(Value::Array(options)) = schema.get_mut("enum")
        && !options.contains(&Value::Null)
    {
        options.push(Value::Null);
    }
    match schema.get("type").cloned() {
        Some(Value::String(kind)) => {
            schema.insert("type".into(), json!([kind, "null"]));
            schema
        }
        Some(Value::Array(mut kinds)) => {
            if !kinds.contains(&json!("null")) {
                kinds.push(json!("null"));
            }
            schema.insert("type".into(), Value::Array(kinds));
            schema
        }
        _ => {
            let mut wrapper = Map::new();
            wrapper.insert("anyOf".into(), json!([Value::Object(schema), { "type": "null" }]));
            wrapper
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vendor(unknown_parameters: UnknownParameters, errata: fn() -> Vec<Erratum>) -> Vendor {
        Vendor {
            name: "test",
            file: "test.json",
            server_path: "/v1",
            operations: &[("POST", "/things/{id}")],
            unknown_parameters,
            errata,
        }
    }

    fn document() -> Value {
        json!({
            "openapi": "3.0.1",
            "info": { "version": "1" },
            "paths": { "/things/{id}": {
                "parameters": [{ "$ref": "#/components/parameters/Id" }],
                "post": {
                    "operationId": "updateThing",
                    "parameters": [{ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 0, "exclusiveMinimum": true } }],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Thing" } } } },
                }
            }},
            "components": {
                "parameters": { "Id": { "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } } },
                "schemas": { "Thing": {
                    "type": "object",
                    "description": "a thing",
                    "required": ["name"],
                    "properties": {
                        "name": { "type": "string", "example": "x", "x-extra": 1 },
                        "note": { "type": "string", "nullable": true },
                        "description": { "type": "string" },
                        "child": { "$ref": "#/components/schemas/Thing" }
                    }
                }}
            }
        })
    }

    #[test]
    fn operations_become_self_contained_json_schema() {
        let extract = extract_document(&vendor(UnknownParameters::Allowed, no_errata), document())
            .expect("extracts");
        let operation = &extract["operations"][0];
        assert_eq!(operation["path"], "/v1/things/{id}");
        assert_eq!(
            operation["path_parameters"],
            json!({ "type": "object", "properties": { "id": { "type": "string", "format": "uuid" } }, "required": ["id"] })
        );
        assert_eq!(
            operation["query_parameters"]["properties"]["limit"],
            json!({ "type": "integer", "exclusiveMinimum": 0 })
        );
        let body = &operation["body"];
        assert_eq!(
            (body["media_type"].as_str(), body["required"].as_bool()),
            (Some("application/json"), Some(true))
        );
        let thing = &body["schema"];
        assert_eq!(
            thing["properties"]["name"],
            json!({ "type": "string" }),
            "docs and extensions dropped"
        );
        assert_eq!(thing["properties"]["note"]["type"], json!(["string", "null"]));
        assert_eq!(
            thing["properties"]["description"],
            json!({ "type": "string" }),
            "a property named like a keyword is kept"
        );
        assert!(thing.get("additionalProperties").is_none(), "open, as OpenAPI reads it");
        // Thing inside Thing inside Thing: the third level is cut.
        assert_eq!(thing["properties"]["child"]["properties"]["child"], json!({}));
        assert_eq!(extract["recursion_cut"], json!(["#/components/schemas/Thing"]));
    }

    #[test]
    fn a_vendor_that_refuses_unknown_parameters_gets_closed_objects() {
        let extract = extract_document(&vendor(UnknownParameters::Refused, no_errata), document())
            .expect("extracts");
        let operation = &extract["operations"][0];
        assert_eq!(operation["query_parameters"]["additionalProperties"], false);
        assert_eq!(operation["body"]["schema"]["additionalProperties"], false);
    }

    #[test]
    fn an_erratum_replaces_its_schema_and_is_listed_with_its_reason() {
        fn errata() -> Vec<Erratum> {
            vec![Erratum {
                pointer: "/components/schemas/Thing/properties/note",
                replacement: json!({ "type": "integer" }),
                why: "because",
            }]
        }
        let extract = extract_document(&vendor(UnknownParameters::Allowed, errata), document())
            .expect("extracts");
        assert_eq!(
            extract["operations"][0]["body"]["schema"]["properties"]["note"],
            json!({ "type": "integer" })
        );
        assert_eq!(extract["errata"][0]["why"], "because");
    }

    #[test]
    fn a_stale_erratum_is_an_error() {
        fn gone() -> Vec<Erratum> {
            vec![Erratum { pointer: "/components/schemas/Gone", replacement: json!({}), why: "" }]
        }
        fn needless() -> Vec<Erratum> {
            vec![Erratum {
                pointer: "/components/schemas/Thing/properties/description",
                replacement: json!({ "type": "string" }),
                why: "",
            }]
        }
        for errata in [gone as fn() -> Vec<Erratum>, needless] {
            let error = extract_document(&vendor(UnknownParameters::Allowed, errata), document())
                .expect_err("stale");
            assert!(error.to_string().contains("erratum"), "{error}");
        }
    }
}
