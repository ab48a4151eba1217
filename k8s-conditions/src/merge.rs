//! Conditions after a strategic merge patch, as the API server holds
//! them (apimachinery's `mergeSlice` with merge key `type`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{Check, Condition, stamp};

/// `live` after a patch of `patch`: each patched condition merged into the
/// live one of its type, in the patch's order; the conditions the patch
/// leaves out keep the live order and are interleaved by where they
/// stood in the live list (apimachinery's `normalizeElementOrder`). A
/// condition new to the object goes before the live ones not yet placed,
/// as kube-apiserver puts it.
pub fn merge<C: Condition>(live: &[C], patch: &[C]) -> Vec<C> {
    let mut right: Vec<C> = Vec::with_capacity(patch.len());
    for p in patch {
        // A type twice in one patch merges into its first place.
        if let Some(r) = right.iter_mut().find(|r| r.type_() == p.type_()) {
            r.merge_from(p);
            continue;
        }
        right.push(match live.iter().find(|l| l.type_() == p.type_()) {
            Some(l) => {
                let mut m = l.clone();
                m.merge_from(p);
                m
            }
            None => p.clone(),
        });
    }
    let left: Vec<&C> = live
        .iter()
        .filter(|l| !patch.iter().any(|p| p.type_() == l.type_()))
        .collect();
    let pos = |c: &C| live.iter().position(|l| l.type_() == c.type_());
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut i, mut right) = (0, right.into_iter().peekable());
    loop {
        let take_left = match (left.get(i), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            // A live-only one goes first only when both stood in the live
            // list and it stood before.
            (Some(l), Some(r)) => matches!((pos(l), pos(r)), (Some(a), Some(b)) if a < b),
        };
        if take_left {
            out.extend(left.get(i).map(|l| (*l).clone()));
            i += 1;
        } else {
            out.extend(right.next());
        }
    }
    out
}

/// Sets one condition in `list` as a patch of it alone would: stamped
/// against what the list holds, then merged in.
pub fn set<C: Condition>(list: &mut Vec<C>, new: C, now: &Time, check: Check) {
    let c = stamp(list, new, now, check);
    *list = merge(list, std::slice::from_ref(&c));
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, PodCondition};

    fn pod(kind: &str, status: &str) -> PodCondition {
        PodCondition {
            type_: kind.into(),
            status: status.into(),
            ..PodCondition::default()
        }
    }

    fn types<C: Condition>(cs: &[C]) -> Vec<&str> {
        cs.iter().map(|c| c.type_()).collect()
    }

    #[test]
    fn new_conditions_go_before_the_live_ones_not_yet_placed() {
        // The stand-in's case, measured on kube-apiserver v1.36.
        let live = [pod("PodScheduled", "True"), pod("Ready", "False")];
        let patch = [pod("Initialized", "True"), pod("Ready", "True")];
        let out = merge(&live, &patch);
        assert_eq!(types(&out), ["Initialized", "PodScheduled", "Ready"]);
        assert_eq!(out[2].status, "True");
        let out = merge(&live, &[pod("Initialized", "True")]);
        assert_eq!(types(&out), ["Initialized", "PodScheduled", "Ready"]);
    }

    #[test]
    fn the_patch_order_wins_for_what_it_names() {
        let live = [pod("A", "True"), pod("B", "True"), pod("C", "True")];
        assert_eq!(
            types(&merge(&live, &[pod("C", "False"), pod("A", "False")])),
            ["B", "C", "A"]
        );
        assert_eq!(types(&merge(&live, &[pod("B", "False")])), ["A", "B", "C"]);
        assert_eq!(
            types(&merge(&live, &[pod("D", "True"), pod("B", "False")])),
            ["D", "A", "B", "C"]
        );
        assert_eq!(types(&merge::<PodCondition>(&[], &live)), ["A", "B", "C"]);
        assert_eq!(types(&merge(&live, &[])), ["A", "B", "C"]);
    }

    #[test]
    fn a_type_twice_in_a_patch_is_one_condition() {
        let out = merge(
            &[],
            &[pod("A", "True"), pod("B", "True"), pod("A", "False")],
        );
        assert_eq!(types(&out), ["A", "B"]);
        assert_eq!(out[0].status, "False");
    }

    #[test]
    fn set_keeps_the_transition_and_what_the_patch_leaves_out() {
        let t = |s: &str| Some(Time(s.parse().expect("time")));
        let mut list = vec![
            NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_heartbeat_time: t("2020-01-01T00:00:00Z"),
                last_transition_time: t("2020-01-01T00:00:00Z"),
                ..NodeCondition::default()
            },
            NodeCondition {
                type_: "NetworkUnavailable".into(),
                status: "True".into(),
                last_heartbeat_time: t("2020-01-01T00:00:00Z"),
                last_transition_time: t("2020-01-01T00:00:00Z"),
                ..NodeCondition::default()
            },
        ];
        let now = Time("2024-01-01T00:00:00Z".parse().expect("time"));
        let ready = NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..NodeCondition::default()
        };
        set(&mut list, ready, &now, Check::Now);
        assert_eq!(types(&list), ["Ready", "NetworkUnavailable"]);
        assert_eq!(list[0].last_transition_time, t("2020-01-01T00:00:00Z"));
        assert_eq!(list[0].last_heartbeat_time, Some(now.clone()));
        let routed = NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: "False".into(),
            ..NodeCondition::default()
        };
        set(&mut list, routed, &now, Check::Unset);
        assert_eq!(list[1].last_transition_time, Some(now.clone()));
        // Not in the patch: the server keeps the old heartbeat.
        assert_eq!(list[1].last_heartbeat_time, t("2020-01-01T00:00:00Z"));
        let disk = NodeCondition {
            type_: "DiskPressure".into(),
            status: "False".into(),
            ..NodeCondition::default()
        };
        set(&mut list, disk, &now, Check::Now);
        assert_eq!(
            types(&list),
            ["DiskPressure", "Ready", "NetworkUnavailable"]
        );
    }
}
