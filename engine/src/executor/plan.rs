//! What a dry run would do, and the field diff that both a dry run and a
//! sync use to tell an update from a record already as wanted.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

impl From<PlannedAction> for crate::store::ItemAction {
    fn from(action: PlannedAction) -> Self {
        use crate::store::ItemAction;
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
    /// The op cannot be undone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub irreversible: bool,
}

/// Entries kept as samples per step.
const SAMPLES: usize = 5;

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

/// The one rule for "unchanged", compiled from the connector SDK's own
/// file so that the engine's dry runs and syncs and every connector's upsert
/// judge a record the same way (its rules are in the module's docs).
#[path = "../../../plugins/sdk/src/same.rs"]
pub mod same;

/// The fields of `desired` whose values `current` does not already hold,
/// as dotted paths, by the rules of [`same`]: objects compare field by field
/// (fields only `current` has are left alone, as an upsert would leave
/// them), blanks (`null`, `""`, `[]`, `{}`, absent) match each other,
/// numbers compare by value and a scalar of another type as text (`5`
/// matches `"5"`), arrays compare whole.
pub fn changed_fields(desired: &Value, current: &Value) -> Vec<String> {
    same::changed_fields(desired, current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_fields_that_differ_are_changes() {
        let current = json!({"id": "c1", "name": "Ada", "email": "ada@x", "metadata": {"plan": "pro", "seats": 3}, "extra": true});
        assert!(
            changed_fields(&json!({"name": "Ada", "metadata": {"plan": "pro"}}), &current)
                .is_empty()
        );
        assert_eq!(
            changed_fields(&json!({"name": "Ada L", "metadata": {"seats": 4}}), &current),
            vec!["metadata.seats", "name"]
        );
        assert_eq!(changed_fields(&json!({"phone": "1"}), &current), vec!["phone"]);
        assert!(changed_fields(&json!({"phone": null}), &current).is_empty());
        assert!(changed_fields(&json!({"metadata": {"seats": 3.0}}), &current).is_empty());
    }

    #[test]
    fn blanks_and_numbers_as_text_are_unchanged_as_the_connectors_judge_them() {
        // The regression: a dry run planned these as updates that the real
        // run then reported as `unchanged`.
        let current = json!({"name": "", "email": null, "custom_variables": {"seats": "5", "vip": "true"}, "preferred_locales": []});
        let desired = json!({"name": null, "email": "", "custom_variables": {"seats": 5, "vip": true}, "preferred_locales": null});
        assert!(
            changed_fields(&desired, &current).is_empty(),
            "{:?}",
            changed_fields(&desired, &current)
        );
    }

    #[test]
    fn a_plan_counts_samples_and_lists_every_irreversible_op() {
        let mut plan = StepPlan::default();
        for i in 0..8 {
            plan.add(PlanEntry {
                action: PlannedAction::Remove,
                key: Some(format!("k{i}")),
                changes: vec![],
                record: None,
                irreversible: true,
            });
        }
        plan.add(PlanEntry {
            action: PlannedAction::Unchanged,
            key: None,
            changes: vec![],
            record: None,
            irreversible: false,
        });
        assert_eq!((plan.remove, plan.unchanged, plan.writes()), (8, 1, 8));
        assert_eq!(plan.irreversible.len(), 8);
        assert_eq!(plan.samples.len(), SAMPLES);
    }
}
