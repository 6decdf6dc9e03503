//! Every request checked against Stripe's description of its operation
//! (`sandbox/specs/stripe.json`) before a handler sees it, with Stripe's
//! form encoding read the way Stripe reads it: the bracket names make a
//! tree ([`Form`]), and each leaf's text becomes the type its schema asks
//! for. So `balance=100` is an integer, `metadata=` is the empty string
//! that unsets metadata (an emptyable parameter: `anyOf` a hash or `""`),
//! and `preferred_locales=` stays a string where only an array is allowed,
//! which Stripe refuses ("Invalid array").
//!
//! Stripe refuses parameters it does not know at any depth, which the
//! extract encodes by closing every object it describes.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::Method;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::form::{Form, Param};
use crate::spec::json_requests::BODY_LIMIT;
use crate::spec::{self, Part, Problem, Step, Violation, decode};

/// Middleware: answers Stripe's 400 for a request its description refuses,
/// and passes every other request on, body untouched.
pub(super) async fn check_request(request: Request, next: Next) -> Response {
    let spec = match spec::STRIPE.as_ref() {
        Ok(spec) => spec,
        Err(error) => {
            tracing::error!(%error, "the Stripe emulator cannot check requests");
            return ApiError::internal().into_response();
        }
    };
    let Some((operation, path_parameters)) =
        spec.find(request.method().as_str(), request.uri().path())
    else {
        return next.run(request).await;
    };
    let refuse = |violation: &Violation, schema: &Value| {
        tracing::debug!(operation = %operation.name, %violation, "refused: outside Stripe's description");
        refusal(violation, schema).into_response()
    };
    if let Err(violation) = operation.path.check(Part::Path, &path_parameters) {
        return refuse(&violation, &operation.path.schema);
    }
    let query = request.uri().query().unwrap_or_default().as_bytes().to_vec();
    let form_body = operation.body.as_ref().filter(|_| request.method() != Method::GET);
    let Some(body_schema) = form_body else {
        // Parameters in the query string only.
        let form = match Form::from_bytes(&query) {
            Ok(form) => form,
            Err(error) => return error.into_response(),
        };
        let typed = typed_params(&form.params, &operation.query.schema);
        if let Err(violation) = operation.query.check(Part::Query, &typed) {
            return refuse(&violation, &operation.query.schema);
        }
        return next.run(request).await;
    };
    // A write: Stripe reads its parameters from the query string and the
    // form body alike. A body in another encoding is the handler's to refuse.
    let is_form =
        request.headers().get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).is_none_or(
            |value| {
                value
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            },
        );
    let (parts, body) = request.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(bytes) => bytes,
        Err(error) => {
            return ApiError::invalid_request(format!("Could not read the request body: {error}"))
                .into_response();
        }
    };
    let looks_like_json = bytes
        .iter()
        .find(|byte| !byte.is_ascii_whitespace())
        .is_some_and(|first| *first == b'{' || *first == b'[');
    if is_form && !looks_like_json {
        let mut form = Form::default();
        if let Err(error) = form.parse(&query).and_then(|()| form.parse(&bytes)) {
            return error.into_response();
        }
        let typed = typed_params(&form.params, &body_schema.schema.schema);
        if let Err(violation) = body_schema.schema.check(Part::Body, &typed) {
            return refuse(&violation, &body_schema.schema.schema);
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// The top-level parameters as one object typed by `schema`.
fn typed_params(params: &[(String, Param)], schema: &Value) -> Value {
    let mut object = Map::new();
    for (name, value) in params {
        object.insert(
            name.clone(),
            typed(value, decode::property(schema, name).unwrap_or(&Value::Bool(true))),
        );
    }
    Value::Object(object)
}

/// A form value as the type `schema` asks for: a hash with index keys
/// (`a[0]`, `a[]`) is an array where an array is allowed, any other hash
/// an object, a leaf a scalar (see [`decode::scalar`]).
fn typed(param: &Param, schema: &Value) -> Value {
    match param {
        Param::Value(text) => decode::scalar(text, schema),
        Param::Hash(entries) => {
            if decode::allows(schema, "array")
                && let Some(items) = param.as_list()
            {
                let item_schema = decode::items(schema).unwrap_or(&Value::Bool(true));
                return Value::Array(
                    items.into_iter().map(|item| typed(item, item_schema)).collect(),
                );
            }
            typed_params(entries, schema)
        }
    }
}

/// The schema of the value at `path` inside `schema`.
fn schema_at<'a>(schema: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(schema, |schema, step| match step {
        Step::Field(name) => decode::property(schema, name),
        Step::Index(_) => decode::items(schema),
    })
}

/// Stripe's answer to a violation: a 400 `invalid_request_error` naming
/// the parameter in bracket form, in the words Stripe uses.
fn refusal(violation: &Violation, schema: &Value) -> ApiError {
    let param = violation.bracketed();
    let text = match &violation.value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let wanted = |kinds: &[String]| {
        if kinds.iter().any(|kind| kind == "array") {
            ApiError::invalid_param(&param, "Invalid array")
        } else if kinds.iter().any(|kind| kind == "object") {
            ApiError::invalid_param(&param, "Invalid hash")
        } else if kinds.iter().any(|kind| kind == "integer") {
            ApiError::invalid_integer(&param, &text)
        } else if kinds.iter().any(|kind| kind == "boolean") {
            ApiError::invalid_param(&param, format!("Invalid boolean: {text}"))
        } else if kinds.iter().any(|kind| kind == "number") {
            ApiError::invalid_param(&param, format!("Invalid decimal: {text}"))
        } else if violation.value.is_object() || violation.value.is_array() {
            ApiError::invalid_param(
                &param,
                format!("Invalid {param}: expected a string, not a hash"),
            )
        } else {
            ApiError::invalid_param(&param, format!("Invalid {param}: {}", violation.complaint()))
        }
    };
    match &violation.problem {
        Problem::Unknown => ApiError::unknown_parameter(&param),
        Problem::Required => ApiError::missing_parameter(&param),
        Problem::Type(kinds) => wanted(kinds),
        // A string other than `""` where a hash (or list) or `""` is
        // allowed: say what it should have been.
        Problem::Enum(values) if values == &[Value::String(String::new())] => {
            let at = schema_at(schema, &violation.path).unwrap_or(&Value::Null);
            let kinds: Vec<String> = ["array", "object"]
                .into_iter()
                .filter(|kind| decode::allows(at, kind))
                .map(str::to_owned)
                .collect();
            wanted(&kinds)
        }
        Problem::Enum(values) => {
            let names: Vec<String> = values
                .iter()
                .map(|value| value.as_str().map_or_else(|| value.to_string(), str::to_owned))
                .collect();
            let listed = match names.split_last() {
                Some((last, [])) => last.clone(),
                Some((last, rest)) => format!("{}, or {last}", rest.join(", ")),
                None => String::new(),
            };
            ApiError::invalid_param(&param, format!("Invalid {param}: must be one of {listed}"))
        }
        Problem::TooLong(limit) => ApiError::invalid_param(
            &param,
            format!("Invalid {param}: must be at most {limit} characters"),
        ),
        _ if param.is_empty() => {
            ApiError::invalid_request(format!("Invalid request: {}", violation.complaint()))
        }
        _ => ApiError::invalid_param(&param, format!("Invalid {param}: {}", violation.complaint())),
    }
}
