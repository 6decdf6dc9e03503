//! What each vendor's API description allows a request to carry, and the
//! check of every request an emulator answers against it.
//!
//! The descriptions live in `sandbox/specs/*.json`: the request side of each
//! operation an emulator serves (path and query parameters, body), as JSON
//! Schema, extracted from `../shared/vendor-apis` by `sandbox/extract` and
//! compiled into the binary, so `weft sandbox` needs no `../shared`. Stripe
//! SCIM has no description there; its file is written by hand from RFC
//! 7643/7644 and says so.
//!
//! Validation is the `jsonschema` crate's. What this module adds is the
//! reading of text into types (a query's `limit=5`, Stripe's form fields;
//! see [`decode`]) and one [`Violation`] per refused request, naming the
//! part, the field and what the description wanted, which each emulator
//! turns into its vendor's error answer ([`json_requests`] for the JSON
//! vendors, `stripe::validate` for Stripe's form encoding).

pub(crate) mod decode;
pub(crate) mod json_requests;

use std::fmt;
use std::sync::LazyLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use jsonschema::{Draft, ValidationError, Validator};
use serde_json::Value;

/// A description that cannot be used: a programming error in a committed
/// extract, which the tests below catch. Should one ship, the emulator
/// answers every request with a 500 naming it rather than serve unchecked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {vendor} API description compiled into weft-sandbox is unusable: {message}")]
pub(crate) struct SpecError {
    vendor: &'static str,
    message: String,
}

/// One vendor's operations, ready to validate requests.
#[derive(Debug)]
pub(crate) struct Spec {
    operations: Vec<Operation>,
    /// Whether the vendor refuses parameters its description does not name.
    refuses_unknown: bool,
}

/// One operation: where it is, and what its request may carry.
#[derive(Debug)]
pub(crate) struct Operation {
    method: String,
    /// `/v1/customers/{customer}` split at `/`; `None` for a parameter.
    segments: Vec<Option<String>>,
    /// Parameter names, in the order of their segments.
    parameter_names: Vec<String>,
    /// `METHOD /path`, for messages.
    pub name: String,
    /// The path parameters, as one object.
    pub path: Compiled,
    /// The query parameters, as one object.
    pub query: Compiled,
    /// The body, when the operation takes one.
    pub body: Option<Body>,
}

/// A request body the description describes (JSON, or Stripe's form).
#[derive(Debug)]
pub(crate) struct Body {
    /// Its schema.
    pub schema: Compiled,
}

/// A schema and its compiled validator.
pub(crate) struct Compiled {
    /// The schema, for reading text into its types.
    pub schema: Value,
    validator: Validator,
}

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compiled").field("schema", &self.schema).finish_non_exhaustive()
    }
}

/// Which part of a request a violation is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// A path parameter.
    Path,
    /// A query parameter.
    Query,
    /// The body.
    Body,
}

/// One step of the way to the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// A field of an object.
    Field(String),
    /// An element of an array.
    Index(usize),
}

/// What the description wanted instead.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Problem {
    /// A value of another JSON type (`"string"`, `"array"`, ...).
    Type(Vec<String>),
    /// A required field or parameter is missing (it ends the path).
    Required,
    /// A field or parameter the description does not allow (it ends the
    /// path).
    Unknown,
    /// A value outside the listed ones.
    Enum(Vec<Value>),
    /// A string longer than this many characters.
    TooLong(u64),
    /// A string shorter than this many characters.
    TooShort(u64),
    /// An array with more items than this.
    TooMany(u64),
    /// An array with fewer items than this.
    TooFew(u64),
    /// A number below this bound (exclusive when the flag is set).
    Below(Value, bool),
    /// A number above this bound (exclusive when the flag is set).
    Above(Value, bool),
    /// A string not in this format (`uuid`, `date-time`, ...).
    Format(String),
    /// A string not matching this pattern.
    Pattern(String),
    /// Anything else, in the validator's words.
    Other(String),
}

/// Why a request is outside its operation's description.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Violation {
    /// The part of the request.
    pub part: Part,
    /// The way from the part's root to the offending field.
    pub path: Vec<Step>,
    /// What is wrong.
    pub problem: Problem,
    /// The offending value (`null` for a missing or unknown field).
    pub value: Value,
}

impl Violation {
    /// A violation of the request as a whole, in the validator's words.
    pub fn other(part: Part, message: impl Into<String>) -> Self {
        Self { part, path: Vec::new(), problem: Problem::Other(message.into()), value: Value::Null }
    }

    /// The field, dotted: `custom_variables.seats`, `[2].country`; empty
    /// for the whole part.
    pub fn field(&self) -> String {
        let mut out = String::new();
        for step in &self.path {
            match step {
                Step::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Step::Index(index) => {
                    out.push('[');
                    out.push_str(&index.to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    /// The field in Stripe's bracket form: `invoice_settings[custom_fields][0][name]`.
    pub fn bracketed(&self) -> String {
        let mut out = String::new();
        for (at, step) in self.path.iter().enumerate() {
            let text = match step {
                Step::Field(name) => name.clone(),
                Step::Index(index) => index.to_string(),
            };
            if at == 0 {
                out.push_str(&text);
            } else {
                out.push('[');
                out.push_str(&text);
                out.push(']');
            }
        }
        out
    }

    /// What is wrong, after the field's name: `must be string`.
    pub fn complaint(&self) -> String {
        let list = |values: &[Value]| {
            values
                .iter()
                .map(|value| match value {
                    Value::String(text) => format!("{text:?}"),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.problem {
            Problem::Type(kinds) => format!("must be {}", kinds.join(" or ")),
            Problem::Required => "is required".to_owned(),
            Problem::Unknown => "is not allowed".to_owned(),
            Problem::Enum(values) => format!("must be one of {}", list(values)),
            Problem::TooLong(limit) => format!("must be at most {limit} characters"),
            Problem::TooShort(limit) => format!("must be at least {limit} characters"),
            Problem::TooMany(limit) => format!("must have at most {limit} items"),
            Problem::TooFew(limit) => format!("must have at least {limit} items"),
            Problem::Below(limit, false) => format!("must be >= {limit}"),
            Problem::Below(limit, true) => format!("must be > {limit}"),
            Problem::Above(limit, false) => format!("must be <= {limit}"),
            Problem::Above(limit, true) => format!("must be < {limit}"),
            Problem::Format(format) => format!("must be a valid {format}"),
            Problem::Pattern(pattern) => format!("must match {pattern}"),
            Problem::Other(message) => message.clone(),
        }
    }
}

impl fmt::Display for Violation {
    /// `name must be string`, `query parameter limit must be <= 100`,
    /// `the request body must be object`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = self.field();
        match (self.part, field.is_empty()) {
            (Part::Body, true) => write!(f, "the request body {}", self.complaint()),
            (Part::Body, false) => write!(f, "{field} {}", self.complaint()),
            (Part::Query, true) => write!(f, "the query string {}", self.complaint()),
            (Part::Query, false) => write!(f, "query parameter {field} {}", self.complaint()),
            (Part::Path, _) => write!(f, "path parameter {field} {}", self.complaint()),
        }
    }
}

impl Compiled {
    fn new(vendor: &'static str, at: &str, schema: Value) -> Result<Self, SpecError> {
        let validator = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|error| SpecError { vendor, message: format!("{at}: {error}") })?;
        Ok(Self { schema, validator })
    }

    /// Checks `instance`; the first violation is the error.
    pub fn check(&self, part: Part, instance: &Value) -> Result<(), Violation> {
        if self.validator.is_valid(instance) {
            return Ok(());
        }
        let error = self.validator.iter_errors(instance).next();
        Err(error.map_or_else(
            || Violation::other(part, "does not match the description"),
            |error| violation(part, &error),
        ))
    }
}

/// The violation an error of the validator stands for.
fn violation(part: Part, error: &ValidationError<'_>) -> Violation {
    let mut path: Vec<Step> = error
        .instance_path()
        .iter()
        .map(|segment| match segment {
            LocationSegment::Property(name) => Step::Field(name.into_owned()),
            LocationSegment::Index(index) => Step::Index(index),
        })
        .collect();
    let value = error.instance().clone().into_owned();
    let problem = match error.kind() {
        ValidationErrorKind::Type { kind } => Problem::Type(match kind {
            TypeKind::Single(kind) => vec![kind.as_str().to_owned()],
            TypeKind::Multiple(kinds) => {
                kinds.iter().map(|kind| kind.as_str().to_owned()).collect()
            }
        }),
        ValidationErrorKind::Required { property } => {
            path.push(Step::Field(property.as_str().unwrap_or_default().to_owned()));
            return Violation { part, path, problem: Problem::Required, value: Value::Null };
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            path.push(Step::Field(unexpected.first().cloned().unwrap_or_default()));
            let value = path_value(&value, path.last());
            return Violation { part, path, problem: Problem::Unknown, value };
        }
        ValidationErrorKind::Enum { options } => {
            Problem::Enum(options.as_array().cloned().unwrap_or_default())
        }
        ValidationErrorKind::Constant { expected_value } => {
            Problem::Enum(vec![Value::clone(expected_value)])
        }
        ValidationErrorKind::MaxLength { limit } => Problem::TooLong(*limit),
        ValidationErrorKind::MinLength { limit } => Problem::TooShort(*limit),
        ValidationErrorKind::MaxItems { limit } => Problem::TooMany(*limit),
        ValidationErrorKind::MinItems { limit } => Problem::TooFew(*limit),
        ValidationErrorKind::Minimum { limit } => Problem::Below(limit.clone(), false),
        ValidationErrorKind::ExclusiveMinimum { limit } => Problem::Below(limit.clone(), true),
        ValidationErrorKind::Maximum { limit } => Problem::Above(limit.clone(), false),
        ValidationErrorKind::ExclusiveMaximum { limit } => Problem::Above(limit.clone(), true),
        ValidationErrorKind::Format { format } => Problem::Format(format.clone()),
        ValidationErrorKind::Pattern { pattern } => Problem::Pattern(pattern.clone()),
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            return closest_branch(part, &path, &value, context);
        }
        _ => Problem::Other(error.to_string()),
    };
    Violation { part, path, problem, value }
}

/// The offending field's value, when `step` names a field of `object`.
fn path_value(object: &Value, step: Option<&Step>) -> Value {
    match step {
        Some(Step::Field(name)) => object.get(name).cloned().unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// For a value that matches no alternative of an `anyOf`: the complaint of
/// the alternative of its own type (a row whose `custom_variables.seats`
/// is a number is an object with a bad field, not "not an array"), or,
/// when it is of no alternative's type, the list of types.
fn closest_branch(
    part: Part,
    at: &[Step],
    value: &Value,
    context: &[Vec<ValidationError<'static>>],
) -> Violation {
    let depth = at.len();
    let wrong_type_here = |errors: &Vec<ValidationError<'static>>| {
        errors.iter().any(|error| {
            error.instance_path().iter().count() == depth
                && matches!(error.kind(), ValidationErrorKind::Type { .. })
        })
    };
    if let Some(first) =
        context.iter().find(|errors| !wrong_type_here(errors)).and_then(|errors| errors.first())
    {
        return violation(part, first);
    }
    let mut kinds = Vec::new();
    for errors in context {
        for error in errors {
            if let ValidationErrorKind::Type { kind } = error.kind() {
                let named: Vec<String> = match kind {
                    TypeKind::Single(kind) => vec![kind.as_str().to_owned()],
                    TypeKind::Multiple(kinds) => {
                        kinds.iter().map(|kind| kind.as_str().to_owned()).collect()
                    }
                };
                for name in named {
                    if !kinds.contains(&name) {
                        kinds.push(name);
                    }
                }
            }
        }
    }
    Violation { part, path: at.to_vec(), problem: Problem::Type(kinds), value: value.clone() }
}

impl Spec {
    /// Compiles an extract from `sandbox/specs`.
    fn load(vendor: &'static str, text: &str) -> Result<Spec, SpecError> {
        let fail = |message: String| SpecError { vendor, message };
        let document: Value =
            serde_json::from_str(text).map_err(|error| fail(format!("not JSON: {error}")))?;
        let refuses_unknown = document["unknown_parameters"] == "refused";
        let mut operations = Vec::new();
        for operation in document["operations"].as_array().into_iter().flatten() {
            let method = operation["method"]
                .as_str()
                .ok_or_else(|| fail("an operation without a method".into()))?;
            let template = operation["path"]
                .as_str()
                .ok_or_else(|| fail("an operation without a path".into()))?;
            let name = format!("{method} {template}");
            let segments: Vec<Option<String>> = template
                .split('/')
                .map(|segment| {
                    (!(segment.starts_with('{') && segment.ends_with('}')))
                        .then(|| segment.to_owned())
                })
                .collect();
            let parameter_names = template
                .split('/')
                .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
                .map(str::to_owned)
                .collect();
            let compile =
                |key: &str| Compiled::new(vendor, &format!("{name} {key}"), operation[key].clone());
            let body = match operation.get("body") {
                Some(Value::Object(body)) => Some(Body {
                    schema: Compiled::new(
                        vendor,
                        &format!("{name} body"),
                        body.get("schema").cloned().unwrap_or(Value::Bool(true)),
                    )?,
                }),
                _ => None,
            };
            operations.push(Operation {
                method: method.to_owned(),
                segments,
                parameter_names,
                path: compile("path_parameters")?,
                query: compile("query_parameters")?,
                body,
                name,
            });
        }
        if operations.is_empty() {
            return Err(fail("no operations".into()));
        }
        Ok(Spec { operations, refuses_unknown })
    }

    /// Whether the vendor refuses parameters its description does not name.
    pub fn refuses_unknown(&self) -> bool {
        self.refuses_unknown
    }

    /// The operation `method path` is, with its path parameters as an
    /// object of strings; a literal segment wins over a parameter
    /// (`/v1/customers/search` is not customer `search`).
    pub fn find(&self, method: &str, path: &str) -> Option<(&Operation, Value)> {
        let given: Vec<&str> = path.split('/').collect();
        let mut best: Option<(&Operation, usize)> = None;
        for operation in self.operations.iter().filter(|operation| operation.method == method) {
            if operation.segments.len() != given.len() {
                continue;
            }
            let mut literals = 0;
            let matches = operation.segments.iter().zip(&given).all(|(want, have)| match want {
                Some(literal) => {
                    literals += 1;
                    literal == have
                }
                None => !have.is_empty(),
            });
            if matches && best.is_none_or(|(_, most)| literals > most) {
                best = Some((operation, literals));
            }
        }
        let (operation, _) = best?;
        let mut parameters = serde_json::Map::new();
        let values = operation
            .segments
            .iter()
            .zip(&given)
            .filter(|(want, _)| want.is_none())
            .map(|(_, have)| *have);
        for (name, value) in operation.parameter_names.iter().zip(values) {
            let text = percent_decode(value);
            let schema = operation
                .path
                .schema
                .get("properties")
                .and_then(|p| p.get(name))
                .unwrap_or(&Value::Null);
            parameters.insert(name.clone(), decode::scalar(&text, schema));
        }
        Some((operation, Value::Object(parameters)))
    }
}

/// A path segment as sent, percent-decoded (`a%40b` is `a@b`).
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        if byte == b'%'
            && let Some(hex) = segment.get(at + 1..at + 3)
            && let Ok(decoded) = u8::from_str_radix(hex, 16)
        {
            out.push(decoded);
            at += 3;
            continue;
        }
        out.push(byte);
        at += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A compiled description, or why it could not be compiled.
pub(crate) type Loaded = Result<Spec, SpecError>;

macro_rules! spec {
    ($(#[$doc:meta])* $name:ident, $vendor:literal) => {
        $(#[$doc])*
        pub(crate) static $name: LazyLock<Loaded> =
            LazyLock::new(|| Spec::load($vendor, include_str!(concat!("../specs/", $vendor, ".json"))));
    };
}

spec!(
    /// Stripe's customer endpoints, from `spec3.json`.
    STRIPE, "stripe"
);
spec!(
    /// Stripe SCIM's `/Users`, written by hand from RFC 7643/7644.
    STRIPE_SCIM, "stripe-scim"
);
spec!(
    /// Baremetrics' sources, customers and subscriptions.
    BAREMETRICS, "baremetrics"
);
spec!(
    /// Metronome's v1 customers.
    METRONOME, "metronome"
);
spec!(
    /// GrowPanel's raw customer data.
    GROWPANEL, "growpanel"
);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn all() -> [&'static Loaded; 5] {
        [&STRIPE, &STRIPE_SCIM, &BAREMETRICS, &METRONOME, &GROWPANEL]
    }

    #[test]
    fn every_committed_description_compiles() {
        for loaded in all() {
            if let Err(error) = loaded.as_ref() {
                panic!("{error}");
            }
        }
    }

    /// Every route an emulator serves has its operation in the
    /// description, so no request reaches a handler unchecked.
    #[test]
    fn every_emulated_route_has_a_described_operation() {
        let uuid = "d7abd0cd-4ae9-4db7-8676-e986a4ebd8dc";
        let routes: [(&Loaded, &[(&str, String)]); 5] = [
            (
                &STRIPE,
                &[
                    ("GET", "/v1/customers".into()),
                    ("POST", "/v1/customers".into()),
                    ("GET", "/v1/customers/search".into()),
                    ("GET", "/v1/customers/cus_1".into()),
                    ("POST", "/v1/customers/cus_1".into()),
                    ("DELETE", "/v1/customers/cus_1".into()),
                ],
            ),
            (
                &BAREMETRICS,
                &[
                    ("GET", "/v1/sources".into()),
                    ("GET", "/v1/attributes/fields".into()),
                    ("GET", "/v1/src/customers".into()),
                    ("POST", "/v1/src/customers".into()),
                    ("GET", "/v1/src/customers/c1".into()),
                    ("PUT", "/v1/src/customers/c1".into()),
                    ("DELETE", "/v1/src/customers/c1".into()),
                    ("GET", "/v1/src/subscriptions".into()),
                ],
            ),
            (
                &METRONOME,
                &[
                    ("GET", "/v1/customers".into()),
                    ("POST", "/v1/customers".into()),
                    ("POST", "/v1/customers/archive".into()),
                    ("GET", format!("/v1/customers/{uuid}")),
                    ("POST", format!("/v1/customers/{uuid}/setName")),
                    ("POST", format!("/v1/customers/{uuid}/setIngestAliases")),
                    ("POST", format!("/v1/customers/{uuid}/updateConfig")),
                    ("GET", format!("/v1/customers/{uuid}/plans")),
                ],
            ),
            (
                &GROWPANEL,
                &[
                    ("GET", "/data/customers".into()),
                    ("POST", "/data/customers".into()),
                    ("GET", "/data/customers/c1".into()),
                    ("PUT", "/data/customers/c1".into()),
                    ("DELETE", "/data/customers/c1".into()),
                ],
            ),
            (
                &STRIPE_SCIM,
                &[
                    ("GET", "/scim/v2/Users".into()),
                    ("POST", "/scim/v2/Users".into()),
                    ("GET", "/scim/v2/Users/u1".into()),
                    ("PUT", "/scim/v2/Users/u1".into()),
                    ("PATCH", "/scim/v2/Users/u1".into()),
                    ("DELETE", "/scim/v2/Users/u1".into()),
                ],
            ),
        ];
        for (loaded, served) in routes {
            let spec = loaded.as_ref().expect("compiles");
            for (method, path) in served {
                assert!(
                    spec.find(method, path).is_some(),
                    "no described operation for {method} {path}"
                );
            }
        }
    }

    fn growpanel() -> &'static Spec {
        GROWPANEL.as_ref().expect("compiles")
    }

    #[test]
    fn operations_are_found_by_method_and_path_literals_first() {
        let stripe = STRIPE.as_ref().expect("compiles");
        let (search, _) = stripe.find("GET", "/v1/customers/search").expect("search");
        assert_eq!(search.name, "GET /v1/customers/search");
        let (retrieve, parameters) = stripe.find("GET", "/v1/customers/cus_1").expect("retrieve");
        assert_eq!(retrieve.name, "GET /v1/customers/{customer}");
        assert_eq!(parameters, json!({ "customer": "cus_1" }));
        assert!(stripe.find("PATCH", "/v1/customers/cus_1").is_none());
        assert!(stripe.find("GET", "/v1/customers/cus_1/extra").is_none());
        let (_, decoded) = growpanel().find("GET", "/data/customers/a%40b").expect("retrieve");
        assert_eq!(decoded, json!({ "id": "a@b" }));
    }

    #[test]
    fn a_violation_names_the_field_and_what_the_description_wanted() {
        let (put, _) = growpanel().find("PUT", "/data/customers/c1").expect("put");
        let body = &put.body.as_ref().expect("a body").schema;
        let error = body.check(Part::Body, &json!({ "name": null })).expect_err("null name");
        assert_eq!(error.to_string(), "name must be string");
        let error = body
            .check(Part::Body, &json!({ "custom_variables": { "seats": 5 } }))
            .expect_err("a number");
        assert_eq!(error.to_string(), "custom_variables.seats must be string");
        assert_eq!(error.bracketed(), "custom_variables[seats]");
        assert!(
            body.check(Part::Body, &json!({ "name": "x", "status": "ignored" })).is_ok(),
            "open objects"
        );
    }

    #[test]
    fn a_value_of_one_alternatives_type_is_judged_by_that_alternative() {
        let (post, _) = growpanel().find("POST", "/data/customers").expect("post");
        let body = &post.body.as_ref().expect("a body").schema;
        let row =
            json!({ "id": "c", "created_date": "2024-01-01", "country": "US", "data_source": "d" });
        assert!(body.check(Part::Body, &row).is_ok());
        let mut bad = row.clone();
        bad["custom_variables"] = json!({ "vip": true });
        let error = body.check(Part::Body, &json!([row, bad])).expect_err("a boolean");
        assert_eq!(error.to_string(), "[1].custom_variables.vip must be string");
        let error = body.check(Part::Body, &json!({ "id": "c" })).expect_err("missing");
        assert_eq!(
            (&error.problem, error.field()),
            (&Problem::Required, "created_date".to_owned())
        );
        let error = body.check(Part::Body, &json!("text")).expect_err("neither");
        assert_eq!(error.to_string(), "the request body must be object or array");
    }

    #[test]
    fn query_parameters_are_typed_before_they_are_judged() {
        let metronome = METRONOME.as_ref().expect("compiles");
        let (list, _) = metronome.find("GET", "/v1/customers").expect("list");
        let pairs = |query: &str| -> Vec<(String, String)> {
            form_urlencoded::parse(query.as_bytes()).into_owned().collect()
        };
        let query = |text: &str| decode::query(&pairs(text), &list.query.schema, false);
        assert!(
            list.query
                .check(
                    Part::Query,
                    &query("limit=5&only_archived=true&customer_ids=a&customer_ids=b")
                )
                .is_ok()
        );
        let error = list.query.check(Part::Query, &query("limit=500")).expect_err("too many");
        assert_eq!(error.to_string(), "query parameter limit must be <= 100");
        let error =
            list.query.check(Part::Query, &query("only_archived=yes")).expect_err("not a boolean");
        assert_eq!(error.to_string(), "query parameter only_archived must be boolean");
        let (get, parameters) = metronome.find("GET", "/v1/customers/not-a-uuid").expect("get");
        let error = get.path.check(Part::Path, &parameters).expect_err("not a uuid");
        assert_eq!(error.to_string(), "path parameter customer_id must be a valid uuid");
    }
}
