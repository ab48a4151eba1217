//! The clocks of a freshly observed condition.

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::Condition;

/// Whether the observer checked the condition now (the kubelet's node
/// heartbeat), or leaves its check time to whoever owns it (a Node's
/// NetworkUnavailable is the route controller's; the kubelet never sets a
/// Pod condition's probe time). Left out of a patch, the server keeps its
/// value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Now,
    Unset,
}

/// `t` as the API keeps it: whole seconds (its wire format), so what is
/// compared here is what the server will hold.
pub fn time(t: SystemTime) -> Time {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    // Beyond jiff's range (years past 9999) is no clock of ours.
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// `new` stamped against the conditions the object has now: its
/// `lastTransitionTime` is the old one while the status is unchanged
/// (and the old one had a time), else `now`; its check time per `check`.
pub fn stamp<C: Condition>(old: &[C], mut new: C, now: &Time, check: Check) -> C {
    let since = old
        .iter()
        .find(|o| o.type_() == new.type_())
        .filter(|o| o.status() == new.status())
        .and_then(|o| o.last_transition_time().cloned())
        .unwrap_or_else(|| now.clone());
    new.set_last_transition_time(Some(since));
    new.set_checked(match check {
        Check::Now => Some(now.clone()),
        Check::Unset => None,
    });
    new
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, PodCondition};
    use std::time::Duration;

    fn t(s: &str) -> Time {
        Time(s.parse().expect("time"))
    }

    fn node(kind: &str, status: &str, since: Option<&str>) -> NodeCondition {
        NodeCondition {
            type_: kind.into(),
            status: status.into(),
            last_transition_time: since.map(t),
            ..NodeCondition::default()
        }
    }

    #[test]
    fn transition_time_holds_while_the_status_does() {
        let old = [
            node("MemoryPressure", "False", Some("2020-01-01T00:00:00Z")),
            node("Ready", "True", Some("2020-01-02T00:00:00Z")),
        ];
        let now = t("2024-01-01T00:00:00Z");
        let same = stamp(&old, node("Ready", "True", None), &now, Check::Now);
        assert_eq!(same.last_transition_time, Some(t("2020-01-02T00:00:00Z")));
        assert_eq!(same.last_heartbeat_time, Some(now.clone()));
        // The status changed: now.
        let flipped = stamp(&old, node("Ready", "False", None), &now, Check::Now);
        assert_eq!(flipped.last_transition_time, Some(now.clone()));
        // New, or the old had no time: now.
        let new = stamp(&old, node("DiskPressure", "False", None), &now, Check::Now);
        assert_eq!(new.last_transition_time, Some(now.clone()));
        let untimed = [node("Ready", "True", None)];
        let s = stamp(&untimed, node("Ready", "True", None), &now, Check::Now);
        assert_eq!(s.last_transition_time, Some(now.clone()));
    }

    #[test]
    fn the_check_time_is_set_or_left_to_its_owner() {
        let now = t("2024-01-01T00:00:00Z");
        let mut n = node("NetworkUnavailable", "False", None);
        n.last_heartbeat_time = Some(t("2020-01-01T00:00:00Z"));
        let n = stamp(&[], n, &now, Check::Unset);
        assert_eq!(n.last_heartbeat_time, None);
        let p = PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..PodCondition::default()
        };
        let old = [PodCondition {
            last_transition_time: Some(t("2020-01-01T00:00:00Z")),
            ..p.clone()
        }];
        let probed = stamp(&old, p.clone(), &now, Check::Now);
        assert_eq!(probed.last_probe_time, Some(now.clone()));
        assert_eq!(probed.last_transition_time, old[0].last_transition_time);
        assert_eq!(stamp(&old, p, &now, Check::Unset).last_probe_time, None);
    }

    #[test]
    fn time_is_whole_seconds() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_750);
        assert_eq!(time(at), t("2023-11-14T22:13:20Z"));
        let json = serde_json::to_value(time(at)).expect("json");
        assert_eq!(json, "2023-11-14T22:13:20Z");
    }
}
