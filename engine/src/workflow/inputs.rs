//! Workflow inputs: declared with a type, a default and whether they are
//! required; given on the command line, by a webhook's event, or through
//! the server's API; checked before a run starts.

use serde::Serialize;
use serde_json::{Map, Value};

/// The type an input must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// A JSON string.
    String,
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
    /// Anything.
    Any,
}

impl InputType {
    /// Parses the name used in workflows.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "string" => InputType::String,
            "integer" => InputType::Integer,
            "number" => InputType::Number,
            "boolean" => InputType::Boolean,
            "object" => InputType::Object,
            "array" => InputType::Array,
            "any" => InputType::Any,
            _ => return None,
        })
    }

    /// The name used in workflows.
    pub fn as_str(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Integer => "integer",
            InputType::Number => "number",
            InputType::Boolean => "boolean",
            InputType::Object => "object",
            InputType::Array => "array",
            InputType::Any => "any",
        }
    }

    /// Whether `value` has this type.
    pub fn admits(self, value: &Value) -> bool {
        match self {
            InputType::String => value.is_string(),
            InputType::Integer => value.is_i64() || value.is_u64(),
            InputType::Number => value.is_number(),
            InputType::Boolean => value.is_boolean(),
            InputType::Object => value.is_object(),
            InputType::Array => value.is_array(),
            InputType::Any => true,
        }
    }
}

/// One declared input.
#[derive(Debug, Clone, Serialize)]
pub struct InputSpec {
    /// Name, as used in `.inputs.NAME`.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub kind: InputType,
    /// Whether a run must be given it.
    pub required: bool,
    /// Used when a run is not given it.
    pub default: Option<Value>,
    /// What it is.
    pub description: String,
}

/// Checks `given` against the declared inputs and fills in defaults.
/// Undeclared inputs are kept when `open` (a webhook event carries fields
/// the workflow does not name) and refused otherwise. Every problem is
/// reported, not only the first.
pub fn resolve(
    specs: &[InputSpec],
    given: &Map<String, Value>,
    open: bool,
) -> Result<Value, Vec<String>> {
    let mut problems = Vec::new();
    let mut out = Map::new();
    for (name, value) in given {
        match specs.iter().find(|s| &s.name == name) {
            Some(spec) if !spec.kind.admits(value) => problems.push(format!(
                "input {name} must be {} {}, got {}",
                article(spec.kind.as_str()),
                spec.kind.as_str(),
                describe(value)
            )),
            Some(_) => {
                out.insert(name.clone(), value.clone());
            }
            None if open => {
                out.insert(name.clone(), value.clone());
            }
            None => {
                let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                problems.push(format!(
                    "unknown input {name}; the workflow declares: {}",
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                ));
            }
        }
    }
    for spec in specs {
        if out.contains_key(&spec.name) || given.contains_key(&spec.name) {
            continue;
        }
        match &spec.default {
            Some(default) => {
                out.insert(spec.name.clone(), default.clone());
            }
            None if spec.required => problems.push(format!(
                "input {} ({}) is required{}",
                spec.name,
                spec.kind.as_str(),
                if spec.description.is_empty() {
                    String::new()
                } else {
                    format!(": {}", spec.description)
                }
            )),
            None => {
                out.insert(spec.name.clone(), Value::Null);
            }
        }
    }
    if problems.is_empty() { Ok(Value::Object(out)) } else { Err(problems) }
}

/// Parses `NAME=VALUE` from the command line. The value is taken as JSON
/// when the input is not a string and it parses (`count=3`, `tags=["a"]`),
/// and as text otherwise.
pub fn parse_assignment(specs: &[InputSpec], text: &str) -> Result<(String, Value), String> {
    let (name, raw) =
        text.split_once('=').ok_or_else(|| format!("expected NAME=VALUE, got {text:?}"))?;
    let kind = specs.iter().find(|s| s.name == name).map(|s| s.kind);
    let value = match kind {
        Some(InputType::String) => Value::String(raw.to_owned()),
        _ => serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned())),
    };
    Ok((name.to_owned(), value))
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }
}

fn describe(value: &Value) -> String {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    let mut shown = value.to_string();
    if shown.len() > 40 {
        let cut = (0..=40).rev().find(|i| shown.is_char_boundary(*i)).unwrap_or(0);
        shown.truncate(cut);
        shown.push('…');
    }
    format!("{kind} ({shown})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn specs() -> Vec<InputSpec> {
        vec![
            InputSpec {
                name: "email".into(),
                kind: InputType::String,
                required: true,
                default: None,
                description: "who".into(),
            },
            InputSpec {
                name: "seats".into(),
                kind: InputType::Integer,
                required: false,
                default: Some(json!(1)),
                description: String::new(),
            },
        ]
    }

    fn given(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn defaults_fill_in_and_types_are_checked() {
        assert_eq!(
            resolve(&specs(), &given(json!({"email": "a@b"})), false),
            Ok(json!({"email": "a@b", "seats": 1}))
        );
        let problems = resolve(&specs(), &given(json!({"email": 3, "seats": "many"})), false)
            .err()
            .unwrap_or_default();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("input email must be a string, got a number (3)"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_missing_required_input_is_named_with_its_description() {
        let problems = resolve(&specs(), &Map::new(), false).err().unwrap_or_default();
        assert_eq!(problems, vec!["input email (string) is required: who".to_owned()]);
    }

    #[test]
    fn unknown_inputs_are_refused_unless_the_run_is_open() {
        let extra = given(json!({"email": "a@b", "type": "customer.deleted"}));
        assert!(resolve(&specs(), &extra, false).is_err());
        assert_eq!(
            resolve(&specs(), &extra, true).ok().map(|v| v["type"].clone()),
            Some(json!("customer.deleted"))
        );
    }

    #[test]
    fn assignments_parse_json_unless_the_input_is_a_string() {
        assert_eq!(parse_assignment(&specs(), "seats=3"), Ok(("seats".into(), json!(3))));
        assert_eq!(parse_assignment(&specs(), "email=123"), Ok(("email".into(), json!("123"))));
        assert_eq!(parse_assignment(&specs(), "note=hello"), Ok(("note".into(), json!("hello"))));
        assert!(parse_assignment(&specs(), "novalue").is_err());
    }
}
