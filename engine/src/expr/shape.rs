//! Expressions that only pick fields and build objects of them, run
//! without jaq: a sync's `map` is most often `{email, name, metadata:
//! {source_id: .id}}` and its `key` `.email`, run on every record of both
//! sides, and jaq's interpreter (boxed iterators, a cartesian product per
//! object) costs several times what the few lookups do.
//!
//! A [`Shape`] is proven from the parse tree: `.`, `.NAME` paths (`.a.b`,
//! `."a b"`, `.["a"]`), and objects of literal keys whose values are
//! shapes (`{NAME}` is `{NAME: .NAME}`). Anything else (`?`, a pipe, a
//! call, a computed key, an index by number) is not a shape, and jaq runs
//! it. Applying a shape uses the value type's own `index` and `from_map`,
//! as jaq does, so the value is the same; where jaq would fail (indexing a
//! string or a number) the shape gives up and jaq runs the expression, so
//! the error is jaq's own.

use jaq_core::ValT as _;
use jaq_core::load::parse::Term;
use jaq_core::load::{Lexer, Parser};
use jaq_core::path::{Opt, Part};

use super::reads::literal;
use super::value::{Raw, Val};

/// What a field-picking expression builds. Field names are held as values,
/// made once at compile time, so applying a shape to a record allocates
/// nothing for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shape {
    /// The input at a path of field names (`.` when empty).
    Path(Vec<Val>),
    /// An object: its keys in the order written, each with its value.
    Obj(Vec<(Val, Shape)>),
}

/// A field name as a value.
fn name(text: String) -> Val {
    Val::scalar(Raw::from(text))
}

/// The shape of the expression `text`, when it is one.
pub(crate) fn shape(text: &str) -> Option<Shape> {
    let tokens = Lexer::new(text).lex().ok()?;
    let term = Parser::new(&tokens).parse(|p| p.term()).ok()?;
    shape_of(&term)
}

fn shape_of(term: &Term<&str>) -> Option<Shape> {
    match term {
        Term::Id => Some(Shape::Path(Vec::new())),
        Term::Path(head, path) => {
            let Shape::Path(mut fields) = shape_of(head)? else { return None };
            for (part, opt) in &path.0 {
                // `.a?` swallows errors: jaq's business.
                if !matches!(opt, Opt::Essential) {
                    return None;
                }
                match part {
                    Part::Index(index) => fields.push(name(literal(index)?)),
                    Part::Range(..) => return None,
                }
            }
            Some(Shape::Path(fields))
        }
        Term::Obj(entries) => {
            let mut built = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                let key = name(literal(key)?);
                let value = match value {
                    Some(value) => shape_of(value)?,
                    None => Shape::Path(vec![key.clone()]),
                };
                built.push((key, value));
            }
            Some(Shape::Obj(built))
        }
        _ => None,
    }
}

impl Shape {
    /// The value the expression gives on `input`; `None` where jaq would
    /// fail, so that jaq runs it and says why.
    pub(crate) fn apply(&self, input: &Val) -> Option<Val> {
        match self {
            Shape::Path(fields) => {
                let mut at = input.clone();
                for field in fields {
                    at = at.index(field).ok()?;
                }
                Some(at)
            }
            Shape::Obj(entries) => {
                let mut pairs = Vec::with_capacity(entries.len());
                for (key, value) in entries {
                    pairs.push((key.clone(), value.apply(input)?));
                }
                Val::from_map(pairs).ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(fields: &[&str]) -> Shape {
        Shape::Path(fields.iter().map(|f| name((*f).to_owned())).collect())
    }

    fn obj(entries: Vec<(&str, Shape)>) -> Shape {
        Shape::Obj(entries.into_iter().map(|(k, v)| (name(k.to_owned()), v)).collect())
    }

    #[test]
    fn field_picks_and_objects_of_them_are_shapes() {
        assert_eq!(shape("."), Some(path(&[])));
        assert_eq!(shape(".email"), Some(path(&["email"])));
        assert_eq!(shape(".metadata.plan"), Some(path(&["metadata", "plan"])));
        assert_eq!(shape(r#"."a b".c"#), Some(path(&["a b", "c"])));
        assert_eq!(shape(r#".["a"]"#), Some(path(&["a"])));
        assert_eq!(
            shape("{email, name, metadata: {source_id: .id}}"),
            Some(obj(vec![
                ("email", path(&["email"])),
                ("name", path(&["name"])),
                ("metadata", obj(vec![("source_id", path(&["id"]))])),
            ]))
        );
        assert_eq!(shape(r#"{"x y": .a}"#), Some(obj(vec![("x y", path(&["a"]))])));
    }

    #[test]
    fn anything_else_is_left_to_jaq() {
        for text in [
            ".a?",
            ".a[0]",
            ".[0]",
            ".a[]",
            ".a | .b",
            ".email | ascii_downcase",
            "{(.k): .v}",
            "{$x}",
            r#"{"a\(.b)": 1}"#,
            "{a: 1}",
            "{a: .b, c: .d | length}",
            "keys",
            "..",
            ".a.b?",
            "def f: .; f",
            "null",
            "$__loc__",
        ] {
            assert_eq!(shape(text), None, "{text}");
        }
    }
}
