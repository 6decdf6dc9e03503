//! A list step: every page (or up to `limit` records), committed in groups
//! with the cursor after them, optionally reshaped by `map` and written to a
//! JSON Lines file.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::ops::{CallError, with_retry};
use super::{RunCtx, StepCtx, StepEnd, StepError};
use crate::connector::ListRequest;
use crate::endpoint::Endpoint;
use crate::expr::{EvalError, Evaluator, Expr, Scope, Val};
use crate::runtime::Listed;
use crate::store::{Commit, OutputMark, PageLog, StateWrite, StepState};
use crate::workflow::Action;

/// Runs a list step. `keep_records` says whether a later step may read its
/// records (`.steps.ID.records`): only then are they kept in the store.
pub(crate) async fn run(
    cx: StepCtx<'_>,
    endpoint: &dyn Endpoint,
    state: &mut StepState,
    keep_records: bool,
) -> Result<StepEnd, StepError> {
    let StepCtx { run: ctx, step, scope, .. } = cx;
    let Action::List { page_size, limit, filter, output, output_template } = &step.action else {
        return Err(StepError::Failed("not a list step".into()));
    };
    let resource = endpoint
        .manifest()
        .resource(&step.resource)
        .cloned()
        .ok_or_else(|| format!("no resource {}", step.target()))?;
    let page_size =
        page_size.unwrap_or(resource.default_page_size).clamp(1, resource.max_page_size.max(1));
    let filter = match filter {
        Some(f) => match ctx.evaluator(step).render("filter", f, scope).await {
            Ok(value) => Some(value.to_string()),
            Err(EvalError::Stopped) => {
                return Ok(ctx.stop_reason().unwrap_or(StepEnd::Interrupted));
            }
            Err(e) => return Err(e.into_message().into()),
        },
        None => None,
    };
    if state.pages == 0 {
        // A resumed step keeps the choice it started with.
        state.records_kept = keep_records;
    }
    let output = match output_template {
        Some((template, base_dir)) => {
            match ctx.evaluator(step).render("output", template, scope).await {
                Ok(value) => Some(output_path(base_dir, &value)?),
                Err(EvalError::Stopped) => {
                    return Ok(ctx.stop_reason().unwrap_or(StepEnd::Interrupted));
                }
                Err(e) => return Err(e.into_message().into()),
            }
        }
        None => output.clone(),
    };
    if let (Some(path), Some(_)) = (&output, output_template) {
        let file = serde_json::Value::String(path.display().to_string());
        match state.output.as_mut().and_then(serde_json::Value::as_object_mut) {
            Some(map) => {
                map.insert("file".into(), file);
            }
            None => state.output = Some(serde_json::json!({ "file": file })),
        }
    }
    let sink = match &output {
        Some(path) => Some(Output::open(path, ctx, state).await?),
        None => None,
    };
    if state.pages > 0 && state.cursor.is_none() {
        // Every page was committed before the interruption.
        set_output(state);
        return Ok(StepEnd::Done);
    }
    // How many records the next request asks for; `None` once `limit` is reached.
    let wanted = |read: u64| match limit {
        Some(limit) if read >= *limit => None,
        Some(limit) => Some(page_size.min((limit - read).min(u64::from(u32::MAX)) as u32)),
        None => Some(page_size),
    };
    let fetch = |cursor: Option<String>, page_size: u32| {
        let request = ListRequest {
            resource: step.resource.clone(),
            cursor,
            page_size,
            filter: filter.clone(),
        };
        // One span a page (traces): its size, never its cursor.
        let span = tracing::info_span!("page", resource = %step.resource, page_size);
        async move {
            use tracing::Instrument as _;
            with_retry(&step.retry, step.timeout, || endpoint.list_unchecked(request.clone()))
                .instrument(span)
                .await
                .0
        }
    };
    let mut pages = Pages {
        log: if state.records_kept {
            Some(ctx.store.page_log(ctx.run_id, state).await?)
        } else {
            None
        },
        sink,
        confirmed: Committed::of(state),
        in_flight: None,
        since: Instant::now(),
        pages_since: 0,
        bytes_since: 0,
    };
    let outcome = read_pages(cx, endpoint, state, &mut pages, wanted, fetch).await;
    // Whatever ended the loop, pages already read are committed first, so
    // the state the caller records never counts a page the store lacks.
    match pages.finish(ctx, state).await {
        // The store failing wins: the step cannot be recorded either way.
        Err(e @ StepError::Store(_)) => return Err(e),
        Err(e) => return Err(outcome.err().unwrap_or(e)),
        Ok(()) => {}
    }
    let end = outcome?;
    set_output(state);
    Ok(end)
}

/// The file a templated `output` names: relative, inside the workflow's
/// directory, since its values may come from a webhook's payload. A
/// resume renders the same path (`$run` and `$inputs` do not change).
fn output_path(base_dir: &Path, value: &serde_json::Value) -> Result<PathBuf, String> {
    let serde_json::Value::String(text) = value else {
        return Err(format!("output: the path must be a string, not {value}"));
    };
    let relative = Path::new(text);
    let inside = !text.is_empty()
        && !text.contains('\0')
        && relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
    if !inside {
        return Err(format!(
            "output: {text:?} is not a path inside the workflow's directory (no absolute path, no `..`)"
        ));
    }
    Ok(base_dir.join(relative))
}

/// The step's result as later steps and `weft runs show` see it, derived
/// from its counts when it is committed or ends.
fn set_output(state: &mut StepState) {
    // A templated output's file, once rendered, stays named in the result.
    let file = state.output.as_ref().and_then(|o| o.get("file")).cloned();
    let mut output = serde_json::json!({ "count": state.counts.read, "pages": state.pages });
    if let (Some(file), Some(map)) = (file, output.as_object_mut()) {
        map.insert("file".into(), file);
    }
    state.output = Some(output);
}

/// Pages are committed in groups: when this much time has passed since the
/// last commit, or this many pages or bytes wait. A crash loses at most a
/// group of reads, which the resume asks for again (a read has no effect at
/// the vendor); an fsync and a sled flush per page were most of the cost of
/// an export.
const GROUP_TIME: Duration = Duration::from_millis(25);
const GROUP_PAGES: u32 = 64;
const GROUP_BYTES: u64 = 8 << 20;

/// The step's position as of the last commit, to put back if a commit fails.
struct Committed {
    read: u64,
    pages: u32,
    cursor: Option<String>,
    output_file: Option<OutputMark>,
    state_write: Option<StateWrite>,
}

impl Committed {
    fn of(state: &StepState) -> Self {
        Committed {
            read: state.counts.read,
            pages: state.pages,
            cursor: state.cursor.clone(),
            output_file: state.output_file,
            state_write: state.state_write.clone(),
        }
    }

    fn restore(&self, state: &mut StepState) {
        state.counts.read = self.read;
        state.pages = self.pages;
        state.cursor = self.cursor.clone();
        state.output_file = self.output_file;
        state.state_write = self.state_write.clone();
        set_output(state);
    }
}

/// Where a list step's pages go: the store's page log (when later steps
/// read the records), the output file, and the commits of groups of them.
/// A group's commit runs while the next pages are read; the one after it
/// starts only once it is durable.
struct Pages {
    log: Option<PageLog>,
    sink: Option<Output>,
    /// The position the last durable commit recorded.
    confirmed: Committed,
    /// The commit under way, and the position it records.
    in_flight: Option<(Commit, Committed)>,
    /// When the last commit started, and the pages and bytes since.
    since: Instant,
    pages_since: u32,
    bytes_since: u64,
}

impl Pages {
    /// Stores one page (not yet committed).
    fn append(&mut self, records: &[String]) -> Result<(), StepError> {
        if let Some(sink) = self.sink.as_mut() {
            // The file holds a page before the store says it was read; a
            // resume keeps only what the last commit covers.
            sink.write_page(records)?;
        }
        if let Some(log) = self.log.as_mut() {
            // The page as one JSON array, as the store hands it back.
            let mut array =
                String::with_capacity(records.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
            array.push('[');
            for (i, record) in records.iter().enumerate() {
                if i > 0 {
                    array.push(',');
                }
                array.push_str(record);
            }
            array.push(']');
            log.append(&array)?;
        }
        self.pages_since += 1;
        self.bytes_since += records.iter().map(|r| r.len() as u64 + 1).sum::<u64>();
        Ok(())
    }

    fn due(&self, state: &StepState) -> bool {
        state.cursor.is_none()
            || self.since.elapsed() >= GROUP_TIME
            || self.pages_since >= GROUP_PAGES
            || self.bytes_since >= GROUP_BYTES
    }

    /// Starts committing the pages stored so far with the step's state,
    /// once the commit before it is durable.
    async fn start_commit(
        &mut self,
        ctx: &RunCtx<'_>,
        state: &mut StepState,
    ) -> Result<(), StepError> {
        self.settle(state).await?;
        if let Some(sink) = &mut self.sink {
            // The file takes the target's place before the store says any
            // of it was written: a run that fails before its first commit
            // leaves the file that was there alone.
            sink.publish()?;
            state.output_file = Some(sink.mark());
        }
        set_output(state);
        let commit = ctx.store.start_commit(ctx.run_id, state, self.log.as_mut());
        self.in_flight = Some((commit, Committed::of(state)));
        self.since = Instant::now();
        self.pages_since = 0;
        self.bytes_since = 0;
        Ok(())
    }

    /// Waits for the commit under way. If it failed, the state goes back to
    /// the last durable position.
    async fn settle(&mut self, state: &mut StepState) -> Result<(), StepError> {
        if let Some((commit, position)) = self.in_flight.take() {
            if let Err(e) = commit.wait().await {
                self.confirmed.restore(state);
                return Err(e.into());
            }
            self.confirmed = position;
        }
        Ok(())
    }

    /// Commits every page stored and waits until that is durable.
    async fn finish(&mut self, ctx: &RunCtx<'_>, state: &mut StepState) -> Result<(), StepError> {
        self.settle(state).await?;
        if state.pages != self.confirmed.pages {
            self.start_commit(ctx, state).await?;
            self.settle(state).await?;
        }
        Ok(())
    }
}

async fn read_pages<W, F, Fut>(
    cx: StepCtx<'_>,
    endpoint: &dyn Endpoint,
    state: &mut StepState,
    pages: &mut Pages,
    wanted: W,
    fetch: F,
) -> Result<StepEnd, StepError>
where
    W: Fn(u64) -> Option<u32>,
    F: Fn(Option<String>, u32) -> Fut,
    Fut: std::future::Future<Output = Result<Listed, CallError>>,
{
    let StepCtx { run: ctx, step, scope, run_state, .. } = cx;
    let state_reads_records = step.state.iter().any(|(_, template)| {
        template.expressions().into_iter().any(|e| {
            crate::expr::root_uses(e.text(), "page").iter().any(|used| {
                used.variable
                    && !matches!(&used.name, Some((name, _)) if name == "number" || name == "cursor")
            })
        })
    });
    // The next page, asked for while the last one was being stored.
    let mut prefetched = None;
    let evaluator = ctx.evaluator(step);
    loop {
        if let Some(end) = ctx.stop_reason() {
            return Ok(end);
        }
        let Some(size) = wanted(state.counts.read) else { break };
        let result = match prefetched.take() {
            Some(result) => result,
            None => fetch(state.cursor.clone(), size).await,
        };
        let listed = result.map_err(|e: CallError| e.message)?;
        if listed.next_cursor().is_some() && listed.next_cursor() == state.cursor.as_deref() {
            return Err(format!(
                "plugin {} returned the cursor it was given; stopping to avoid an endless list",
                endpoint.name()
            )
            .into());
        }
        // Reading ahead is harmless (a read has no effect at the vendor), so
        // the next page is asked for as soon as this one's count is known,
        // and polled once to send its request: this page's records are
        // checked, mapped, written and stored while the vendor answers.
        // The next page is used only after this one is stored; an
        // interruption or a failure drops it.
        let cursor = listed.next_cursor().map(str::to_owned);
        let ask_next = |read_after: u64| {
            let fetching = match (&cursor, wanted(read_after)) {
                (Some(cursor), Some(size)) if ctx.stop_reason().is_none() => {
                    Some(fetch(Some(cursor.clone()), size))
                }
                _ => None,
            };
            Box::pin(futures_util::future::maybe_done(async move {
                match fetching {
                    Some(fetching) => Some(fetching.await),
                    None => None,
                }
            }))
        };
        // A `map` may make more or fewer records than it is given, and
        // `limit` counts what it makes: then the next page is asked for
        // once the map has run.
        let mut early = None;
        if step.map.is_none() {
            let mut next = ask_next(state.counts.read + listed.len() as u64);
            // One poll with this task's waker, as the join below would.
            std::future::poll_fn(|cx| {
                let _ = next.as_mut().poll(cx);
                std::task::Poll::Ready(())
            })
            .await;
            early = Some(next);
        }
        let page = listed.check().map_err(|e| e.to_string())?;
        let records = match &step.map {
            Some(map) => {
                match map_page(&evaluator, map, page.records, scope, endpoint.name()).await {
                    Ok(records) => records,
                    Err(EvalError::Stopped) => {
                        return Ok(ctx.stop_reason().unwrap_or(StepEnd::Interrupted));
                    }
                    Err(e) => return Err(e.into_message().into()),
                }
            }
            None => page.records,
        };
        // The step's state after this page, committed with it: a run that
        // fails later keeps the progress of the pages before. Its job goes
        // to an evaluation thread now and is awaited only once the next
        // page is asked for, so the thread's wake-up and the evaluation
        // overlap the fetch instead of adding to every page.
        let mut evaluation = std::pin::pin!(page_state(
            &evaluator,
            step,
            scope,
            run_state,
            state.state_write.clone(),
            PageSeen {
                records: &records,
                reads_records: state_reads_records,
                cursor: page.next_cursor.as_deref(),
                number: state.pages + 1,
                plugin: endpoint.name(),
                dry_run: ctx.dry_run,
            },
        ));
        let started = futures_util::FutureExt::now_or_never(evaluation.as_mut());
        let mut next = match early {
            Some(next) => next,
            None => ask_next(state.counts.read + records.len() as u64),
        };
        let store = async {
            let evaluated = match started {
                Some(evaluated) => evaluated,
                None => evaluation.await,
            };
            match evaluated {
                Ok(write) => state.state_write = write,
                Err(PageStateError::Eval(EvalError::Stopped)) => {
                    return Ok(Some(ctx.stop_reason().unwrap_or(StepEnd::Interrupted)));
                }
                Err(PageStateError::Eval(e)) => return Err(e.into_message().into()),
                Err(PageStateError::Record(message)) => return Err(message.into()),
            }
            pages.append(&records)?;
            state.counts.read += records.len() as u64;
            state.pages += 1;
            state.cursor = page.next_cursor.clone();
            if pages.due(state) {
                pages.start_commit(ctx, state).await?;
            }
            Ok::<Option<StepEnd>, StepError>(None)
        };
        // The fetch is polled first, so a request not sent yet is on its
        // way before the store's own work starts.
        let ((), stored) = futures_util::future::join(next.as_mut(), store).await;
        if let Some(end) = stored? {
            return Ok(end);
        }
        ctx.observer.page_committed(step, state.counts.read);
        prefetched = next.as_mut().take_output().flatten();
        if state.cursor.is_none() {
            break;
        }
    }
    Ok(StepEnd::Done)
}

/// What a list step's `state` sees of the page just read, as `$page`.
struct PageSeen<'a> {
    records: &'a [String],
    /// Whether a state template reads `$page.records` (or `$page` whole):
    /// only then are the page's records parsed and handed over, so
    /// `$page.number` or `$page.cursor` alone costs no conversion of a
    /// thousand records a page.
    reads_records: bool,
    cursor: Option<&'a str>,
    number: u32,
    plugin: &'a str,
    dry_run: bool,
}

/// Why a page's state could not be evaluated.
enum PageStateError {
    Eval(EvalError),
    Record(String),
}

/// The step's state write after a page: `write` with the values the
/// step's `state` templates give for `page`. Nothing to do, and no
/// evaluation thread involved, when the step sets no state.
async fn page_state(
    evaluator: &Evaluator,
    step: &crate::workflow::Step,
    scope: &Scope,
    run_state: &super::state::RunState,
    mut write: Option<StateWrite>,
    page: PageSeen<'_>,
) -> Result<Option<StateWrite>, PageStateError> {
    if step.state.is_empty() {
        return Ok(write);
    }
    let parsed = if page.reads_records {
        page.records
            .iter()
            .map(|r| serde_json::from_str::<serde_json::Value>(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                PageStateError::Record(format!(
                    "a record of plugin {} is not JSON: {e}",
                    page.plugin
                ))
            })?
    } else {
        Vec::new()
    };
    let page_value = serde_json::json!({
        "records": parsed,
        "cursor": page.cursor,
        "number": page.number,
    });
    super::state::evaluate(
        evaluator,
        step,
        &scope.with_page(&page_value),
        run_state,
        &mut write,
        page.dry_run,
    )
    .await
    .map_err(PageStateError::Eval)?;
    Ok(write)
}

/// Applies `map` to each record of a page, in one job on an evaluation
/// thread, each record an evaluation with a budget of its own; a map with
/// no output drops the record, one with several outputs yields several.
async fn map_page(
    evaluator: &Evaluator,
    map: &Expr,
    records: Vec<String>,
    scope: &Scope,
    plugin: &str,
) -> Result<Vec<String>, EvalError> {
    let (map, scope, plugin) = (map.clone(), scope.clone(), plugin.to_owned());
    evaluator
        .run(move |session| {
            let mut out = Vec::with_capacity(records.len());
            for text in &records {
                let record = Val::parse(text)
                    .map_err(|e| format!("plugin {plugin}: list returned a record that is {e}"))?;
                session.evaluate(|ev| {
                    for value in ev.all("map", &map, record, &scope)? {
                        out.push(ev.json_text(&value));
                    }
                    Ok(())
                })?;
            }
            Ok(out)
        })
        .await
}

/// A list step's output file, with what has been written to it so far.
///
/// A step that starts writes to a file of its own beside the target
/// (`.NAME.RUN.STEP.partial`, created afresh, never through a link) and
/// renames it over the target when its first commit starts, then appends;
/// until then the target is untouched. A symbolic link at the target, or
/// anything but a regular file, is refused: the output goes where the
/// workflow says, not where a link points.
struct Output {
    writer: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    /// The file written to until it is renamed over `path`.
    partial: Option<PathBuf>,
    bytes: u64,
    crc: crc32fast::Hasher,
}

impl Drop for Output {
    fn drop(&mut self) {
        // Never published: the step failed or stopped before its first
        // commit, and what it wrote is of no use.
        if let Some(partial) = self.partial.take() {
            let _ = std::fs::remove_file(partial);
        }
    }
}

/// Refuses a target that is a symbolic link or not a regular file;
/// whether there is one.
fn check_target(path: &Path) -> Result<bool, String> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(format!(
            "refusing to write the output to {}: it is a symbolic link; name the file itself",
            path.display()
        )),
        Ok(meta) if !meta.is_file() => Err(format!(
            "refusing to write the output to {}: it is not a regular file",
            path.display()
        )),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

impl Output {
    /// Opens the output file. A resumed step keeps the bytes its last
    /// commit covers when they are intact and appends after them; otherwise
    /// it rewrites the file from the records in the store, or, when the
    /// store has none, reads the list again from the start.
    async fn open(
        path: &Path,
        ctx: &RunCtx<'_>,
        state: &mut StepState,
    ) -> Result<Output, StepError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        check_target(path)?;
        if state.pages > 0 {
            if let Some(mark) = state.output_file
                && let Some(output) = Output::reopen(path, mark)?
            {
                return Ok(output);
            }
            if !state.records_kept {
                tracing::warn!(path = %path.display(), "the output file no longer holds what the run wrote; reading the list again from the start");
                state.counts.read = 0;
                state.pages = 0;
                state.cursor = None;
                state.output_file = None;
            }
        }
        let partial = partial_path(path, ctx.run_id, state.index)?;
        // Left by an attempt of this step that died: ours by its name.
        match std::fs::remove_file(&partial) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", partial.display()).into()),
        }
        // `create_new` is O_CREAT|O_EXCL: it never follows a link.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        // A page (about 60 KB of Stripe customers) in one write.
        let mut output = Output {
            writer: std::io::BufWriter::with_capacity(256 << 10, file),
            path: path.to_path_buf(),
            partial: Some(partial),
            bytes: 0,
            crc: crc32fast::Hasher::new(),
        };
        if state.pages > 0 {
            let mut pages = ctx.store.pages(ctx.run_id, state.index).await?;
            while let Some(page) = pages.next_page().await {
                let page = page?;
                let records: Vec<&RawValue> = serde_json::from_str(&page)
                    .map_err(|e| format!("run store: a committed page does not parse: {e}"))?;
                for record in records {
                    output.write_line(record.get())?;
                }
            }
            // What the store has committed: it replaces the target now.
            output.publish()?;
        }
        Ok(output)
    }

    /// Renames the file written so far over the target, once.
    fn publish(&mut self) -> Result<(), String> {
        let Some(partial) = self.partial.as_ref() else { return Ok(()) };
        self.writer.flush().map_err(|e| self.failed(e))?;
        check_target(&self.path)?;
        std::fs::rename(partial, &self.path).map_err(|e| {
            format!("cannot rename {} to {}: {e}", partial.display(), self.path.display())
        })?;
        self.partial = None;
        Ok(())
    }

    /// The file cut back to what `mark` covers, if those bytes are intact.
    fn reopen(path: &Path, mark: OutputMark) -> Result<Option<Output>, String> {
        let failed = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
        let mut file = match std::fs::OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(failed(e)),
        };
        // Opening followed whatever is at the path; nothing is written
        // unless the file opened is the regular file at the path itself.
        if !same_file(&file, path).map_err(failed)? {
            return Err(format!(
                "refusing to write the output to {}: it is a symbolic link or changed while it was opened",
                path.display()
            ));
        }
        if file.metadata().map_err(failed)?.len() < mark.bytes {
            return Ok(None);
        }
        let mut crc = crc32fast::Hasher::new();
        let mut left = mark.bytes;
        let mut buffer = vec![0; 256 << 10];
        while left > 0 {
            let want = buffer.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            file.read_exact(&mut buffer[..want]).map_err(failed)?;
            crc.update(&buffer[..want]);
            left -= want as u64;
        }
        if crc.clone().finalize() != mark.crc32 {
            return Ok(None);
        }
        file.set_len(mark.bytes).map_err(failed)?;
        file.seek(std::io::SeekFrom::Start(mark.bytes)).map_err(failed)?;
        Ok(Some(Output {
            writer: std::io::BufWriter::with_capacity(256 << 10, file),
            path: path.to_path_buf(),
            partial: None,
            bytes: mark.bytes,
            crc,
        }))
    }

    fn write_line(&mut self, record: &str) -> Result<(), String> {
        self.writer
            .write_all(record.as_bytes())
            .and_then(|()| self.writer.write_all(b"\n"))
            .map_err(|e| self.failed(e))?;
        self.crc.update(record.as_bytes());
        self.crc.update(b"\n");
        self.bytes += record.len() as u64 + 1;
        Ok(())
    }

    /// Writes a page's records, one a line, through to the file.
    fn write_page(&mut self, records: &[String]) -> Result<(), String> {
        for record in records {
            self.write_line(record)?;
        }
        self.writer.flush().map_err(|e| self.failed(e))
    }

    fn mark(&self) -> OutputMark {
        OutputMark { bytes: self.bytes, crc32: self.crc.clone().finalize() }
    }

    fn failed(&self, e: std::io::Error) -> String {
        format!("cannot write {}: {e}", self.path.display())
    }
}

/// Where a step writes its output before the first commit: beside the
/// target, so the rename stays on one filesystem.
fn partial_path(path: &Path, run: &str, step: u32) -> Result<PathBuf, String> {
    let name = path
        .file_name()
        .ok_or_else(|| format!("the output path {} names no file", path.display()))?;
    Ok(path.with_file_name(format!(".{}.{run}.{step}.partial", name.to_string_lossy())))
}

/// Whether `file` is the regular file at `path`, reached without a link.
#[cfg(unix)]
fn same_file(file: &std::fs::File, path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let opened = file.metadata()?;
    let at_path = std::fs::symlink_metadata(path)?;
    Ok(at_path.is_file() && opened.dev() == at_path.dev() && opened.ino() == at_path.ino())
}

/// Whether `file` is the regular file at `path`, reached without a link.
#[cfg(not(unix))]
fn same_file(_file: &std::fs::File, path: &Path) -> std::io::Result<bool> {
    Ok(std::fs::symlink_metadata(path)?.is_file())
}
