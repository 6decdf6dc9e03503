//! Sources: the `sources` resource, and finding the source a call reads or
//! writes (the `source_id` setting, else the Baremetrics-native source).

use serde::Deserialize;
use weft_connector_sdk::http::{self, Response};
use weft_connector_sdk::{Context, Error, ListRequest, Page, Result, page};

use crate::paging::VENDOR;

/// The provider of the sources Baremetrics lets the API write to.
const NATIVE: &str = "baremetrics";

#[derive(Deserialize)]
struct Sources {
    #[serde(default)]
    sources: Vec<Source>,
}

#[derive(Deserialize)]
struct Source {
    id: String,
    #[serde(default)]
    provider: Option<String>,
}

/// Lists the account's sources: one page, Baremetrics does not page them.
pub(crate) fn list(ctx: &Context, request: &ListRequest) -> Result<Page> {
    if request.filter.is_some() {
        return Err(Error::invalid_input("baremetrics: `sources` takes no filter"));
    }
    let response = fetch(ctx)?;
    Ok(Page::last(page::records_from(&response.body, "sources")?))
}

/// The source to read from: the `source_id` setting, else the native one.
pub(crate) fn for_reading(ctx: &Context) -> Result<String> {
    match configured(ctx) {
        Some(id) => Ok(id.to_owned()),
        None => native(&all(ctx)?),
    }
}

/// The source to write to, which must be the native one: a source synced
/// from Stripe (or any other provider) is read-only in Baremetrics.
pub(crate) fn for_writing(ctx: &Context) -> Result<String> {
    let sources = all(ctx)?;
    let Some(id) = configured(ctx) else {
        return native(&sources);
    };
    let source = sources.iter().find(|source| source.id == id).ok_or_else(|| {
        Error::invalid_input(format!(
            "baremetrics: the `source_id` setting names `{id}`, which is not one of the \
             account's sources (GET /v1/sources)"
        ))
    })?;
    match source.provider.as_deref() {
        Some(NATIVE) => Ok(id.to_owned()),
        provider => Err(Error::unsupported(format!(
            "baremetrics: source `{id}` is a `{}` source; its customers are synced from that \
             provider and read-only. Baremetrics accepts writes only on its native \
             (`baremetrics`) source",
            provider.unwrap_or("unknown")
        ))),
    }
}

fn configured(ctx: &Context) -> Option<&str> {
    ctx.setting("source_id").filter(|id| !id.is_empty())
}

fn native(sources: &[Source]) -> Result<String> {
    sources
        .iter()
        .find(|source| source.provider.as_deref() == Some(NATIVE))
        .map(|source| source.id.clone())
        .ok_or_else(|| {
            Error::invalid_input(
                "baremetrics: the account has no Baremetrics-native source (provider \
                 `baremetrics` in GET /v1/sources); set the `source_id` setting to read another \
                 source",
            )
        })
}

fn all(ctx: &Context) -> Result<Vec<Source>> {
    let response = fetch(ctx)?;
    let sources: Sources = response.json()?;
    Ok(sources.sources)
}

fn fetch(ctx: &Context) -> Result<Response> {
    http::get(ctx.url("/v1/sources")).send()?.error_for_status(VENDOR)
}
