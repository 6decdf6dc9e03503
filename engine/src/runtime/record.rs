//! What the host accepts as a record from a plugin: exactly one JSON object,
//! on one line.
//!
//! Records cross the boundary as text and the host stores them without
//! parsing them: a list page goes into the page log as `[r1,r2,…]` and into
//! an output file one record a line. Text that is not one object would
//! poison both (a comma smuggles a second record into the array, a line
//! break forges a line in the file, anything else leaves a page no reader
//! can parse, so the run can never resume). So every record is checked
//! here, as it arrives.
//!
//! # Exactly as strict as the readers
//!
//! Every later reader of a record is serde_json (`parse_val` into jaq's
//! values, `serde_json::Value`, `RawValue`), so a record is accepted exactly
//! when serde_json would *decode* it — stricter than serde_json's own
//! skipping, which lets a lone surrogate (`"\ud800"`) or an overflowing
//! number (`1e400`) through that decoding refuses. The common shapes
//! (plain strings, short integers, literals, structure) are checked by one
//! loop here in about 0.8 of the time serde_json takes to parse the same
//! text (~2 GB/s on a Stripe page, where a token comes every six bytes); the rare ones (a string
//! with an escape, a number with a fraction, an exponent or many digits)
//! are handed to serde_json itself, so their meaning is serde_json's by
//! construction. Nesting is capped below serde_json's limit of 128, so a
//! record still reads inside the page's array.
//!
//! A record that is one object but spans lines (a vendor's pretty-printed
//! body, cut into records byte for byte) is accepted and made one line by
//! dropping the whitespace between its tokens; its content is unchanged.

use std::fmt;

/// Deepest nesting accepted inside a record. serde_json refuses 128 and
/// the page log wraps records in one more array. At most 128: the open
/// containers are bits of a `u128`.
pub(super) const MAX_DEPTH: usize = 100;

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RecordError {
    /// The text is not JSON (or not JSON serde_json decodes).
    NotJson { at: usize, what: String },
    /// It is JSON, but not an object.
    NotObject(&'static str),
    /// One object, then more text.
    Trailing { at: usize },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::NotJson { at, what } => write!(f, "is not JSON: {what} at byte {at}"),
            RecordError::NotObject(kind) => write!(f, "is a JSON {kind}, not an object"),
            RecordError::Trailing { at } => {
                write!(f, "holds more than one JSON value (more text at byte {at})")
            }
        }
    }
}

/// `text` if it is exactly one JSON object on one line; the same object on
/// one line if it spans lines; otherwise why not.
pub(super) fn one_object(text: String) -> Result<String, RecordError> {
    let mut scan = Scan { bytes: text.as_bytes(), pos: 0, line_breaks: false };
    scan.whitespace();
    match scan.bytes.get(scan.pos) {
        Some(b'{') => {}
        Some(b'[') => return Err(RecordError::NotObject("array")),
        Some(b'"') => return Err(RecordError::NotObject("string")),
        Some(b'-' | b'0'..=b'9') => return Err(RecordError::NotObject("number")),
        Some(b't' | b'f') if scan.rest_starts_with(b"true") || scan.rest_starts_with(b"false") => {
            return Err(RecordError::NotObject("boolean"));
        }
        Some(b'n') if scan.rest_starts_with(b"null") => return Err(RecordError::NotObject("null")),
        _ => return Err(scan.error("expected `{`")),
    }
    scan.value(&text)?;
    scan.whitespace();
    if scan.pos != scan.bytes.len() {
        return Err(RecordError::Trailing { at: scan.pos });
    }
    Ok(if scan.line_breaks { compact(&text) } else { text })
}

/// `text` (valid JSON) without whitespace outside its strings.
fn compact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `chunk` that is `"`, `\` or a control
/// character: the bytes that end a plain run of string content. The lowest
/// one set marks the first such byte exactly.
#[inline(always)]
fn string_specials(chunk: u64) -> u64 {
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v;
    let quote = zero_byte(chunk ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(chunk ^ (ONES * u64::from(b'\\')));
    let control = chunk.wrapping_sub(ONES * 0x20) & !chunk;
    (quote | backslash | control) & HIGHS
}

struct Scan<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Whether whitespace between tokens held a CR or LF.
    line_breaks: bool,
}

impl Scan<'_> {
    fn error(&self, what: &str) -> RecordError {
        let what = if self.pos >= self.bytes.len() { "unexpected end of text" } else { what };
        RecordError::NotJson { at: self.pos, what: what.to_owned() }
    }

    fn rest_starts_with(&self, word: &[u8]) -> bool {
        self.bytes.get(self.pos..).is_some_and(|rest| rest.starts_with(word))
    }

    /// Skips whitespace. Compact JSON has none between its tokens, so one
    /// comparison (every whitespace byte is at most `b' '`) settles the
    /// common case inline.
    #[inline(always)]
    fn whitespace(&mut self) {
        if self.bytes.get(self.pos).is_some_and(|&byte| byte > b' ') {
            return;
        }
        self.more_whitespace();
    }

    #[inline(never)]
    fn more_whitespace(&mut self) {
        while let Some(&byte) = self.bytes.get(self.pos) {
            match byte {
                b' ' | b'\t' => {}
                b'\n' | b'\r' => self.line_breaks = true,
                _ => return,
            }
            self.pos += 1;
        }
    }

    /// The byte after whitespace, or the end-of-text error.
    #[inline(always)]
    fn next_byte(&mut self) -> Result<u8, RecordError> {
        self.whitespace();
        self.bytes.get(self.pos).copied().ok_or_else(|| self.error(""))
    }

    /// One value, any depth, without recursion.
    fn value(&mut self, text: &str) -> Result<(), RecordError> {
        // Open containers, the innermost at bit 0: set for an object,
        // clear for an array (a push shifts left, a pop right).
        let mut objects: u128 = 0;
        let mut depth: usize = 0;
        loop {
            // A value starts here (in an object, after its key and `:`).
            match self.next_byte()? {
                b'"' => self.string(text)?,
                container @ (b'{' | b'[') => {
                    self.pos += 1;
                    let close = if container == b'{' { b'}' } else { b']' };
                    if self.next_byte()? == close {
                        self.pos += 1;
                    } else {
                        if depth == MAX_DEPTH {
                            return Err(
                                self.error(&format!("nested deeper than {MAX_DEPTH} levels"))
                            );
                        }
                        depth += 1;
                        objects = objects << 1 | u128::from(container == b'{');
                        if container == b'{' {
                            self.key(text)?;
                        }
                        continue;
                    }
                }
                b't' if self.rest_starts_with(b"true") => self.pos += 4,
                b'f' if self.rest_starts_with(b"false") => self.pos += 5,
                b'n' if self.rest_starts_with(b"null") => self.pos += 4,
                b'-' | b'0'..=b'9' => self.number(text)?,
                _ => return Err(self.error("expected a value")),
            }
            // A value ended: close what it ends, or go on to the next one.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let in_object = objects & 1 != 0;
                match (self.next_byte()?, in_object) {
                    (b',', true) => {
                        self.pos += 1;
                        self.key(text)?;
                        break;
                    }
                    (b',', false) => {
                        self.pos += 1;
                        break;
                    }
                    (b'}', true) | (b']', false) => {
                        self.pos += 1;
                        depth -= 1;
                        objects >>= 1;
                    }
                    (_, true) => return Err(self.error("expected `,` or `}`")),
                    (_, false) => return Err(self.error("expected `,` or `]`")),
                }
            }
        }
    }

    /// A member's key and the `:` after it.
    #[inline(always)]
    fn key(&mut self, text: &str) -> Result<(), RecordError> {
        if self.next_byte()? != b'"' {
            return Err(self.error("expected a string key"));
        }
        self.string(text)?;
        if self.next_byte()? != b':' {
            return Err(self.error("expected `:`"));
        }
        self.pos += 1;
        Ok(())
    }

    /// A string, the cursor on its opening quote. Plain content is skipped
    /// eight bytes at a time; a string with an escape is decoded by
    /// serde_json, which refuses what it would refuse later (a lone
    /// surrogate).
    #[inline(always)]
    fn string(&mut self, text: &str) -> Result<(), RecordError> {
        let start = self.pos;
        let mut pos = self.pos + 1;
        let mut escaped = false;
        loop {
            while let Some(chunk) = self.bytes.get(pos..).and_then(<[u8]>::first_chunk::<8>) {
                match string_specials(u64::from_le_bytes(*chunk)) {
                    0 => pos += 8,
                    specials => {
                        pos += (specials.trailing_zeros() / 8) as usize;
                        break;
                    }
                }
            }
            match self.bytes.get(pos) {
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    // The escaped byte is never the closing quote; serde_json
                    // checks what it is.
                    pos += 2;
                }
                Some(0x00..=0x1f) => {
                    self.pos = pos;
                    return Err(self.error("control character in a string"));
                }
                Some(_) => pos += 1,
                None => {
                    self.pos = self.bytes.len();
                    return Err(self.error(""));
                }
            }
        }
        self.pos = pos + 1;
        if escaped {
            self.by_serde_json(text, start)?;
        }
        Ok(())
    }

    /// A number. An integer of up to 18 digits fits every reader; anything
    /// else (a fraction, an exponent, more digits) is parsed by serde_json,
    /// which refuses one that overflows.
    #[inline(always)]
    fn number(&mut self, text: &str) -> Result<(), RecordError> {
        let start = self.pos;
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        let digits_start = self.pos;
        match self.bytes.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while self.bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    self.pos += 1;
                }
            }
            _ => return Err(self.error("invalid number")),
        }
        let plain = self.pos - digits_start <= 18
            && !matches!(self.bytes.get(self.pos), Some(b'.' | b'e' | b'E'));
        if plain {
            return Ok(());
        }
        self.pos = start;
        self.by_serde_json(text, start)
    }

    /// Decodes the one value at `start` with serde_json and moves past it.
    #[cold]
    fn by_serde_json(&mut self, text: &str, start: usize) -> Result<(), RecordError> {
        let rest = text.get(start..).ok_or_else(|| self.error("not on a character boundary"))?;
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Decoded>();
        match values.next() {
            Some(Ok(Decoded)) => {
                self.pos = start + values.byte_offset();
                Ok(())
            }
            Some(Err(e)) => {
                // serde_json counts lines and columns; the offset within the
                // record is what helps here.
                let message = e.to_string();
                let what = message.split(" at line ").next().unwrap_or(&message).to_owned();
                Err(RecordError::NotJson { at: start, what })
            }
            None => Err(RecordError::NotJson { at: start, what: "expected a value".into() }),
        }
    }
}

/// A value serde_json decoded and threw away: its strings unescaped, its
/// numbers parsed, without building anything.
struct Decoded;

impl<'de> serde::Deserialize<'de> for Decoded {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DecodedVisitor)
    }
}

struct DecodedVisitor;

impl<'de> serde::de::Visitor<'de> for DecodedVisitor {
    type Value = Decoded;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Decoded, E> {
        Ok(Decoded)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Decoded, E> {
        Ok(Decoded)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Decoded, E> {
        Ok(Decoded)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Decoded, E> {
        Ok(Decoded)
    }

    fn visit_str<E>(self, _: &str) -> Result<Decoded, E> {
        Ok(Decoded)
    }

    fn visit_unit<E>(self) -> Result<Decoded, E> {
        Ok(Decoded)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<Decoded, A::Error> {
        while items.next_element::<Decoded>()?.is_some() {}
        Ok(Decoded)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut members: A) -> Result<Decoded, A::Error> {
        while members.next_entry::<Decoded, Decoded>()?.is_some() {}
        Ok(Decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<String, RecordError> {
        one_object(text.to_owned())
    }

    #[test]
    fn a_compact_object_passes_unchanged() {
        let record = r#"{"id":"cus_1","n":-12,"f":1.5e3,"ok":true,"none":null,"tags":["a","b"],"m":{},"e":[],"s":"é \"q\" \u00e9"}"#;
        assert_eq!(check(record).as_deref(), Ok(record));
    }

    #[test]
    fn a_pretty_printed_object_is_made_one_line() {
        let record =
            "{\n  \"id\": \"2\",\r\n  \"s\": \"a b\\n\\\"c\\\" \",\n  \"t\": [ 1, 2 ]\n}\n";
        assert_eq!(check(record).as_deref(), Ok(r#"{"id":"2","s":"a b\n\"c\" ","t":[1,2]}"#));
    }

    #[test]
    fn what_is_not_one_object_is_refused() {
        for (text, expected) in [
            ("{\"a\":\"x\ny\"}", "control character"),
            ("{\"id\":\"2\"}\n{\"id\":\"3\"}", "more than one JSON value"),
            (r#"{"id":"2"},{"id":"3"}"#, "more than one JSON value"),
            ("hello", "is not JSON"),
            (r#"[{"id":"2"}]"#, "JSON array"),
            ("42", "JSON number"),
            (r#""text""#, "JSON string"),
            ("null", "JSON null"),
            ("", "unexpected end"),
            (r#"{"id":"2""#, "unexpected end"),
            (r#"{"id":2,}"#, "expected a string key"),
            (r#"{"id" 2}"#, "expected `:`"),
            (r#"{"a":01}"#, "expected `,` or `}`"),
            (r#"{"a":-}"#, "invalid number"),
            (r#"{"a":tru}"#, "expected a value"),
            (r#"{"a":"\ud800"}"#, "hex escape"),
            (r#"{"a":"\udc00"}"#, "surrogate"),
            (r#"{"a":"\x"}"#, "escape"),
            (r#"{"a":1e400}"#, "out of range"),
            (r#"{"a":123456789012345678901234567890e300}"#, "out of range"),
        ] {
            match check(text) {
                Ok(record) => panic!("{text:?} was accepted as {record:?}"),
                Err(e) => assert!(
                    e.to_string().contains(expected),
                    "{text:?}: {e} does not say {expected:?}"
                ),
            }
        }
    }

    #[test]
    fn nesting_stops_below_what_serde_json_reads_inside_a_page() {
        let nested = |depth: usize| format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        assert!(check(&nested(MAX_DEPTH)).is_ok());
        assert!(check(&nested(MAX_DEPTH + 1)).is_err());
        let page = format!("[{}]", nested(MAX_DEPTH));
        assert!(serde_json::from_str::<serde_json::Value>(&page).is_ok());
    }

    /// Every accepted record decodes with serde_json (alone and inside a
    /// page array), and every refused one does not decode as one object:
    /// checked on records mutated byte by byte from a varied seed.
    #[test]
    fn accepts_exactly_what_serde_json_decodes_as_one_object() {
        use rand::{Rng as _, SeedableRng as _};
        let seeds = [
            r#"{"id":"cus_1","name":"Zoë \"Z\" \u00e9\ud83d\ude00","n":-0.5e-3,"big":12345678901234567890,"t":true,"f":false,"z":null,"a":[1,[2,{"b":[]}]],"o":{"p":{}}}"#,
            "{\n \"id\" : \"x\" ,\t\"v\":[ 1 , 2 ] }",
        ];
        let alphabet: &[u8] = b"{}[]\":,\\ \n\t-+.eE0123456789abcdefnrtu/x\x01";
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let mut accepted = 0;
        for round in 0..20_000 {
            let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[at] = alphabet[rng.random_range(0..alphabet.len())],
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                }
            }
            let Ok(text) = String::from_utf8(bytes) else { continue };
            let decoded = serde_json::from_str::<serde_json::Value>(&text);
            match check(&text) {
                Ok(record) => {
                    accepted += 1;
                    assert!(
                        !record.contains('\n') && !record.contains('\r'),
                        "{text:?} -> {record:?}"
                    );
                    assert_eq!(
                        serde_json::from_str::<serde_json::Value>(&record).ok(),
                        decoded.as_ref().ok().cloned(),
                        "{text:?}"
                    );
                    assert!(
                        decoded.as_ref().is_ok_and(serde_json::Value::is_object),
                        "{text:?} accepted but serde_json says {decoded:?}"
                    );
                    let page: Vec<serde_json::Value> =
                        serde_json::from_str(&format!("[{record},{record}]")).unwrap_or_default();
                    assert_eq!(page.len(), 2, "{text:?}");
                }
                Err(e) => assert!(
                    !decoded.as_ref().is_ok_and(serde_json::Value::is_object),
                    "{text:?} refused ({e}) but serde_json decodes it"
                ),
            }
        }
        assert!(accepted > 1000, "the mutations should leave many records valid: {accepted}");
    }
}
