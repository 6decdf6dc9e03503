//! The [`Connector`] trait and the adapter that plugs it into the generated
//! `Guest` trait.

use core::marker::PhantomData;

use crate::wit::weft::connector::types::ConnectorError;
use crate::{
    BatchItem, Context, Error, Json, ListRequest, Manifest, Page, RemoveOutcome, Result,
    UpsertOutcome, UpsertRequest,
};

/// A vendor connector: one implementation per plugin, exported with
/// [`export!`](crate::export).
///
/// The methods are associated functions, not `&self` methods: the host keeps
/// no connector state between calls (an instance may be fresh for every
/// call), so there is no `self` to hold any. Everything a call needs arrives
/// in its arguments.
///
/// Only [`describe`](Connector::describe) is required. Every operation
/// defaults to [`Error::Unsupported`]; override the ones the manifest lists
/// for some resource. Each operation receives the resource name and should
/// answer [`Error::NotFound`] for a resource it does not serve.
pub trait Connector {
    /// Says what the connector is, what it serves and what it needs.
    fn describe() -> Manifest;

    /// Reads one page of `request.resource`.
    ///
    /// Never return more than `request.page_size` records. `next_cursor` is
    /// opaque to the host; see [`page`](crate::page) for carrying more than
    /// one value in it.
    fn list(ctx: &Context, request: ListRequest) -> Result<Page> {
        let _ = ctx;
        Err(unsupported("list", &request.resource))
    }

    /// Reads one record; `Ok(None)` when it does not exist (or is deleted).
    fn get(ctx: &Context, resource: &str, id: &str) -> Result<Option<Json>> {
        let _ = (ctx, id);
        Err(unsupported("get", resource))
    }

    /// Creates or updates one record, matching on the key the resource's
    /// description documents. Replaying the same `idempotency_key` must not
    /// write twice.
    fn upsert(ctx: &Context, request: UpsertRequest) -> Result<UpsertOutcome> {
        let _ = ctx;
        Err(unsupported("upsert", &request.resource))
    }

    /// Creates or updates many records in one vendor call; one outcome per
    /// input, in order. The outer error fails the whole batch.
    ///
    /// Defaults to [`Error::Unsupported`], deliberately *not* to a loop over
    /// [`upsert`](Connector::upsert): the host can run that loop better
    /// itself (each item's outcome committed on its own, the rate limiter
    /// and the per-call deadline applied per item). Override it only where
    /// the vendor has a bulk endpoint, and list `upsert-batch` in the
    /// manifest.
    fn upsert_batch(
        ctx: &Context,
        resource: &str,
        items: Vec<BatchItem>,
    ) -> Result<Vec<Result<UpsertOutcome>>> {
        let _ = (ctx, items);
        Err(unsupported("upsert-batch", resource))
    }

    /// Removes one record by id. Removing what is already gone is
    /// [`RemoveOutcome::AlreadyAbsent`], not an error.
    fn remove(ctx: &Context, resource: &str, id: &str) -> Result<RemoveOutcome> {
        let _ = (ctx, id);
        Err(unsupported("remove", resource))
    }
}

fn unsupported(op: &str, resource: &str) -> Error {
    Error::unsupported(format!("this connector does not offer `{op}` on `{resource}`"))
}

/// Implements the generated `Guest` trait for any [`Connector`]; named by
/// [`export!`](crate::export) only.
#[derive(Debug)]
pub struct Adapter<C>(PhantomData<C>);

impl<C: Connector> crate::wit::exports::weft::connector::plugin::Guest for Adapter<C> {
    fn describe() -> Manifest {
        C::describe()
    }

    fn list(ctx: Context, request: ListRequest) -> Result<Page, ConnectorError> {
        C::list(&ctx, request).map_err(Into::into)
    }

    fn get(ctx: Context, resource: String, id: String) -> Result<Option<Json>, ConnectorError> {
        C::get(&ctx, &resource, &id).map_err(Into::into)
    }

    fn upsert(ctx: Context, request: UpsertRequest) -> Result<UpsertOutcome, ConnectorError> {
        C::upsert(&ctx, request).map_err(Into::into)
    }

    fn upsert_batch(
        ctx: Context,
        resource: String,
        items: Vec<BatchItem>,
    ) -> Result<Vec<Result<UpsertOutcome, ConnectorError>>, ConnectorError> {
        match C::upsert_batch(&ctx, &resource, items) {
            Ok(outcomes) => {
                Ok(outcomes.into_iter().map(|outcome| outcome.map_err(Into::into)).collect())
            }
            Err(error) => Err(error.into()),
        }
    }

    fn remove(ctx: Context, resource: String, id: String) -> Result<RemoveOutcome, ConnectorError> {
        C::remove(&ctx, &resource, &id).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wit::exports::weft::connector::plugin::Guest;
    use crate::{AuthScheme, Manifest};

    struct Minimal;

    impl Connector for Minimal {
        fn describe() -> Manifest {
            Manifest {
                name: "minimal".into(),
                version: "0.0.0".into(),
                vendor: "Nobody".into(),
                description: String::new(),
                default_base_url: "http://127.0.0.1".into(),
                extra_hosts: Vec::new(),
                auth: AuthScheme::None,
                resources: Vec::new(),
                rate_limits: Vec::new(),
                settings: Vec::new(),
            }
        }
    }

    fn ctx() -> Context {
        Context { base_url: "http://127.0.0.1".into(), settings: Vec::new() }
    }

    #[test]
    fn unimplemented_operations_are_unsupported_and_name_the_resource() {
        let error = <Adapter<Minimal> as Guest>::remove(ctx(), "users".into(), "1".into());
        assert_eq!(
            error,
            Err(ConnectorError::Unsupported(
                "this connector does not offer `remove` on `users`".into()
            ))
        );
        let batch = <Adapter<Minimal> as Guest>::upsert_batch(ctx(), "users".into(), Vec::new());
        assert!(matches!(batch, Err(ConnectorError::Unsupported(_))));
    }
}
