//! A step's `state`: the workflow's state values it sets, evaluated once
//! the step succeeded (for a list step, after each page) and committed with
//! the step, or the page, by the store (see [`crate::store::state`]).

use serde_json::{Map, Value};

use crate::expr::{EvalError, Evaluator, Scope};
use crate::store::{StateWrite, WorkflowState};
use crate::workflow::{Step, Workflow};

/// The workflow's state as this attempt of a run read it, with the
/// changes its steps made since.
#[derive(Debug, Clone)]
pub(crate) struct RunState {
    /// The workflow's name.
    pub(crate) workflow: String,
    /// Every declared value: stored, else its default.
    pub(crate) values: Map<String, Value>,
    /// The stored version the run read.
    pub(crate) version: u64,
}

impl RunState {
    /// The state as a run of `workflow` reads it from `stored`.
    pub(crate) fn read(workflow: &Workflow, stored: &WorkflowState) -> RunState {
        RunState {
            workflow: workflow.name.clone(),
            values: workflow.state_values(&stored.values),
            version: stored.version,
        }
    }

    /// The values a step sees: these, with the step's own changes so far.
    pub(crate) fn seen_by(&self, write: Option<&StateWrite>) -> Value {
        let mut values = self.values.clone();
        if let Some(write) = write {
            values.extend(write.values.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Value::Object(values)
    }

    /// Takes a finished step's changes into what later steps read.
    pub(crate) fn absorb(&mut self, write: Option<&StateWrite>) {
        if let Some(write) = write {
            self.values.extend(write.values.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
}

/// Evaluates `step`'s `state` templates in `scope` (with `$state` as the
/// step sees it) and records the values in the step's [`StateWrite`], to be
/// committed with it. A dry run's change is marked planned: the store never
/// applies it. Nothing is recorded when no value changes.
pub(crate) async fn evaluate(
    evaluator: &Evaluator,
    step: &Step,
    scope: &Scope,
    run_state: &RunState,
    write: &mut Option<StateWrite>,
    dry_run: bool,
) -> Result<(), EvalError> {
    if step.state.is_empty() {
        return Ok(());
    }
    let seen = run_state.seen_by(write.as_ref());
    let scope = scope.with_state(&seen);
    let mut values = Vec::with_capacity(step.state.len());
    for (name, template) in &step.state {
        let value = evaluator.render(&format!("state.{name}"), template, &scope).await?;
        values.push((name.clone(), value));
    }
    for (name, value) in values {
        if seen.get(&name) == Some(&value)
            && write.as_ref().is_none_or(|w| !w.values.contains_key(&name))
        {
            continue;
        }
        let write = write.get_or_insert_with(|| StateWrite {
            workflow: run_state.workflow.clone(),
            base: run_state.version,
            planned: dry_run,
            ..StateWrite::default()
        });
        if !write.before.contains_key(&name) {
            let before = run_state.values.get(&name).cloned().unwrap_or(Value::Null);
            write.before.insert(name.clone(), before);
        }
        write.values.insert(name, value);
    }
    Ok(())
}
