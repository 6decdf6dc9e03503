//! What a dry run would do, and the field diff that both a dry run and a
//! sync use to tell an update from a record already as wanted.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

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

/// The top-level fields of the JSON object `text` that `wanted` names,
/// parsed; every other field is checked as JSON but not built. `Ok(None)`
/// when `text` is valid JSON but not an object (the caller parses it
/// whole). A field given twice keeps its last value, as a whole parse does.
///
/// A sync compares a target record only at the fields the desired record
/// sets (see [`changed_fields`]), so building the other twenty fields of a
/// vendor record for every matched key is wasted work.
pub fn object_fields(
    text: &str,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<Option<Value>, serde_json::Error> {
    if !text.trim_start().starts_with('{') {
        return Ok(None);
    }
    let mut parser = serde_json::Deserializer::from_str(text);
    let fields = parser.deserialize_any(Projection { wanted })?;
    parser.end()?;
    Ok(fields.map(Value::Object))
}

/// A map key, borrowed from the text unless it holds escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Builds an object of the wanted fields.
struct Projection<'w> {
    wanted: &'w dyn Fn(&str) -> bool,
}

impl<'de> Visitor<'de> for Projection<'_> {
    type Value = Option<Map<String, Value>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Map::new();
        while let Some(Key(key)) = map.next_key()? {
            if (self.wanted)(&key) {
                let value: Value = map.next_value()?;
                fields.insert(key.into_owned(), value);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Some(fields))
    }
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
    fn a_target_read_for_the_desired_fields_compares_as_the_whole_record() -> Result<(), String> {
        let current = r#"{"id": "c1", "name": "Ada", "email": "ada@x", "metadata": {"plan": "pro", "seats": 3},
            "phone": "", "tags": ["a"], "n": 5, "extra": {"deep": [1, {"x": null}]}, "na\u006de": "Esc", "n": "5"}"#;
        let whole: Value = serde_json::from_str(current).map_err(|e| e.to_string())?;
        let desired = [
            json!({"name": "Ada", "metadata": {"plan": "pro"}}),
            json!({"name": "Ada L", "metadata": {"seats": 4}, "phone": null}),
            json!({"n": 5, "tags": ["a"], "missing": ""}),
            json!({"n": "6", "extra": {"deep": [1, {"x": ""}]}}),
            json!({"metadata": null, "email": "ada@y"}),
            json!({}),
        ];
        for desired in &desired {
            let Value::Object(wanted) = desired else { return Err(format!("{desired}")) };
            let projected = object_fields(current, &|field| wanted.contains_key(field))
                .map_err(|e| e.to_string())?
                .ok_or("an object read as no object")?;
            let changes = changed_fields(desired, &whole);
            assert_eq!(changed_fields(desired, &projected), changes, "{desired}");
            assert_eq!(values_at(&projected, &changes), values_at(&whole, &changes), "{desired}");
        }
        // An escaped name is the field it spells, and the last of two wins.
        let both = object_fields(current, &|field| field == "name" || field == "n")
            .map_err(|e| e.to_string())?;
        assert_eq!(both, Some(json!({"name": "Esc", "n": "5"})));
        assert_eq!(both.as_ref().and_then(|b| b.get("name")), whole.get("name"));
        // Not an object: the caller parses it whole; bad JSON is an error.
        assert_eq!(object_fields(" [1, 2]", &|_| true).map_err(|e| e.to_string())?, None);
        assert_eq!(object_fields("5", &|_| true).map_err(|e| e.to_string())?, None);
        assert!(object_fields(r#"{"a": 1"#, &|_| true).is_err());
        assert!(object_fields(r#"{"a": 1} x"#, &|_| false).is_err());
        assert!(object_fields(r#"{"a": [1,}"#, &|_| false).is_err());
        Ok(())
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
