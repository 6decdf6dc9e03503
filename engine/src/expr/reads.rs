//! Which top-level fields of its input an expression reads, when that can
//! be proven from its syntax: a sync maps each of a vendor's records with
//! an expression such as `{email, name, metadata: {source_id: .id}}`, and
//! building the other twenty fields of every record into jq values is most
//! of the mapping's cost.
//!
//! The analysis is deliberately narrow and errs towards "cannot tell"
//! (`None`), in which case the record is parsed whole. It proves that the
//! input (the record) is only ever used as `.NAME` (or `."NAME"`,
//! `.["NAME"]`), the shorthand `{NAME}`, or handed on by `|` to such uses;
//! and that the record itself never leaves the expression, is never bound
//! to a variable, passed to a function, compared, printed in an error, or
//! iterated. Anything else on the record (`keys`, `to_entries`, `..`,
//! `.[]`, `tojson`, `. as $r`, a `def`'s call, `.[$name]`, an update) makes
//! the answer `None`. Inside a field's value (`.email | ascii_downcase`)
//! anything goes: that value is parsed whole.

use std::collections::BTreeSet;

use jaq_core::load::parse::{BinaryOp, Pattern, Term};
use jaq_core::load::{Lexer, Parser, lex::StrPart};
use jaq_core::path::Part;

/// The top-level fields of its input that the expression `text` reads, if
/// it provably reads nothing else of it; see the module docs.
pub fn top_fields(text: &str) -> Option<BTreeSet<String>> {
    let tokens = Lexer::new(text).lex().ok()?;
    let term = Parser::new(&tokens).parse(|p| p.term()).ok()?;
    let mut fields = BTreeSet::new();
    let mut reads = Reads { fields: &mut fields, defs: has_defs(&term) };
    // The output must not be the record (it would be the projected one).
    match reads.on_record(&term)? {
        Out::Other => Some(fields),
        Out::MayBeRecord => None,
    }
}

/// Whether a term's output may be the record itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    MayBeRecord,
    Other,
}

impl Out {
    fn or(self, other: Out) -> Out {
        if self == Out::MayBeRecord || other == Out::MayBeRecord {
            Out::MayBeRecord
        } else {
            Out::Other
        }
    }
}

struct Reads<'f> {
    fields: &'f mut BTreeSet<String>,
    /// The expression defines filters of its own, so a name such as
    /// `true` may not mean the builtin.
    defs: bool,
}

/// Builtins of no arguments whose output does not depend on their input.
const CONSTANT_BUILTINS: &[&str] = &["empty", "null", "true", "false"];

impl Reads<'_> {
    /// Analyses `term` run on the record; `None` when it cannot tell.
    fn on_record(&mut self, term: &Term<&str>) -> Option<Out> {
        match term {
            Term::Id => Some(Out::MayBeRecord),
            Term::Num(_) | Term::Break(_) | Term::Var(_) => Some(Out::Other),
            // A format (`@base64 "…"`) applies to the interpolated values;
            // alone (`@base64`) it applies to the input.
            Term::Str(format, parts) => {
                if format.is_some() && parts.is_empty() {
                    return None;
                }
                for part in parts {
                    if let StrPart::Term(inner) = part {
                        self.value(inner)?;
                    }
                }
                Some(Out::Other)
            }
            Term::Arr(items) => {
                if let Some(items) = items {
                    self.value(items)?;
                }
                Some(Out::Other)
            }
            Term::Obj(entries) => {
                for (key, value) in entries {
                    match value {
                        Some(value) => {
                            self.value(key)?;
                            self.value(value)?;
                        }
                        // `{NAME}` reads the field, `{$x}` the variable.
                        None => match key {
                            Term::Var(_) => {}
                            _ => {
                                self.fields.insert(literal(key)?);
                            }
                        },
                    }
                }
                Some(Out::Other)
            }
            Term::Neg(inner) => self.value(inner).map(|()| Out::Other),
            Term::BinOp(left, op, right) => match op {
                BinaryOp::Pipe(None) => match self.on_record(left)? {
                    Out::MayBeRecord => self.on_record(right),
                    // The right side runs on something else than the record.
                    Out::Other => Some(Out::Other),
                },
                // `l as $x | r`: $x must not be the record; r runs on it.
                BinaryOp::Pipe(Some(pattern)) => {
                    plain_pattern(pattern)?;
                    self.value(left)?;
                    self.on_record(right)
                }
                BinaryOp::Comma | BinaryOp::Alt => {
                    Some(self.on_record(left)?.or(self.on_record(right)?))
                }
                BinaryOp::Or | BinaryOp::And | BinaryOp::Math(_) | BinaryOp::Cmp(_) => {
                    self.value(left)?;
                    self.value(right)?;
                    Some(Out::Other)
                }
                // An update's output is the (projected) record.
                BinaryOp::Assign
                | BinaryOp::Update
                | BinaryOp::UpdateMath(_)
                | BinaryOp::UpdateAlt => None,
            },
            Term::Label(_, body) => self.on_record(body),
            // `reduce xs as $x (init; update)`: the update and the extract
            // run on the accumulator, which starts as `init`.
            Term::Fold(_, xs, pattern, args) => {
                plain_pattern(pattern)?;
                self.value(xs)?;
                let (init, _) = args.split_first()?;
                self.value(init)?;
                Some(Out::Other)
            }
            // The catch runs on the error, which is never the record: the
            // calls that could raise it (`error`) are not allowed on it.
            Term::TryCatch(body, _) => self.on_record(body),
            Term::IfThenElse(branches, otherwise) => {
                let mut out = match otherwise {
                    Some(otherwise) => self.on_record(otherwise)?,
                    // No `else`: the input passes through.
                    None => Out::MayBeRecord,
                };
                for (condition, then) in branches {
                    self.value(condition)?;
                    out = out.or(self.on_record(then)?);
                }
                Some(out)
            }
            Term::Call(name, args) => {
                (!self.defs && args.is_empty() && CONSTANT_BUILTINS.contains(name))
                    .then_some(Out::Other)
            }
            Term::Path(head, path) => {
                let on_record = self.on_record(head)? == Out::MayBeRecord;
                // Index terms run on the path's input, the record.
                for (part, _) in &path.0 {
                    match part {
                        Part::Index(index) => self.value(index)?,
                        Part::Range(from, to) => {
                            for bound in [from, to].into_iter().flatten() {
                                self.value(bound)?;
                            }
                        }
                    }
                }
                if on_record {
                    // Only `.NAME` on the record itself; what follows is on
                    // the field's value.
                    match path.0.first() {
                        Some((Part::Index(index), _)) => {
                            self.fields.insert(literal(index)?);
                        }
                        _ => return None,
                    }
                }
                Some(Out::Other)
            }
            Term::Recurse | Term::Def(..) => None,
        }
    }

    /// Analyses `term` run on the record where its output is used as a
    /// value (compared, bound, printed): it must not be the record.
    fn value(&mut self, term: &Term<&str>) -> Option<()> {
        (self.on_record(term)? == Out::Other).then_some(())
    }
}

/// A destructuring pattern whose keys are all literal names or variables
/// (a computed key would be one more thing to prove).
fn plain_pattern(pattern: &Pattern<&str>) -> Option<()> {
    match pattern {
        Pattern::Var(_) => Some(()),
        Pattern::Arr(items) => items.iter().try_for_each(plain_pattern),
        Pattern::Obj(entries) => entries.iter().try_for_each(|(key, value)| {
            match key {
                Term::Var(_) => {}
                _ => {
                    literal(key)?;
                }
            }
            plain_pattern(value)
        }),
    }
}

/// The text of a string literal without escapes or interpolation (a bare
/// name such as `{email}`'s or `.email`'s is one).
pub(super) fn literal(term: &Term<&str>) -> Option<String> {
    match term {
        Term::Str(None, parts) => match parts.as_slice() {
            [StrPart::Str(text)] => Some((*text).to_owned()),
            [] => Some(String::new()),
            _ => None,
        },
        _ => None,
    }
}

/// Whether the expression defines any filter (`def f: …;`).
fn has_defs(term: &Term<&str>) -> bool {
    // Conservative and cheap: any `def` anywhere makes the analysis give up
    // at the `Def` term itself, so this only guards the builtin names used
    // before it is reached.
    fn walk(term: &Term<&str>) -> bool {
        match term {
            Term::Def(..) => true,
            Term::Str(_, parts) => parts.iter().any(|p| matches!(p, StrPart::Term(t) if walk(t))),
            Term::Arr(Some(t)) | Term::Neg(t) | Term::Label(_, t) => walk(t),
            Term::Obj(entries) => {
                entries.iter().any(|(k, v)| walk(k) || v.as_ref().is_some_and(walk))
            }
            Term::BinOp(l, _, r) => walk(l) || walk(r),
            Term::Fold(_, xs, _, args) => walk(xs) || args.iter().any(walk),
            Term::TryCatch(body, catch) => walk(body) || catch.as_deref().is_some_and(walk),
            Term::IfThenElse(branches, otherwise) => {
                branches.iter().any(|(c, t)| walk(c) || walk(t))
                    || otherwise.as_deref().is_some_and(walk)
            }
            Term::Call(_, args) => args.iter().any(walk),
            Term::Path(head, path) => {
                walk(head)
                    || path.0.iter().any(|(part, _)| match part {
                        Part::Index(i) => walk(i),
                        Part::Range(a, b) => {
                            a.as_ref().is_some_and(walk) || b.as_ref().is_some_and(walk)
                        }
                    })
            }
            _ => false,
        }
    }
    walk(term)
}
