//! The VLAN options, `vlan`, `vlanTrunk` and `preserveDefaultVlan`: their
//! validation (the reference's rules and messages) and what they ask of the
//! bridge and of its ports. No kernel access here.

use serde::{Deserialize, Serialize};

use crate::nl::VlanRange;

/// The highest VLAN ID a port may use (4095 is reserved).
const MAX_VID: i64 = 4094;

/// One `vlanTrunk` entry: `{"id": N}` or `{"minID": A, "maxID": B}` (both
/// forms may appear in one entry; an entry with neither adds nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct TrunkEntry {
    #[serde(rename = "minID", default, skip_serializing_if = "Option::is_none")]
    pub min_id: Option<i64>,
    #[serde(rename = "maxID", default, skip_serializing_if = "Option::is_none")]
    pub max_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
}

/// A VLAN option the reference refuses, with its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VlanError {
    #[error("invalid VLAN ID {0} (must be between 0 and 4094)")]
    Vlan(i64),
    #[error("incorrect trunk minID parameter")]
    TrunkMin,
    #[error("incorrect trunk maxID parameter")]
    TrunkMax,
    #[error("minID is greater than maxID in trunk parameter")]
    TrunkOrder,
    #[error("minID and maxID should be configured simultaneously, minID is missing")]
    TrunkMinMissing,
    #[error("minID and maxID should be configured simultaneously, maxID is missing")]
    TrunkMaxMissing,
    #[error("incorrect trunk id parameter")]
    TrunkId,
    #[error("cannot set vlan and vlanTrunk at the same time")]
    Both,
}

/// The checked VLAN options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanPlan {
    /// The access VLAN (`vlan`): the port's PVID, egress untagged; 0 = none.
    pub access: u16,
    /// The trunk VLANs (`vlanTrunk`), tagged; sorted, without duplicates.
    pub trunk: Vec<u16>,
    /// Keep the VLANs a new port gets from the bridge (its default PVID).
    pub preserve_default: bool,
    /// The bridge needs vlan_filtering: `vlan` is set or `vlanTrunk` is
    /// present, even empty (the reference's test).
    pub filtering: bool,
}

impl Default for VlanPlan {
    fn default() -> Self {
        VlanPlan {
            access: 0,
            trunk: Vec::new(),
            preserve_default: true,
            filtering: false,
        }
    }
}

fn vid(v: i64, err: VlanError) -> Result<u16, VlanError> {
    if (1..=MAX_VID).contains(&v) {
        u16::try_from(v).map_err(|_| err)
    } else {
        Err(err)
    }
}

/// The trunk's VLAN IDs, checked entry by entry in the reference's order.
fn collect_trunk(entries: &[TrunkEntry]) -> Result<Vec<u16>, VlanError> {
    let mut vids = std::collections::BTreeSet::new();
    for e in entries {
        match (e.min_id, e.max_id) {
            (Some(min), Some(max)) => {
                let min = vid(min, VlanError::TrunkMin)?;
                let max = vid(max, VlanError::TrunkMax)?;
                if max < min {
                    return Err(VlanError::TrunkOrder);
                }
                vids.extend(min..=max);
            }
            (None, Some(_)) => return Err(VlanError::TrunkMinMissing),
            (Some(_), None) => return Err(VlanError::TrunkMaxMissing),
            (None, None) => {}
        }
        if let Some(id) = e.id {
            vids.insert(vid(id, VlanError::TrunkId)?);
        }
    }
    Ok(vids.into_iter().collect())
}

impl VlanPlan {
    pub fn new(
        vlan: i64,
        trunk: Option<&[TrunkEntry]>,
        preserve_default: Option<bool>,
    ) -> Result<Self, VlanError> {
        if !(0..=MAX_VID).contains(&vlan) {
            return Err(VlanError::Vlan(vlan));
        }
        let access = u16::try_from(vlan).map_err(|_| VlanError::Vlan(vlan))?;
        let trunk_vids = trunk.map(collect_trunk).transpose()?.unwrap_or_default();
        // Only access or only trunk: a trunk that names no VLAN is no trunk.
        if access != 0 && !trunk_vids.is_empty() {
            return Err(VlanError::Both);
        }
        Ok(VlanPlan {
            access,
            trunk: trunk_vids,
            preserve_default: preserve_default.unwrap_or(true),
            filtering: access != 0 || trunk.is_some(),
        })
    }

    /// Whether a port's own VLANs are set (and so its defaults may go).
    pub fn configures_port(&self) -> bool {
        self.access != 0 || !self.trunk.is_empty()
    }

    /// Whether a new port's VLANs (the bridge's default PVID) are removed
    /// before ours are added.
    pub fn strips_defaults(&self) -> bool {
        self.configures_port() && !self.preserve_default
    }

    /// The VLAN entries a port gets, trunk runs as ranges.
    pub fn port_ranges(&self) -> Vec<VlanRange> {
        if self.access != 0 {
            return vec![access_range(self.access)];
        }
        let mut out: Vec<VlanRange> = Vec::new();
        for &v in &self.trunk {
            match out.last_mut() {
                Some(r) if r.last.checked_add(1) == Some(v) => r.last = v,
                _ => out.push(VlanRange {
                    first: v,
                    last: v,
                    pvid: false,
                    untagged: false,
                }),
            }
        }
        out
    }

    /// The host interface that holds the gateway addresses of an access
    /// VLAN: `<bridge>.<vlan>` (the reference's name), or `None` when they
    /// go on the bridge itself.
    pub fn gateway_ifname(&self, bridge: &str) -> Option<String> {
        (self.access != 0).then(|| format!("{bridge}.{}", self.access))
    }
}

/// The access VLAN entry: PVID and egress untagged.
pub fn access_range(vid: u16) -> VlanRange {
    VlanRange {
        first: vid,
        last: vid,
        pvid: true,
        untagged: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(json: &str) -> Vec<TrunkEntry> {
        serde_json::from_str(json).expect("trunk json")
    }

    fn plan(vlan: i64, t: Option<&str>) -> Result<VlanPlan, VlanError> {
        let entries = t.map(trunk);
        VlanPlan::new(vlan, entries.as_deref(), None)
    }

    #[test]
    fn vlan_range_is_the_references() {
        assert_eq!(plan(-1, None), Err(VlanError::Vlan(-1)));
        assert_eq!(plan(4095, None), Err(VlanError::Vlan(4095)));
        assert_eq!(
            VlanError::Vlan(4095).to_string(),
            "invalid VLAN ID 4095 (must be between 0 and 4094)"
        );
        let p = plan(0, None).expect("none");
        assert!(!p.filtering && !p.configures_port() && p.preserve_default);
        let p = plan(4094, None).expect("max");
        assert_eq!(p.port_ranges(), vec![access_range(4094)]);
        assert_eq!(p.gateway_ifname("cni0").as_deref(), Some("cni0.4094"));
    }

    #[test]
    fn trunk_entries_are_checked_in_the_references_order() {
        let cases = [
            (r#"[{"minID":0,"maxID":10}]"#, VlanError::TrunkMin),
            (r#"[{"minID":4095,"maxID":10}]"#, VlanError::TrunkMin),
            (r#"[{"minID":1,"maxID":4095}]"#, VlanError::TrunkMax),
            (r#"[{"minID":20,"maxID":10}]"#, VlanError::TrunkOrder),
            (r#"[{"maxID":10}]"#, VlanError::TrunkMinMissing),
            (r#"[{"minID":10}]"#, VlanError::TrunkMaxMissing),
            (r#"[{"id":0}]"#, VlanError::TrunkId),
            (r#"[{"id":4095}]"#, VlanError::TrunkId),
            // The range is checked before the id of the same entry.
            (r#"[{"minID":0,"maxID":1,"id":0}]"#, VlanError::TrunkMin),
            (r#"[{"id":5},{"minID":3}]"#, VlanError::TrunkMaxMissing),
        ];
        for (t, want) in cases {
            assert_eq!(plan(0, Some(t)), Err(want.clone()), "{t}");
        }
        assert_eq!(
            VlanError::TrunkMinMissing.to_string(),
            "minID and maxID should be configured simultaneously, minID is missing"
        );
    }

    #[test]
    fn trunk_vids_are_sorted_deduplicated_and_compressed() {
        let p = plan(
            0,
            Some(r#"[{"id":101},{"minID":200,"maxID":202},{"id":201},{"id":4},{},{"id":100}]"#),
        )
        .expect("trunk");
        assert_eq!(p.trunk, vec![4, 100, 101, 200, 201, 202]);
        let r = |first, last| VlanRange {
            first,
            last,
            pvid: false,
            untagged: false,
        };
        assert_eq!(p.port_ranges(), vec![r(4, 4), r(100, 101), r(200, 202)]);
        assert!(p.filtering && p.configures_port() && !p.strips_defaults());
        assert_eq!(p.gateway_ifname("cni0"), None);
        let all = plan(0, Some(r#"[{"minID":1,"maxID":4094}]"#)).expect("all");
        assert_eq!(all.port_ranges(), vec![r(1, 4094)]);
    }

    #[test]
    fn vlan_and_trunk_exclude_each_other_unless_the_trunk_is_empty() {
        assert_eq!(plan(100, Some(r#"[{"id":5}]"#)), Err(VlanError::Both));
        // An empty trunk turns filtering on but configures nothing.
        let p = plan(100, Some("[]")).expect("empty trunk");
        assert_eq!(p.port_ranges(), vec![access_range(100)]);
        let p = plan(0, Some(r#"[{}]"#)).expect("empty entry");
        assert!(p.filtering && !p.configures_port());
        assert!(p.port_ranges().is_empty());
    }

    #[test]
    fn preserve_default_vlan_defaults_to_true() {
        let p = VlanPlan::new(100, None, None).expect("plan");
        assert!(!p.strips_defaults());
        let p = VlanPlan::new(100, None, Some(false)).expect("plan");
        assert!(p.strips_defaults());
        // Without VLANs of its own a port keeps its defaults regardless.
        let p = VlanPlan::new(0, None, Some(false)).expect("plan");
        assert!(!p.strips_defaults());
    }
}
