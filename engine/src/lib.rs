//! weft: a workflow engine for SaaS customer and user lifecycle automation.
//! Workflows are TOML; vendor connectors are sandboxed WebAssembly components
//! that implement `weft:connector`; the host owns HTTP, credentials, limits,
//! retries and durable run state.
#![deny(missing_docs)]

pub mod builtin;
pub mod conformance;
pub mod connector;
pub mod credentials;
pub mod emulators;
pub mod endpoint;
pub mod executor;
pub mod expr;
pub mod http;
pub mod limiter;
pub mod metrics;
pub mod plugin_fixtures;
pub mod plugin_trust;
pub mod runtime;
pub mod serve;
pub mod store;
pub mod workflow;
