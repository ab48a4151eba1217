//! The one view of a Node's and a Pod's condition the helpers work on.

use k8s_openapi::api::core::v1::{NodeCondition, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A status condition: `type` is its merge key in the API.
pub trait Condition: Clone {
    fn type_(&self) -> &str;
    fn status(&self) -> &str;
    fn last_transition_time(&self) -> Option<&Time>;
    fn set_last_transition_time(&mut self, t: Option<Time>);
    /// When it was last checked: `lastHeartbeatTime` of a Node's,
    /// `lastProbeTime` of a Pod's.
    fn set_checked(&mut self, t: Option<Time>);
    /// One element of a strategic merge: what `patch` sets wins, what it
    /// leaves out (None) is kept.
    fn merge_from(&mut self, patch: &Self);
}

/// A field of a strategic merge: the patch's value when it has one.
fn keep_or<T: Clone>(live: &mut Option<T>, patch: &Option<T>) {
    if patch.is_some() {
        live.clone_from(patch);
    }
}

impl Condition for NodeCondition {
    fn type_(&self) -> &str {
        &self.type_
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn last_transition_time(&self) -> Option<&Time> {
        self.last_transition_time.as_ref()
    }
    fn set_last_transition_time(&mut self, t: Option<Time>) {
        self.last_transition_time = t;
    }
    fn set_checked(&mut self, t: Option<Time>) {
        self.last_heartbeat_time = t;
    }
    fn merge_from(&mut self, patch: &Self) {
        // type is the merge key and status is required: both equal or set.
        self.type_.clone_from(&patch.type_);
        self.status.clone_from(&patch.status);
        keep_or(&mut self.reason, &patch.reason);
        keep_or(&mut self.message, &patch.message);
        keep_or(&mut self.last_heartbeat_time, &patch.last_heartbeat_time);
        keep_or(&mut self.last_transition_time, &patch.last_transition_time);
    }
}

impl Condition for PodCondition {
    fn type_(&self) -> &str {
        &self.type_
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn last_transition_time(&self) -> Option<&Time> {
        self.last_transition_time.as_ref()
    }
    fn set_last_transition_time(&mut self, t: Option<Time>) {
        self.last_transition_time = t;
    }
    fn set_checked(&mut self, t: Option<Time>) {
        self.last_probe_time = t;
    }
    fn merge_from(&mut self, patch: &Self) {
        self.type_.clone_from(&patch.type_);
        self.status.clone_from(&patch.status);
        keep_or(&mut self.reason, &patch.reason);
        keep_or(&mut self.message, &patch.message);
        keep_or(&mut self.last_probe_time, &patch.last_probe_time);
        keep_or(&mut self.last_transition_time, &patch.last_transition_time);
        keep_or(&mut self.observed_generation, &patch.observed_generation);
    }
}

/// A condition status from a bool, as the API spells it.
pub fn status_of(ok: bool) -> &'static str {
    if ok { "True" } else { "False" }
}

/// The conditions of a status as JSON (`status.conditions`, or null).
/// An element that does not read as a condition is left out: it has no
/// transition time worth keeping, and one bad element must not cost the
/// others theirs.
pub fn parse<C: Condition + DeserializeOwned>(conditions: &Value) -> Vec<C> {
    conditions
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| serde_json::from_value::<C>(c.clone()).ok())
        // k8s-openapi reads a missing `type` as ""; without its merge key
        // it is no condition.
        .filter(|c| !c.type_().is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_skips_what_is_not_a_condition() {
        let v = json!([
            {"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"},
            {"status": "True"},
            {"type": "DiskPressure", "status": "False", "lastTransitionTime": null},
            "junk"
        ]);
        let cs: Vec<NodeCondition> = parse(&v);
        let types: Vec<&str> = cs.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "DiskPressure"]);
        assert!(cs[0].last_transition_time.is_some());
        assert!(cs[1].last_transition_time.is_none());
        assert!(parse::<PodCondition>(&Value::Null).is_empty());
    }

    #[test]
    fn merge_from_keeps_what_the_patch_leaves_out() {
        let t = |s: &str| Some(Time(s.parse().expect("time")));
        let mut live = NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: "True".into(),
            reason: Some("NoRouteCreated".into()),
            last_heartbeat_time: t("2020-01-01T00:00:00Z"),
            last_transition_time: t("2020-01-01T00:00:00Z"),
            ..NodeCondition::default()
        };
        live.merge_from(&NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: "False".into(),
            reason: Some("RouteCreated".into()),
            last_transition_time: t("2021-01-01T00:00:00Z"),
            ..NodeCondition::default()
        });
        assert_eq!(live.status, "False");
        assert_eq!(live.reason.as_deref(), Some("RouteCreated"));
        assert_eq!(live.last_heartbeat_time, t("2020-01-01T00:00:00Z"));
        assert_eq!(live.last_transition_time, t("2021-01-01T00:00:00Z"));
    }
}
