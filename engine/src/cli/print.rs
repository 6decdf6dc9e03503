//! What `weft run` and `weft runs resume` print about a run: its steps as
//! they finish, progress, plans of a dry run, and the summary.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use weft::executor::{Observer, RunSummary, StepSummary};
use weft::store::{ConnectionTotals, RunRecord, Status, StepState};
use weft::workflow::{Action, Step, Workflow};

/// A file a list step wrote (`output`), for the summary.
#[derive(Debug, serde::Serialize)]
pub(crate) struct WrittenFile {
    /// The step.
    step: String,
    /// Where, as the workflow resolves it.
    path: PathBuf,
    /// Records in it.
    records: u64,
}

/// The output files the run's list steps wrote, in step order (a step that
/// did not start wrote none).
pub(crate) fn output_files(workflow: &Workflow, summary: &RunSummary) -> Vec<WrittenFile> {
    workflow
        .steps
        .iter()
        .zip(&summary.steps)
        .filter_map(|(step, done)| match &step.action {
            Action::List { output: Some(path), output_template, .. }
                if done.id == step.id
                    && !matches!(done.status, Status::Pending | Status::Skipped) =>
            {
                // A templated path is the one the step rendered.
                let path = match output_template {
                    Some(_) => PathBuf::from(done.output.as_ref()?.get("file")?.as_str()?),
                    None => path.clone(),
                };
                path.exists().then(|| WrittenFile {
                    step: step.id.clone(),
                    path,
                    records: done.counts.read,
                })
            }
            _ => None,
        })
        .collect()
}

/// Prints a run's summary: JSON on stdout, or lines on stderr.
pub(crate) fn report(summary: &RunSummary, written: &[WrittenFile], json: bool) -> Result<()> {
    if json {
        let mut value = serde_json::to_value(summary)?;
        if let Some(object) = value.as_object_mut() {
            object.insert("output_files".into(), serde_json::to_value(written)?);
            if let Some(peak) = peak_rss_bytes() {
                object.insert("peak_rss_bytes".into(), peak.into());
            }
        }
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut stdout, &value)?;
        writeln!(stdout)?;
    } else {
        print_summary(summary, written);
    }
    Ok(())
}

/// The process's peak resident memory (Linux), for the summary.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Shows a run as it goes, on stderr: each step as it finishes, and progress
/// every few seconds on a terminal.
pub(crate) struct Printer {
    quiet: bool,
    /// When progress was last shown, to show it every few seconds on a
    /// terminal and never in a log.
    last_progress: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Printer {
    /// A printer; a `quiet` one shows nothing (`--json`).
    pub(crate) fn new(quiet: bool) -> Self {
        Printer { quiet, last_progress: std::sync::Mutex::new(None) }
    }

    fn progress(&self, step: &Step, what: std::fmt::Arguments<'_>) {
        use std::io::IsTerminal as _;
        if self.quiet || !std::io::stderr().is_terminal() {
            return;
        }
        let Ok(mut last) = self.last_progress.lock() else { return };
        if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(2)) {
            return;
        }
        *last = Some(std::time::Instant::now());
        eprintln!("  ...  {:<16} {what}", step.id);
    }
}

impl Observer for Printer {
    fn run_started(&self, run: &RunRecord) {
        if !self.quiet {
            eprintln!(
                "run {}{}",
                run.id,
                if run.resumes > 0 {
                    format!(" (resumed, attempt {})", run.resumes + 1)
                } else {
                    String::new()
                }
            );
        }
    }

    fn page_committed(&self, step: &Step, records_so_far: u64) {
        self.progress(step, format_args!("{records_so_far} records read"));
    }

    fn items_committed(&self, step: &Step, done: u64) {
        self.progress(step, format_args!("{done} done"));
    }

    fn step_finished(&self, step: &Step, _state: &StepState, s: &StepSummary) {
        if self.quiet {
            return;
        }
        let mark = match s.status {
            Status::Succeeded => "ok  ",
            Status::Failed => "FAIL",
            Status::Skipped => "skip",
            Status::Running => "stop",
            _ => "--  ",
        };
        eprintln!(
            "  {mark} {:<16} {:<7} {:<28} {:<28} {:>6.1}s",
            step.id,
            s.op,
            s.target,
            counts(s),
            s.duration_ms as f64 / 1000.0
        );
        if let Some(error) = &s.error {
            eprintln!("       {error}");
        }
        if let Some(plan) = &s.plan {
            print_plan(plan);
        }
    }
}

fn print_plan(plan: &weft::executor::StepPlan) {
    let parts = nonzero(&[
        (plan.create, "would create"),
        (plan.update, "would update"),
        (plan.upsert, "would upsert"),
        (plan.remove, "would remove"),
        (plan.unchanged, "unchanged"),
        (plan.already_absent, "already absent"),
    ]);
    eprintln!(
        "       plan: {}",
        if parts.is_empty() { "no writes".to_owned() } else { parts.join(", ") }
    );
    for sample in &plan.samples {
        let key = sample.key.as_deref().unwrap_or("(matched by the connector)");
        let detail = if !sample.changes.is_empty() {
            format!("fields {}", sample.changes.join(", "))
        } else {
            let record = sample.record.as_ref().map(|r| r.to_string()).unwrap_or_default();
            record.chars().take(100).collect()
        };
        eprintln!("         e.g. {} {key} {detail}", sample.action.as_str());
    }
    if !plan.irreversible.is_empty() {
        eprintln!(
            "       irreversible ({}):",
            plan.irreversible.len() as u64 + plan.irreversible_not_listed
        );
        for entry in &plan.irreversible {
            eprintln!("         {} {}", entry.action.as_str(), entry.key.as_deref().unwrap_or("?"));
        }
        if plan.irreversible_not_listed > 0 {
            eprintln!("         … and {} more", plan.irreversible_not_listed);
        }
    }
}

fn counts(s: &StepSummary) -> String {
    let c = s.counts;
    let parts = nonzero(&[
        (c.read, "read"),
        (c.created, "created"),
        (c.updated, "updated"),
        (c.unchanged, "unchanged"),
        (c.removed, "removed"),
        (c.absent, "already absent"),
        (c.failed, "failed"),
    ]);
    if parts.is_empty() { "-".into() } else { parts.join(", ") }
}

/// One connection's figures on one line: "  stripe (stripe): 12 requests
/// (11 2xx, 1 4xx) in 840 ms, 1 throttled (429), 1 retries, 1200 ms
/// waiting; plugin calls: list 12 (900 ms, longest 120 ms)".
pub(super) fn connection_line(name: &str, t: &ConnectionTotals) -> String {
    let plugin = if t.plugin.is_empty() || t.plugin == name {
        String::new()
    } else {
        format!(" ({})", t.plugin)
    };
    let classes = t.statuses.iter().map(|(class, n)| format!("{n} {class}")).collect::<Vec<_>>();
    let classes =
        if classes.is_empty() { String::new() } else { format!(" ({})", classes.join(", ")) };
    let mut line = format!(
        "  {name}{plugin}: {} requests{classes} in {} ms, {} throttled (429), {} retries, {} ms waiting",
        t.requests, t.request_ms, t.throttled, t.retries, t.waited_ms
    );
    if t.denied > 0 {
        line.push_str(&format!(", {} refused by the host", t.denied));
    }
    if !t.calls.is_empty() {
        let calls = t
            .calls
            .iter()
            .map(|(op, c)| format!("{op} {} ({} ms, longest {} ms)", c.calls, c.ms, c.max_ms))
            .collect::<Vec<_>>();
        line.push_str(&format!("; plugin calls: {}", calls.join(", ")));
    }
    if !t.traps.is_empty() {
        let traps = t.traps.iter().map(|(cause, n)| format!("{n} {cause}")).collect::<Vec<_>>();
        line.push_str(&format!("; stopped: {}", traps.join(", ")));
    }
    line
}

/// "3 created", "1 failed", …: the counts that are not zero, in order.
fn nonzero(counts: &[(u64, &str)]) -> Vec<String> {
    counts.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect()
}

fn print_summary(summary: &RunSummary, written: &[WrittenFile]) {
    let status = match summary.status {
        Status::Running => "interrupted".to_owned(),
        other if summary.dry_run => format!("{} (dry run: nothing was written)", other.as_str()),
        other => other.as_str().to_owned(),
    };
    eprintln!("run {} {status} in {:.1}s", summary.run_id, summary.duration_ms as f64 / 1000.0);
    for (name, totals) in &summary.connections {
        eprintln!("{}", connection_line(name, totals));
    }
    for file in written {
        eprintln!("  wrote {} ({} records, step {})", file.path.display(), file.records, file.step);
    }
    if let Some(estimate) = &summary.estimate {
        print_estimate(estimate);
    }
    if let Some(error) = &summary.error {
        eprintln!("{error}");
    }
    if summary.status == Status::Running {
        eprintln!("resume it with: weft runs resume {}", summary.run_id);
    }
}

/// A dry run's estimate of the real run: requests, and time at the limits
/// in force, per connection and in all.
fn print_estimate(estimate: &weft::executor::estimate::PlanEstimate) {
    let time = |seconds: Option<f64>| match seconds {
        Some(s) => format!(
            "about {}",
            humantime::format_duration(std::time::Duration::from_secs(s.ceil() as u64))
        ),
        None => "time unknown: no limit in force, the limiter adapts to the vendor".to_owned(),
    };
    eprintln!(
        "the real run: about {} vendor requests, {}",
        estimate.requests,
        time(estimate.seconds)
    );
    for (name, c) in &estimate.connections {
        let limits = if c.limits.is_empty() {
            "no limit".to_owned()
        } else {
            c.limits
                .iter()
                .map(|(class, rate)| format!("{class} {rate:.1}/s"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        eprintln!(
            "  {name:<12} {} reads, {} writes at {limits}: {}",
            c.reads,
            c.writes,
            time(c.seconds)
        );
    }
}
