//! jq values as expressions see them: jaq's JSON value, with every
//! operation charged to the evaluation's budget ([`super::meter`]) and an
//! upper bound on how deep each value nests.
//!
//! jaq lets the caller choose its value type (`DataT::V`), so this wrapper
//! is how a budget reaches the interpreter. Operations that could build
//! something large in one call (string repetition and concatenation, array
//! and object union, integer arithmetic) charge what they will produce
//! before they produce it; comparisons, printing and serialisation walk a
//! value one step per node, so a value with heavy sharing (`[., .]` nested
//! sixty times is 2^60 leaves in sixty allocations) costs what walking it
//! costs, not nothing. Object keys are strings, as in jq, so hashing a key
//! is never a walk.
//!
//! The natives of `jaq_json` (`length`, `tojson`, `fromjson`, …) are tied to
//! jaq's own value type; [`funs`] gives the same set for this one.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;

use jaq_core::box_iter::BoxIter;
use jaq_core::native::{Filter, Fun, bome, run, v};
use jaq_core::path::Opt;
use jaq_core::{DataT, Exn, RunPtr, ValR, ValX, ValXs};
use jaq_json::{Num, Rc};
use jaq_std::ValT as _;
use serde::ser::{SerializeMap as _, SerializeSeq as _};

use super::meter;

/// jaq's own value type, which this one wraps.
pub(crate) type Raw = jaq_json::Val;

/// An error inside an evaluation.
pub(crate) type Error = jaq_core::Error<Val>;

/// What one slot of an array or object, or the head of a string, is
/// charged: the size of a value.
const SLOT: u64 = std::mem::size_of::<Raw>() as u64;

/// How much of a value an error message shows.
const MESSAGE_BYTES: usize = 512;

/// How much of a value `Display` shows (jaq formats values into error
/// values and logs with it).
const DISPLAY_BYTES: usize = 64 << 10;

/// The depth [`Val::parse`] assumes: serde_json refuses JSON nested deeper
/// than 128 levels, so no parsed value is deeper.
const PARSED_DEPTH: u32 = 128;

/// A jq value and an upper bound on its nesting depth (0 for a scalar).
#[derive(Clone, Default)]
pub struct Val {
    raw: Raw,
    depth: u32,
}

impl fmt::Debug for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Val({self})")
    }
}

impl Val {
    /// A value that holds no array or object.
    pub(crate) fn scalar(raw: Raw) -> Val {
        Val { raw, depth: 0 }
    }

    /// The jaq value itself.
    pub(crate) fn raw(&self) -> &Raw {
        &self.raw
    }

    /// A part of a value `depth` deep.
    fn part(raw: Raw, depth: u32) -> Val {
        let depth = if is_container(&raw) { depth.saturating_sub(1) } else { 0 };
        Val { raw, depth }
    }

    /// A value whose depth is known.
    fn nested(raw: Raw, depth: u32) -> Val {
        meter::depth(depth as usize);
        Val { raw, depth }
    }

    /// `null`.
    pub fn null() -> Val {
        Val::default()
    }

    /// JSON text (a record from a plugin) as a value.
    pub fn parse(text: &str) -> Result<Val, String> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let depth = if is_container(&raw) { PARSED_DEPTH } else { 0 };
        Ok(Val { raw, depth })
    }

    /// JSON text as a value of which only the top-level `fields` of an
    /// object are built; the others are checked as JSON and skipped. For an
    /// expression that provably reads no more of it (see
    /// [`Expr::top_fields`](super::Expr::top_fields)): it then gives what
    /// [`Val::parse`] would. Anything but an object is parsed whole.
    pub fn parse_fields(text: &str, fields: &BTreeSet<String>) -> Result<Val, String> {
        if !text.trim_start().starts_with('{') {
            return Val::parse(text);
        }
        let mut parser = serde_json::Deserializer::from_str(text);
        let raw = serde::Deserializer::deserialize_map(&mut parser, Projection { fields })
            .and_then(|raw| parser.end().map(|()| raw))
            .map_err(|e| format!("not JSON: {e}"))?;
        Ok(Val { raw, depth: PARSED_DEPTH })
    }

    /// A JSON value as a jq value.
    pub fn from_json(value: &serde_json::Value) -> Val {
        let (raw, depth) = from_json(value);
        Val { raw, depth }
    }

    /// The items of an array, or `None` when the value is no array.
    pub fn into_items(self) -> Option<Vec<Val>> {
        match self.raw {
            Raw::Arr(items) => {
                let depth = self.depth;
                Some(
                    Rc::unwrap_or_clone(items)
                        .into_iter()
                        .map(|raw| Val::part(raw, depth))
                        .collect(),
                )
            }
            _ => None,
        }
    }

    /// The text of a string value.
    pub(crate) fn as_text(&self) -> Option<String> {
        match &self.raw {
            Raw::TStr(b) | Raw::BStr(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// Whether the value is an array.
    pub fn is_array(&self) -> bool {
        matches!(self.raw, Raw::Arr(_))
    }

    /// Whether jq counts the value as true: anything but `null` and `false`.
    pub fn is_truthy(&self) -> bool {
        !matches!(self.raw, Raw::Null | Raw::Bool(false))
    }

    /// The object `{name: value, …}`, for the context of an expression.
    pub(crate) fn object<'a>(fields: impl IntoIterator<Item = (&'static str, &'a Val)>) -> Val {
        let mut map = jaq_json::Map::default();
        let mut depth = 0;
        for (name, value) in fields {
            depth = depth.max(value.depth);
            // A static name: no allocation per object.
            map.insert(Raw::utf8_str(name), value.raw.clone());
        }
        Val { raw: Raw::obj(map), depth: depth + 1 }
    }

    /// The value as JSON text, charged to the budget: NaN and infinities
    /// are `null`, byte strings (lossy) strings.
    pub(crate) fn to_json_text(&self) -> String {
        let mut out = Vec::new();
        // Writing to memory fails only by unwinding (the budget).
        let _ = serde_json::to_writer(&mut out, &Json(&self.raw));
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// The value as a JSON value, charged to the budget.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(Json(&self.raw)).unwrap_or(serde_json::Value::Null)
    }

    /// The text a key is compared by: a string as it is, anything else as
    /// JSON; `null` is no key.
    pub(crate) fn key_text(&self) -> Option<String> {
        match &self.raw {
            Raw::Null => None,
            Raw::TStr(b) | Raw::BStr(b) => {
                meter::bytes(b.len() as u64);
                Some(String::from_utf8_lossy(b).into_owned())
            }
            _ => Some(self.to_json_text()),
        }
    }
}

fn is_container(raw: &Raw) -> bool {
    matches!(raw, Raw::Arr(_) | Raw::Obj(_))
}

fn from_json(value: &serde_json::Value) -> (Raw, u32) {
    use serde_json::Value;
    match value {
        Value::Null => (Raw::Null, 0),
        Value::Bool(b) => (Raw::Bool(*b), 0),
        Value::Number(n) => {
            let num = match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => isize::try_from(i).map_or(Num::Float(i as f64), Num::Int),
                (None, Some(f)) => Num::Float(f),
                (None, None) => return (Raw::Null, 0),
            };
            (Raw::Num(num), 0)
        }
        Value::String(s) => (Raw::from(s.clone()), 0),
        Value::Array(items) => {
            let mut depth = 0;
            let items = items
                .iter()
                .map(|item| {
                    let (raw, d) = from_json(item);
                    depth = depth.max(d);
                    raw
                })
                .collect();
            (Raw::Arr(Rc::new(items)), depth + 1)
        }
        Value::Object(fields) => {
            let mut depth = 0;
            let map = fields
                .iter()
                .map(|(k, v)| {
                    let (raw, d) = from_json(v);
                    depth = depth.max(d);
                    (Raw::from(k.clone()), raw)
                })
                .collect();
            (Raw::obj(map), depth + 1)
        }
    }
}

/// Serialises a raw value, one step per node.
struct Json<'a>(&'a Raw);

impl serde::Serialize for Json<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        meter::step();
        match self.0 {
            Raw::Null => serializer.serialize_unit(),
            Raw::Bool(b) => serializer.serialize_bool(*b),
            Raw::Num(Num::Int(i)) => serializer.serialize_i64(*i as i64),
            Raw::Num(_) => match self.0.as_f64() {
                Some(f) if f.is_finite() => serializer.serialize_f64(f),
                _ => serializer.serialize_unit(),
            },
            Raw::TStr(b) | Raw::BStr(b) => {
                meter::bytes(b.len() as u64 + SLOT);
                serializer.serialize_str(&String::from_utf8_lossy(b))
            }
            Raw::Arr(items) => {
                meter::bytes(SLOT * (items.len() as u64 + 1));
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items.iter() {
                    seq.serialize_element(&Json(item))?;
                }
                seq.end()
            }
            Raw::Obj(fields) => {
                meter::bytes(2 * SLOT * (fields.len() as u64 + 1));
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (key, value) in fields.iter() {
                    match key {
                        Raw::TStr(b) | Raw::BStr(b) => {
                            map.serialize_entry(&String::from_utf8_lossy(b), &Json(value))?
                        }
                        other => map.serialize_entry(
                            &Val::scalar(other.clone()).to_json_text(),
                            &Json(value),
                        )?,
                    }
                }
                map.end()
            }
        }
    }
}

/// Writes jaq's text of a value, charging a step and the bytes of every
/// piece; past `limit` bytes it refuses, which stops jaq's writer.
struct Metered<'a> {
    out: &'a mut Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl std::io::Write for Metered<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        meter::step();
        let room = self.limit.saturating_sub(self.out.len());
        if buf.len() > room {
            self.out.extend_from_slice(&buf[..room]);
            self.truncated = true;
            return Err(std::io::Error::other("long enough"));
        }
        meter::bytes(buf.len() as u64);
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// jaq's text of `raw` (JSON with jaq's extensions), at most `limit` bytes;
/// whether it was cut short.
fn jaq_text(raw: &Raw, limit: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut writer = Metered { out: &mut out, limit, truncated: false };
    let _ = jaq_json::write::write(&mut writer, &jaq_json::write::Pp::default(), 0, raw);
    let truncated = writer.truncated;
    (out, truncated)
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (text, truncated) = jaq_text(&self.raw, DISPLAY_BYTES);
        f.write_str(&String::from_utf8_lossy(&text))?;
        if truncated { f.write_str("…") } else { Ok(()) }
    }
}

/// A message from one of jaq's errors about a raw value, with the values
/// in it cut short.
pub(crate) fn message(error: &impl fmt::Display) -> String {
    cut(error, MESSAGE_BYTES)
}

/// The first `limit` bytes of what `shown` displays.
fn cut(shown: &impl fmt::Display, limit: usize) -> String {
    struct Short {
        limit: usize,
        text: String,
        full: bool,
    }
    impl fmt::Write for Short {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let room = self.limit.saturating_sub(self.text.len());
            if s.len() > room {
                let cut = (0..=room).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                self.text.push_str(&s[..cut]);
                self.full = true;
                return Err(fmt::Error);
            }
            self.text.push_str(s);
            Ok(())
        }
    }
    let mut short = Short { limit, text: String::new(), full: false };
    let _ = fmt::write(&mut short, format_args!("{shown}"));
    if short.full {
        short.text.push('…');
    }
    short.text
}

/// One of jaq's errors about raw values as an error about values.
fn lift(error: jaq_core::Error<Raw>) -> Error {
    Error::str(message(&error))
}

fn lift_exn<'a>(exn: Exn<'a, Raw>) -> Exn<'a, Val> {
    match exn.get_err() {
        Ok(error) => Exn::from(lift(error)),
        Err(_) => Exn::from(Error::str("jaq raised an exception that is not an error")),
    }
}

/// An integer result beyond what a double holds is refused: each operation
/// on such numbers may double their size.
fn checked(raw: Raw) -> ValR<Raw, Val> {
    if let Raw::Num(Num::BigInt(_)) = &raw
        && !raw.as_f64().is_some_and(f64::is_finite)
    {
        return Err(Error::str("an integer beyond ±1.8e308 is not supported in expressions"));
    }
    Ok(raw)
}

fn text_len(raw: &Raw) -> Option<usize> {
    match raw {
        Raw::TStr(b) | Raw::BStr(b) => Some(b.len()),
        _ => None,
    }
}

fn is_string(raw: &Raw) -> bool {
    matches!(raw, Raw::TStr(_) | Raw::BStr(_))
}

/// Charges what copying the container `raw` costs (an update copies a
/// shared array or object before it changes it).
fn charge_copy(raw: &Raw) {
    match raw {
        Raw::Arr(a) => meter::bytes(SLOT * (a.len() as u64 + 1)),
        Raw::Obj(o) => meter::bytes(2 * SLOT * (o.len() as u64 + 1)),
        Raw::TStr(b) | Raw::BStr(b) => meter::bytes(b.len() as u64 + SLOT),
        _ => {}
    }
}

/// Walks `raw`, one step per node: the cost of an operation that may look
/// at all of it.
fn charge_walk(raw: &Raw) {
    meter::step();
    match raw {
        Raw::Arr(a) => a.iter().for_each(charge_walk),
        Raw::Obj(o) => o.values().for_each(charge_walk),
        _ => {}
    }
}

/// jq's order of values, one step per node compared (jaq's own order,
/// which this follows, walks without counting).
fn compare(a: &Raw, b: &Raw) -> Ordering {
    meter::step();
    match (a, b) {
        (Raw::Arr(x), Raw::Arr(y)) => {
            if Rc::ptr_eq(x, y) {
                return Ordering::Equal;
            }
            for (l, r) in x.iter().zip(y.iter()) {
                match compare(l, r) {
                    Ordering::Equal => {}
                    other => return other,
                }
            }
            x.len().cmp(&y.len())
        }
        (Raw::Obj(x), Raw::Obj(y)) => {
            if Rc::ptr_eq(x, y) {
                return Ordering::Equal;
            }
            match (x.len(), y.len()) {
                (0, 0) => Ordering::Equal,
                (0, _) => Ordering::Less,
                (_, 0) => Ordering::Greater,
                (nx, ny) => {
                    meter::steps((nx + ny) as u64);
                    let mut l: Vec<_> = x.iter().collect();
                    let mut r: Vec<_> = y.iter().collect();
                    l.sort_by(|(k1, _), (k2, _)| compare(k1, k2));
                    r.sort_by(|(k1, _), (k2, _)| compare(k1, k2));
                    let keys = sequence(l.iter().map(|(k, _)| *k), r.iter().map(|(k, _)| *k));
                    keys.then_with(|| {
                        sequence(l.iter().map(|(_, v)| *v), r.iter().map(|(_, v)| *v))
                    })
                }
            }
        }
        // Scalars, and values of different types: jaq's order, which does
        // not recurse for them.
        _ => a.cmp(b),
    }
}

/// Lexicographic order of two sequences, by [`compare`].
fn sequence<'a>(
    mut l: impl Iterator<Item = &'a Raw>,
    mut r: impl Iterator<Item = &'a Raw>,
) -> Ordering {
    loop {
        match (l.next(), r.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => match compare(x, y) {
                Ordering::Equal => {}
                other => return other,
            },
        }
    }
}

/// jq's equality, one step per node compared.
fn equal(a: &Raw, b: &Raw) -> bool {
    meter::step();
    match (a, b) {
        (Raw::Arr(x), Raw::Arr(y)) => {
            Rc::ptr_eq(x, y)
                || (x.len() == y.len() && x.iter().zip(y.iter()).all(|(l, r)| equal(l, r)))
        }
        (Raw::Obj(x), Raw::Obj(y)) => {
            Rc::ptr_eq(x, y)
                || (x.len() == y.len()
                    && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w))))
        }
        _ => a == b,
    }
}

impl PartialEq for Val {
    fn eq(&self, other: &Self) -> bool {
        equal(&self.raw, &other.raw)
    }
}

impl Eq for Val {}

impl PartialOrd for Val {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Val {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(&self.raw, &other.raw)
    }
}

impl From<bool> for Val {
    fn from(b: bool) -> Self {
        meter::step();
        Val::scalar(Raw::from(b))
    }
}

impl From<isize> for Val {
    fn from(i: isize) -> Self {
        meter::step();
        Val::scalar(Raw::from(i))
    }
}

impl From<usize> for Val {
    fn from(i: usize) -> Self {
        meter::step();
        Val::scalar(Raw::from(i))
    }
}

impl From<f64> for Val {
    fn from(f: f64) -> Self {
        meter::step();
        Val::scalar(Raw::from(f))
    }
}

impl From<String> for Val {
    fn from(s: String) -> Self {
        meter::step();
        meter::bytes(s.len() as u64 + SLOT);
        Val::scalar(Raw::from(s))
    }
}

impl From<jaq_core::val::Range<Val>> for Val {
    fn from(range: jaq_core::val::Range<Val>) -> Self {
        meter::step();
        meter::bytes(4 * SLOT);
        let depth =
            range.start.iter().chain(range.end.iter()).map(|v| v.depth).max().unwrap_or(0) + 1;
        let raw = Raw::from(range.start.map(|v| v.raw)..range.end.map(|v| v.raw));
        Val::nested(raw, depth)
    }
}

/// Slots of an array or object charged at once while it is built: the
/// values in them were charged as they were made, so the array itself is
/// at most this far ahead of its charge.
const CHARGE_EVERY: u64 = 64;

impl FromIterator<Val> for Val {
    fn from_iter<T: IntoIterator<Item = Val>>(iter: T) -> Self {
        meter::step();
        let mut depth = 0;
        let mut uncharged = 0;
        let items: Vec<Raw> = iter
            .into_iter()
            .map(|v| {
                uncharged += 1;
                if uncharged == CHARGE_EVERY {
                    meter::charge(CHARGE_EVERY, CHARGE_EVERY * SLOT);
                    uncharged = 0;
                }
                depth = depth.max(v.depth);
                v.raw
            })
            .collect();
        meter::charge(uncharged, uncharged * SLOT);
        Val::nested(Raw::Arr(Rc::new(items)), depth + 1)
    }
}

macro_rules! arithmetic {
    ($trait:ident, $method:ident, $charge:expr) => {
        impl std::ops::$trait for Val {
            type Output = ValR<Val>;
            fn $method(self, rhs: Self) -> ValR<Val> {
                meter::step();
                $charge(&self.raw, &rhs.raw);
                let depth = self.depth.max(rhs.depth);
                let raw = std::ops::$trait::$method(self.raw, rhs.raw).map_err(lift)?;
                Ok(Val { raw: checked(raw)?, depth })
            }
        }
    };
}

/// What `+` produces: concatenated strings, arrays and objects.
fn charge_add(l: &Raw, r: &Raw) {
    match (l, r) {
        (Raw::TStr(a) | Raw::BStr(a), Raw::TStr(b) | Raw::BStr(b)) => {
            meter::bytes((a.len() + b.len()) as u64 + SLOT)
        }
        (Raw::Arr(a), Raw::Arr(b)) => meter::bytes(SLOT * (a.len() + b.len() + 1) as u64),
        (Raw::Obj(a), Raw::Obj(b)) => meter::bytes(2 * SLOT * (a.len() + b.len() + 1) as u64),
        _ => {}
    }
}

/// `-` on arrays looks every element of the left side up among the right
/// side's.
fn charge_sub(l: &Raw, r: &Raw) {
    if let (Raw::Arr(a), Raw::Arr(b)) = (l, r) {
        meter::bytes(SLOT * (a.len() + b.len() + 1) as u64);
        charge_walk(l);
        charge_walk(r);
    }
}

/// `*` repeats a string (checked before the repetition is built) and merges
/// objects deeply.
fn charge_mul(l: &Raw, r: &Raw) {
    match (l, r) {
        (s @ (Raw::TStr(_) | Raw::BStr(_)), n @ Raw::Num(_))
        | (n @ Raw::Num(_), s @ (Raw::TStr(_) | Raw::BStr(_))) => {
            let times = match n.as_isize() {
                Some(i) => i.max(0) as u64,
                // A big integer: jaq repeats it saturated at isize::MAX times.
                None if n.is_int() => u64::MAX,
                None => 0,
            };
            let len = text_len(s).unwrap_or(0) as u64;
            meter::bytes(len.saturating_mul(times).saturating_add(SLOT));
        }
        (Raw::Obj(a), Raw::Obj(b)) => {
            meter::bytes(2 * SLOT * (a.len() + b.len() + 1) as u64);
            charge_walk(r);
        }
        _ => {}
    }
}

/// `/` splits a string into at most one piece per byte.
fn charge_div(l: &Raw, _r: &Raw) {
    if let Some(len) = text_len(l) {
        meter::bytes(SLOT * (len as u64 + 1));
    }
}

fn charge_nothing(_: &Raw, _: &Raw) {}

arithmetic!(Add, add, charge_add);
arithmetic!(Sub, sub, charge_sub);
arithmetic!(Mul, mul, charge_mul);
arithmetic!(Div, div, charge_div);
arithmetic!(Rem, rem, charge_nothing);

impl std::ops::Neg for Val {
    type Output = ValR<Val>;
    fn neg(self) -> ValR<Val> {
        meter::step();
        let raw = (-self.raw).map_err(lift)?;
        Ok(Val::scalar(checked(raw)?))
    }
}

/// Runs one of jaq's updates (`map_values`, `map_index`, `map_range`),
/// which take a function on raw values, with `f` on values: the first
/// exception `f` raises is kept aside (jaq's would be of the raw type) and
/// returned, and the depth of what `f` produced is tracked.
fn update<'a, I, U>(container: Val, f: impl Fn(Val) -> I, apply: U) -> ValX<'a, Val>
where
    I: Iterator<Item = ValX<'a, Val>>,
    U: for<'s> FnOnce(Raw, &'s dyn Fn(Raw) -> BoxIter<'s, ValX<'a, Raw>>) -> ValX<'a, Raw>,
{
    meter::step();
    charge_copy(&container.raw);
    let depth = container.depth;
    let raised: RefCell<Option<Exn<'a, Val>>> = RefCell::new(None);
    let deepest = Cell::new(0u32);
    let result = {
        let raw_f = |raw: Raw| -> BoxIter<'_, ValX<'a, Raw>> {
            Box::new(f(Val::part(raw, depth)).map(|out| match out {
                Ok(v) => {
                    meter::step();
                    deepest.set(deepest.get().max(v.depth));
                    Ok(v.raw)
                }
                Err(e) => {
                    raised.borrow_mut().get_or_insert(e);
                    Err(Exn::from(jaq_core::Error::new(Raw::Null)))
                }
            }))
        };
        apply(container.raw, &raw_f)
    };
    if let Some(e) = raised.into_inner() {
        return Err(e);
    }
    match result {
        Ok(raw) => Ok(Val::nested(raw, depth.max(deepest.get() + 1))),
        Err(e) => Err(lift_exn(e)),
    }
}

/// An index into a sequence of `len`, counted from the end when negative.
fn position(i: &Raw, len: usize) -> Option<usize> {
    let i = i.as_isize()?;
    if i >= 0 {
        let i = i as usize;
        (i < len).then_some(i)
    } else {
        len.checked_sub(i.unsigned_abs())
    }
}

impl jaq_core::ValT for Val {
    fn from_num(n: &str) -> ValR<Self> {
        meter::step();
        meter::bytes(n.len() as u64 + SLOT);
        let raw = Raw::from_num(n).map_err(lift)?;
        Ok(Val::scalar(raw))
    }

    fn from_map<I: IntoIterator<Item = (Self, Self)>>(iter: I) -> ValR<Self> {
        meter::step();
        let mut map = jaq_json::Map::default();
        let mut depth = 0;
        for (key, value) in iter {
            meter::charge(1, 2 * SLOT);
            if !is_string(&key.raw) {
                return Err(Error::str(format!(
                    "object keys must be strings, not {}",
                    message(&key)
                )));
            }
            depth = depth.max(value.depth);
            map.insert(key.raw, value.raw);
        }
        Ok(Val::nested(Raw::obj(map), depth + 1))
    }

    fn key_values(self) -> BoxIter<'static, ValR<(Self, Self), Self>> {
        meter::step();
        charge_copy(&self.raw);
        let depth = self.depth;
        Box::new(self.raw.key_values().map(move |pair| {
            meter::step();
            pair.map(|(k, v)| (Val::scalar(k), Val::part(v, depth))).map_err(lift)
        }))
    }

    fn values(self) -> Box<dyn Iterator<Item = ValR<Self>>> {
        meter::step();
        charge_copy(&self.raw);
        let depth = self.depth;
        Box::new(self.raw.values().map(move |v| {
            meter::step();
            v.map(|v| Val::part(v, depth)).map_err(lift)
        }))
    }

    fn index(self, index: &Self) -> ValR<Self> {
        meter::step();
        let depth = self.depth;
        match (&self.raw, &index.raw) {
            // Keys are strings: anything else is absent, found without
            // hashing what may be a large value.
            (Raw::Obj(_), key) if !is_string(key) && !matches!(key, Raw::Null) => Ok(Val::null()),
            (Raw::Arr(x), Raw::Arr(y)) if !y.is_empty() => {
                let found: Vec<Raw> = x
                    .windows(y.len())
                    .enumerate()
                    .filter(|(_, w)| w.iter().zip(y.iter()).all(|(a, b)| equal(a, b)))
                    .map(|(i, _)| Raw::from(i))
                    .collect();
                meter::bytes(SLOT * (found.len() as u64 + 1));
                Ok(Val::nested(Raw::Arr(Rc::new(found)), 1))
            }
            // A slice `{start, end}` is as deep as what it slices.
            (_, Raw::Obj(_)) => {
                self.raw.index(&index.raw).map(|raw| Val { raw, depth }).map_err(lift)
            }
            _ => self.raw.index(&index.raw).map(|raw| Val::part(raw, depth)).map_err(lift),
        }
    }

    fn range(self, range: jaq_core::val::Range<&Self>) -> ValR<Self> {
        meter::step();
        charge_copy(&self.raw);
        let depth = self.depth;
        let raw_range = range.start.map(|v| &v.raw)..range.end.map(|v| &v.raw);
        self.raw.range(raw_range).map(|raw| Val { raw, depth }).map_err(lift)
    }

    fn map_values<'a, I: Iterator<Item = ValX<'a, Self>>>(
        self,
        opt: Opt,
        f: impl Fn(Self) -> I,
    ) -> ValX<'a, Self> {
        update(self, f, |raw, g| raw.map_values(opt, g))
    }

    fn map_index<'a, I: Iterator<Item = ValX<'a, Self>>>(
        self,
        index: &Self,
        opt: Opt,
        f: impl Fn(Self) -> I,
    ) -> ValX<'a, Self> {
        if let (Raw::Obj(_), key) = (&self.raw, &index.raw)
            && !is_string(key)
        {
            return opt.fail(self, |_| {
                Exn::from(Error::str(format!(
                    "object keys must be strings, not {}",
                    message(index)
                )))
            });
        }
        let index = index.raw.clone();
        update(self, f, move |raw, g| raw.map_index(&index, opt, g))
    }

    fn map_range<'a, I: Iterator<Item = ValX<'a, Self>>>(
        self,
        range: jaq_core::val::Range<&Self>,
        opt: Opt,
        f: impl Fn(Self) -> I,
    ) -> ValX<'a, Self> {
        let start = range.start.map(|v| v.raw.clone());
        let end = range.end.map(|v| v.raw.clone());
        update(self, f, move |raw, g| raw.map_range(start.as_ref()..end.as_ref(), opt, g))
    }

    fn as_bool(&self) -> bool {
        self.raw.as_bool()
    }

    fn into_string(self) -> Self {
        meter::step();
        match self.raw {
            Raw::TStr(_) => self,
            Raw::BStr(b) => Val::scalar(Raw::TStr(b)),
            raw => {
                let (text, _) = jaq_text(&raw, usize::MAX);
                Val::scalar(Raw::utf8_str(text))
            }
        }
    }
}

impl jaq_std::ValT for Val {
    fn into_seq<S: FromIterator<Self>>(self) -> Result<S, Self> {
        meter::step();
        match self.raw {
            Raw::Arr(items) => {
                meter::bytes(SLOT * (items.len() as u64 + 1));
                let depth = self.depth;
                Ok(Rc::unwrap_or_clone(items)
                    .into_iter()
                    .map(|raw| {
                        meter::step();
                        Val::part(raw, depth)
                    })
                    .collect())
            }
            raw => Err(Val { raw, depth: self.depth }),
        }
    }

    fn is_int(&self) -> bool {
        self.raw.is_int()
    }

    fn as_isize(&self) -> Option<isize> {
        self.raw.as_isize()
    }

    fn as_f64(&self) -> Option<f64> {
        self.raw.as_f64()
    }

    fn is_utf8_str(&self) -> bool {
        self.raw.is_utf8_str()
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        self.raw.as_bytes()
    }

    fn as_sub_str(&self, sub: &[u8]) -> Self {
        meter::step();
        Val::scalar(self.raw.as_sub_str(sub))
    }

    fn from_utf8_bytes(b: impl AsRef<[u8]> + Send + 'static) -> Self {
        meter::step();
        meter::bytes(b.as_ref().len() as u64 + SLOT);
        Val::scalar(Raw::from_utf8_bytes(b))
    }
}

/// The data jaq runs expressions with: the program, whose every lookup
/// (one per term run) is an evaluation step. A loop that never touches a
/// value (`def f: f; f`) still runs terms.
pub(crate) struct Budgeted;

impl DataT for Budgeted {
    type V<'a> = Val;
    type Data<'a> = Program<'a>;
}

/// The program of one evaluation.
#[derive(Clone)]
pub(crate) struct Program<'a>(pub(crate) &'a jaq_core::Lut<Budgeted>);

impl<'a> jaq_core::data::HasLut<'a, Budgeted> for Program<'a> {
    fn lut(&self) -> &'a jaq_core::Lut<Budgeted> {
        meter::step();
        self.0
    }
}

/// Substring search: the standard library's when both are UTF-8 text,
/// else a window scan charged per window.
fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    match (std::str::from_utf8(hay), std::str::from_utf8(needle)) {
        (Ok(h), Ok(n)) => h.contains(n),
        _ => {
            meter::steps((hay.len() as u64).saturating_mul(needle.len() as u64) / 64 + 1);
            needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
        }
    }
}

/// jq's `contains`: substrings, and for arrays and objects every part of
/// `b` inside some part of `a`.
fn contains(a: &Raw, b: &Raw) -> bool {
    meter::step();
    match (a, b) {
        (Raw::BStr(l) | Raw::TStr(l), Raw::BStr(r) | Raw::TStr(r)) => contains_bytes(l, r),
        (Raw::Arr(l), Raw::Arr(r)) => r.iter().all(|r| l.iter().any(|l| contains(l, r))),
        (Raw::Obj(l), Raw::Obj(r)) => {
            r.iter().all(|(k, r)| l.get(k).is_some_and(|l| contains(l, r)))
        }
        _ => equal(a, b),
    }
}

fn length(v: &Raw) -> ValR<Val> {
    Ok(match v {
        Raw::Null => Val::from(0usize),
        Raw::Num(Num::Int(i)) => Val::scalar(
            i.checked_abs().map_or_else(|| Raw::from(i.unsigned_abs() as f64), Raw::from),
        ),
        Raw::Num(_) => {
            let negative = v.as_f64().is_some_and(|f| f < 0.0);
            if negative { (-Val::scalar(v.clone()))? } else { Val::scalar(v.clone()) }
        }
        Raw::TStr(s) => {
            meter::steps(s.len() as u64 / 64);
            Val::from(String::from_utf8_lossy(s).chars().count())
        }
        Raw::BStr(b) => Val::from(b.len()),
        Raw::Arr(a) => Val::from(a.len()),
        Raw::Obj(o) => Val::from(o.len()),
        Raw::Bool(_) => {
            return Err(Error::str(format!("{} has no length", message(&Val::scalar(v.clone())))));
        }
    })
}

/// jq's `has`: whether the index finds something (jaq's rules).
fn has(v: &Val, k: &Val) -> ValR<Val> {
    let found = match (&v.raw, &k.raw) {
        (Raw::Null, _) => false,
        (Raw::BStr(b), i @ Raw::Num(_)) if i.is_int() => position(i, b.len()).is_some(),
        (Raw::Arr(a), i @ Raw::Num(_)) if i.is_int() => position(i, a.len()).is_some(),
        (Raw::Arr(_), Raw::Arr(_)) => true,
        (Raw::Obj(o), key) => is_string(key) && o.contains_key(key),
        (Raw::BStr(_) | Raw::TStr(_) | Raw::Arr(_), Raw::Obj(_)) => {
            jaq_core::ValT::index(v.clone(), k)?;
            true
        }
        _ => return Err(Error::index(v.clone(), k.clone())),
    };
    Ok(Val::from(found))
}

/// jq's `indices`.
fn indices(x: &Val, y: &Val) -> ValR<Val> {
    let found: Vec<usize> = match (&x.raw, &y.raw) {
        (Raw::BStr(_) | Raw::TStr(_), Raw::BStr(n) | Raw::TStr(n)) if n.is_empty() => vec![],
        (Raw::TStr(h), Raw::TStr(n)) => {
            meter::steps((h.len() as u64).saturating_mul(n.len() as u64) / 64 + 1);
            let starts = h.iter().enumerate().filter(|(_, b)| (**b & 0xC0) != 0x80).map(|(i, _)| i);
            starts
                .enumerate()
                .filter(|(_, at)| h[*at..].starts_with(n))
                .map(|(char_index, _)| char_index)
                .collect()
        }
        (Raw::BStr(h), Raw::BStr(n)) => {
            meter::steps((h.len() as u64).saturating_mul(n.len() as u64) / 64 + 1);
            h.windows(n.len()).enumerate().filter(|(_, w)| *w == &n[..]).map(|(i, _)| i).collect()
        }
        (Raw::Arr(_), Raw::Arr(n)) if n.is_empty() => vec![],
        (Raw::Arr(h), Raw::Arr(n)) => h
            .windows(n.len())
            .enumerate()
            .filter(|(_, w)| w.iter().zip(n.iter()).all(|(a, b)| equal(a, b)))
            .map(|(i, _)| i)
            .collect(),
        (Raw::Arr(h), one) => {
            h.iter().enumerate().filter(|(_, e)| equal(e, one)).map(|(i, _)| i).collect()
        }
        _ => return Err(Error::index(x.clone(), y.clone())),
    };
    Ok(found.into_iter().map(|i| Val::from(i as isize)).collect())
}

fn to_bytes(v: &Raw, out: &mut Vec<u8>) -> bool {
    meter::step();
    match v {
        Raw::Num(_) => match v.as_isize().and_then(|i| u8::try_from(i).ok()) {
            Some(byte) => {
                out.push(byte);
                true
            }
            None => false,
        },
        Raw::BStr(b) | Raw::TStr(b) => {
            meter::bytes(b.len() as u64);
            out.extend_from_slice(b);
            true
        }
        Raw::Arr(items) => items.iter().all(|item| to_bytes(item, out)),
        _ => false,
    }
}

fn fromjson<'a>(v: &Val) -> ValXs<'a, Val> {
    let Some(text) = v.raw.as_utf8_bytes() else {
        return bome(Err(Error::typ(v.clone(), "string")));
    };
    meter::bytes(2 * text.len() as u64 + SLOT);
    let values: Result<Vec<Val>, String> = serde_json::Deserializer::from_slice(text)
        .into_iter::<Raw>()
        .map(|parsed| {
            meter::step();
            parsed
                .map(|raw| Val { depth: if is_container(&raw) { PARSED_DEPTH } else { 0 }, raw })
                .map_err(|e| e.to_string())
        })
        .collect();
    match values {
        Ok(values) => Box::new(values.into_iter().map(Ok)),
        Err(e) => bome(Err(Error::str(format!("cannot parse {} as JSON: {e}", cut(v, 64))))),
    }
}

/// The natives `jaq_json` gives its own value type, for this one.
pub(crate) fn funs() -> impl Iterator<Item = Fun<Budgeted>> {
    let natives: [Filter<RunPtr<Budgeted>>; 8] = [
        ("fromjson", v(0), |cv| fromjson(&cv.1)),
        ("tojson", v(0), |cv| {
            meter::step();
            let (text, _) = jaq_text(&cv.1.raw, usize::MAX);
            meter::bytes(SLOT);
            bome(Ok(Val::scalar(Raw::utf8_str(text))))
        }),
        ("tobytes", v(0), |cv| {
            let mut out = Vec::new();
            if to_bytes(&cv.1.raw, &mut out) {
                bome(Ok(Val::scalar(Raw::byte_str(out))))
            } else {
                bome(Err(Error::str(format!("cannot convert {} to bytes", message(&cv.1)))))
            }
        }),
        ("length", v(0), |cv| {
            meter::step();
            bome(length(&cv.1.raw))
        }),
        ("contains", v(1), |mut cv| {
            let other = cv.0.pop_var();
            bome(Ok(Val::from(contains(&cv.1.raw, &other.raw))))
        }),
        ("has", v(1), |mut cv| {
            let key = cv.0.pop_var();
            meter::step();
            bome(has(&cv.1, &key))
        }),
        ("indices", v(1), |mut cv| {
            let needle = cv.0.pop_var();
            meter::step();
            bome(indices(&cv.1, &needle))
        }),
        ("bsearch", v(1), |mut cv| {
            let target = cv.0.pop_var();
            meter::step();
            match &cv.1.raw {
                Raw::Arr(items) => {
                    let at = items.binary_search_by(|item| compare(item, &target.raw));
                    bome(Ok(Val::from(at.map_or_else(|i| -1 - i as isize, |i| i as isize))))
                }
                _ => bome(Err(Error::typ(cv.1.clone(), "array"))),
            }
        }),
    ];
    natives.into_iter().map(run::<Budgeted>)
}

/// An object's field name, borrowed from the text unless it holds escapes.
struct FieldName<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> serde::de::Visitor<'de> for NameVisitor {
            type Value = FieldName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<FieldName<'de>, E> {
                Ok(FieldName(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<FieldName<'de>, E> {
                Ok(FieldName(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<FieldName<'de>, E> {
                Ok(FieldName(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

/// Builds an object of the wanted fields, as jaq's own parse would build
/// them (a field given twice keeps its first place and last value).
struct Projection<'f> {
    fields: &'f BTreeSet<String>,
}

impl<'de> serde::de::Visitor<'de> for Projection<'_> {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut kept = Vec::new();
        while let Some(FieldName(name)) = map.next_key()? {
            if self.fields.contains(name.as_ref()) {
                let value: Raw = map.next_value()?;
                kept.push((Raw::utf8_str(name.into_owned().into_bytes()), value));
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(Raw::obj(kept.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_in_and_out_keeps_types_and_depth() {
        let json = serde_json::json!({"a": [1, 2.5, "x", null, true], "b": {"c": {}}});
        let v = Val::from_json(&json);
        assert_eq!(v.depth, 3);
        assert_eq!(v.to_json(), json);
        assert_eq!(v.to_json_text(), json.to_string());
        assert_eq!(Val::parse("[1, [2]]").map(|v| v.to_json()), Ok(serde_json::json!([1, [2]])));
    }

    #[test]
    fn keys_are_text_and_null_is_no_key() {
        assert_eq!(Val::from_json(&serde_json::json!("a@b")).key_text().as_deref(), Some("a@b"));
        assert_eq!(Val::from_json(&serde_json::json!(7)).key_text().as_deref(), Some("7"));
        assert_eq!(Val::null().key_text(), None);
    }

    #[test]
    fn order_and_equality_follow_jaq() {
        let values = [
            serde_json::json!(null),
            serde_json::json!(false),
            serde_json::json!(1),
            serde_json::json!("a"),
            serde_json::json!([1, 2]),
            serde_json::json!([1, 2, 3]),
            serde_json::json!({"a": 1}),
            serde_json::json!({"a": 2}),
            serde_json::json!({"b": 0}),
        ];
        for a in &values {
            for b in &values {
                let (x, y) = (Val::from_json(a), Val::from_json(b));
                assert_eq!(x.cmp(&y), x.raw.cmp(&y.raw), "{a} vs {b}");
                assert_eq!(x == y, x.raw == y.raw, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn display_is_cut_short() {
        let long = Val::from_json(&serde_json::json!("x".repeat(DISPLAY_BYTES * 2)));
        let shown = long.to_string();
        assert!(shown.len() <= DISPLAY_BYTES + 4, "{}", shown.len());
        assert!(shown.ends_with('…'));
    }
}
