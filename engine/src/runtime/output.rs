//! A guest's stdout and stderr: each line goes to tracing at debug (so
//! `print()` and `console.log` are seen with `--log weft=debug`), and the
//! last [`TAIL_BYTES`] of stderr are kept to explain a trap (a Python
//! traceback, a JS exception, a Rust panic message). Writes never fail and
//! never block: a chatty guest loses old output, never its call.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of a guest's stderr kept to explain a trap: the tail, where the
/// traceback and the error are.
pub(super) const TAIL_BYTES: usize = 8 << 10;

/// Longest line passed to tracing; a longer one is cut into pieces.
const LINE_BYTES: usize = 2000;

/// One of a guest's output streams (cheap to clone; clones share it).
#[derive(Clone)]
pub(super) struct GuestOutput {
    inner: Arc<Mutex<Captured>>,
}

struct Captured {
    plugin: Arc<str>,
    stream: &'static str,
    /// The last [`TAIL_BYTES`] written, when the stream keeps a tail.
    tail: Option<VecDeque<u8>>,
    /// The line being written, until its newline.
    line: Vec<u8>,
    /// Bytes written since the stream was made.
    written: u64,
}

impl std::fmt::Debug for GuestOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let captured = self.lock();
        f.debug_struct("GuestOutput")
            .field("plugin", &captured.plugin)
            .field("stream", &captured.stream)
            .field("written", &captured.written)
            .finish_non_exhaustive()
    }
}

impl GuestOutput {
    /// Stdout of `plugin`: lines to tracing, nothing kept.
    pub(super) fn stdout(plugin: Arc<str>) -> Self {
        Self::new(plugin, "stdout", None)
    }

    /// Stderr of `plugin`: lines to tracing, the tail kept.
    pub(super) fn stderr(plugin: Arc<str>) -> Self {
        Self::new(plugin, "stderr", Some(VecDeque::with_capacity(TAIL_BYTES)))
    }

    fn new(plugin: Arc<str>, stream: &'static str, tail: Option<VecDeque<u8>>) -> Self {
        GuestOutput {
            inner: Arc::new(Mutex::new(Captured {
                plugin,
                stream,
                tail,
                line: Vec::new(),
                written: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Captured> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes written so far.
    pub(super) fn written(&self) -> u64 {
        self.lock().written
    }

    /// The kept tail as text (invalid UTF-8 replaced), and how many bytes
    /// written before it are not kept.
    pub(super) fn tail(&self) -> (String, u64) {
        let captured = self.lock();
        let Some(tail) = &captured.tail else { return (String::new(), captured.written) };
        let (front, back) = tail.as_slices();
        let mut bytes = Vec::with_capacity(tail.len());
        bytes.extend_from_slice(front);
        bytes.extend_from_slice(back);
        let dropped = captured.written.saturating_sub(bytes.len() as u64);
        // The cut may fall inside a character: start at the next one.
        let start = if dropped > 0 {
            bytes.iter().position(|b| (*b as i8) >= -0x40).unwrap_or(0)
        } else {
            0
        };
        (String::from_utf8_lossy(&bytes[start..]).into_owned(), dropped + start as u64)
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut captured = self.lock();
        let captured = &mut *captured;
        captured.written = captured.written.saturating_add(bytes.len() as u64);
        if let Some(tail) = &mut captured.tail {
            let keep = &bytes[bytes.len().saturating_sub(TAIL_BYTES)..];
            let overflow = (tail.len() + keep.len()).saturating_sub(TAIL_BYTES);
            tail.drain(..overflow.min(tail.len()));
            tail.extend(keep);
        }
        if !tracing::enabled!(tracing::Level::DEBUG) {
            captured.line.clear();
            return;
        }
        for byte in bytes {
            if *byte == b'\n' {
                captured.emit_line();
            } else {
                captured.line.push(*byte);
                if captured.line.len() >= LINE_BYTES {
                    captured.emit_line();
                }
            }
        }
    }
}

impl Captured {
    fn emit_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line);
        let line = super::plugin_text(line.trim_end_matches('\r'));
        tracing::debug!(plugin = %self.plugin, stream = self.stream, "{line}");
        self.line.clear();
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready: what does not fit the tail pushes the oldest out.
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_of_stderr_is_kept_and_the_cut_counted() {
        let out = GuestOutput::stderr("p".into());
        for n in 0..2000 {
            out.write_bytes(format!("line {n}\n").as_bytes());
        }
        out.write_bytes(b"Traceback: ValueError: boom\n");
        let (tail, dropped) = out.tail();
        assert!(tail.len() <= TAIL_BYTES, "{}", tail.len());
        assert!(tail.ends_with("ValueError: boom\n"), "{tail}");
        assert!(tail.contains("line 1999\n") && !tail.contains("line 10\n"), "{tail}");
        assert_eq!(dropped + tail.len() as u64, out.written());
    }

    #[test]
    fn a_cut_inside_a_character_starts_at_the_next_one() {
        let out = GuestOutput::stderr("p".into());
        out.write_bytes("é".repeat(TAIL_BYTES).as_bytes());
        let (tail, dropped) = out.tail();
        assert!(!tail.contains('\u{fffd}'), "no replacement character at the cut");
        assert_eq!(dropped + tail.len() as u64, out.written());
    }

    #[test]
    fn stdout_keeps_nothing_but_counts() {
        let out = GuestOutput::stdout("p".into());
        out.write_bytes(b"hello\n");
        assert_eq!(out.tail(), (String::new(), 6));
    }
}
