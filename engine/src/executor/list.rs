//! A list step: every page (or up to `limit` records), each committed with
//! its cursor before the next is asked for, optionally reshaped by `map`
//! and written to a JSON Lines file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::value::RawValue;

use super::ops::{CallError, with_retry};
use super::{RunCtx, StepEnd};
use crate::connector::ListRequest;
use crate::endpoint::Endpoint;
use crate::expr::{Expr, Scope, parse_val};
use crate::store::StepState;
use crate::workflow::{Action, Step};

pub(crate) async fn run(ctx: &RunCtx<'_>, step: &Step, endpoint: &dyn Endpoint, state: &mut StepState, scope: &Scope) -> Result<StepEnd, String> {
    let Action::List { page_size, limit, filter, output } = &step.action else {
        return Err("not a list step".into());
    };
    let resource = endpoint.manifest().resource(&step.resource).cloned().ok_or_else(|| format!("no resource {}", step.target()))?;
    let page_size = page_size.unwrap_or(resource.default_page_size).clamp(1, resource.max_page_size.max(1));
    let filter = match filter {
        Some(f) => Some(f.render(scope).map_err(|e| format!("filter: {e}"))?.to_string()),
        None => None,
    };
    let mut sink = match output {
        Some(path) => Some(open_output(path, ctx, state)?),
        None => None,
    };
    if state.pages > 0 && state.cursor.is_none() {
        // Every page was committed before the interruption.
        state.output = Some(serde_json::json!({ "count": state.counts.read, "pages": state.pages }));
        return Ok(StepEnd::Done);
    }
    // How many records the next request asks for; `None` once `limit` is reached.
    let wanted = |read: u64| match limit {
        Some(limit) if read >= *limit => None,
        Some(limit) => Some(page_size.min((limit - read).min(u64::from(u32::MAX)) as u32)),
        None => Some(page_size),
    };
    let fetch = |cursor: Option<String>, page_size: u32| {
        let request = ListRequest { resource: step.resource.clone(), cursor, page_size, filter: filter.clone() };
        async move { with_retry(&step.retry, step.timeout, || endpoint.list(request.clone())).await.0 }
    };
    // The next page, asked for while the last one was being committed.
    let mut prefetched = None;
    loop {
        if let Some(end) = ctx.stop_reason() {
            return Ok(end);
        }
        let Some(size) = wanted(state.counts.read) else { break };
        let result = match prefetched.take() {
            Some(result) => result,
            None => fetch(state.cursor.clone(), size).await,
        };
        let page = result.map_err(|e: CallError| e.message)?;
        if page.next_cursor.is_some() && page.next_cursor == state.cursor {
            return Err(format!("plugin {} returned the cursor it was given; stopping to avoid an endless list", endpoint.name()));
        }
        let records = match &step.map {
            Some(map) => map_records(map, &page.records, scope, endpoint.name())?,
            None => page.records,
        };
        let mut array = String::with_capacity(records.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
        array.push('[');
        array.push_str(&records.join(","));
        array.push(']');
        state.counts.read += records.len() as u64;
        state.pages += 1;
        state.cursor = page.next_cursor;
        state.output = Some(serde_json::json!({ "count": state.counts.read, "pages": state.pages }));
        // Reading ahead is harmless (a read has no effect at the vendor), so
        // the next page is fetched while this one is written and committed:
        // the vendor's time and the store's overlap. The next page is used
        // only after this one is committed; an interruption drops it.
        let next = match (&state.cursor, wanted(state.counts.read)) {
            (Some(cursor), Some(size)) if ctx.stop_reason().is_none() => Some(fetch(Some(cursor.clone()), size)),
            _ => None,
        };
        let commit = async {
            if let Some((file, path)) = sink.as_mut() {
                for record in &records {
                    writeln!(file, "{record}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                }
                // The file holds a page before the store says it was read; a
                // resume rewrites it from the store, so no record is doubled.
                file.flush().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            ctx.store.commit_page(ctx.run_id, state, &array).await.map_err(|e| e.to_string())
        };
        let (committed, next) = futures_util::future::join(commit, async {
            match next {
                Some(fetching) => Some(fetching.await),
                None => None,
            }
        })
        .await;
        committed?;
        ctx.observer.page_committed(step, state.counts.read);
        prefetched = next;
        if state.cursor.is_none() {
            break;
        }
    }
    state.output = Some(serde_json::json!({ "count": state.counts.read, "pages": state.pages }));
    Ok(StepEnd::Done)
}

/// Applies `map` to each record; a map with no output drops the record,
/// one with several outputs yields several.
fn map_records(map: &Expr, records: &[String], scope: &Scope, plugin: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(records.len());
    for text in records {
        let record = parse_val(text).map_err(|e| format!("plugin {plugin}: list returned a record that is {e}"))?;
        for value in map.run(record, scope).map_err(|e| format!("map: {e}"))? {
            out.push(value.to_string());
        }
    }
    Ok(out)
}

/// Opens the output file. A resumed step rewrites it from the pages the
/// store holds, so the file ends up with each record once.
fn open_output(path: &Path, ctx: &RunCtx<'_>, state: &StepState) -> Result<(std::io::BufWriter<std::fs::File>, PathBuf), String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let file = std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    // A page (about 60 KB of Stripe customers) in one write.
    let mut writer = std::io::BufWriter::with_capacity(256 << 10, file);
    if state.pages > 0 {
        for page in ctx.store.pages(ctx.run_id, state.index) {
            let page = page.map_err(|e| e.to_string())?;
            let records: Vec<&RawValue> = serde_json::from_str(&page).map_err(|e| format!("run store: a committed page does not parse: {e}"))?;
            for record in records {
                writeln!(writer, "{}", record.get()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
        }
    }
    Ok((writer, path.to_path_buf()))
}
