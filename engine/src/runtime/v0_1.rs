//! `weft:connector@0.1.0`: bindings, and conversion between its types and the
//! host's own; and the one function `weft:connector@0.2.0` adds on top of
//! them, `lookup`, which uses 0.1.0's types. No host logic lives here.

use wasmtime::Store;
use wasmtime::component::{ComponentExportIndex, HasSelf, InstancePre, Linker, TypedFunc};

use super::{Call, InstanceState, Reply};
use crate::connector as host;
use crate::http as host_http;

mod bindings {
    wasmtime::component::bindgen!({
        world: "connector",
        path: "../wit/v0.1.0",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

use bindings::weft::connector::{http, log, types};
use bindings::{Connector, ConnectorIndices};

/// The interface of `weft:connector@0.2.0` that a dry run asks what an
/// upsert would match (optional: a 0.1.0 component lacks it).
pub(super) const LOOKUP_EXPORT: &str = "weft:connector/lookup@0.2.0";

/// `lookup: func(ctx: context, resource: string, record: json) ->
/// result<option<json>, connector-error>`.
type LookupFunc =
    TypedFunc<(types::Context, String, String), (Result<Option<String>, types::ConnectorError>,)>;

/// Adds this version's host imports to the linker.
pub(super) fn add_to_linker(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    Connector::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |state| state)
}

/// A pre-instantiated component that exports this version's world.
pub(super) struct Bindings {
    pre: InstancePre<InstanceState>,
    indices: ConnectorIndices,
    /// Where `lookup` is, when the component exports 0.2.0's.
    lookup: Option<ComponentExportIndex>,
}

impl Bindings {
    /// Checks the component exports this version's world, and finds
    /// 0.2.0's `lookup` when it exports that too.
    pub(super) fn new(pre: InstancePre<InstanceState>) -> wasmtime::Result<Self> {
        let indices = ConnectorIndices::new(&pre)?;
        let component = pre.component();
        let lookup = component
            .get_export_index(None, LOOKUP_EXPORT)
            .and_then(|interface| component.get_export_index(Some(&interface), "lookup"));
        Ok(Bindings { pre, indices, lookup })
    }

    /// Whether the component answers `lookup`.
    pub(super) fn offers_lookup(&self) -> bool {
        self.lookup.is_some()
    }

    /// Instantiates the template in `store`.
    pub(super) async fn instantiate(
        &self,
        store: &mut Store<InstanceState>,
    ) -> wasmtime::Result<Exports> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let connector = self.indices.load(&mut *store, &instance)?;
        // The type is checked here, once per instance: a component whose
        // `lookup` has another signature fails to instantiate, naming it.
        let lookup = match &self.lookup {
            Some(index) => Some(instance.get_typed_func(&mut *store, index).map_err(|e| {
                e.context(format!("its {LOOKUP_EXPORT}#lookup does not have the contract's type"))
            })?),
            None => None,
        };
        Ok(Exports { connector, lookup })
    }
}

/// An instantiated component's exports, valid in the store it was
/// instantiated in.
pub(super) struct Exports {
    connector: Connector,
    lookup: Option<LookupFunc>,
}

impl Exports {
    /// Runs one call.
    pub(super) async fn call(
        &self,
        store: &mut Store<InstanceState>,
        call: Call,
    ) -> wasmtime::Result<Result<Reply, host::ConnectorError>> {
        let instance = self.connector.weft_connector_plugin();
        Ok(match call {
            Call::Describe => {
                Ok(Reply::Manifest(manifest(instance.call_describe(&mut *store).await?)))
            }
            Call::List(ctx, request) => {
                let request = types::ListRequest {
                    resource: request.resource,
                    cursor: request.cursor,
                    page_size: request.page_size,
                    filter: request.filter,
                };
                instance
                    .call_list(&mut *store, &context(ctx), &request)
                    .await?
                    .map(|page| {
                        Reply::Page(host::Page {
                            records: page.records,
                            next_cursor: page.next_cursor,
                        })
                    })
                    .map_err(error)
            }
            Call::Get(ctx, resource, id) => instance
                .call_get(&mut *store, &context(ctx), &resource, &id)
                .await?
                .map(Reply::Record)
                .map_err(error),
            Call::Upsert(ctx, request) => {
                let request = types::UpsertRequest {
                    resource: request.resource,
                    record: request.record,
                    idempotency_key: request.idempotency_key,
                };
                instance
                    .call_upsert(&mut *store, &context(ctx), &request)
                    .await?
                    .map(|o| Reply::Upserted(outcome(o)))
                    .map_err(error)
            }
            Call::UpsertBatch(ctx, resource, items) => {
                let items: Vec<types::BatchItem> = items
                    .into_iter()
                    .map(|i| types::BatchItem {
                        record: i.record,
                        idempotency_key: i.idempotency_key,
                    })
                    .collect();
                instance
                    .call_upsert_batch(&mut *store, &context(ctx), &resource, &items)
                    .await?
                    .map(|outcomes| {
                        Reply::Batch(
                            outcomes.into_iter().map(|o| o.map(outcome).map_err(error)).collect(),
                        )
                    })
                    .map_err(error)
            }
            Call::Lookup(ctx, resource, record) => {
                let Some(lookup) = &self.lookup else {
                    return Ok(Err(host::ConnectorError::Unsupported(format!(
                        "the connector does not export {LOOKUP_EXPORT} (it was built for 0.1.0)"
                    ))));
                };
                let (answer,) =
                    lookup.call_async(&mut *store, (context(ctx), resource, record)).await?;
                answer.map(Reply::Record).map_err(error)
            }
            Call::Remove(ctx, resource, id) => instance
                .call_remove(&mut *store, &context(ctx), &resource, &id)
                .await?
                .map(|o| {
                    Reply::Removed(match o {
                        types::RemoveOutcome::Removed => host::RemoveOutcome::Removed,
                        types::RemoveOutcome::AlreadyAbsent => host::RemoveOutcome::AlreadyAbsent,
                    })
                })
                .map_err(error),
        })
    }
}

impl types::Host for InstanceState {}

impl http::Host for InstanceState {
    async fn send(
        &mut self,
        request: http::Request,
    ) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        let request = host_http::Request {
            method: match request.method {
                http::Method::Get => host_http::Method::Get,
                http::Method::Post => host_http::Method::Post,
                http::Method::Put => host_http::Method::Put,
                http::Method::Patch => host_http::Method::Patch,
                http::Method::Delete => host_http::Method::Delete,
                http::Method::Head => host_http::Method::Head,
            },
            url: request.url,
            headers: request.headers,
            body: request.body,
            idempotent: request.idempotent,
        };
        Ok(InstanceState::send(self, request)
            .await?
            .map(|r| http::Response { status: r.status, headers: r.headers, body: r.body })
            .map_err(|e| match e {
                host_http::HttpError::Denied(m) => http::HttpError::Denied(m),
                host_http::HttpError::InvalidRequest(m) => http::HttpError::InvalidRequest(m),
                host_http::HttpError::Timeout(m) => http::HttpError::Timeout(m),
                host_http::HttpError::Connection(m) => http::HttpError::Connection(m),
                host_http::HttpError::TooLarge(m) => http::HttpError::TooLarge(m),
            }))
    }
}

impl log::Host for InstanceState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => tracing::Level::TRACE,
            log::Level::Debug => tracing::Level::DEBUG,
            log::Level::Info => tracing::Level::INFO,
            log::Level::Warn => tracing::Level::WARN,
            log::Level::Error => tracing::Level::ERROR,
        };
        InstanceState::log(self, level, &message)
    }
}

fn context(ctx: host::CallContext) -> types::Context {
    types::Context { base_url: ctx.base_url, settings: ctx.settings }
}

fn outcome(o: types::UpsertOutcome) -> host::UpsertOutcome {
    host::UpsertOutcome {
        record: o.record,
        action: match o.action {
            types::UpsertAction::Created => host::UpsertAction::Created,
            types::UpsertAction::Updated => host::UpsertAction::Updated,
            types::UpsertAction::Unchanged => host::UpsertAction::Unchanged,
        },
    }
}

fn error(e: types::ConnectorError) -> host::ConnectorError {
    use types::ConnectorError as E;
    match e {
        E::NotFound(m) => host::ConnectorError::NotFound(m),
        E::Conflict(m) => host::ConnectorError::Conflict(m),
        E::InvalidInput(m) => host::ConnectorError::InvalidInput(m),
        E::Unauthorized(m) => host::ConnectorError::Unauthorized(m),
        E::Forbidden(m) => host::ConnectorError::Forbidden(m),
        E::RateLimited(r) => host::ConnectorError::RateLimited {
            retry_after_ms: r.retry_after_ms,
            message: r.message,
        },
        E::Unsupported(m) => host::ConnectorError::Unsupported(m),
        E::Transient(m) => host::ConnectorError::Transient(m),
        E::Fatal(m) => host::ConnectorError::Fatal(m),
    }
}

fn op(o: types::Op) -> host::Op {
    match o {
        types::Op::List => host::Op::List,
        types::Op::Get => host::Op::Get,
        types::Op::Upsert => host::Op::Upsert,
        types::Op::UpsertBatch => host::Op::UpsertBatch,
        types::Op::Remove => host::Op::Remove,
    }
}

fn manifest(m: types::Manifest) -> host::Manifest {
    host::Manifest {
        name: m.name,
        version: m.version,
        vendor: m.vendor,
        description: m.description,
        default_base_url: m.default_base_url,
        extra_hosts: m.extra_hosts,
        auth: match m.auth {
            types::AuthScheme::None => host::AuthScheme::None,
            types::AuthScheme::Bearer => host::AuthScheme::Bearer,
            types::AuthScheme::BasicKeyAsUser => host::AuthScheme::BasicKeyAsUser,
            types::AuthScheme::Header(name) => host::AuthScheme::Header(name),
        },
        resources: m
            .resources
            .into_iter()
            .map(|r| host::ResourceSpec {
                name: r.name,
                description: r.description,
                ops: r.ops.into_iter().map(op).collect(),
                irreversible: r.irreversible.into_iter().map(op).collect(),
                max_page_size: r.max_page_size,
                default_page_size: r.default_page_size,
                id_field: r.id_field,
            })
            .collect(),
        rate_limits: m
            .rate_limits
            .into_iter()
            .map(|l| host::RateLimit {
                method_class: match l.method_class {
                    types::MethodClass::Any => host::MethodClass::Any,
                    types::MethodClass::Read => host::MethodClass::Read,
                    types::MethodClass::Write => host::MethodClass::Write,
                    types::MethodClass::Get => host::MethodClass::Get,
                    types::MethodClass::Post => host::MethodClass::Post,
                    types::MethodClass::Put => host::MethodClass::Put,
                    types::MethodClass::Patch => host::MethodClass::Patch,
                    types::MethodClass::Delete => host::MethodClass::Delete,
                },
                requests: l.requests,
                per_seconds: l.per_seconds,
                credential_prefix: l.credential_prefix,
            })
            .collect(),
        settings: m
            .settings
            .into_iter()
            .map(|s| host::Setting {
                name: s.name,
                description: s.description,
                required: s.required,
            })
            .collect(),
    }
}
