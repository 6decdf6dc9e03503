//! The [`Connector`] trait and the adapter that plugs it into the generated
//! `Guest` trait.

use core::marker::PhantomData;

use crate::wit::weft::connector0_1_0::types::ConnectorError;
use crate::{
    BatchItem, Context, Error, Json, ListRequest, Manifest, Op, Page, RemoveOutcome, Result,
    UpsertOutcome, UpsertRequest,
};

/// A vendor connector: one implementation per plugin, exported with
/// [`export!`](crate::export).
///
/// The methods are associated functions, not `&self` methods. The host
/// keeps an instance warm and reuses it for the next calls of the same
/// connection (module statics survive between those calls), but it may
/// replace it at any time (after a trap, when its memory grew too much, or
/// simply with a fresh one under load), so nothing a call needs may live
/// only in the instance: everything arrives in its arguments, and a static
/// is at most a cache.
///
/// Only [`describe`](Connector::describe) is required. Every operation
/// defaults to [`Error::Unsupported`]; override the ones the manifest lists.
/// The SDK refuses a call for a resource the manifest does not list
/// ([`Error::NotFound`]) or an op it does not list for that resource
/// ([`Error::Unsupported`]) before the method runs, so a method needs no
/// such dispatch of its own: it only tells the resources it serves apart.
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

    /// The record [`upsert`](Connector::upsert) of `record` would update,
    /// found by the same rule the upsert matches with, as the vendor holds
    /// it; `Ok(None)` when the upsert would create one. It must not write.
    ///
    /// A dry run calls it for an upsert whose record has no id, so the plan
    /// names the record the real run would change (its id, the fields that
    /// differ) and the steps after it see that id. Fail as the upsert would
    /// before writing ([`Error::Conflict`] when several records match).
    /// Share the upsert's own matching code, so the two cannot disagree.
    ///
    /// Defaults to [`Error::Unsupported`]: the dry run then plans an upsert
    /// whose outcome it cannot know. Reached only for a resource whose
    /// manifest lists `upsert`.
    fn lookup(ctx: &Context, resource: &str, record: Json) -> Result<Option<Json>> {
        let _ = (ctx, record);
        Err(unsupported("lookup", resource))
    }
}

fn unsupported(op: &str, resource: &str) -> Error {
    Error::unsupported(format!("this connector does not offer `{op}` on `{resource}`"))
}

/// Implements the generated `Guest` trait for any [`Connector`]; named by
/// [`export!`](crate::export) only.
#[derive(Debug)]
pub struct Adapter<C>(PhantomData<C>);

/// The ops each resource of a connector's manifest lists, read once per
/// connector type (an instance lives across calls; `describe` builds the
/// whole manifest, which a call should not pay for).
type Offers = Vec<(String, Vec<Op>)>;
/// [`Offers`] by connector type: one in a component, several in a native
/// test binary.
type OffersByType = Vec<(std::any::TypeId, std::sync::Arc<Offers>)>;

fn offers<C: Connector + 'static>() -> std::sync::Arc<Offers> {
    use std::any::TypeId;
    use std::sync::{Arc, Mutex, OnceLock};
    static BY_TYPE: OnceLock<Mutex<OffersByType>> = OnceLock::new();
    let table = BY_TYPE.get_or_init(|| Mutex::new(Vec::new()));
    let mut table = table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, offers)) = table.iter().find(|(id, _)| *id == TypeId::of::<C>()) {
        return Arc::clone(offers);
    }
    let offers: Arc<Offers> =
        Arc::new(C::describe().resources.into_iter().map(|r| (r.name, r.ops)).collect());
    table.push((TypeId::of::<C>(), Arc::clone(&offers)));
    offers
}

/// Refuses `op` on `resource` unless the manifest lists it.
fn offered<C: Connector + 'static>(op: Op, resource: &str) -> Result<(), ConnectorError> {
    let offers = offers::<C>();
    let Some((_, ops)) = offers.iter().find(|(name, _)| name == resource) else {
        let served: Vec<&str> = offers.iter().map(|(name, _)| name.as_str()).collect();
        return Err(Error::not_found(format!(
            "this connector serves no resource `{resource}` (it serves: {})",
            served.join(", ")
        ))
        .into());
    };
    if ops.contains(&op) { Ok(()) } else { Err(unsupported(op_name(op), resource).into()) }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::List => "list",
        Op::Get => "get",
        Op::Upsert => "upsert",
        Op::UpsertBatch => "upsert-batch",
        Op::Remove => "remove",
    }
}

impl<C: Connector + 'static> crate::wit::exports::weft::connector0_1_0::plugin::Guest
    for Adapter<C>
{
    fn describe() -> Manifest {
        C::describe()
    }

    fn list(ctx: Context, request: ListRequest) -> Result<Page, ConnectorError> {
        offered::<C>(Op::List, &request.resource)?;
        C::list(&ctx, request).map_err(Into::into)
    }

    fn get(ctx: Context, resource: String, id: String) -> Result<Option<Json>, ConnectorError> {
        offered::<C>(Op::Get, &resource)?;
        C::get(&ctx, &resource, &id).map_err(Into::into)
    }

    fn upsert(ctx: Context, request: UpsertRequest) -> Result<UpsertOutcome, ConnectorError> {
        offered::<C>(Op::Upsert, &request.resource)?;
        C::upsert(&ctx, request).map_err(Into::into)
    }

    fn upsert_batch(
        ctx: Context,
        resource: String,
        items: Vec<BatchItem>,
    ) -> Result<Vec<Result<UpsertOutcome, ConnectorError>>, ConnectorError> {
        offered::<C>(Op::UpsertBatch, &resource)?;
        match C::upsert_batch(&ctx, &resource, items) {
            Ok(outcomes) => {
                Ok(outcomes.into_iter().map(|outcome| outcome.map_err(Into::into)).collect())
            }
            Err(error) => Err(error.into()),
        }
    }

    fn remove(ctx: Context, resource: String, id: String) -> Result<RemoveOutcome, ConnectorError> {
        offered::<C>(Op::Remove, &resource)?;
        C::remove(&ctx, &resource, &id).map_err(Into::into)
    }
}

impl<C: Connector + 'static> crate::wit::exports::weft::connector0_2_0::lookup::Guest
    for Adapter<C>
{
    fn lookup(
        ctx: Context,
        resource: String,
        record: Json,
    ) -> Result<Option<Json>, ConnectorError> {
        // A lookup answers for an upsert: the resource must offer one.
        offered::<C>(Op::Upsert, &resource)?;
        C::lookup(&ctx, &resource, record).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wit::exports::weft::connector0_1_0::plugin::Guest;
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
                resources: vec![crate::ResourceSpec {
                    name: "users".into(),
                    description: String::new(),
                    ops: vec![Op::List],
                    irreversible: Vec::new(),
                    max_page_size: 100,
                    default_page_size: 100,
                    id_field: "id".into(),
                }],
                rate_limits: Vec::new(),
                settings: Vec::new(),
            }
        }

        // Implemented, but the manifest does not list it: never reached.
        fn get(_ctx: &Context, _resource: &str, _id: &str) -> Result<Option<Json>> {
            Ok(Some("{\"id\":\"1\"}".into()))
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

    #[test]
    fn resources_and_ops_the_manifest_does_not_list_are_refused_before_the_method_runs() {
        let get = <Adapter<Minimal> as Guest>::get(ctx(), "users".into(), "1".into());
        assert_eq!(
            get,
            Err(ConnectorError::Unsupported(
                "this connector does not offer `get` on `users`".into()
            ))
        );
        let request =
            ListRequest { resource: "teams".into(), cursor: None, page_size: 10, filter: None };
        let list = <Adapter<Minimal> as Guest>::list(ctx(), request);
        assert_eq!(
            list,
            Err(ConnectorError::NotFound(
                "this connector serves no resource `teams` (it serves: users)".into()
            ))
        );
        // A listed op reaches the method (here the default, unsupported).
        let request =
            ListRequest { resource: "users".into(), cursor: None, page_size: 10, filter: None };
        assert_eq!(
            <Adapter<Minimal> as Guest>::list(ctx(), request),
            Err(ConnectorError::Unsupported(
                "this connector does not offer `list` on `users`".into()
            ))
        );
    }

    #[test]
    fn a_lookup_needs_an_upsert_on_the_resource_and_defaults_to_unsupported() {
        use crate::wit::exports::weft::connector0_2_0::lookup::Guest as Lookup;
        // `users` offers list only: no upsert, so nothing to look up for.
        let refused = <Adapter<Minimal> as Lookup>::lookup(ctx(), "users".into(), "{}".into());
        assert_eq!(
            refused,
            Err(ConnectorError::Unsupported(
                "this connector does not offer `upsert` on `users`".into()
            ))
        );
        let unknown = <Adapter<Minimal> as Lookup>::lookup(ctx(), "teams".into(), "{}".into());
        assert!(matches!(unknown, Err(ConnectorError::NotFound(_))), "{unknown:?}");
    }
}
