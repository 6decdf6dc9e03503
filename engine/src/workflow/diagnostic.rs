//! Errors located in a workflow file: file, line, column, and the source line
//! with a caret under the offending text, as rustc shows them.

use std::fmt;
use std::ops::Range;

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
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        let end = floor_char_boundary(text, span.end.clamp(start, line_end));
        let width = text[start..end].chars().count().max(1);
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

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gutter = self.line.to_string().len();
        writeln!(f, "error: {}", self.message)?;
        writeln!(f, "{:gutter$}--> {}:{}:{}", "", self.file, self.line, self.column)?;
        writeln!(f, "{:gutter$} |", "")?;
        writeln!(f, "{} | {}", self.line, self.source_line)?;
        let pad: String = self
            .source_line
            .chars()
            .take(self.column - 1)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
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

/// Where the text of a string value starts inside the file, given the span
/// of the TOML string (quotes included). Escapes in basic strings move text
/// around; then the value is searched for inside the span, and failing
/// that, the span itself is the answer.
pub(crate) fn string_content(text: &str, span: &Range<usize>, value: &str) -> Range<usize> {
    let raw = text.get(span.clone()).unwrap_or_default();
    for prefix in ["'''\r\n", "'''\n", "'''", "\"\"\"\r\n", "\"\"\"\n", "\"\"\"", "'", "\""] {
        if let Some(rest) = raw.strip_prefix(prefix)
            && rest.starts_with(value)
        {
            let start = span.start + prefix.len();
            return start..start + value.len();
        }
    }
    locate(text, span, value)
}

/// The first occurrence of `needle` inside `span` of `text`, or `span`.
pub(crate) fn locate(text: &str, span: &Range<usize>, needle: &str) -> Range<usize> {
    match text
        .get(span.clone())
        .and_then(|raw| if needle.is_empty() { None } else { raw.find(needle) })
    {
        Some(at) => span.start + at..span.start + at + needle.len(),
        None => span.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caret_sits_under_the_text() {
        let text = "a = 1\nbad = \"x\"\n";
        let d = Diagnostic::at("f.toml", text, 6..9, "no");
        assert_eq!((d.line, d.column, d.width), (2, 1, 3));
        let shown = d.to_string();
        assert!(shown.contains("f.toml:2:1"), "{shown}");
        assert!(shown.ends_with("| ^^^"), "{shown}");
    }

    #[test]
    fn string_content_skips_the_quotes() {
        let text = "when = '.a == 1'\n";
        let span = 7..16;
        assert_eq!(&text[string_content(text, &span, ".a == 1")], ".a == 1");
        let text = "when = \"\"\"\n.a\n\"\"\"";
        assert_eq!(&text[string_content(text, &(7..text.len()), ".a\n")], ".a\n");
    }

    #[test]
    fn spans_inside_multibyte_text_do_not_panic() {
        let text = "name = \"Zoë\"\n";
        let d = Diagnostic::at("f.toml", text, 10..11, "x");
        assert_eq!(d.line, 1);
    }
}
