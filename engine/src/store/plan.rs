//! What a dry run would do, as stored with each step: counts per planned
//! action, a few samples, and every irreversible op.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ItemAction;

/// What a write would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlannedAction {
    /// A new record.
    Create,
    /// A change to fields of an existing record.
    Update,
    /// Nothing to change.
    Unchanged,
    /// An upsert the connector resolves itself (it matches on a field other
    /// than the id, such as Stripe's email): create or update.
    Upsert,
    /// A record removed.
    Remove,
    /// A remove of a record that is not there.
    AlreadyAbsent,
}

impl PlannedAction {
    /// The word used in item records and human output.
    pub fn as_str(self) -> &'static str {
        match self {
            PlannedAction::Create => "create",
            PlannedAction::Update => "update",
            PlannedAction::Unchanged => "unchanged",
            PlannedAction::Upsert => "upsert",
            PlannedAction::Remove => "remove",
            PlannedAction::AlreadyAbsent => "already-absent",
        }
    }
}

impl From<PlannedAction> for ItemAction {
    fn from(action: PlannedAction) -> Self {
        match action {
            PlannedAction::Create => ItemAction::Create,
            PlannedAction::Update => ItemAction::Update,
            PlannedAction::Unchanged => ItemAction::Unchanged,
            PlannedAction::Upsert => ItemAction::Upsert,
            PlannedAction::Remove => ItemAction::Remove,
            PlannedAction::AlreadyAbsent => ItemAction::AlreadyAbsent,
        }
    }
}

/// One planned write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanEntry {
    /// What it would do.
    pub action: PlannedAction,
    /// The record's key or id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The fields an update would change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// The record it would write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Value>,
    /// What an update's changed fields hold now, by dotted path (absent
    /// fields are `null`): the "before" beside the record's "after".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// The op cannot be undone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub irreversible: bool,
}

/// Entries kept as samples per step.
pub(crate) const SAMPLES: usize = 5;

/// Irreversible entries listed one by one before the rest are only counted.
const IRREVERSIBLE_LISTED: usize = 10_000;

/// What one step of a dry run would do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepPlan {
    /// Records that would be created.
    pub create: u64,
    /// Records that would be updated.
    pub update: u64,
    /// Records already as wanted.
    pub unchanged: u64,
    /// Upserts the connector would resolve (create or update).
    pub upsert: u64,
    /// Records that would be removed.
    pub remove: u64,
    /// Removes of records that are not there.
    pub already_absent: u64,
    /// A few of the writes, for a look.
    pub samples: Vec<PlanEntry>,
    /// Every irreversible op the run would make.
    pub irreversible: Vec<PlanEntry>,
    /// Irreversible ops beyond those listed.
    #[serde(skip_serializing_if = "is_zero")]
    pub irreversible_not_listed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl StepPlan {
    /// Adds one entry.
    pub fn add(&mut self, entry: PlanEntry) {
        match entry.action {
            PlannedAction::Create => self.create += 1,
            PlannedAction::Update => self.update += 1,
            PlannedAction::Unchanged => self.unchanged += 1,
            PlannedAction::Upsert => self.upsert += 1,
            PlannedAction::Remove => self.remove += 1,
            PlannedAction::AlreadyAbsent => self.already_absent += 1,
        }
        if entry.irreversible && entry.action == PlannedAction::Remove {
            if self.irreversible.len() < IRREVERSIBLE_LISTED {
                self.irreversible.push(PlanEntry { record: None, ..entry.clone() });
            } else {
                self.irreversible_not_listed += 1;
            }
        }
        let interesting =
            !matches!(entry.action, PlannedAction::Unchanged | PlannedAction::AlreadyAbsent);
        if interesting && self.samples.len() < SAMPLES {
            self.samples.push(entry);
        }
    }

    /// Writes the plan would make.
    pub fn writes(&self) -> u64 {
        self.create + self.update + self.upsert + self.remove
    }
}
