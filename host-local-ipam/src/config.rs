//! The IPAM section and the request-time inputs (requested IPs from
//! `CNI_ARGS`, `args.cni.ips` and `runtimeConfig.ips`), validated completely
//! before anything touches the disk.

use std::net::IpAddr;
use std::path::PathBuf;

use cni_protocol::args::CniArgs;
use cni_protocol::result::cidr::parse_cidr;
use cni_protocol::{Route, SpecVersion};
use serde::Deserialize;

use crate::error::IpamError;
use crate::range::{RangeSet, RangeSpec};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Deserialize, Default)]
struct NetRaw {
    #[serde(default)]
    name: String,
    ipam: Option<IpamRaw>,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: Option<RuntimeConfigRaw>,
    #[serde(default)]
    args: Option<ArgsRaw>,
}

#[derive(Deserialize, Default)]
struct IpamRaw {
    #[serde(default)]
    subnet: Option<String>,
    #[serde(rename = "rangeStart", default)]
    range_start: Option<String>,
    #[serde(rename = "rangeEnd", default)]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    routes: Option<Vec<Route>>,
    #[serde(rename = "dataDir", default)]
    data_dir: Option<String>,
    #[serde(rename = "resolvConf", default)]
    resolv_conf: Option<String>,
    #[serde(default)]
    ranges: Option<Vec<Vec<RangeRaw>>>,
}

#[derive(Deserialize, Default)]
struct RangeRaw {
    #[serde(default)]
    subnet: Option<String>,
    #[serde(rename = "rangeStart", default)]
    range_start: Option<String>,
    #[serde(rename = "rangeEnd", default)]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
}

#[derive(Deserialize, Default)]
struct RuntimeConfigRaw {
    #[serde(rename = "ipRanges", default)]
    ip_ranges: Option<Vec<Vec<RangeRaw>>>,
    #[serde(default)]
    ips: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
struct ArgsRaw {
    #[serde(default)]
    cni: Option<CniArgsRaw>,
}

#[derive(Deserialize, Default)]
struct CniArgsRaw {
    #[serde(default)]
    ips: Option<Vec<String>>,
}

/// An address the caller asked for, and where it came from (for the code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestedIp {
    pub ip: IpAddr,
    pub from_env: bool,
}

#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub network: String,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<String>,
    pub routes: Option<Vec<Route>>,
    pub range_sets: Vec<RangeSet>,
    /// Per range set, the requested address that falls in it.
    pub requested: Vec<Option<RequestedIp>>,
}

fn parse_ip(s: &str, what: &str) -> Result<Option<IpAddr>, IpamError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| IpamError::InvalidRange(format!("invalid IP address {s:?} in {what}")))
}

fn range_spec(raw: &RangeRaw) -> Result<RangeSpec, IpamError> {
    let subnet = match raw.subnet.as_deref() {
        None | Some("") => None,
        Some(s) => Some(parse_cidr(s).map_err(IpamError::InvalidRange)?),
    };
    Ok(RangeSpec {
        subnet,
        start: raw
            .range_start
            .as_deref()
            .map(|s| parse_ip(s, "rangeStart"))
            .transpose()?
            .flatten(),
        end: raw
            .range_end
            .as_deref()
            .map(|s| parse_ip(s, "rangeEnd"))
            .transpose()?
            .flatten(),
        gateway: raw
            .gateway
            .as_deref()
            .map(|s| parse_ip(s, "gateway"))
            .transpose()?
            .flatten(),
    })
}

fn range_specs(sets: &[Vec<RangeRaw>]) -> Result<Vec<Vec<RangeSpec>>, IpamError> {
    sets.iter()
        .map(|set| set.iter().map(range_spec).collect())
        .collect()
}

/// `runtimeConfig.ips` entries may carry a prefix (`10.1.2.3/24`).
fn parse_ip_or_cidr(s: &str) -> Option<IpAddr> {
    s.parse()
        .ok()
        .or_else(|| parse_cidr(s).ok().map(|n| n.ip()))
}

impl IpamConfig {
    /// Parses and validates; `cni_args` is the raw `CNI_ARGS`.
    pub fn load(stdin: &[u8], cni_args: &str, version: SpecVersion) -> Result<Self, IpamError> {
        let net: NetRaw =
            serde_json::from_slice(stdin).map_err(|e| IpamError::InvalidConfig(e.to_string()))?;
        let ipam = net
            .ipam
            .ok_or_else(|| IpamError::InvalidConfig("IPAM config missing 'ipam' key".into()))?;
        let requested_raw = requested_ips(&net.args, &net.runtime_config, cni_args)?;

        // Order as in the reference: runtime ipRanges, the legacy single
        // range, then `ranges`.
        let mut specs: Vec<Vec<RangeSpec>> = Vec::new();
        if let Some(rc) = net
            .runtime_config
            .as_ref()
            .and_then(|r| r.ip_ranges.as_ref())
        {
            specs.extend(range_specs(rc)?);
        }
        if ipam.subnet.as_deref().is_some_and(|s| !s.is_empty()) {
            specs.push(vec![range_spec(&RangeRaw {
                subnet: ipam.subnet.clone(),
                range_start: ipam.range_start.clone(),
                range_end: ipam.range_end.clone(),
                gateway: ipam.gateway.clone(),
            })?]);
        }
        if let Some(ranges) = &ipam.ranges {
            specs.extend(range_specs(ranges)?);
        }
        if specs.is_empty() {
            return Err(IpamError::InvalidConfig("no IP ranges specified".into()));
        }
        let mut range_sets = Vec::with_capacity(specs.len());
        for (i, set) in specs.iter().enumerate() {
            let rs = RangeSet::canonicalize(set).map_err(|e| {
                // Keep one "invalid range:" prefix, not one per layer.
                let detail = match e {
                    IpamError::InvalidRange(m) => m,
                    other => other.to_string(),
                };
                IpamError::InvalidRange(format!("range set {i}: {detail}"))
            })?;
            range_sets.push(rs);
        }
        let v4 = range_sets.iter().filter(|r| r.is_ipv4()).count();
        if (v4 > 1 || range_sets.len() - v4 > 1) && version < SpecVersion::V0_3_0 {
            return Err(IpamError::InvalidConfig(format!(
                "CNI version {version} does not support more than 1 address per family"
            )));
        }
        for (i, a) in range_sets.iter().enumerate() {
            if let Some(j) = range_sets[i + 1..].iter().position(|b| a.overlaps(b)) {
                return Err(IpamError::InvalidRange(format!(
                    "range set {i} overlaps with {}",
                    i + j + 1
                )));
            }
        }
        let requested = assign_requested(&range_sets, &requested_raw)?;
        Ok(IpamConfig {
            network: net.name,
            data_dir: PathBuf::from(
                ipam.data_dir
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| DEFAULT_DATA_DIR.to_string()),
            ),
            resolv_conf: ipam.resolv_conf.filter(|r| !r.is_empty()),
            routes: ipam.routes,
            range_sets,
            requested,
        })
    }
}

fn requested_ips(
    args: &Option<ArgsRaw>,
    runtime: &Option<RuntimeConfigRaw>,
    cni_args: &str,
) -> Result<Vec<RequestedIp>, IpamError> {
    let mut out = Vec::new();
    let parsed = CniArgs::parse(cni_args)?;
    parsed.check_known(&["IP"])?;
    if let Some(ip) = parsed.get("IP").filter(|s| !s.is_empty()) {
        let ip = ip.parse().map_err(|_| IpamError::BadRequest {
            msg: format!("ARGS: error parsing value of pair \"IP={ip}\": invalid IP address"),
            from_env: true,
        })?;
        out.push(RequestedIp { ip, from_env: true });
    }
    let config_ips = args
        .iter()
        .flat_map(|a| a.cni.iter())
        .flat_map(|c| c.ips.iter().flatten())
        .map(|s| (s, s.parse::<IpAddr>().ok()))
        .chain(
            runtime
                .iter()
                .flat_map(|r| r.ips.iter().flatten())
                .map(|s| (s, parse_ip_or_cidr(s))),
        );
    for (raw, ip) in config_ips {
        let ip = ip.ok_or_else(|| IpamError::BadRequest {
            msg: format!("cannot understand ip: {raw:?}"),
            from_env: false,
        })?;
        if !out.iter().any(|r| r.ip == ip) {
            out.push(RequestedIp {
                ip,
                from_env: false,
            });
        }
    }
    Ok(out)
}

/// Maps each requested address to its range set, refusing what could never
/// be allocated: outside every range, the gateway, or two in one set.
fn assign_requested(
    sets: &[RangeSet],
    requested: &[RequestedIp],
) -> Result<Vec<Option<RequestedIp>>, IpamError> {
    let mut per_set = vec![None; sets.len()];
    for req in requested {
        let bad = |msg: String| IpamError::BadRequest {
            msg,
            from_env: req.from_env,
        };
        let Some(idx) = sets.iter().position(|s| s.contains(req.ip)) else {
            return Err(bad(format!(
                "requested IP {} is outside every range",
                req.ip
            )));
        };
        if sets[idx]
            .range_for(req.ip)
            .is_some_and(|r| r.gateway == req.ip)
        {
            return Err(bad(format!("requested ip {} is subnet's gateway", req.ip)));
        }
        if per_set[idx].is_some() {
            return Err(bad(format!(
                "failed to allocate all requested IPs: {} (range set {idx} already has one)",
                req.ip
            )));
        }
        per_set[idx] = Some(*req);
    }
    Ok(per_set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str, args: &str) -> Result<IpamConfig, IpamError> {
        IpamConfig::load(json.as_bytes(), args, SpecVersion::V0_3_1)
    }

    #[test]
    fn legacy_subnet_comes_after_runtime_ranges_and_before_ranges() {
        let c = load(
            r#"{"name":"n","ipam":{"subnet":"10.1.0.0/24","ranges":[[{"subnet":"10.2.0.0/24"}]]},
                "runtimeConfig":{"ipRanges":[[{"subnet":"10.3.0.0/24"}]]}}"#,
            "",
        )
        .expect("ok");
        let firsts: Vec<String> = c
            .range_sets
            .iter()
            .map(|s| s.0[0].subnet.to_string())
            .collect();
        assert_eq!(firsts, ["10.3.0.0/24", "10.1.0.0/24", "10.2.0.0/24"]);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn requested_ips_are_assigned_and_checked() {
        let base = r#"{"name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/120"}]]},
            "args":{"cni":{"ips":["fd00::5"]}}}"#;
        let c = load(base, "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.1.0.9").expect("ok");
        assert_eq!(
            c.requested[0].map(|r| r.ip.to_string()),
            Some("10.1.0.9".into())
        );
        assert_eq!(c.requested[1].map(|r| r.from_env), Some(false));
        assert!(matches!(
            load(base, "IP=10.9.0.1"),
            Err(IpamError::BadRequest { from_env: true, .. })
        ));
        assert!(matches!(
            load(base, "IP=10.1.0.1"),
            Err(IpamError::BadRequest { from_env: true, .. })
        ));
        assert!(load(base, "K8S_POD_NAME=x").is_err());
    }

    #[test]
    fn rejects_overlaps_and_missing_ranges() {
        assert!(load(r#"{"name":"n","ipam":{}}"#, "").is_err());
        assert!(load(r#"{"name":"n"}"#, "").is_err());
        let overlap = r#"{"name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/16"}],[{"subnet":"10.1.2.0/24"}]]}}"#;
        assert!(matches!(load(overlap, ""), Err(IpamError::InvalidRange(_))));
    }
}
