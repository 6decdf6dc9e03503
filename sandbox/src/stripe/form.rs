//! Stripe's form encoding: `metadata[plan]=pro`, `preferred_locales[0]=en`,
//! `expand[]=sources`, `shipping[address][city]=Paris`, parsed into a tree.
//!
//! Parsing only builds the tree; which names are allowed and what their
//! values must look like is for the endpoint to check, so that it can name
//! the offending parameter as Stripe does.

use super::error::ApiError;

/// Nesting deeper than this is refused: Stripe's deepest customer parameter
/// (`shipping[address][line1]`) has three levels, and unbounded nesting
/// would let a request body exhaust the stack.
const MAX_DEPTH: usize = 8;

/// More pairs than this in one request are refused, which also bounds the
/// quadratic name lookups below.
const MAX_PAIRS: usize = 5_000;

/// One parameter's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param {
    /// `name=value`.
    Value(String),
    /// `name[key]=...`, keys in the order first seen. Arrays (`name[0]`,
    /// `name[]`) are hashes with numeric keys; see [`Param::as_list`].
    Hash(Vec<(String, Param)>),
}

impl Param {
    /// The elements of an array parameter, in index order, or `None` if
    /// this is not one.
    pub fn as_list(&self) -> Option<Vec<&Param>> {
        let Param::Hash(entries) = self else {
            return None;
        };
        let mut indexed = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            indexed.push((key.parse::<usize>().ok()?, value));
        }
        indexed.sort_by_key(|(index, _)| *index);
        Some(indexed.into_iter().map(|(_, value)| value).collect())
    }
}

/// A parsed form: top-level names to values, plus the raw pairs, which
/// idempotency compares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Form {
    pub params: Vec<(String, Param)>,
    pub pairs: Vec<(String, String)>,
}

impl Form {
    /// Parses `application/x-www-form-urlencoded` bytes (a body or a query
    /// string); later pairs are added to earlier forms' names.
    pub fn parse(&mut self, encoded: &[u8]) -> Result<(), ApiError> {
        for (name, value) in form_urlencoded::parse(encoded) {
            if self.pairs.len() >= MAX_PAIRS {
                return Err(ApiError::invalid_request(format!(
                    "Too many parameters: a request can have at most {MAX_PAIRS}"
                )));
            }
            let (head, path) = split_name(&name);
            if path.len() >= MAX_DEPTH {
                return Err(ApiError::invalid_param(
                    head,
                    format!(
                        "Invalid {head}: parameters can be nested at most {MAX_DEPTH} levels deep"
                    ),
                ));
            }
            insert(&mut self.params, head, &path, value.clone().into_owned(), &name)?;
            self.pairs.push((name.into_owned(), value.into_owned()));
        }
        Ok(())
    }

    /// Parses one form from `encoded`.
    pub fn from_bytes(encoded: &[u8]) -> Result<Self, ApiError> {
        let mut form = Self::default();
        form.parse(encoded)?;
        Ok(form)
    }
}

/// A bracketed segment: `[key]`, or `[]` for "append".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment<'a> {
    Key(&'a str),
    Append,
}

/// Splits `a[b][]` into `a` and `[Key(b), Append]`. A name that is not
/// well formed is taken whole, so it is reported as unknown.
fn split_name(name: &str) -> (&str, Vec<Segment<'_>>) {
    let Some(open) = name.find('[') else {
        return (name, Vec::new());
    };
    let (head, mut rest) = name.split_at(open);
    let mut segments = Vec::new();
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[') else {
            return (name, Vec::new());
        };
        let Some(close) = inner.find(']') else {
            return (name, Vec::new());
        };
        let key = &inner[..close];
        if key.contains('[') {
            return (name, Vec::new());
        }
        segments.push(if key.is_empty() { Segment::Append } else { Segment::Key(key) });
        rest = &inner[close + 1..];
    }
    if head.is_empty() {
        return (name, Vec::new());
    }
    (head, segments)
}

fn insert(
    entries: &mut Vec<(String, Param)>,
    key: &str,
    path: &[Segment<'_>],
    value: String,
    full_name: &str,
) -> Result<(), ApiError> {
    let position = entries.iter().position(|(existing, _)| existing == key);
    let Some((next, rest)) = path.split_first() else {
        match position {
            Some(index) => {
                if let Param::Hash(_) = entries[index].1 {
                    return Err(conflict(full_name));
                }
                // A repeated name: the last value wins, as in Rack.
                entries[index].1 = Param::Value(value);
            }
            None => entries.push((key.to_owned(), Param::Value(value))),
        }
        return Ok(());
    };
    let index = match position {
        Some(index) => index,
        None => {
            entries.push((key.to_owned(), Param::Hash(Vec::new())));
            entries.len() - 1
        }
    };
    let Param::Hash(children) = &mut entries[index].1 else {
        return Err(conflict(full_name));
    };
    let appended;
    let child_key = match next {
        Segment::Key(child) => *child,
        Segment::Append => {
            appended = children.len().to_string();
            &appended
        }
    };
    insert(children, child_key, rest, value, full_name)
}

fn conflict(name: &str) -> ApiError {
    ApiError::invalid_param(
        name,
        format!("Invalid {name}: a parameter cannot be both a value and a hash"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Param {
        Param::Value(text.to_owned())
    }

    #[test]
    fn brackets_nest_into_hashes() {
        let form = Form::from_bytes(
            b"email=a%40b.c&metadata[plan]=pro&shipping[address][city]=Paris&metadata[x]=",
        )
        .expect("parses");
        assert_eq!(
            form.params,
            vec![
                ("email".into(), value("a@b.c")),
                (
                    "metadata".into(),
                    Param::Hash(vec![("plan".into(), value("pro")), ("x".into(), value(""))])
                ),
                (
                    "shipping".into(),
                    Param::Hash(vec![(
                        "address".into(),
                        Param::Hash(vec![("city".into(), value("Paris"))])
                    )])
                ),
            ]
        );
        assert_eq!(form.pairs.len(), 4);
    }

    #[test]
    fn indexed_and_appended_arrays_list_in_order() {
        let form = Form::from_bytes(b"a[1]=second&a[0]=first&b[]=x&b[]=y").expect("parses");
        let lists: Vec<Vec<&Param>> =
            form.params.iter().map(|(_, p)| p.as_list().expect("a list")).collect();
        assert_eq!(lists[0], vec![&value("first"), &value("second")]);
        assert_eq!(lists[1], vec![&value("x"), &value("y")]);
    }

    #[test]
    fn malformed_names_are_kept_whole() {
        let form = Form::from_bytes(b"a[b=1&[c]=2&d[e]f=3").expect("parses");
        let names: Vec<&str> = form.params.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["a[b", "[c]", "d[e]f"]);
    }

    #[test]
    fn a_name_used_as_value_and_hash_is_refused() {
        let error = Form::from_bytes(b"metadata=x&metadata[a]=b").expect_err("conflict");
        assert_eq!(error.param.as_deref(), Some("metadata[a]"));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursing() {
        let name = "a".to_owned() + &"[a]".repeat(100_000);
        let error = Form::from_bytes(format!("{name}=1").as_bytes()).expect_err("too deep");
        assert!(error.message.contains("nested"));
    }
}
