//! Expressions in workflows: jq, through the `jaq` crates.
//!
//! An expression sees `.` (the context object, or the record being mapped)
//! and the variables `$inputs`, `$steps`, `$item` and `$run`. Expressions
//! are compiled once, when the workflow loads, so a typo is a load error
//! with a caret, not a failure halfway through a run.
//!
//! Workflow values carry expressions as templates: a string that is exactly
//! `${{ expr }}` becomes the expression's value (any JSON type); a string
//! with `${{ … }}` inside becomes a string with each part's value spliced
//! in. Everything else is a literal.

use std::ops::Range;
use std::sync::Arc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde_json::Value;

/// The variables every expression may use, in the order their values are
/// passed to [`Expr::eval`].
pub const VARIABLES: [&str; 4] = ["$inputs", "$steps", "$item", "$run"];

/// Native filters an expression may not call: `env` reads the process
/// environment, where credentials live. (`halt` only raises an error inside
/// jaq, and `input`/`inputs` are not linked.)
const DENIED: [&str; 1] = ["env"];

type Data = data::JustLut<Val>;
type Filter = jaq_core::compile::Filter<jaq_core::Native<Data>>;

/// A compile error, with the byte range of the offending text inside the
/// expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    /// Where in the expression text.
    pub range: Range<usize>,
    /// What is wrong.
    pub message: String,
}

/// A compiled jq expression. Cheap to clone and shareable across threads.
#[derive(Clone)]
pub struct Expr {
    text: Arc<str>,
    filter: Arc<Filter>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.text)
    }
}

/// The values of the variables for one evaluation, converted to jaq's
/// values once and shared: a for-each over 100k items builds only the
/// `$item` part for each.
#[derive(Clone, Default)]
pub struct Scope {
    inputs: Val,
    steps: Val,
    item: Val,
    run: Val,
    context: Val,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope").field("run", &self.run.to_string()).finish_non_exhaustive()
    }
}

impl Scope {
    /// A scope with `$inputs`, `$steps` and `$run`, and no item.
    pub fn new(inputs: &Value, steps: &Value, run: &Value) -> Scope {
        let mut scope = Scope { inputs: to_val(inputs), steps: to_val(steps), item: Val::Null, run: to_val(run), context: Val::Null };
        scope.context = scope.build_context();
        scope
    }

    /// The same scope with `$item` set.
    pub fn with_item(&self, item: &Value) -> Scope {
        self.with_item_val(to_val(item))
    }

    /// The same scope with `$item` set from a value already converted.
    pub fn with_item_val(&self, item: Val) -> Scope {
        let mut scope = Scope { item, context: Val::Null, ..self.clone() };
        scope.context = scope.build_context();
        scope
    }

    fn build_context(&self) -> Val {
        let mut map = jaq_json::Map::default();
        for (name, value) in [("inputs", &self.inputs), ("steps", &self.steps), ("item", &self.item), ("run", &self.run)] {
            map.insert(Val::from(name.to_owned()), value.clone());
        }
        Val::obj(map)
    }

    /// The context object `.` of expressions that do not map a record:
    /// `{inputs, steps, item, run}`.
    pub fn context(&self) -> &Val {
        &self.context
    }
}

/// Converts a JSON value to jaq's value type.
pub fn to_val(value: &Value) -> Val {
    match value {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => isize::try_from(i).map_or(Val::from(i as f64), Val::from),
            (None, Some(f)) => Val::from(f),
            (None, None) => Val::Null,
        },
        Value::String(s) => Val::from(s.clone()),
        Value::Array(a) => Val::Arr(jaq_json::Rc::new(a.iter().map(to_val).collect())),
        Value::Object(o) => Val::Obj(jaq_json::Rc::new(o.iter().map(|(k, v)| (Val::from(k.clone()), to_val(v))).collect())),
    }
}

/// Parses JSON text (a record from a plugin) straight into jaq's value type.
pub fn parse_val(text: &str) -> Result<Val, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

/// Converts a jaq value back to JSON. NaN and infinities become `null`,
/// byte strings become (lossy) strings, non-string keys their JSON text.
pub fn from_val(value: &Val) -> Value {
    use jaq_json::Num;
    match value {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(Num::Int(i)) => Value::from(*i as i64),
        Val::Num(Num::Float(f)) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Val::Num(other) => serde_json::from_str(&other.to_string()).unwrap_or(Value::Null),
        Val::TStr(b) | Val::BStr(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        Val::Arr(items) => Value::Array(items.iter().map(from_val).collect()),
        Val::Obj(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(b).into_owned(),
                        other => other.to_string(),
                    };
                    (key, from_val(v))
                })
                .collect(),
        ),
    }
}

impl Expr {
    /// Compiles `text`.
    pub fn compile(text: &str) -> Result<Expr, CompileError> {
        let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
        let funs = jaq_core::funs::<Data>()
            .chain(jaq_std::funs::<Data>())
            .chain(jaq_json::funs::<Data>())
            .filter(|(name, _, _)| !DENIED.contains(name));
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader.load(&arena, File { code: text, path: () }).map_err(|errors| load_error(text, errors))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .with_global_vars(VARIABLES)
            .compile(modules)
            .map_err(|errors| {
                let first = errors.into_iter().flat_map(|(_, e)| e).next();
                match first {
                    Some((name, undefined)) => {
                        let what = match undefined {
                            jaq_core::compile::Undefined::Var => format!("unknown variable {name}; expressions can use {}", VARIABLES.join(", ")),
                            jaq_core::compile::Undefined::Filter(arity) => format!("unknown function {name}/{arity}"),
                            other => format!("undefined {other:?} {name}"),
                        };
                        CompileError { range: subrange(text, name), message: what }
                    }
                    None => CompileError { range: 0..text.len(), message: "the expression does not compile".into() },
                }
            })?;
        Ok(Expr { text: text.into(), filter: Arc::new(filter) })
    }

    /// The expression's source text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every output of the expression applied to `input`.
    pub fn eval_all(&self, input: &Value, scope: &Scope) -> Result<Vec<Value>, String> {
        Ok(self.run(to_val(input), scope)?.iter().map(from_val).collect())
    }

    /// Every output of the expression applied to `input`, as jaq values.
    pub fn run(&self, input: Val, scope: &Scope) -> Result<Vec<Val>, String> {
        let vars = Vars::new([scope.inputs.clone(), scope.steps.clone(), scope.item.clone(), scope.run.clone()]);
        let ctx = Ctx::<Data>::new(&self.filter.lut, vars);
        let mut out = Vec::new();
        for result in self.filter.id.run((ctx, input)).map(unwrap_valr) {
            match result {
                Ok(value) => out.push(value),
                Err(e) => return Err(format!("expression `{}` failed: {e}", self.text)),
            }
        }
        Ok(out)
    }

    /// The first output of the expression applied to `input`; `null` when
    /// it produces none.
    pub fn eval(&self, input: &Value, scope: &Scope) -> Result<Value, String> {
        Ok(self.eval_all(input, scope)?.into_iter().next().unwrap_or(Value::Null))
    }

    /// The first output applied to the scope's context object.
    pub fn eval_in(&self, scope: &Scope) -> Result<Value, String> {
        Ok(self.run(scope.context().clone(), scope)?.first().map(from_val).unwrap_or(Value::Null))
    }

    /// Whether the expression holds on the scope's context: its first
    /// output is neither `false` nor `null` (jq's truthiness).
    pub fn holds_in(&self, scope: &Scope) -> Result<bool, String> {
        Ok(self.run(scope.context().clone(), scope)?.first().is_some_and(|v| !matches!(v, Val::Null | Val::Bool(false))))
    }

    /// Whether the expression holds on `input`.
    pub fn holds(&self, input: &Value, scope: &Scope) -> Result<bool, String> {
        Ok(self.run(to_val(input), scope)?.first().is_some_and(|v| !matches!(v, Val::Null | Val::Bool(false))))
    }
}

fn subrange(whole: &str, part: &str) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    if start <= whole.len() && start + part.len() <= whole.len() { start..start + part.len() } else { 0..whole.len() }
}

fn load_error(text: &str, errors: jaq_core::load::Errors<&str, ()>) -> CompileError {
    use jaq_core::load::Error;
    for (_, error) in errors {
        match error {
            Error::Lex(errs) => {
                if let Some((expect, got)) = errs.into_iter().next() {
                    let wanted = match &expect {
                        jaq_core::load::lex::Expect::Delim(d) if !["(", "[", "{", "\""].contains(d) => "closing delimiter",
                        other => other.as_str(),
                    };
                    return CompileError { range: subrange(text, got), message: format!("expected {wanted}") };
                }
            }
            Error::Parse(errs) => {
                if let Some((expect, got)) = errs.into_iter().next() {
                    let found = if got.is_empty() { "the end".to_owned() } else { format!("`{got}`") };
                    return CompileError { range: subrange(text, got), message: format!("expected {}, found {found}", expect.as_str()) };
                }
            }
            Error::Io(errs) => {
                if let Some((path, why)) = errs.into_iter().next() {
                    return CompileError { range: subrange(text, path), message: format!("cannot load module {path}: {why}") };
                }
            }
        }
    }
    CompileError { range: 0..text.len(), message: "the expression does not parse".into() }
}

/// Strips an optional `${{ … }}` around a whole-string expression.
pub fn unwrap_braces(text: &str) -> (&str, usize) {
    let trimmed = text.trim();
    if let Some(inner) = trimmed.strip_prefix("${{").and_then(|t| t.strip_suffix("}}")) {
        let offset = inner.as_ptr() as usize - text.as_ptr() as usize;
        (inner, offset)
    } else {
        (text, 0)
    }
}

/// A workflow value that may contain expressions.
#[derive(Debug, Clone)]
pub enum Template {
    /// No expression inside.
    Literal(Value),
    /// A string that is one expression: its value, whatever type.
    Whole(Expr),
    /// A string with expressions spliced in.
    Splice(Vec<Part>),
    /// An array with expressions somewhere inside.
    Array(Vec<Template>),
    /// An object with expressions somewhere inside.
    Object(Vec<(String, Template)>),
}

/// A piece of a spliced string.
#[derive(Debug, Clone)]
pub enum Part {
    /// Text kept as is.
    Text(String),
    /// An expression whose value is spliced in.
    Expr(Expr),
}

/// A template compile error: the expression text and where inside it.
#[derive(Debug, Clone)]
pub struct TemplateError {
    /// The expression's text, to find it in the file.
    pub expression: String,
    /// The error inside the expression.
    pub error: CompileError,
}

impl Template {
    /// Compiles every `${{ … }}` in `value`.
    pub fn compile(value: Value) -> Result<Template, TemplateError> {
        match value {
            Value::String(s) if s.contains("${{") => Template::compile_str(&s),
            Value::Array(items) => {
                let parts = items.into_iter().map(Template::compile).collect::<Result<Vec<_>, _>>()?;
                if parts.iter().all(|p| matches!(p, Template::Literal(_))) {
                    Ok(Template::Literal(Value::Array(parts.into_iter().filter_map(Template::into_literal).collect())))
                } else {
                    Ok(Template::Array(parts))
                }
            }
            Value::Object(map) => {
                let parts = map.into_iter().map(|(k, v)| Template::compile(v).map(|t| (k, t))).collect::<Result<Vec<_>, _>>()?;
                if parts.iter().all(|(_, p)| matches!(p, Template::Literal(_))) {
                    Ok(Template::Literal(Value::Object(parts.into_iter().filter_map(|(k, p)| p.into_literal().map(|v| (k, v))).collect())))
                } else {
                    Ok(Template::Object(parts))
                }
            }
            other => Ok(Template::Literal(other)),
        }
    }

    fn into_literal(self) -> Option<Value> {
        match self {
            Template::Literal(v) => Some(v),
            _ => None,
        }
    }

    fn compile_str(s: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("${{") {
            let after = &rest[open + 3..];
            let Some(close) = after.find("}}") else {
                return Err(TemplateError {
                    expression: after.to_owned(),
                    error: CompileError { range: 0..after.len(), message: "`${{` without a closing `}}`".into() },
                });
            };
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let code = &after[..close];
            let expr = Expr::compile(code.trim()).map_err(|error| TemplateError { expression: code.trim().to_owned(), error })?;
            parts.push(Part::Expr(expr));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        match parts.as_slice() {
            [Part::Expr(e)] => Ok(Template::Whole(e.clone())),
            _ => Ok(Template::Splice(parts)),
        }
    }

    /// Every expression inside, for checks such as step references.
    pub fn expressions(&self) -> Vec<&Expr> {
        match self {
            Template::Literal(_) => Vec::new(),
            Template::Whole(e) => vec![e],
            Template::Splice(parts) => parts.iter().filter_map(|p| if let Part::Expr(e) = p { Some(e) } else { None }).collect(),
            Template::Array(items) => items.iter().flat_map(Template::expressions).collect(),
            Template::Object(fields) => fields.iter().flat_map(|(_, t)| t.expressions()).collect(),
        }
    }

    /// The value, with every expression evaluated against `.` = the context.
    pub fn render(&self, scope: &Scope) -> Result<Value, String> {
        match self {
            Template::Literal(v) => Ok(v.clone()),
            Template::Whole(e) => e.eval_in(scope),
            Template::Splice(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Expr(e) => match e.eval_in(scope)? {
                            Value::String(s) => out.push_str(&s),
                            Value::Null => {}
                            other => out.push_str(&other.to_string()),
                        },
                    }
                }
                Ok(Value::String(out))
            }
            Template::Array(items) => Ok(Value::Array(items.iter().map(|t| t.render(scope)).collect::<Result<_, _>>()?)),
            Template::Object(fields) => {
                Ok(Value::Object(fields.iter().map(|(k, t)| t.render(scope).map(|v| (k.clone(), v))).collect::<Result<_, _>>()?))
            }
        }
    }
}

/// The step ids an expression refers to (`.steps.ID`, `$steps.ID`,
/// `.steps["ID"]`), each with its byte range in the text.
pub fn step_references(text: &str) -> Vec<(String, Range<usize>)> {
    references(text, "steps").into_iter().map(|(name, range, _)| (name, range)).collect()
}

/// The names an expression reads under `root` (`steps`, `inputs`): `.root.NAME`,
/// `$root.NAME` and `.root["NAME"]`, each with its byte range in the text.
/// The flag says whether the reference is the variable (`$root`), which
/// means the same whatever `.` is. A textual scan, so it can miss a name
/// built at run time; the checks that use it are there to catch typos
/// early, not to prove anything.
pub fn references(text: &str, root: &str) -> Vec<(String, Range<usize>, bool)> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(pos) = text[from..].find(root) {
        let start = from + pos;
        from = start + root.len();
        let preceded = start > 0 && matches!(bytes[start - 1], b'.' | b'$');
        let word_before = start > 1 && (bytes[start - 2].is_ascii_alphanumeric() || bytes[start - 2] == b'_');
        let word_after = bytes.get(from).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        if !preceded || word_after || (bytes[start - 1] == b'.' && word_before) {
            continue;
        }
        let variable = bytes[start - 1] == b'$';
        let rest = &text[from..];
        if let Some(name) = rest.strip_prefix('.') {
            let len = name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(name.len());
            if len > 0 {
                found.push((name[..len].to_owned(), from + 1..from + 1 + len, variable));
            }
        } else if let Some(name) = rest.strip_prefix("[\"").or_else(|| rest.strip_prefix(".[\"")) {
            let skip = rest.len() - name.len();
            if let Some(end) = name.find('"') {
                found.push((name[..end].to_owned(), from + skip..from + skip + end, variable));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Scope {
        Scope::new(&json!({"email": "ada@example.com", "plan": "pro"}), &json!({"lookup": {"id": "cus_1"}}), &json!({"id": "r1", "workflow": "w"}))
            .with_item(&json!({"id": 7}))
    }

    #[test]
    fn expressions_see_the_context_and_the_variables() -> Result<(), String> {
        let s = scope();
        let e = Expr::compile(".inputs.email").map_err(|e| e.message)?;
        assert_eq!(e.eval_in(&s)?, json!("ada@example.com"));
        let e = Expr::compile("$steps.lookup.id + \"/\" + ($item.id | tostring)").map_err(|e| e.message)?;
        assert_eq!(e.eval(&Value::Null, &s)?, json!("cus_1/7"));
        let e = Expr::compile("{email: .email, name: (.first + \" \" + .last)}").map_err(|e| e.message)?;
        assert_eq!(e.eval(&json!({"email": "a@b", "first": "Ada", "last": "L"}), &s)?, json!({"email": "a@b", "name": "Ada L"}));
        assert!(Expr::compile(".inputs.plan == \"pro\"").map_err(|e| e.message)?.holds_in(&s)?);
        assert!(!Expr::compile("empty").map_err(|e| e.message)?.holds_in(&s)?);
        Ok(())
    }

    #[test]
    fn large_integers_survive_the_round_trip() -> Result<(), String> {
        let s = scope();
        let e = Expr::compile(".n").map_err(|e| e.message)?;
        assert_eq!(e.eval(&json!({"n": 1_700_000_000_123_i64}), &s)?, json!(1_700_000_000_123_i64));
        Ok(())
    }

    #[test]
    fn compile_errors_say_where() {
        let err = Expr::compile(".a | frobnicate").err();
        let err = err.as_ref().map(|e| (e.message.as_str(), e.range.clone()));
        assert_eq!(err, Some(("unknown function frobnicate/0", 5..15)));
        let err = Expr::compile("$nope").err().map(|e| e.message).unwrap_or_default();
        assert!(err.contains("unknown variable $nope"), "{err}");
        let err = Expr::compile(".a | (").err().map(|e| e.message).unwrap_or_default();
        assert!(err.starts_with("expected"), "{err}");
    }

    #[test]
    fn the_environment_is_out_of_reach() {
        let err = Expr::compile("env.HOME").err().map(|e| e.message).unwrap_or_default();
        assert!(err.contains("unknown function env"), "{err}");
        assert!(Expr::compile("$ENV").is_err());
    }

    #[test]
    fn runtime_errors_are_messages() -> Result<(), String> {
        let e = Expr::compile(".a + 1").map_err(|e| e.message)?;
        let err = e.eval(&json!({"a": "x"}), &scope()).err().unwrap_or_default();
        assert!(err.contains("failed"), "{err}");
        Ok(())
    }

    #[test]
    fn templates_keep_types_or_splice_strings() -> Result<(), String> {
        let s = scope();
        let t = Template::compile(json!({
            "email": "${{ .inputs.email }}",
            "note": "plan ${{ .inputs.plan }} for ${{ $item.id }}",
            "n": "${{ $item.id }}",
            "fixed": ["a", 1],
        }))
        .map_err(|e| e.error.message)?;
        assert_eq!(
            t.render(&s)?,
            json!({"email": "ada@example.com", "note": "plan pro for 7", "n": 7, "fixed": ["a", 1]})
        );
        assert!(matches!(Template::compile(json!("no expression")), Ok(Template::Literal(_))));
        let err = Template::compile(json!("${{ .a ")).err().map(|e| e.error.message).unwrap_or_default();
        assert!(err.contains("closing"), "{err}");
        Ok(())
    }

    #[test]
    fn step_references_are_found_in_every_spelling() {
        let refs: Vec<String> = step_references(".steps.lookup.id + $steps.other + .steps[\"with-dash\"].x + .mysteps.no")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(refs, vec!["lookup", "other", "with-dash"]);
        let text = "$steps.abc";
        let (_, range) = step_references(text)[0].clone();
        assert_eq!(&text[range], "abc");
    }
}
