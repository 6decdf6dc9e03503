//! The workflow file: TOML parsed into a checked model, with errors that point
//! at file, line and column with a caret under the offending text.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::connector::{Manifest, MethodClass, Op};

/// An error located in a workflow file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// The source line, for the caret display.
    pub source_line: String,
    /// Caret width.
    pub width: usize,
}

impl Diagnostic {
    /// Builds a diagnostic for the byte range `span` of `text`.
    pub fn at(file: &str, text: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        let start = span.start.min(text.len());
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        let width = text[start..span.end.clamp(start, line_end)].chars().count().max(1);
        Diagnostic {
            file: file.to_owned(),
            line,
            column,
            message: message.into(),
            source_line: text[line_start..line_end].to_owned(),
            width,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gutter = self.line.to_string().len();
        writeln!(f, "error: {}", self.message)?;
        writeln!(f, "{:gutter$}--> {}:{}:{}", "", self.file, self.line, self.column)?;
        writeln!(f, "{:gutter$} |", "")?;
        writeln!(f, "{} | {}", self.line, self.source_line)?;
        let pad: String = self.source_line.chars().take(self.column - 1).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
        write!(f, "{:gutter$} | {pad}{}", "", "^".repeat(self.width))
    }
}

/// Every problem found in a workflow.
#[derive(Debug, Clone)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Errors loading a workflow.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read workflow {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file has problems.
    #[error("{0}")]
    Invalid(Diagnostics),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    workflow: HeaderDef,
    #[serde(default)]
    connections: BTreeMap<String, Spanned<ConnectionDef>>,
    #[serde(default)]
    step: Vec<Spanned<StepDef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderDef {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionDef {
    plugin: Spanned<String>,
    credentials: Option<Spanned<String>>,
    base_url: Option<Spanned<String>>,
    #[serde(default)]
    settings: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    allow_hosts: Vec<Spanned<String>>,
    rate_limit: Option<Spanned<String>>,
    #[serde(default)]
    rate_limits: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDef {
    id: Spanned<String>,
    #[serde(default)]
    description: String,
    list: Option<Spanned<String>>,
    get: Option<Spanned<String>>,
    upsert: Option<Spanned<String>>,
    remove: Option<Spanned<String>>,
    page_size: Option<Spanned<u32>>,
    limit: Option<u64>,
    filter: Option<toml::Table>,
    output: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    record: Option<Spanned<toml::Table>>,
    #[serde(default)]
    allow_irreversible: bool,
}

/// A source position, kept so later checks can point at the text.
pub type Span = Range<usize>;

/// A checked workflow.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// The text, kept for the run record and for diagnostics.
    pub text: String,
    /// SHA-256 of the text.
    pub hash: String,
    /// Connections by name.
    pub connections: BTreeMap<String, Connection>,
    /// Steps in order.
    pub steps: Vec<Step>,
}

/// Which plugin a connection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginRef {
    /// A connector shipped inside weft.
    Builtin(String),
    /// A `.wasm` file (resolved against the workflow's directory).
    File(PathBuf),
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginRef::Builtin(name) => f.write_str(name),
            PluginRef::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A connection to one vendor account.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Name in the workflow.
    pub name: String,
    /// The plugin.
    pub plugin: PluginRef,
    /// `env:NAME` or `file:PATH`.
    pub credentials: Option<String>,
    /// Overrides the plugin's default base URL.
    pub base_url: Option<String>,
    /// Settings handed to the plugin.
    pub settings: Vec<(String, String)>,
    /// Extra hosts the workflow grants.
    pub allow_hosts: Vec<String>,
    /// Rate limits that replace the plugin's published ones, per class.
    pub rate_limits: Vec<crate::limiter::LimitOverride>,
    /// Where the connection is defined.
    pub span: Span,
    plugin_span: Span,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Read every page (or up to `limit` records).
    List {
        /// Page size; the manifest's default when unset.
        page_size: Option<u32>,
        /// Stop after this many records.
        limit: Option<u64>,
        /// Resource-specific filter.
        filter: Option<serde_json::Value>,
        /// Write records as JSON lines to this file.
        output: Option<PathBuf>,
    },
    /// Read one record.
    Get {
        /// The record id.
        key: String,
    },
    /// Create or update one record.
    Upsert {
        /// The desired record.
        record: serde_json::Value,
    },
    /// Remove one record.
    Remove {
        /// The record id.
        key: String,
    },
}

impl Action {
    /// The connector op this action calls.
    pub fn op(&self) -> Op {
        match self {
            Action::List { .. } => Op::List,
            Action::Get { .. } => Op::Get,
            Action::Upsert { .. } => Op::Upsert,
            Action::Remove { .. } => Op::Remove,
        }
    }
}

/// One step.
#[derive(Debug, Clone)]
pub struct Step {
    /// Id, unique in the workflow.
    pub id: String,
    /// Description.
    pub description: String,
    /// Connection name.
    pub connection: String,
    /// Resource name.
    pub resource: String,
    /// What to do.
    pub action: Action,
    /// The workflow allows this step to run an irreversible op.
    pub allow_irreversible: bool,
    /// Where the step is defined.
    pub span: Span,
    target_span: Span,
}

impl Step {
    /// `connection.resource`.
    pub fn target(&self) -> String {
        format!("{}.{}", self.connection, self.resource)
    }
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    problems: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, span: Span, message: impl Into<String>) {
        self.problems.push(Diagnostic::at(self.file, self.text, span, message));
    }
}

fn to_json(value: toml::Value) -> serde_json::Value {
    match value {
        toml::Value::String(s) => serde_json::Value::String(s),
        toml::Value::Integer(i) => serde_json::Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number),
        toml::Value::Boolean(b) => serde_json::Value::Bool(b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(to_json).collect()),
        toml::Value::Table(t) => serde_json::Value::Object(t.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
    }
}

impl Workflow {
    /// Reads and checks a workflow file.
    pub fn load(path: &Path) -> Result<Workflow, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.display().to_string(), source })?;
        Workflow::parse(path, &text).map_err(LoadError::Invalid)
    }

    /// Parses and checks workflow text; `path` names it in diagnostics and
    /// anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Workflow, Diagnostics> {
        let file = path.display().to_string();
        let def: FileDef = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            Diagnostics(vec![Diagnostic::at(&file, text, span, e.message().trim().to_owned())])
        })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut check = Checker { file: &file, text, problems: Vec::new() };

        if def.workflow.name.get_ref().trim().is_empty() {
            check.error(def.workflow.name.span(), "the workflow name must not be empty");
        }

        let mut connections = BTreeMap::new();
        for (name, spanned) in def.connections {
            let span = spanned.span();
            let c = spanned.into_inner();
            let plugin_span = c.plugin.span();
            let plugin_name = c.plugin.into_inner();
            let plugin = if plugin_name.ends_with(".wasm") {
                PluginRef::File(base_dir.join(&plugin_name))
            } else if !plugin_name.is_empty() && plugin_name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
                PluginRef::Builtin(plugin_name)
            } else {
                check.error(plugin_span.clone(), "plugin must be a built-in connector name or a path ending in .wasm");
                continue;
            };
            if let Some(reference) = &c.credentials
                && let Err(e) = crate::credentials::CredentialSource::parse(reference.get_ref())
            {
                check.error(reference.span(), e.to_string());
            }
            if let Some(url) = &c.base_url
                && !matches!(url::Url::parse(url.get_ref()).map(|u| u.scheme().to_owned()).as_deref(), Ok("http" | "https"))
            {
                check.error(url.span(), "base_url must be an absolute http:// or https:// URL");
            }
            let mut settings = Vec::new();
            for (key, value) in c.settings {
                let value_span = value.span();
                match value.into_inner() {
                    toml::Value::String(s) => settings.push((key, s)),
                    toml::Value::Integer(i) => settings.push((key, i.to_string())),
                    toml::Value::Boolean(b) => settings.push((key, b.to_string())),
                    _ => check.error(value_span, format!("setting {key} must be a string, integer or boolean")),
                }
            }
            let mut rate_limits = Vec::new();
            let overrides = c.rate_limit.into_iter().map(|r| ("any".to_owned(), r)).chain(c.rate_limits);
            for (class_name, rate) in overrides {
                let class = match class_name.as_str() {
                    "any" => MethodClass::Any,
                    "read" => MethodClass::Read,
                    "write" => MethodClass::Write,
                    "get" => MethodClass::Get,
                    "post" => MethodClass::Post,
                    "put" => MethodClass::Put,
                    "patch" => MethodClass::Patch,
                    "delete" => MethodClass::Delete,
                    other => {
                        check.error(rate.span(), format!("unknown method class {other:?} in rate_limits; use any, read, write, get, post, put, patch or delete"));
                        continue;
                    }
                };
                match crate::limiter::parse_rate(rate.get_ref()) {
                    Some(per_second) => rate_limits.push(crate::limiter::LimitOverride { class, per_second }),
                    None => check.error(rate.span(), "a rate is written \"N/s\", \"N/min\" or \"N/h\" with N > 0"),
                }
            }
            let credentials = c.credentials.map(Spanned::into_inner);
            let base_url = c.base_url.map(Spanned::into_inner);
            let allow_hosts = c.allow_hosts.into_iter().map(Spanned::into_inner).collect();
            connections.insert(
                name.clone(),
                Connection { name, plugin, credentials, base_url, settings, allow_hosts, rate_limits, span, plugin_span },
            );
        }

        let mut steps = Vec::new();
        let mut seen = HashSet::new();
        for spanned in def.step {
            let span = spanned.span();
            let s = spanned.into_inner();
            let id = s.id.get_ref().clone();
            if id.is_empty() || !id.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
                check.error(s.id.span(), "a step id is letters, digits, - and _");
            } else if !seen.insert(id.clone()) {
                check.error(s.id.span(), format!("a step with id {id:?} is already defined above"));
            }
            let ops: Vec<(Op, &Spanned<String>)> = [(Op::List, &s.list), (Op::Get, &s.get), (Op::Upsert, &s.upsert), (Op::Remove, &s.remove)]
                .into_iter()
                .filter_map(|(op, target)| target.as_ref().map(|t| (op, t)))
                .collect();
            let (op, target) = match ops.as_slice() {
                [one] => *one,
                [] => {
                    check.error(span.clone(), format!("step {id:?} needs one op: list, get, upsert or remove = \"connection.resource\""));
                    continue;
                }
                [_, second, ..] => {
                    check.error(second.1.span(), format!("step {id:?} has more than one op; split it into several steps"));
                    continue;
                }
            };
            let target_span = target.span();
            let Some((connection, resource)) = target.get_ref().split_once('.').filter(|(c, r)| !c.is_empty() && !r.is_empty()) else {
                check.error(target_span, "the target is written \"connection.resource\", for example \"stripe.customers\"");
                continue;
            };
            if !connections.contains_key(connection) {
                let known: Vec<&str> = connections.keys().map(String::as_str).collect();
                check.error(
                    target_span.clone(),
                    format!("unknown connection {connection:?}; defined: {}", if known.is_empty() { "none".into() } else { known.join(", ") }),
                );
            }
            let misplaced = |check: &mut Checker<'_>, present: bool, field: &str, span: &Span| {
                if present {
                    check.error(span.clone(), format!("`{field}` does not apply to a {op} step"));
                }
            };
            let action = match op {
                Op::List => Action::List {
                    page_size: s.page_size.as_ref().map(|p| *p.get_ref()),
                    limit: s.limit,
                    filter: s.filter.clone().map(|t| to_json(toml::Value::Table(t))),
                    output: s.output.as_ref().map(|o| base_dir.join(o.get_ref())),
                },
                Op::Get | Op::Remove => {
                    let Some(key) = &s.key else {
                        check.error(span.clone(), format!("a {op} step needs `key`, the id of the record"));
                        continue;
                    };
                    let key = key.get_ref().clone();
                    if op == Op::Get { Action::Get { key } } else { Action::Remove { key } }
                }
                Op::Upsert => {
                    let Some(record) = &s.record else {
                        check.error(span.clone(), "an upsert step needs `record`, the desired record as a table");
                        continue;
                    };
                    Action::Upsert { record: to_json(toml::Value::Table(record.get_ref().clone())) }
                }
                Op::UpsertBatch => continue,
            };
            if op != Op::List {
                for (present, field) in [(s.page_size.is_some(), "page_size"), (s.limit.is_some(), "limit"), (s.filter.is_some(), "filter"), (s.output.is_some(), "output")] {
                    misplaced(&mut check, present, field, &span);
                }
            }
            if !matches!(op, Op::Get | Op::Remove) {
                misplaced(&mut check, s.key.is_some(), "key", &s.key.as_ref().map_or(span.clone(), Spanned::span));
            }
            if op != Op::Upsert {
                misplaced(&mut check, s.record.is_some(), "record", &s.record.as_ref().map_or(span.clone(), Spanned::span));
            }
            if let Some(size) = &s.page_size
                && *size.get_ref() == 0
            {
                check.error(size.span(), "page_size must be at least 1");
            }
            steps.push(Step {
                id,
                description: s.description,
                connection: connection.to_owned(),
                resource: resource.to_owned(),
                action,
                allow_irreversible: s.allow_irreversible,
                span,
                target_span,
            });
        }
        if steps.is_empty() && check.problems.is_empty() {
            check.error(0..0, "the workflow has no steps; add a [[step]]");
        }

        if !check.problems.is_empty() {
            return Err(Diagnostics(check.problems));
        }
        Ok(Workflow {
            name: def.workflow.name.into_inner(),
            description: def.workflow.description,
            path: path.to_path_buf(),
            text: text.to_owned(),
            hash: hex::encode(Sha256::digest(text.as_bytes())),
            connections,
            steps,
        })
    }

    /// Checks the workflow against its plugins' manifests: resources exist,
    /// ops are offered, irreversible ops are allowed, settings are given,
    /// page sizes fit. `manifests` maps connection name to manifest.
    pub fn check_against(&self, manifests: &BTreeMap<String, Manifest>) -> Result<(), Diagnostics> {
        let file = self.path.display().to_string();
        let mut check = Checker { file: &file, text: &self.text, problems: Vec::new() };
        for connection in self.connections.values() {
            let Some(manifest) = manifests.get(&connection.name) else { continue };
            for setting in manifest.settings.iter().filter(|s| s.required) {
                if !connection.settings.iter().any(|(k, _)| k == &setting.name) {
                    check.error(connection.span.clone(), format!("connection {:?} must set settings.{} ({})", connection.name, setting.name, setting.description));
                }
            }
            for (key, _) in &connection.settings {
                if !manifest.settings.iter().any(|s| &s.name == key) {
                    let known: Vec<&str> = manifest.settings.iter().map(|s| s.name.as_str()).collect();
                    check.error(
                        connection.span.clone(),
                        format!("plugin {} has no setting {key:?}; it accepts: {}", manifest.name, if known.is_empty() { "none".into() } else { known.join(", ") }),
                    );
                }
            }
            if connection.credentials.is_none() && manifest.auth != crate::connector::AuthScheme::None {
                check.error(connection.plugin_span.clone(), format!("connection {:?} needs credentials = \"env:NAME\" or \"file:PATH\"", connection.name));
            }
        }
        for step in &self.steps {
            let Some(manifest) = manifests.get(&step.connection) else { continue };
            let Some(resource) = manifest.resource(&step.resource) else {
                let known: Vec<&str> = manifest.resources.iter().map(|r| r.name.as_str()).collect();
                check.error(step.target_span.clone(), format!("plugin {} has no resource {:?}; it serves: {}", manifest.name, step.resource, known.join(", ")));
                continue;
            };
            let op = step.action.op();
            if !resource.offers(op) {
                let offered: Vec<&str> = resource.ops.iter().map(|o| o.as_str()).collect();
                check.error(step.target_span.clone(), format!("{} does not offer {op}; it offers: {}", step.target(), offered.join(", ")));
            }
            if resource.is_irreversible(op) && !step.allow_irreversible {
                check.error(step.target_span.clone(), format!("{op} on {} cannot be undone; set allow_irreversible = true on step {:?} to allow it", step.target(), step.id));
            }
            if let Action::List { page_size: Some(size), .. } = &step.action
                && *size > resource.max_page_size
            {
                check.error(step.span.clone(), format!("page_size {size} is above {}'s maximum of {}", step.target(), resource.max_page_size));
            }
        }
        if check.problems.is_empty() { Ok(()) } else { Err(Diagnostics(check.problems)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Workflow, Diagnostics> {
        Workflow::parse(Path::new("flows/test.toml"), text)
    }

    fn first_error(text: &str) -> Diagnostic {
        match parse(text) {
            Ok(_) => panic!("expected an error"),
            Err(d) => d.0[0].clone(),
        }
    }

    const GOOD: &str = r#"
[workflow]
name = "export"

[connections.stripe]
plugin = "stripe"
credentials = "env:STRIPE_API_KEY"

[[step]]
id = "all"
list = "stripe.customers"
page_size = 100
"#;

    #[test]
    fn a_good_workflow_parses() -> Result<(), Diagnostics> {
        let w = parse(GOOD)?;
        assert_eq!(w.name, "export");
        assert_eq!(w.steps[0].target(), "stripe.customers");
        assert!(matches!(w.steps[0].action, Action::List { page_size: Some(100), .. }));
        assert_eq!(w.connections["stripe"].plugin, PluginRef::Builtin("stripe".into()));
        Ok(())
    }

    #[test]
    fn unknown_key_points_at_its_line_and_column() {
        let d = first_error(&GOOD.replace("page_size = 100", "page_sise = 100"));
        assert_eq!((d.line, d.column), (12, 1), "{d}");
        assert!(d.message.contains("page_sise"), "{d}");
        let shown = d.to_string();
        assert!(shown.contains("flows/test.toml:12:1"), "{shown}");
        assert!(shown.contains("^"), "{shown}");
    }

    #[test]
    fn wrong_type_is_reported_where_it_is() {
        let d = first_error(&GOOD.replace("page_size = 100", "page_size = \"lots\""));
        assert_eq!(d.line, 12, "{d}");
    }

    #[test]
    fn unknown_connection_is_named() {
        let d = first_error(&GOOD.replace("list = \"stripe.customers\"", "list = \"strpe.customers\""));
        assert!(d.message.contains("unknown connection \"strpe\""), "{d}");
        assert_eq!((d.line, d.column), (11, 8), "{d}");
    }

    #[test]
    fn duplicate_step_ids_are_refused() {
        let text = format!("{GOOD}\n[[step]]\nid = \"all\"\nlist = \"stripe.customers\"\n");
        let d = first_error(&text);
        assert!(d.message.contains("already defined"), "{d}");
    }

    #[test]
    fn a_step_with_two_ops_is_refused() {
        let d = first_error(&GOOD.replace("page_size = 100", "get = \"stripe.customers\""));
        assert!(d.message.contains("more than one op"), "{d}");
    }

    #[test]
    fn fields_that_do_not_fit_the_op_are_refused() {
        let d = first_error(&GOOD.replace("page_size = 100", "key = \"cus_1\""));
        assert!(d.message.contains("`key` does not apply to a list step"), "{d}");
    }

    #[test]
    fn rate_limit_overrides_parse_per_class() -> Result<(), Diagnostics> {
        let w = parse(&GOOD.replace("credentials = \"env:STRIPE_API_KEY\"", "credentials = \"env:STRIPE_API_KEY\"\nrate_limit = \"10/s\"\nrate_limits = { post = \"100/min\" }"))?;
        let limits = &w.connections["stripe"].rate_limits;
        assert!(limits.contains(&crate::limiter::LimitOverride { class: MethodClass::Any, per_second: 10.0 }), "{limits:?}");
        assert!(limits.contains(&crate::limiter::LimitOverride { class: MethodClass::Post, per_second: 100.0 / 60.0 }), "{limits:?}");
        let d = first_error(&GOOD.replace("credentials = \"env:STRIPE_API_KEY\"", "credentials = \"env:STRIPE_API_KEY\"\nrate_limit = \"fast\""));
        assert!(d.message.contains("N/s"), "{d}");
        Ok(())
    }

    #[test]
    fn bad_credentials_reference_is_refused() {
        let d = first_error(&GOOD.replace("env:STRIPE_API_KEY", "STRIPE_API_KEY"));
        assert!(d.message.contains("env:NAME"), "{d}");
        assert_eq!(d.line, 7);
    }
}
