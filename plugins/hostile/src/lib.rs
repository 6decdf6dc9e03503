//! A connector that misbehaves on purpose, for the engine's sandbox tests.
//! Never ship it.
//!
//! The resource named in a `list` call selects the misbehaviour:
//!
//! | resource         | what `list` does                                         | the host should |
//! | ---------------- | -------------------------------------------------------- | --------------- |
//! | `ok`             | returns `{"id":"1"}`, `{"id":"2"}` without any HTTP      | pass them on    |
//! | `spin`           | loops forever                                            | interrupt it (epoch/fuel, deadline) |
//! | `alloc`          | allocates and writes 1 GiB                               | trap at the memory cap |
//! | `recurse`        | recurses without bound                                   | trap on stack overflow |
//! | `forbidden-host` | GETs `http://203.0.113.7/` and returns the error it got  | deny it before sending |
//! | `huge`           | GETs `{base_url}/huge`, returns the body length          | refuse it as too large |
//! | `snoop`          | reads env, args, `/etc/passwd`, `/`, connects a socket   | let it see nothing |
//! | `echo-context`   | returns the context it received                         | never include a credential |
//! | `http`           | GETs `{base_url}/v1/customers?limit=3`, returns status and headers | keep the credential out of them |
//! | `calls`          | returns how many `list` calls this instance has served   | count 1 on a fresh instance, more only within one connection |
//! | `residue`        | counts the non-zero bytes of `BALLAST`, then fills it with `0xA5` | give every fresh instance a zeroed one, whatever the slot held before |
//! | `stderr-flood`   | writes 100 KiB of lines to stderr with `eprintln!`, returns `{"id":"1"}` | accept it all (tracing at debug); the call succeeds |
//! | `print`          | prints `hello from the guest's stdout` on stdout, returns `{"id":"1"}` | pass the line to tracing at debug |
//! | `traceback`      | writes 20 KiB of filler to stderr, then a Python-like traceback, then panics | trap, keeping the tail of stderr: the traceback, not the filler |
//!
//! Every instance also starts with `BALLAST` (10 MiB of zeroed static
//! memory), as a Python or JavaScript runtime starts with 9-12 MiB: warm
//! reuse must judge growth over the starting size, not size from zero.
//!
//! Misbehaviour through `http.send` (headers, request volume, echoed
//! credentials) lives in `http_abuse`, with its own table. The resources
//! of `boundary` misbehave in what they hand back (records, reply sizes),
//! the CPU they spend, their log lines and their imports.
//!
//! Every other operation keeps the SDK's default (`unsupported`).

mod boundary;
mod http_abuse;

use std::hint::black_box;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use serde_json::{Value, json};
use weft_connector_sdk::{
    AuthScheme, BatchItem, Connector, Context, Error, ListRequest, Manifest, Op, Page,
    ResourceSpec, Result, UpsertOutcome, UpsertRequest, http,
};

/// The misbehaving connector.
#[derive(Debug)]
pub struct Hostile;

weft_connector_sdk::export!(Hostile);

/// The resources, one per misbehaviour.
const RESOURCES: &[(&str, &str)] = &[
    ("ok", "Two records, no HTTP: the control case."),
    ("spin", "An endless loop."),
    ("alloc", "Allocates and writes 1 GiB."),
    ("recurse", "Unbounded recursion."),
    ("forbidden-host", "An HTTP GET to a host the connection does not allow."),
    ("huge", "An HTTP GET to {base_url}/huge, which should exceed the size cap."),
    ("snoop", "Looks for environment, arguments, files and sockets."),
    ("echo-context", "Returns the context it was given."),
    ("http", "Returns the status and headers of GET {base_url}/v1/customers?limit=3."),
    ("calls", "How many list calls this instance has served, itself included."),
    ("residue", "Counts what earlier calls left in the ballast, then leaves its own."),
    ("stderr-flood", "Writes 100 KiB to stderr, then returns one record."),
    ("print", "Prints a line on stdout, then returns one record."),
    ("traceback", "Writes filler and a traceback to stderr, then panics."),
];

/// Zeroed static memory every instance starts with (in `.bss`: it makes
/// the initial linear memory larger, not the component).
static BALLAST: [AtomicU8; 10 << 20] = [const { AtomicU8::new(0) }; 10 << 20];

/// `list` calls this instance has served: what a warm instance remembers.
static CALLS: AtomicU32 = AtomicU32::new(0);

/// A host the sandbox tests never allow (TEST-NET-3, RFC 5737).
const FORBIDDEN_URL: &str = "http://203.0.113.7/";

impl Connector for Hostile {
    fn describe() -> Manifest {
        Manifest {
            name: "hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            vendor: "weft tests".into(),
            description: "Misbehaves on purpose so the sandbox can be tested. Never ship it."
                .into(),
            default_base_url: "http://127.0.0.1:9".into(),
            extra_hosts: Vec::new(),
            auth: AuthScheme::Bearer,
            resources: RESOURCES
                .iter()
                .chain(http_abuse::RESOURCES)
                .map(|(name, description)| ResourceSpec {
                    name: (*name).into(),
                    description: (*description).into(),
                    ops: vec![Op::List],
                    irreversible: Vec::new(),
                    max_page_size: 100,
                    default_page_size: 100,
                    id_field: "id".into(),
                })
                .chain(boundary::resources())
                .collect(),
            rate_limits: http_abuse::published_rate_limits(),
            settings: Vec::new(),
        }
    }

    fn list(ctx: &Context, request: ListRequest) -> Result<Page> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        let records = match request.resource.as_str() {
            "calls" => vec![json!({"calls": calls, "ballast": black_box(&BALLAST).len()})],
            "stderr-flood" => {
                for line in 0..2048 {
                    eprintln!("{line:>5} {}", "x".repeat(43));
                }
                vec![json!({"id": "1"})]
            }
            "print" => {
                println!("hello from the guest's stdout");
                vec![json!({"id": "1"})]
            }
            "traceback" => traceback(),
            "ok" => vec![json!({"id": "1"}), json!({"id": "2"})],
            "residue" => vec![json!({"left": residue()})],
            "spin" => spin(),
            "alloc" => vec![json!({"touched": alloc_gib()})],
            "recurse" => vec![json!({"depth": recurse(0)})],
            "forbidden-host" => {
                let response = http::get(FORBIDDEN_URL).send()?;
                // Reaching here means the host sent it: report what came back
                // as a failure so a test cannot mistake it for success.
                return Err(Error::fatal(format!(
                    "the host let a request to {FORBIDDEN_URL} through (HTTP {})",
                    response.status
                )));
            }
            "huge" => {
                let response = http::get(ctx.url("/huge")).send()?;
                vec![json!({"status": response.status, "len": response.body.len()})]
            }
            "snoop" => vec![snoop()],
            "echo-context" => vec![json!({
                "base_url": ctx.base_url,
                "settings": ctx
                    .settings
                    .iter()
                    .map(|(name, value)| (name.clone(), Value::String(value.clone())))
                    .collect::<serde_json::Map<_, _>>(),
            })],
            "http" => {
                let response = http::get(ctx.url("/v1/customers")).query("limit", 3).send()?;
                vec![json!({
                    "status": response.status,
                    "headers": response.headers,
                    "body_len": response.body.len(),
                })]
            }
            other if http_abuse::serves(other) => http_abuse::list(ctx, other)?,
            other if boundary::serves(other) => return boundary::list(ctx, &request),
            other => return Err(Error::not_found(format!("hostile: no resource `{other}`"))),
        };
        Ok(Page::last(records.iter().map(Value::to_string).collect()))
    }

    fn get(_ctx: &Context, resource: &str, id: &str) -> Result<Option<String>> {
        boundary::get(resource, id)
    }

    fn upsert(_ctx: &Context, request: UpsertRequest) -> Result<UpsertOutcome> {
        boundary::upsert(&request)
    }

    fn upsert_batch(
        _ctx: &Context,
        resource: &str,
        items: Vec<BatchItem>,
    ) -> Result<Vec<Result<UpsertOutcome>>> {
        boundary::upsert_batch(resource, &items)
    }
}

/// Writes 20 KiB of filler lines, then a traceback the way a Python guest
/// would, then panics (its message and the runtime's notes come last).
fn traceback() -> Vec<Value> {
    for line in 0..512 {
        eprintln!("filler {line:>4} {}", "-".repeat(28));
    }
    eprintln!("Traceback (most recent call last):");
    eprintln!("  File \"app.py\", line 12, in list");
    eprintln!("ValueError: the customer list came back as XML");
    panic!("uncaught exception in the guest");
}

/// Loops forever; `black_box` keeps the optimiser from proving the loop
/// does nothing and removing it.
fn spin() -> Vec<Value> {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Allocates 1 GiB and writes every byte, so the memory is really claimed
/// (fresh wasm pages are zero, so allocating alone might be lazy).
fn alloc_gib() -> usize {
    let mut bytes: Vec<u8> = Vec::with_capacity(1 << 30);
    bytes.resize(1 << 30, 0xA5);
    black_box(&mut bytes);
    bytes.iter().step_by(4096).filter(|byte| **byte == 0xA5).count()
}

/// Recurses until the stack runs out.
///
/// The result passes through `black_box` after each call, so the call is
/// never in tail position and LLVM cannot turn it into a loop (not even with
/// its accumulator rewrite). Frames stay small, so wasmtime's call-stack
/// limit is reached long before the 1 MiB shadow stack in linear memory:
/// the trap reads as stack exhaustion, not as a stray memory access.
fn recurse(depth: u64) -> u64 {
    // An exit the optimiser cannot rule out; it is never taken.
    if black_box(depth) == u64::MAX {
        return depth;
    }
    black_box(recurse(depth + 1)).wrapping_add(1)
}

/// Tries every ambient authority a WASI program might have.
/// The bytes of `BALLAST` some earlier call left non-zero; then marks all
/// of it, for the next instance in this memory slot to find if the host
/// fails to reset it.
fn residue() -> usize {
    let left = BALLAST.iter().filter(|byte| byte.load(Ordering::Relaxed) != 0).count();
    for byte in &BALLAST {
        byte.store(0xA5, Ordering::Relaxed);
    }
    left
}

fn snoop() -> Value {
    let env: Vec<String> = std::env::vars().map(|(key, value)| format!("{key}={value}")).collect();
    let args: Vec<String> = std::env::args().collect();
    let file = match std::fs::read_to_string("/etc/passwd") {
        Ok(content) => format!("read {} bytes: {content}", content.len()),
        Err(e) => format!("error: {e}"),
    };
    let dir = match std::fs::read_dir("/") {
        Ok(entries) => format!(
            "listed: {:?}",
            entries
                .filter_map(|entry| entry.ok().map(|entry| entry.file_name()))
                .collect::<Vec<_>>()
        ),
        Err(e) => format!("error: {e}"),
    };
    let tcp = match std::net::TcpStream::connect("127.0.0.1:1") {
        Ok(stream) => format!("connected: {stream:?}"),
        Err(e) => format!("error: {e}"),
    };
    json!({"env": env, "args": args, "file": file, "dir": dir, "tcp": tcp})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(resource: &str) -> Result<Page> {
        let ctx = Context {
            base_url: "http://127.0.0.1:9".into(),
            settings: vec![("region".into(), "eu".into())],
        };
        Hostile::list(
            &ctx,
            ListRequest { resource: resource.into(), cursor: None, page_size: 10, filter: None },
        )
    }

    #[test]
    fn ok_returns_two_records() {
        assert_eq!(
            list("ok").map(|page| page.records),
            Ok(vec![r#"{"id":"1"}"#.to_string(), r#"{"id":"2"}"#.to_string()])
        );
    }

    #[test]
    fn echo_context_returns_base_url_and_settings() {
        assert_eq!(
            list("echo-context").map(|page| page.records),
            Ok(vec![r#"{"base_url":"http://127.0.0.1:9","settings":{"region":"eu"}}"#.to_string()])
        );
    }

    #[test]
    fn every_resource_is_listable() {
        let manifest = Hostile::describe();
        assert_eq!(
            manifest.resources.len(),
            RESOURCES.len() + http_abuse::RESOURCES.len() + boundary::RESOURCES.len()
        );
        assert!(manifest.resources.iter().all(|r| r.ops.contains(&Op::List)));
    }
}
