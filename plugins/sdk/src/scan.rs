//! A validating JSON scanner that finds where values start and end without
//! building them: what [`page`](crate::page) uses to cut a list body into
//! raw records.
//!
//! # Why not serde_json
//!
//! serde_json checks the same grammar (skipping a value with `IgnoredAny`
//! or borrowing a `RawValue` validates it), but its recursive, generic
//! skipping costs about 24 wasm instructions a byte on a Stripe page, and
//! wasmtime adds an epoch check to every loop iteration and function entry
//! of it. This scanner is one loop with an explicit stack, skips string
//! contents eight bytes at a time, and runs at about a third of that.
//!
//! It accepts exactly what serde_json accepts when it skips a value: RFC
//! 8259 JSON nested to any depth (serde_json's skipping has no recursion
//! limit, and neither does this loop), `\u` escapes checked for four hex
//! digits but not for surrogate pairing (serde_json does not pair them when
//! it skips either). Input is a `&str`, so UTF-8 is already checked.

/// Levels of nesting whose container kinds live in words on the stack;
/// deeper ones (no vendor nests so deep) spill into a vector.
const INLINE_DEPTH: usize = 128;

/// Why the text is not JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanError {
    /// Byte offset where the problem is.
    pub(crate) at: usize,
    /// What was wrong.
    pub(crate) what: &'static str,
    /// The text ended in the middle of a value (a body cut short).
    pub(crate) eof: bool,
}

impl core::fmt::Display for ScanError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

pub(crate) type ScanResult<T> = Result<T, ScanError>;

/// The word at `index` of the spilled levels, added when the nesting
/// first reaches it (it grows one level at a time).
#[inline(never)]
fn spill(deeper: &mut Vec<u64>, index: usize) -> &mut u64 {
    if deeper.len() <= index {
        deeper.resize(index + 1, 0);
    }
    &mut deeper[index]
}

/// A cursor over JSON text.
pub(crate) struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of every byte of `chunk` (little-endian) that is `"`, `\`
/// or a control character: the bytes that end a plain run of a string. The
/// lowest bit set marks the first such byte exactly (the borrows that can
/// set a higher bit start only at a real match), so `trailing_zeros / 8`
/// is its offset.
#[inline(always)]
fn string_specials(chunk: u64) -> u64 {
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v;
    let quote = zero_byte(chunk ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(chunk ^ (ONES * u64::from(b'\\')));
    let control = chunk.wrapping_sub(ONES * 0x20) & !chunk;
    (quote | backslash | control) & HIGHS
}

/// How many bytes from `pos` are plain string content, up to 8; 0 also when
/// fewer than 8 bytes are left (the byte-wise loop handles the tail).
#[inline(always)]
fn plain_run(bytes: &[u8], pos: usize) -> usize {
    match bytes.get(pos..).and_then(<[u8]>::first_chunk::<8>) {
        Some(chunk) => match string_specials(u64::from_le_bytes(*chunk)) {
            0 => 8,
            specials => (specials.trailing_zeros() / 8) as usize,
        },
        None => 0,
    }
}

/// Skips plain string content from `pos` eight bytes at a time; returns the
/// position of the first byte that ends the run (or of the last few bytes).
#[inline(always)]
fn long_run(bytes: &[u8], mut pos: usize) -> usize {
    loop {
        let run = plain_run(bytes, pos);
        pos += run;
        if run < 8 {
            return pos;
        }
    }
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Scanner { text, bytes: text.as_bytes(), pos: 0 }
    }

    fn error(&self, what: &'static str) -> ScanError {
        ScanError { at: self.pos, what, eof: self.pos >= self.bytes.len() }
    }

    /// An error at `part`, a slice of the text (a key the caller judged).
    pub(crate) fn error_in(&self, part: &str, what: &'static str) -> ScanError {
        let at = (part.as_ptr() as usize).saturating_sub(self.text.as_ptr() as usize);
        ScanError { at: at.min(self.bytes.len()), what, eof: false }
    }

    fn error_at(&mut self, pos: usize, what: &'static str) -> ScanError {
        self.pos = pos;
        self.error(what)
    }

    /// The byte at the cursor, or an end-of-input error.
    #[inline(always)]
    fn peek(&self) -> ScanResult<u8> {
        match self.bytes.get(self.pos) {
            Some(b) => Ok(*b),
            None => Err(self.error("unexpected end of input")),
        }
    }

    /// Skips whitespace. Compact JSON has none, so the test of the first
    /// byte stays inline and the loop (with the epoch check wasmtime puts
    /// in every loop) is entered only when there is some.
    #[inline(always)]
    pub(crate) fn skip_whitespace(&mut self) {
        // Every whitespace byte is at most `b' '`: one comparison settles
        // the common case.
        if let Some(&byte) = self.bytes.get(self.pos)
            && byte <= b' '
        {
            self.skip_more_whitespace();
        }
    }

    #[inline(never)]
    fn skip_more_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// Consumes `byte` (after whitespace) or fails with `what`.
    #[inline(always)]
    fn expect(&mut self, byte: u8, what: &'static str) -> ScanResult<()> {
        self.skip_whitespace();
        if self.peek()? == byte {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    /// Whether the rest is only whitespace.
    pub(crate) fn at_end(&mut self) -> bool {
        self.skip_whitespace();
        self.pos == self.bytes.len()
    }

    /// Fails unless the rest is only whitespace.
    pub(crate) fn end(&mut self) -> ScanResult<()> {
        if self.at_end() { Ok(()) } else { Err(self.error("trailing characters")) }
    }

    /// Skips one value and returns its text.
    pub(crate) fn value(&mut self) -> ScanResult<&'a str> {
        self.skip_whitespace();
        let start = self.pos;
        self.skip_value()?;
        Ok(&self.text[start..self.pos])
    }

    /// If the next value is `null`, consumes it.
    pub(crate) fn null(&mut self) -> bool {
        self.skip_whitespace();
        if self.bytes[self.pos..].starts_with(b"null") {
            self.pos += 4;
            true
        } else {
            false
        }
    }

    /// Calls `field` for each member of the object at the cursor, with the
    /// key's raw text (between the quotes, escapes untouched); `field` must
    /// consume the member's value.
    pub(crate) fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, &'a str) -> ScanResult<()>,
    ) -> ScanResult<()> {
        self.expect(b'{', "expected an object")?;
        self.skip_whitespace();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_whitespace();
            if self.peek()? != b'"' {
                return Err(self.error("expected a string key"));
            }
            let start = self.pos + 1;
            self.string()?;
            let key = &self.text[start..self.pos - 1];
            self.expect(b':', "expected `:`")?;
            field(self, key)?;
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected `,` or `}`")),
            }
        }
    }

    /// The text of each element of the array at the cursor.
    pub(crate) fn array(&mut self) -> ScanResult<Vec<&'a str>> {
        self.expect(b'[', "expected an array")?;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek()? == b']' {
            self.pos += 1;
            return Ok(items);
        }
        loop {
            items.push(self.value()?);
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Ok(items);
                }
                _ => return Err(self.error("expected `,` or `]`")),
            }
        }
    }

    /// Skips one value, of any depth, without recursion.
    fn skip_value(&mut self) -> ScanResult<()> {
        // The open containers, innermost at bit `depth - 1`: set for an
        // object, clear for an array. Two words for INLINE_DEPTH levels (no
        // u128: wasm has no 128-bit shifts, each would be a libcall).
        let mut objects = [0u64; INLINE_DEPTH / 64];
        let mut deeper: Vec<u64> = Vec::new();
        let mut depth: usize = 0;
        loop {
            // A value starts here.
            self.skip_whitespace();
            match self.peek()? {
                b'"' => self.string()?,
                open @ (b'{' | b'[') => {
                    self.pos += 1;
                    self.skip_whitespace();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek()? == close {
                        self.pos += 1;
                    } else {
                        let (word, bit) = (depth / 64, 1u64 << (depth % 64));
                        let slot = match objects.get_mut(word) {
                            Some(slot) => slot,
                            None => spill(&mut deeper, word - objects.len()),
                        };
                        depth += 1;
                        if open == b'{' {
                            *slot |= bit;
                            self.key()?;
                        } else {
                            *slot &= !bit;
                        }
                        continue;
                    }
                }
                b't' => self.literal(*b"true\0")?,
                b'f' => self.literal(*b"false")?,
                b'n' => self.literal(*b"null\0")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return Err(self.error("expected a value")),
            }
            // A value ended: close what it ends, or go on to the next one.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let word = match objects.get((depth - 1) / 64) {
                    Some(word) => *word,
                    None => deeper.get((depth - 1) / 64 - objects.len()).copied().unwrap_or(0),
                };
                let in_object = word & (1u64 << ((depth - 1) % 64)) != 0;
                self.skip_whitespace();
                match (self.peek()?, in_object) {
                    (b',', true) => {
                        self.pos += 1;
                        self.key()?;
                        break;
                    }
                    (b',', false) => {
                        self.pos += 1;
                        break;
                    }
                    (b'}', true) | (b']', false) => {
                        self.pos += 1;
                        depth -= 1;
                    }
                    (_, true) => return Err(self.error("expected `,` or `}`")),
                    (_, false) => return Err(self.error("expected `,` or `]`")),
                }
            }
        }
    }

    /// A member's key and the `:` after it.
    #[inline(always)]
    fn key(&mut self) -> ScanResult<()> {
        self.skip_whitespace();
        if self.peek()? != b'"' {
            return Err(self.error("expected a string key"));
        }
        self.string()?;
        self.expect(b':', "expected `:`")
    }

    /// Skips a string, the cursor on its opening quote.
    ///
    /// Most strings of a vendor's record (keys, ids, emails) end within 16
    /// bytes: two eight-byte checks find the closing quote before any loop
    /// (and its epoch check) is entered.
    #[inline(always)]
    fn string(&mut self) -> ScanResult<()> {
        let bytes = self.bytes;
        let mut pos = self.pos + 1;
        let run = plain_run(bytes, pos);
        pos += run;
        if run == 8 {
            let run = plain_run(bytes, pos);
            pos += run;
            if run == 8 {
                pos = long_run(bytes, pos);
            }
        }
        if bytes.get(pos) == Some(&b'"') {
            self.pos = pos + 1;
            return Ok(());
        }
        self.string_from(pos)
    }

    /// The rest of a string from `pos`: escapes, the last few bytes of the
    /// text, errors.
    #[inline(never)]
    fn string_from(&mut self, mut pos: usize) -> ScanResult<()> {
        let bytes = self.bytes;
        loop {
            pos = long_run(bytes, pos);
            let Some(&byte) = bytes.get(pos) else {
                return Err(self.error_at(pos, "unexpected end of input"));
            };
            match byte {
                b'"' => {
                    self.pos = pos + 1;
                    return Ok(());
                }
                b'\\' => match bytes.get(pos + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => pos += 2,
                    Some(b'u') => match bytes.get(pos + 2..pos + 6) {
                        Some(hex) if hex.iter().all(u8::is_ascii_hexdigit) => pos += 6,
                        _ => {
                            // Name the first byte that is not a hex digit;
                            // at the end of the text, that is the end.
                            let bad = bytes[pos + 2..]
                                .iter()
                                .take(4)
                                .take_while(|b| b.is_ascii_hexdigit())
                                .count();
                            return Err(self.error_at(pos + 2 + bad, "invalid \\u escape"));
                        }
                    },
                    Some(_) => return Err(self.error_at(pos + 1, "invalid escape")),
                    None => return Err(self.error_at(pos + 1, "unexpected end of input")),
                },
                0x00..=0x1f => return Err(self.error_at(pos, "control character in a string")),
                _ => pos += 1,
            }
        }
    }

    /// `true`, `false` or `null`, spelt in `word` (padded with a NUL to five
    /// bytes, so the comparison is one five-byte pattern).
    #[inline(always)]
    fn literal(&mut self, word: [u8; 5]) -> ScanResult<()> {
        let len = if word[4] == 0 { 4 } else { 5 };
        let rest = &self.bytes[self.pos..];
        if rest.len() >= len && rest[..len] == word[..len] {
            self.pos += len;
            Ok(())
        } else if rest.len() < len && word[..rest.len()] == *rest {
            // A prefix of the word at the end: the text was cut short.
            self.pos = self.bytes.len();
            Err(self.error("unexpected end of input"))
        } else {
            Err(self.error("expected a value"))
        }
    }

    #[inline(always)]
    fn number(&mut self) -> ScanResult<()> {
        if self.peek()? == b'-' {
            self.pos += 1;
        }
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return Err(self.error("invalid number")),
        }
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if !self.peek()?.is_ascii_digit() {
                return Err(self.error("invalid number"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
            if let b'+' | b'-' = self.peek()? {
                self.pos += 1;
            }
            if !self.peek()?.is_ascii_digit() {
                return Err(self.error("invalid number"));
            }
            self.digits();
        }
        Ok(())
    }

    #[inline(always)]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_json says about `text` as one value, skipped.
    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    }

    fn scan_accepts(text: &str) -> bool {
        let mut scanner = Scanner::new(text);
        scanner.value().is_ok() && scanner.end().is_ok()
    }

    #[test]
    fn the_first_string_special_is_found_in_any_lane() {
        for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
            for lane in 0..8 {
                let mut word = *b"abcdefgh";
                word[lane] = special;
                let specials = string_specials(u64::from_le_bytes(word));
                assert_eq!(
                    specials.trailing_zeros() / 8,
                    lane as u32,
                    "{special:#x} in lane {lane}"
                );
            }
        }
        for plain in [*b"abcdefgh", *b" !#[]{}~", [0x20, 0x7f, 0x80, 0xff, 0xc3, 0xa9, b'/', b'A']]
        {
            assert_eq!(string_specials(u64::from_le_bytes(plain)), 0, "{plain:?}");
        }
    }

    #[test]
    fn agrees_with_serde_json_on_valid_and_broken_text() {
        let cases = [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "12",
            "-12.5e+3",
            "1E9",
            "0.5",
            "\"\"",
            "\"a\\\"b\\\\c\\/\\b\\f\\n\\r\\t\\u00e9\\uD83D\"",
            "[]",
            "{}",
            " [ 1 , {\"a\" : [ ] } , \"x\" ] ",
            "{\"a\":{\"b\":{\"c\":[null,true,false]}}}",
            "\"é ünïcödé 😀 and more than eight bytes of it\"",
            "[\"aaaaaaaaaaaaaaaa\\\"aaaaaaaa\"]",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "1e+",
            "+1",
            "tru",
            "nul",
            "falsey",
            "[1,]",
            "[,1]",
            "{\"a\"}",
            "{\"a\":}",
            "{a:1}",
            "{\"a\":1,}",
            "[1 2]",
            "{\"a\":1 \"b\":2}",
            "\"\\x\"",
            "\"\\u12g4\"",
            "\"tab\there\"",
            "\"",
            "[",
            "{\"a\":[1,2}",
            "[1,2]]",
            "[\"unterminated]",
            "",
            " ",
            "nan",
            "[1]x",
        ];
        for text in cases {
            assert_eq!(scan_accepts(text), serde_accepts(text), "{text:?}");
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(scan_accepts(&deep(128)), serde_accepts(&deep(128)));
        assert_eq!(scan_accepts(&deep(129)), serde_accepts(&deep(129)));
        // Found by the `list_body` fuzz target: past 128 levels the scanner
        // refused what serde_json's skipping accepts.
        for n in [130, 200, 1000] {
            assert!(serde_accepts(&deep(n)), "{n}");
            assert!(scan_accepts(&deep(n)), "{n}");
            let mixed = format!("{}1{}", r#"{"a":["#.repeat(n), "]}".repeat(n));
            assert!(scan_accepts(&mixed) && serde_accepts(&mixed), "{n}");
            let broken = format!("{}1{}]", r#"{"a":["#.repeat(n), "]}".repeat(n));
            assert!(!scan_accepts(&broken) && !serde_accepts(&broken), "{n}");
        }
    }

    #[test]
    fn agrees_with_serde_json_on_every_cut_and_one_byte_change_of_a_record() {
        let record = r#"{"id":"cus_Q1x\"9","object":"customer","address":{"city":"Zürich","line1":null},"balance":-1250,"created":1700000000,"delinquent":false,"discount":null,"metadata":{"plan":"pro","seats":"12"},"tax":[1.5e-3,0,true],"name":"Jo \u00c9"}"#;
        for cut in 0..record.len() {
            if let Some(prefix) = record.get(..cut) {
                assert_eq!(scan_accepts(prefix), serde_accepts(prefix), "cut at {cut}: {prefix:?}");
                let mut scanner = Scanner::new(prefix);
                if let Err(e) = scanner.value() {
                    assert!(e.eof, "a cut is an early end, not a syntax error: {prefix:?} {e}");
                }
            }
        }
        let bytes = record.as_bytes();
        for at in 0..bytes.len() {
            for replacement in
                [b'"', b'\\', b',', b'}', b']', b'0', b'x', b' ', b'-', b'.', b'e', 0x01]
            {
                let mut changed = bytes.to_vec();
                changed[at] = replacement;
                if let Ok(text) = core::str::from_utf8(&changed) {
                    assert_eq!(scan_accepts(text), serde_accepts(text), "{text}");
                }
            }
        }
    }

    /// A random JSON value with random whitespace, from a small xorshift.
    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn random_value(seed: &mut u64, depth: u32, out: &mut String) {
        let next = |seed: &mut u64| xorshift(seed);
        let ws = [" ", "", "", "\n\t", "\r\n "];
        let pick = next(seed) % if depth > 4 { 6 } else { 8 };
        out.push_str(ws[(next(seed) % 5) as usize]);
        match pick {
            0 => out.push_str("null"),
            1 => out.push_str(if next(seed) % 2 == 0 { "true" } else { "false" }),
            2 => out.push_str(
                ["0", "-1", "12.5", "3e10", "-0.0E-2", "123456789012345678901234567890"]
                    [(next(seed) % 6) as usize],
            ),
            3..=5 => {
                let parts =
                    ["a", "é", "\\\"", "\\u00e9", "\\n", "0123456789abcdef", "😀", "\\/", " "];
                out.push('"');
                for _ in 0..next(seed) % 12 {
                    out.push_str(parts[(next(seed) % parts.len() as u64) as usize]);
                }
                out.push('"');
            }
            6 => {
                out.push('[');
                for i in 0..next(seed) % 4 {
                    if i > 0 {
                        out.push(',');
                    }
                    random_value(seed, depth + 1, out);
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                for i in 0..next(seed) % 4 {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&format!("\"k{i}\":"));
                    random_value(seed, depth + 1, out);
                }
                out.push('}');
            }
        }
        out.push_str(ws[(next(seed) % 5) as usize]);
    }

    #[test]
    fn random_documents_and_their_mutations_are_judged_as_serde_json_judges_them() {
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..1000 {
            let mut text = String::new();
            random_value(&mut seed, 0, &mut text);
            assert!(scan_accepts(&text), "{text:?}");
            // Elements of an array are cut where serde_json's RawValue cuts them.
            let array = format!("[{text},{text}]");
            let raw: Vec<&serde_json::value::RawValue> =
                serde_json::from_str(&array).expect("valid");
            let mut scanner = Scanner::new(&array);
            let cut = scanner.array().expect("valid");
            let trimmed: Vec<&str> = raw.iter().map(|r| r.get().trim()).collect();
            assert_eq!(cut.iter().map(|c| c.trim()).collect::<Vec<_>>(), trimmed);
            // Every deletion and a few insertions of one byte.
            let bytes = text.as_bytes();
            for at in 0..bytes.len() {
                let mut deleted = bytes.to_vec();
                deleted.remove(at);
                for inserted in [None, Some(b'"'), Some(b','), Some(b'}'), Some(b'\\')] {
                    let mut changed = deleted.clone();
                    if let Some(byte) = inserted {
                        changed.insert(at, byte);
                    }
                    if let Ok(changed) = core::str::from_utf8(&changed) {
                        assert_eq!(scan_accepts(changed), serde_accepts(changed), "{changed:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn values_and_members_are_sliced_exactly() -> Result<(), ScanError> {
        let text = r#" {"data" : [ {"id":1} , [2] ,"3" ], "has_more":true , "a\"b":null } "#;
        let mut scanner = Scanner::new(text);
        let mut seen = Vec::new();
        scanner.object(|scanner, key| {
            if key == "data" {
                seen.push((key, scanner.array()?.join("|")));
            } else {
                seen.push((key, scanner.value()?.to_owned()));
            }
            Ok(())
        })?;
        scanner.end()?;
        assert_eq!(
            seen,
            [
                ("data", r#"{"id":1}|[2]|"3""#.to_owned()),
                ("has_more", "true".to_owned()),
                (r#"a\"b"#, "null".to_owned())
            ]
        );
        Ok(())
    }
}
