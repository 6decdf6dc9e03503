//! Prism as a validating proxy: found where CI installs it, started on a
//! free loopback port, waited for with a deadline, and killed when dropped.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::super::support::TestResult;

/// How long Prism may take to load a spec and listen. It takes about two
/// seconds on a 2-core machine; a debug build of everything else in
/// parallel can slow it down a lot.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Where Prism is: `WEFT_PRISM` when set, else what `npm ci` installs at
/// the repository root.
pub fn location() -> PathBuf {
    match std::env::var_os("WEFT_PRISM") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("node_modules/.bin/prism"),
    }
}

/// Prism's path, `None` when it is not installed and this is not CI (the
/// caller skips, saying why). On CI a missing Prism is a failure: the
/// contract checks must never pass by not running.
pub fn find() -> TestResult<Option<PathBuf>> {
    let path = location();
    if path.is_file() {
        return Ok(Some(path));
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        return Err(format!(
            "prism is not installed at {} and CI=true: `.ci/run` must run `npm ci` at the repository root \
             (package.json pins @stoplight/prism-cli)",
            path.display()
        )
        .into());
    }
    eprintln!(
        "skipping the Prism contract checks: prism is not installed at {} (run `npm ci` at the repository root, \
         or set WEFT_PRISM)",
        path.display()
    );
    Ok(None)
}

/// A running `prism proxy`; dropping it kills the process.
#[derive(Debug)]
pub struct Prism {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prism {
    /// Starts `prism proxy spec upstream --errors` on a free loopback port
    /// and waits until it accepts connections.
    pub fn start(prism: &Path, spec: &Path, upstream: &str) -> TestResult<Prism> {
        if !spec.is_file() {
            return Err(format!(
                "the vendor spec {} is missing (../shared/vendor-apis beside the repository)",
                spec.display()
            )
            .into());
        }
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("prism.log");
        let output = File::create(&log)?;
        let port = free_port()?;
        let child = Command::new(prism)
            .arg("proxy")
            .arg(spec)
            .arg(upstream)
            .arg("--errors")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .env("SCARF_ANALYTICS", "false")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", prism.display()))?;
        // From here on, Drop kills it whatever happens.
        let mut prism = Prism { child, port, log, _dir: dir };
        prism.wait_until_ready(spec)?;
        Ok(prism)
    }

    /// `http://127.0.0.1:port`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The end of Prism's own log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn wait_until_ready(&mut self, spec: &Path) -> TestResult {
        let started = Instant::now();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!(
                    "prism exited ({status}) before listening for {}:\n{}",
                    spec.display(),
                    self.log_tail()
                )
                .into());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "prism did not listen on {addr} within {READY_TIMEOUT:?} for {}:\n{}",
                    spec.display(),
                    self.log_tail()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Prism {
    fn drop(&mut self) {
        // Only the process this guard started, by its own handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now. Prism binds it a moment later; a
/// clash is possible but would show as "prism exited".
fn free_port() -> TestResult<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
