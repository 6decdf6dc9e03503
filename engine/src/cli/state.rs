//! `weft state show|set|reset WORKFLOW`: a workflow's state across runs
//! (`[state.NAME]`), to inspect it and to repair it by hand. A change by
//! hand bumps the state's version, so a run that read the state before it
//! is refused its next change rather than overwriting the repair.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use weft::store::{RunStore, StoreError, StoreLocation, WorkflowState};
use weft::workflow::Workflow;

use super::{Global, store_location};
use crate::exit;

/// `weft state …`.
#[derive(Debug, Subcommand)]
pub(crate) enum StateCommand {
    /// Show a workflow's state: each value, its version, and which run and
    /// step changed it last.
    Show {
        /// The workflow's name, or its file (which adds the declared
        /// defaults of values never set).
        workflow: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set values by hand: NAME=VALUE, the value JSON (else a string).
    Set {
        /// The workflow's name, or its file.
        workflow: String,
        /// NAME=VALUE pairs.
        #[arg(required = true)]
        values: Vec<String>,
    },
    /// Reset the named values (all of them when none is named) to their
    /// declared defaults.
    Reset {
        /// The workflow's name, or its file.
        workflow: String,
        /// Names to reset; every value when none is given.
        names: Vec<String>,
    },
}

/// The workflow a command names: a file (loaded, for its name and
/// declared state) or a bare name.
fn named(text: &str) -> Result<(String, Option<Workflow>)> {
    let path = Path::new(text);
    if text.ends_with(".toml") || path.is_file() {
        let workflow = Workflow::load(path).with_context(|| format!("failed to load {text}"))?;
        return Ok((workflow.name.clone(), Some(workflow)));
    }
    Ok((text.to_owned(), None))
}

async fn open(location: &StoreLocation) -> Result<RunStore> {
    match location {
        StoreLocation::Sled(dir) => match RunStore::open(dir) {
            Ok(store) => Ok(store),
            Err(StoreError::Locked { .. }) => anyhow::bail!(
                "the run store at {} is held by a running weft serve; stop it to inspect or repair a workflow's state",
                dir.display()
            ),
            Err(e) => {
                Err(e).with_context(|| format!("failed to open the run store at {}", dir.display()))
            }
        },
        location => super::open_location(location).await,
    }
}

/// Runs a `weft state` command.
pub(crate) async fn state(global: &Global, command: StateCommand) -> Result<ExitCode> {
    let store = open(&store_location(global)?).await?;
    match command {
        StateCommand::Show { workflow, json } => {
            let (name, file) = named(&workflow)?;
            let stored = store.workflow_state(&name).await?;
            print_state(&name, file.as_ref(), &stored, json)?;
        }
        StateCommand::Set { workflow, values } => {
            let (name, file) = named(&workflow)?;
            let declared = declaring(&store, &name, file.as_ref()).await?;
            let mut set = BTreeMap::new();
            for pair in values {
                let Some((key, value)) = pair.split_once('=') else {
                    anyhow::bail!("{pair:?} is not NAME=VALUE");
                };
                if let Err(message) = check_declared(declared.as_ref(), key) {
                    eprintln!("error: {message}");
                    return Ok(ExitCode::from(exit::INVALID));
                }
                let value = serde_json::from_str(value)
                    .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
                set.insert(key.to_owned(), Some(value));
            }
            let stored = store.edit_workflow_state(&name, &set, false).await?;
            print_state(&name, file.as_ref(), &stored, false)?;
        }
        StateCommand::Reset { workflow, names } => {
            let (name, file) = named(&workflow)?;
            let declared = declaring(&store, &name, file.as_ref()).await?;
            for key in &names {
                if let Err(message) = check_declared(declared.as_ref(), key) {
                    eprintln!("error: {message}");
                    return Ok(ExitCode::from(exit::INVALID));
                }
            }
            let set = names.iter().map(|n| (n.clone(), None)).collect();
            let stored = store.edit_workflow_state(&name, &set, names.is_empty()).await?;
            print_state(&name, file.as_ref(), &stored, false)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The workflow whose `[state.NAME]` declarations a change is checked
/// against: the file when one was named, else the text the newest run of
/// the workflow recorded (what the next run would most likely load), else
/// none, and the change is not checked.
async fn declaring(
    store: &RunStore,
    name: &str,
    file: Option<&Workflow>,
) -> Result<Option<Workflow>> {
    if let Some(workflow) = file {
        return Ok(Some(workflow.clone()));
    }
    let page = store
        .query_runs(weft::store::RunQuery {
            workflow: Some(name.to_owned()),
            limit: 1,
            ..Default::default()
        })
        .await?;
    let Some(row) = page.rows.first() else { return Ok(None) };
    let run = store.run(&row.id).await?;
    // A recorded text that no longer loads declares nothing to check against.
    Ok(Workflow::parse(Path::new(&run.workflow_path), &run.workflow_text).ok())
}

/// Refuses a state name the workflow does not declare, naming those it does.
fn check_declared(workflow: Option<&Workflow>, key: &str) -> Result<(), String> {
    if let Some(workflow) = workflow
        && !workflow.state.iter().any(|s| s.name == key)
    {
        let declared: Vec<&str> = workflow.state.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "workflow {} declares no state {key:?}; declared: {}",
            workflow.name,
            if declared.is_empty() { "none".to_owned() } else { declared.join(", ") }
        ));
    }
    Ok(())
}

fn print_state(
    name: &str,
    file: Option<&Workflow>,
    stored: &WorkflowState,
    json: bool,
) -> Result<()> {
    // With the file, what a run would read: stored values over defaults.
    let values = match file {
        Some(workflow) => workflow.state_values(&stored.values),
        None => stored.values.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    if json {
        let shown = serde_json::json!({
            "workflow": name,
            "values": values,
            "version": stored.version,
            "run": stored.run,
            "step": stored.step,
            "updated_ms": stored.updated_ms,
        });
        outln!("{}", serde_json::to_string_pretty(&shown)?)?;
        return Ok(());
    }
    let by = match (&stored.run, &stored.step, stored.updated_ms) {
        (_, _, None) => "never changed".to_owned(),
        (Some(run), Some(step), Some(_)) => format!("last changed by run {run}, step {step}"),
        (_, _, Some(_)) => "last changed by hand".to_owned(),
    };
    outln!("state of {name}: version {}, {by}", stored.version)?;
    if values.is_empty() {
        outln!("  (no values)")?;
    }
    for (key, value) in &values {
        let default = if stored.values.contains_key(key) { "" } else { "  (default)" };
        outln!("  {key} = {value}{default}")?;
    }
    Ok(())
}
