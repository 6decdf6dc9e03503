//! Workflow state that carries from run to run: the named values a
//! workflow declares (`[state.NAME]`), the version that every change
//! bumps, and who changed it last. A step's change is committed in the
//! same transaction as the step (or the page of a list) that made it, and
//! only if nobody else changed the state since the run read it: the
//! compare-and-set that keeps two runs from both advancing it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{StoreError, now_ms};

/// The stored state of one workflow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowState {
    /// The values set so far, by name (a name never set reads its
    /// declared default).
    pub values: BTreeMap<String, Value>,
    /// Bumped by every change; 0 before the first.
    pub version: u64,
    /// The run whose step made the last change (`None` after a change by
    /// hand, `weft state set|reset`).
    pub run: Option<String>,
    /// The step that made it.
    pub step: Option<String>,
    /// Unix milliseconds of the last change.
    pub updated_ms: Option<u64>,
}

/// A step's change to its workflow's state, kept in the step's own state so
/// that it is committed with it (and `weft runs show` shows it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateWrite {
    /// The workflow whose state it changes.
    pub workflow: String,
    /// The state's version when the run read it: the change applies only
    /// if the state is still at it, or this run made every change since.
    pub base: u64,
    /// The values the step set (the latest of each).
    pub values: BTreeMap<String, Value>,
    /// What those names held before the step first set them.
    pub before: BTreeMap<String, Value>,
    /// A dry run's change: shown, never stored in the workflow's state.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub planned: bool,
}

impl WorkflowState {
    /// The state after `write`, made by step `step` of `run`, or the
    /// conflict that refuses it. `None` when the state already holds the
    /// change (a step committed again).
    pub fn after(
        &self,
        run: &str,
        step: &str,
        write: &StateWrite,
    ) -> Result<Option<WorkflowState>, StoreError> {
        let ours = self.run.as_deref() == Some(run);
        if self.version != write.base && !ours {
            return Err(StoreError::StateConflict {
                workflow: write.workflow.clone(),
                read: write.base,
                found: self.version,
                by: self.run.clone(),
            });
        }
        if ours && write.values.iter().all(|(name, value)| self.values.get(name) == Some(value)) {
            return Ok(None);
        }
        let mut next = self.clone();
        next.values.extend(write.values.iter().map(|(k, v)| (k.clone(), v.clone())));
        next.version = self.version + 1;
        next.run = Some(run.to_owned());
        next.step = Some(step.to_owned());
        next.updated_ms = Some(now_ms());
        Ok(Some(next))
    }

    /// The state after a change by hand: `set` names set (or, `None`,
    /// reset to their defaults); `reset_all` drops every value first.
    pub fn edited(&self, set: &BTreeMap<String, Option<Value>>, reset_all: bool) -> WorkflowState {
        let mut next = self.clone();
        if reset_all {
            next.values.clear();
        }
        for (name, value) in set {
            match value {
                Some(value) => next.values.insert(name.clone(), value.clone()),
                None => next.values.remove(name),
            };
        }
        next.version = self.version + 1;
        next.run = None;
        next.step = None;
        next.updated_ms = Some(now_ms());
        next
    }
}

/// The sled key of a workflow's state.
pub(super) fn key(workflow: &str) -> Vec<u8> {
    workflow.as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(base: u64, since: i64) -> StateWrite {
        StateWrite {
            workflow: "w".into(),
            base,
            values: BTreeMap::from([("since".to_owned(), json!(since))]),
            before: BTreeMap::new(),
            planned: false,
        }
    }

    #[test]
    fn a_change_applies_on_the_version_read_or_after_the_runs_own_changes() {
        let start = WorkflowState::default();
        let first = start.after("r1", "copy", &write(0, 5)).ok().flatten();
        let first = first.expect("applies on the version read");
        assert_eq!((first.version, first.values.get("since")), (1, Some(&json!(5))));
        // The same run goes on changing it (a list's next page).
        let second = first.after("r1", "copy", &write(0, 9)).ok().flatten().expect("own change");
        assert_eq!(second.version, 2);
        // Committed again unchanged: nothing to do.
        assert!(matches!(second.after("r1", "copy", &write(0, 9)), Ok(None)));
        // Another run that read version 0 is refused.
        let refused = second.after("r2", "copy", &write(0, 7));
        assert!(
            matches!(refused, Err(StoreError::StateConflict { read: 0, found: 2, .. })),
            "{refused:?}"
        );
        // A change by hand makes the run that read before it conflict too.
        let edited = second.edited(&BTreeMap::new(), true);
        assert!(edited.values.is_empty());
        assert!(edited.after("r1", "copy", &write(0, 11)).is_err());
    }
}
