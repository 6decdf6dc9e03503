//! Guest SDK for weft connectors: implement [`Connector`], call
//! [`export!`], and build the connector for `wasm32-wasip2`.
//!
//! A connector is a WebAssembly component that implements the
//! `weft:connector@0.2.0` world: the `weft:connector@0.1.0` world every host
//! serves, plus the optional `lookup` interface a dry run uses to plan an
//! upsert's match ([`Connector::lookup`]). This crate hides the generated
//! bindings and gives connector authors:
//!
//! - the [`Connector`] trait, where only [`Connector::describe`] is required
//!   and every other operation defaults to [`Error::Unsupported`];
//! - the [`export!`] macro, so a connector crate does not depend on
//!   `wit-bindgen` itself;
//! - the contract's types ([`Manifest`], [`Page`], [`UpsertOutcome`], ...),
//!   re-exported from the bindings with a few helper methods, and an
//!   idiomatic [`Error`] enum;
//! - one module per capability: [`http`] (the only way out of the sandbox),
//!   [`form`] and [`query`] encoding, [`error`] ([`Error`], and an HTTP
//!   status and vendor body mapped to it), [`page`] (cursors and raw record splitting), [`same`]
//!   (the one rule for "unchanged", shared with the engine) and [`log`];
//! - [`http::testing`], a native stand-in for the host's HTTP so a
//!   connector's flows run under `cargo test`.
//!
//! Records cross the boundary as JSON text ([`Json`]). The host never parses
//! a vendor's wire format; the connector should not either, beyond what it
//! needs: [`page::records_from`] cuts a vendor's list body into per-record
//! strings without building a `serde_json::Value` for each record.
//!
//! ```no_run
//! use weft_connector_sdk::{http, page, Connector, Context, ListRequest, Manifest, Page, Result};
//! # fn manifest() -> Manifest { unimplemented!() }
//!
//! struct Acme;
//!
//! impl Connector for Acme {
//!     fn describe() -> Manifest {
//!         manifest()
//!     }
//!
//!     fn list(ctx: &Context, request: ListRequest) -> Result<Page> {
//!         let response = http::get(ctx.url("/users"))
//!             .query("per_page", request.page_size)
//!             .send()?
//!             .error_for_status("acme")?;
//!         let records = page::records_from(&response.body, "users")?;
//!         Ok(Page { records, next_cursor: None })
//!     }
//! }
//!
//! weft_connector_sdk::export!(Acme);
//! ```

#![deny(missing_docs)]

mod connector;
pub mod error;
pub mod form;
pub mod http;
pub mod log;
pub mod page;
pub mod query;
pub mod same;
mod scan;
mod types;

pub use connector::Connector;
pub use error::{Error, Result};
pub use wit::weft::connector0_1_0::types::{
    AuthScheme, BatchItem, Context, Json, ListRequest, Manifest, MethodClass, Op, Page, RateLimit,
    RemoveOutcome, ResourceSpec, Setting, UpsertAction, UpsertOutcome, UpsertRequest,
};

/// Bindings generated from `wit/v0.2.0` (which includes `wit/v0.1.0`); not
/// part of the public API.
///
/// Connector authors use the re-exports at the crate root; [`export!`] is the
/// only thing that reaches in here, through `$crate::wit`.
// The generated canonical-ABI glue is full of `unsafe` and undocumented
// helpers, yet neither `unsafe_code` nor `missing_docs` fires on it: rustc
// does not report them in code a proc macro from another crate expands.
// Should that change, the `allow` belongs on this module and nowhere wider.
#[doc(hidden)]
pub mod wit {
    wit_bindgen::generate!({
        path: ["../../wit/v0.1.0", "../../wit/v0.2.0"],
        world: "weft:connector/connector@0.2.0",
        // Generate the 0.1.0 interfaces the 0.2.0 world includes, too.
        generate_all,
        // Lets `weft_connector_sdk::export!` expand the generated macro in the
        // connector's crate without that crate naming wit-bindgen.
        pub_export_macro: true,
        default_bindings_module: "weft_connector_sdk::wit",
        additional_derives: [Clone, PartialEq, Eq],
    });
}

/// Support for [`export!`]; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::connector::Adapter;
}

/// Exports a [`Connector`] as the component's implementation of the
/// `weft:connector` world.
///
/// Call it once, at the root of a `cdylib` crate:
///
/// ```no_run
/// # fn manifest() -> weft_connector_sdk::Manifest { unimplemented!() }
/// struct Stripe;
///
/// impl weft_connector_sdk::Connector for Stripe {
///     fn describe() -> weft_connector_sdk::Manifest {
///         manifest()
///     }
/// }
///
/// weft_connector_sdk::export!(Stripe);
/// ```
///
/// On targets other than `wasm32` it expands to nothing: the exports mean
/// something only to a component, and a native build of a connector is for
/// unit-testing its logic (see [`http::testing`](crate::http::testing)).
#[macro_export]
macro_rules! export {
    ($connector:ty) => {
        // The generated `unsafe` ABI shims need no lint allowance in the
        // connector's crate: rustc does not report `unsafe_code` in code
        // expanded from another crate's macro.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __WeftExportedConnector = $crate::__private::Adapter<$connector>;
    $crate::wit::export!(__WeftExportedConnector with_types_in $crate::wit);
        };
    };
}
