//! What a dry run would do, and the field diff that both a dry run and a
//! sync use to tell an update from a record already as wanted.

use serde_json::Value;

pub use crate::store::plan::{PlanEntry, PlannedAction, StepPlan};

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

/// The value at a dotted path (`metadata.plan`) of a record.
pub fn at_path<'a>(record: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(record, |at, field| at.get(field))
}

/// What `current` holds at each dotted path of `changes` (`null` where
/// nothing is), as an object keyed by the paths: an update's "before".
pub fn values_at(current: &Value, changes: &[String]) -> Option<Value> {
    if changes.is_empty() {
        return None;
    }
    let found = changes
        .iter()
        .map(|path| {
            let value = at_path(current, path).cloned().unwrap_or(Value::Null);
            (path.clone(), value)
        })
        .collect();
    Some(Value::Object(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::plan::SAMPLES;
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
        let changes = changed_fields(
            &json!({"name": "Ada L", "metadata": {"seats": 4}, "phone": "1"}),
            &current,
        );
        assert_eq!(
            values_at(&current, &changes),
            Some(json!({"metadata.seats": 3, "name": "Ada", "phone": null})),
            "the before of each changed field"
        );
        assert_eq!(values_at(&current, &[]), None);
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
                before: None,
                irreversible: true,
            });
        }
        plan.add(PlanEntry {
            action: PlannedAction::Unchanged,
            key: None,
            changes: vec![],
            record: None,
            before: None,
            irreversible: false,
        });
        assert_eq!((plan.remove, plan.unchanged, plan.writes()), (8, 1, 8));
        assert_eq!(plan.irreversible.len(), 8);
        assert_eq!(plan.samples.len(), SAMPLES);
    }
}
