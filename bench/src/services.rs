//! node-sync's ClusterIP Services, nftables backend, with 10,000 Services
//! in the API: the full sync from a cold start, single endpoint changes,
//! peak memory.
//!
//! The node is node-sync's routes benchmark's ([`crate::node_sync::Env`]):
//! the API server stand-in, node inajob on a LAN netns, a relay to the API
//! on the node's own 127.0.0.1, the node's kubeconfig. Before node-sync
//! starts, `--services` Services are created in `default` through the
//! admin kubeconfig (concurrently, untimed): Service i has the clusterIP
//! 10.96.0.0 + 1 + i (inside 10.96.0.0/12) and one TCP port 80 -> 8080,
//! and an Endpoints object of the same name with three ready addresses,
//! 10.244.0.0 + 1 + 3i + {0,1,2}. No EndpointSlices: node-sync falls back
//! to the Endpoints. The addresses only exist in the node netns's table;
//! no traffic is sent.
//!
//! How each figure is taken:
//!
//! - Full sync: `node-sync --proxy-mode nftables run` is spawned in the node
//!   netns; its log says `services: nftables programmed services=N
//!   took=...` once the three watches (Services, EndpointSlices,
//!   Endpoints) have listed and its `nft -f` of the whole table returned.
//!   The log is read every 20 ms (the file, not the table); the line's own
//!   timestamp gives the wall time from spawn. Then the table's `services`
//!   map is counted once (`nft -j list map`), and `/metrics` is read for
//!   `node_sync_sync_duration_seconds{reconciler="services"}` while
//!   `node_sync_syncs_total{reconciler="services"}` is 1. The wall time
//!   splits into start (spawn -> `node-sync running`), list and model
//!   (-> the apply began: the line's time minus `took`) and apply
//!   (`took`: rendering plus `nft -f`). No netlink listener runs during
//!   the full sync: with one, the kernel would build a notification for
//!   each of its ~10^5 objects. Target: list complete -> programmed
//!   <= 2 s, taken as the apply (log and metric).
//! - Endpoint changes, `--changes` rounds 200 ms apart, each on another
//!   Service: even rounds replace one of its addresses with a new one,
//!   odd rounds remove one (two left). A netlink socket in the node netns
//!   subscribed to the nftables notifications (NFNLGRP_NFTABLES, what
//!   `nft monitor` reads; no polling) is opened after the full sync; each
//!   round is timed from just before the PATCH of the Endpoints until the
//!   kernel announces a rule with the new address in the service's chain,
//!   or the chain refilled with two endpoints (then the end of that
//!   transaction is awaited). The figure includes the API
//!   request. Rounds that began while node-sync had an `nft` child (its
//!   30-s resync reading the table back) are marked. Target: p50 and p99
//!   <= 50 ms. (`nft monitor` itself is no use here: with 10,000 services
//!   it fills its cache for minutes before it prints anything.)
//! - Peak RSS: VmHWM of the node-sync process after all of it (and after
//!   the full sync alone). Target <= 60 MiB.
//! - At the end the table is read back whole with node-sync's own code
//!   (`programmed_in`, what its 30-s resync runs) and compared with the
//!   Services and their (changed) Endpoints; the time it took and the peak
//!   RSS it caused in this process are reported.
//! - `nft` alone (unless `--no-nft-alone`), after node-sync stopped, in a
//!   scratch netns: the same table rendered with node-sync's own `render`
//!   and applied with one `nft -f` (with the user and system CPU time of
//!   `nft`), and single endpoint changes rendered with `render_changes`.

use std::io::{Read, Seek, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail, ensure};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use nix::sys::socket::SockProtocol;
use node_sync::services::nft::{programmed_in, render, render_changes};
use node_sync::services::{Proto, ServicePort};
use serde_json::{Value, json};

use crate::node_sync::{
    Env, Monitor, Reconciler, check_interrupt, epoch, loadavg, log_time, logged_at, memory,
    metrics, metrics_after, nl_attrs, nl_messages, plain, preflight, with_env,
};
use crate::stats::{median, ms, percentile, secs};

#[derive(clap::Args)]
pub struct Options {
    /// The node-sync binary (release: ./scripts/build-plugins.sh -p node-sync).
    #[arg(long, value_name = "FILE")]
    node_sync: PathBuf,
    /// ClusterIP Services in the API before node-sync starts (one TCP port,
    /// three endpoints each).
    #[arg(long, default_value_t = 10000, value_parser = clap::value_parser!(u32).range(1..=20000))]
    services: u32,
    /// Endpoint change rounds (alternately an address replaced, one removed).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    changes: u32,
    /// Concurrent API requests while the Services are created.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    concurrency: u32,
    /// Skip timing `nft -f` of the same table on its own.
    #[arg(long)]
    no_nft_alone: bool,
}

const NAMESPACE: &str = "default";
const PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const TABLE: &str = "ip node-sync";
const SERVICES: Reconciler = Reconciler {
    name: "services",
    programmed: "node_sync_service_ports_programmed",
};
const FULL_TARGET: Duration = Duration::from_secs(2);
const CHANGE_TARGET: Duration = Duration::from_millis(50);
const RSS_TARGET_MIB: f64 = 60.0;
/// How long any one step may take before the run is an error.
const SETUP_LIMIT: Duration = Duration::from_secs(900);
const FULL_LIMIT: Duration = Duration::from_secs(300);
const CHANGE_LIMIT: Duration = Duration::from_secs(30);
const STOP_LIMIT: Duration = Duration::from_secs(60);
const CHANGE_GAP: Duration = Duration::from_millis(200);
/// Single changes of the `nft` alone figures, and their new addresses'
/// numbers (past the change rounds').
const ALONE_CHANGES: u32 = 5;
const ALONE_IP_BASE: u32 = 1000;

// --------------------------------------------------------------- objects

fn name(i: u32) -> String {
    format!("svc-{i:05}")
}

/// Service i's clusterIP: 10.96.0.0/12 from .1.
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i)
}

/// The pod address number `x` in 10.244.0.0/16, from .0.1.
fn pod_ip(x: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + 1 + x % 65533)
}

/// Service i's endpoints before any change.
fn initial(i: u32) -> Vec<Ipv4Addr> {
    (0..3).map(|j| pod_ip(3 * i + j)).collect()
}

/// The address a change round `k` brings in (past every initial one).
fn new_ip(n: u32, k: u32) -> Ipv4Addr {
    pod_ip(3 * n + k)
}

/// The Service a change round touches: spread over the table, each
/// round another while there are enough.
fn pick(n: u32, k: u32) -> u32 {
    ((u64::from(k) * 7919 + 17) % u64::from(n)) as u32
}

/// node-sync's chain for service i (`svc_<vip>_tcp_<port>`).
fn chain(i: u32) -> String {
    format!("svc_{}_tcp_{PORT}", vip(i).to_string().replace('.', "_"))
}

fn service_object(i: u32) -> Result<Service> {
    let ip = vip(i).to_string();
    serde_json::from_value(json!({
        "metadata": {"name": name(i), "namespace": NAMESPACE},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
            "ports": [{"protocol": "TCP", "port": PORT, "targetPort": TARGET_PORT}]},
    }))
    .context("building a Service")
}

/// The `subsets` of an Endpoints object: every address ready, one port.
fn subsets(ips: &[Ipv4Addr]) -> Value {
    let addrs: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    json!({"subsets": [{"addresses": addrs, "ports": [{"port": TARGET_PORT, "protocol": "TCP"}]}]})
}

fn endpoints_object(i: u32) -> Result<Endpoints> {
    let mut o = subsets(&initial(i));
    o["metadata"] = json!({"name": name(i), "namespace": NAMESPACE});
    serde_json::from_value(o).context("building an Endpoints")
}

/// What node-sync should program for `eps` (service i's addresses).
fn want(eps: &[Vec<Ipv4Addr>]) -> Vec<ServicePort> {
    let mut out: Vec<ServicePort> = (0u32..)
        .zip(eps)
        .map(|(i, ips)| {
            let mut endpoints: Vec<SocketAddr> = ips
                .iter()
                .map(|ip| SocketAddr::new(IpAddr::V4(*ip), TARGET_PORT))
                .collect();
            endpoints.sort();
            ServicePort {
                vip: IpAddr::V4(vip(i)),
                port: PORT,
                proto: Proto::Tcp,
                endpoints,
            }
        })
        .collect();
    out.sort();
    out
}

fn cluster_cidr() -> IpNetwork {
    IpNetwork::V4(
        ipnetwork::Ipv4Network::new(Ipv4Addr::new(10, 244, 0, 0), 16)
            .expect("10.244.0.0/16 is a valid network"),
    )
}

// ------------------------------------------------------------------- log

/// One `services: nftables programmed` line of node-sync's log.
#[derive(Clone, Copy, Debug)]
struct Programmed {
    /// Seconds after spawn (the line's timestamp).
    at: f64,
    services: u64,
    took: Duration,
}

/// `Duration`'s `Debug`, as `took=` prints it: `1.2s`, `3.4ms`, `5µs`, `6ns`.
fn parse_debug_duration(s: &str) -> Option<Duration> {
    let (num, scale) = [
        ("ms", 1e-3),
        ("µs", 1e-6),
        ("us", 1e-6),
        ("ns", 1e-9),
        ("s", 1.0),
    ]
    .iter()
    .find_map(|(unit, scale)| Some((s.strip_suffix(unit)?, *scale)))?;
    Duration::try_from_secs_f64(num.parse::<f64>().ok()? * scale).ok()
}

fn programmed_lines(log: &str, since: f64) -> Vec<Programmed> {
    log.lines()
        .map(plain)
        .filter(|l| l.contains("services: nftables programmed"))
        .filter_map(|l| {
            let field = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .map(str::to_string)
            };
            Some(Programmed {
                at: log_time(&l)? - since,
                services: field("services=")?.parse().ok()?,
                took: parse_debug_duration(&field("took=")?)?,
            })
        })
        .collect()
}

/// A warning or error node-sync logged about Services.
fn services_trouble(log: &str) -> Option<String> {
    log.lines()
        .map(plain)
        .find(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && l.contains("services"))
}

// ------------------------------------------------------ nftables events

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;

/// NFNLGRP_NFTABLES (7) as a bind(2) group mask.
const NFNLGRP_NFTABLES: u32 = 1 << (7 - 1);

/// One nftables change in the node netns, as the kernel announced it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Nft {
    /// A rule added: its chain and its expressions, undecoded.
    Rule {
        chain: String,
        exprs: Vec<u8>,
    },
    /// The end of a transaction (NFT_MSG_NEWGEN).
    Generation,
    Other,
}

#[derive(Clone, Debug)]
struct NftEvent {
    at: Instant,
    what: Nft,
}

/// The nftables messages in one datagram (after the netlink header, a
/// 4-byte nfgenmsg, then attributes).
fn parse_nft(buf: &[u8], at: Instant, out: &mut Vec<NftEvent>) {
    for (kind, msg) in nl_messages(buf) {
        if kind >> 8 != NFNL_SUBSYS_NFTABLES {
            continue;
        }
        let attr = |t: u16| nl_attrs(msg, 20).find(|(a, _)| *a == t).map(|(_, p)| p);
        let name = |t: u16| {
            let p = attr(t).unwrap_or_default();
            let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
            String::from_utf8_lossy(&p[..end]).into_owned()
        };
        let what = match kind & 0xff {
            NFT_MSG_NEWRULE => Nft::Rule {
                chain: name(NFTA_RULE_CHAIN),
                exprs: attr(NFTA_RULE_EXPRESSIONS).unwrap_or_default().to_vec(),
            },
            NFT_MSG_NEWGEN => Nft::Generation,
            _ => Nft::Other,
        };
        out.push(NftEvent { at, what });
    }
}

/// What shows that a change is in the kernel.
#[derive(Clone, Debug)]
enum Marker {
    /// A rule with the new address in the service's chain.
    Address { chain: String, ip: Ipv4Addr },
    /// The service's chain refilled (3 -> 2 endpoints).
    Rule(String),
}

impl Marker {
    fn matches(&self, e: &Nft) -> bool {
        match (self, e) {
            (Marker::Address { chain: want, ip }, Nft::Rule { chain, exprs }) => {
                want == chain && exprs.windows(4).any(|w| w == ip.octets().as_slice())
            }
            (Marker::Rule(want), Nft::Rule { chain, .. }) => want == chain,
            _ => false,
        }
    }
}

/// Whether `pid` has an `nft` child now (node-sync applying, or reading
/// the table back).
fn running_nft(pid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("stat")).is_ok_and(|st| {
            // pid (comm) state ppid ...
            let Some((comm, rest)) = st.split_once(") ") else {
                return false;
            };
            comm.ends_with("(nft")
                && rest.split_whitespace().nth(1) == Some(pid.to_string().as_str())
        })
    })
}

// ------------------------------------------------------------------- run

struct Full {
    setup: Duration,
    /// Listing the Services and the Endpoints through the admin
    /// kubeconfig, one after the other (what node-sync's watches list).
    list_admin: Duration,
    running: Option<f64>,
    /// node-sync's line: seconds after spawn, and the apply's duration.
    line: Programmed,
    /// Lines before it with fewer services (a partial first program).
    partial: usize,
    metric: Option<f64>,
    metric_syncs: f64,
    /// `nft -j list map` of the services map, and its element count.
    map_count: usize,
    map_read: Duration,
    hwm_kib: u64,
}

/// One change round: API request to the kernel; whether it removed an
/// address (else replaced one); whether node-sync was running `nft` when
/// it began (its resync reading the table back, most likely).
struct Round {
    took: Duration,
    removed: bool,
    busy: bool,
}

#[derive(Default)]
struct Changes {
    rounds: Vec<Round>,
    api: Vec<Duration>,
    sync: Vec<Duration>,
    /// Changes whose sync count moved by more than one.
    other_syncs: u32,
    /// nftables transactions seen that were not a change's own.
    stray: u32,
    /// The whole table read back at the end, as node-sync's 30-s resync
    /// does (`nft -j list table` and its parse), and the reader's RSS
    /// before and its peak during it, KiB.
    readback: Duration,
    readback_kib: (u64, u64),
}

impl Changes {
    fn took(&self, keep: impl Fn(&Round) -> bool) -> Vec<Duration> {
        self.rounds
            .iter()
            .filter(|r| keep(r))
            .map(|r| r.took)
            .collect()
    }
}

struct Alone {
    script_bytes: usize,
    render: Duration,
    cold: Timed,
    change: Vec<Duration>,
}

/// A wall time, and the user and system CPU time of the child processes
/// waited for meanwhile (`nft`: user space, the kernel's transaction).
#[derive(Clone, Copy, Debug)]
struct Timed {
    wall: Duration,
    user: Duration,
    sys: Duration,
}

fn children_cpu() -> Result<(Duration, Duration)> {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::time::TimeValLike;
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage")?;
    let d = |t: nix::sys::time::TimeVal| {
        Duration::from_micros(u64::try_from(t.num_microseconds()).unwrap_or(0))
    };
    Ok((d(u.user_time()), d(u.system_time())))
}

/// Runs `f` (which runs and waits for child processes), timed.
fn timed(f: impl FnOnce() -> Result<()>) -> Result<Timed> {
    let (u0, s0) = children_cpu()?;
    let t = Instant::now();
    f()?;
    let wall = t.elapsed();
    let (u1, s1) = children_cpu()?;
    Ok(Timed {
        wall,
        user: u1.saturating_sub(u0),
        sys: s1.saturating_sub(s0),
    })
}

struct Outcome {
    services: u32,
    full: Full,
    changes: Changes,
    hwm_kib: u64,
    rss_kib: u64,
    /// How long node-sync ran: it reads the whole table back every 30 s.
    ran: Duration,
    /// SIGTERM to node-sync's exit.
    stop: Duration,
    warnings: usize,
    alone: Option<Alone>,
}

pub fn run(o: &Options) -> Result<()> {
    let bin = preflight("services", &o.node_sync, &["nsenter", "ip", "nft"])?;
    let load_before = loadavg();
    println!(
        "services: {} (--proxy-mode nftables), {} ClusterIP Services x 3 endpoints, {} change rounds",
        bin.display(),
        o.services,
        o.changes
    );
    let mut outcome = with_env(|env| measure(o, &bin, env))?;
    if !o.no_nft_alone {
        check_interrupt()?;
        outcome.alone = Some(nft_alone(o.services)?);
    }
    report(o, &outcome, &load_before)
}

/// The Services and their Endpoints, concurrently; then both listed
/// (timed) and counted.
fn create(o: &Options, env: &Env) -> Result<(Duration, Duration)> {
    let client = env.admin()?;
    let svc: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let eps: Api<Endpoints> = Api::namespaced(client, NAMESPACE);
    let n = o.services;
    let t = Instant::now();
    env.rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..o.concurrency.min(n) {
            let (svc, eps) = (svc.clone(), eps.clone());
            let step = o.concurrency as usize;
            tasks.spawn(async move {
                for i in (w..n).step_by(step) {
                    check_interrupt()?;
                    let pp = PostParams::default();
                    svc.create(&pp, &service_object(i)?)
                        .await
                        .with_context(|| format!("creating Service {}", name(i)))?;
                    eps.create(&pp, &endpoints_object(i)?)
                        .await
                        .with_context(|| format!("creating Endpoints {}", name(i)))?;
                }
                anyhow::Ok(())
            });
        }
        let all = async {
            while let Some(r) = tasks.join_next().await {
                r.context("a create task")??;
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(SETUP_LIMIT, all)
            .await
            .map_err(|_| anyhow!("creating {n} Services took over {SETUP_LIMIT:?}"))?
    })?;
    let setup = t.elapsed();
    let t = Instant::now();
    let (ls, le) = env.rt.block_on(async {
        let lp = ListParams::default();
        let s = svc.list(&lp).await.context("listing the Services")?;
        let e = eps.list(&lp).await.context("listing the Endpoints")?;
        anyhow::Ok((s.items.len(), e.items.len()))
    })?;
    let list_admin = t.elapsed();
    ensure!(
        ls == n as usize && le == n as usize,
        "{ls} Services and {le} Endpoints in the API, {n} of each created"
    );
    println!(
        "setup: {n} Services and {n} Endpoints created in {:.1} s ({} concurrent); listing both took {:.0} ms",
        secs(setup),
        o.concurrency,
        ms(list_admin)
    );
    Ok((setup, list_admin))
}

/// The elements of the services map in the node netns, and how long
/// reading it took.
fn map_count(ns: &Path) -> Result<(usize, Duration)> {
    let t = Instant::now();
    let mut args = vec!["-j", "list", "map"];
    args.extend(TABLE.split(' '));
    args.push("services");
    let out = netkit::nft::list_in(Some(ns), &args)
        .context("nft list map")?
        .context("no services map in the node netns")?;
    let took = t.elapsed();
    let doc: Value = serde_json::from_slice(&out).context("nft's JSON")?;
    let count = doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.pointer("/map/elem").and_then(Value::as_array))
        .map(Vec::len)
        .sum();
    Ok((count, took))
}

fn measure(o: &Options, bin: &Path, env: &mut Env) -> Result<Outcome> {
    let ns = env.ns();
    let n = o.services;
    let (setup, list_admin) = create(o, env)?;
    let mut args = vec!["list", "table"];
    args.extend(TABLE.split(' '));
    ensure!(
        netkit::nft::list_in(Some(&ns), &args)
            .context("nft list table")?
            .is_none(),
        "table {TABLE} in the node netns before node-sync started"
    );

    // Full sync, from a cold start.
    check_interrupt()?;
    let (spawned, spawned_wall) = (Instant::now(), SystemTime::now());
    env.start_agent(bin, &["--proxy-mode", "nftables"])?;
    let pid = env.agent()?.pid();
    let since = epoch(spawned_wall);
    let (line, partial) = loop {
        check_interrupt()?;
        let log = env.log();
        let lines = programmed_lines(&log, since);
        if let Some(p) = lines.iter().position(|p| p.services == u64::from(n)) {
            break (lines[p], p);
        }
        if let Some(l) = services_trouble(&log) {
            bail!("node-sync, before the table was programmed: {l}");
        }
        ensure!(
            spawned.elapsed() < FULL_LIMIT,
            "no `services: nftables programmed services={n}` in node-sync's log {FULL_LIMIT:?} after spawn (lines so far: {lines:?})"
        );
        env.agent()?.alive()?;
        std::thread::sleep(Duration::from_millis(20));
    };
    let first = metrics(&ns, SERVICES)?;
    let hwm_full = memory(pid)?.0;
    let (count, map_read) = map_count(&ns)?;
    ensure!(
        count == n as usize,
        "the services map has {count} elements with {n} Services"
    );
    let log = env.log();
    let full = Full {
        setup,
        list_admin,
        running: logged_at(&log, "node-sync running", since),
        line,
        partial,
        metric: (first.syncs == 1.0).then_some(first.duration),
        metric_syncs: first.syncs,
        map_count: count,
        map_read,
        hwm_kib: hwm_full,
    };
    println!(
        "full sync: {n} services programmed {:.0} ms after spawn (nft apply {:.0} ms); map read back in {:.0} ms",
        line.at * 1e3,
        ms(line.took),
        ms(map_read)
    );

    let mut eps: Vec<Vec<Ipv4Addr>> = (0..n).map(initial).collect();
    let mut ch = changes(o, env, &mut eps)?;

    // The whole table against the API's objects.
    // node-sync's own read-back code, here: its time, and what it does to
    // the peak RSS of this process (the peak reset first).
    check_interrupt()?;
    let me = std::process::id();
    std::fs::write("/proc/self/clear_refs", "5").context("resetting our VmHWM")?;
    let before = memory(me)?.1;
    let t = Instant::now();
    let table = programmed_in(Some(&ns)).context("reading the table back")?;
    ch.readback = t.elapsed();
    ch.readback_kib = (before, memory(me)?.0);
    let want = want(&eps);
    ensure!(
        table == want,
        "the node's table is not the Services' ({} ports, {} wanted; first differences: {:?})",
        table.len(),
        want.len(),
        table
            .iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .take(2)
            .collect::<Vec<_>>()
    );

    let (hwm_kib, rss_kib) = memory(pid)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    ensure!(
        comm.trim() == "node-sync",
        "process {pid} is {comm:?}, not node-sync"
    );
    let last = metrics(&ns, SERVICES)?;
    ensure!(
        last.errors == 0.0,
        "node-sync counted {} services errors",
        last.errors
    );
    ensure!(
        last.programmed == f64::from(n),
        "node_sync_service_ports_programmed is {} with {n} Services",
        last.programmed
    );
    let ran = spawned.elapsed();
    // A resync reading the table back holds node-sync's task for seconds.
    let stop = env.agent()?.stop(STOP_LIMIT)?;
    let log = env.log();
    ensure!(!log.contains("panicked"), "node-sync panicked:\n{log}");
    let warnings = log.lines().filter(|l| plain(l).contains(" WARN ")).count();
    Ok(Outcome {
        services: n,
        full,
        changes: ch,
        hwm_kib,
        rss_kib,
        ran,
        stop,
        warnings,
        alone: None,
    })
}

/// The change rounds; `eps` follows what the API has.
fn changes(o: &Options, env: &mut Env, eps: &mut [Vec<Ipv4Addr>]) -> Result<Changes> {
    let ns = env.ns();
    let n = o.services;
    let pid = env.agent()?.pid();
    let api: Api<Endpoints> = Api::namespaced(env.admin()?, NAMESPACE);
    // Let the start's other work (the Node's registration, its status)
    // pass.
    std::thread::sleep(Duration::from_secs(1));
    let monitor = Monitor::start(
        &ns,
        "nftables",
        SockProtocol::NetlinkNetFilter,
        NFNLGRP_NFTABLES,
        parse_nft,
    )?;
    let mut ch = Changes::default();
    let mut syncs = metrics(&ns, SERVICES)?.syncs;
    for k in 0..o.changes {
        check_interrupt()?;
        std::thread::sleep(CHANGE_GAP);
        while let Some(e) = monitor.next(Duration::ZERO)? {
            ch.stray += u32::from(e.what == Nft::Generation);
        }
        let i = pick(n, k);
        let ips = &mut eps[i as usize];
        let removed = k % 2 == 1 && ips.len() > 1;
        let marker = if removed {
            ips.remove(0);
            Marker::Rule(chain(i))
        } else {
            ips[0] = new_ip(n, k);
            Marker::Address {
                chain: chain(i),
                ip: ips[0],
            }
        };
        let body = subsets(ips);
        let svc = name(i);
        let busy = running_nft(pid);
        let t0 = Instant::now();
        env.rt.block_on(async {
            let (pp, patch) = (PatchParams::default(), Patch::Merge(&body));
            tokio::time::timeout(CHANGE_LIMIT, api.patch(&svc, &pp, &patch))
                .await
                .map_err(|_| anyhow!("patching Endpoints {svc}: no answer in {CHANGE_LIMIT:?}"))?
                .with_context(|| format!("patching Endpoints {svc}"))
        })?;
        ch.api.push(t0.elapsed());
        // The change's rule, then the end of its transaction.
        let mut seen = None;
        loop {
            let left = CHANGE_LIMIT.saturating_sub(t0.elapsed());
            ensure!(
                !left.is_zero(),
                "Endpoints {svc}: no {marker:?} (and the end of its transaction) in the node's nftables within {CHANGE_LIMIT:?}"
            );
            match monitor.next(left.min(Duration::from_millis(100)))? {
                Some(e) if seen.is_none() && marker.matches(&e.what) => seen = Some(e.at),
                Some(e) if e.what == Nft::Generation => {
                    if seen.is_some() {
                        break;
                    }
                    ch.stray += 1;
                }
                Some(_) => {}
                None => {
                    check_interrupt()?;
                    env.agent()?.alive()?;
                }
            }
        }
        ch.rounds.push(Round {
            took: seen.map(|at| at.duration_since(t0)).unwrap_or_default(),
            removed,
            busy,
        });
        let (r, _) = metrics_after(&ns, SERVICES, syncs)?;
        if r.syncs == syncs + 1.0 {
            ch.sync.push(Duration::from_secs_f64(r.duration));
        } else {
            ch.other_syncs += 1;
        }
        syncs = r.syncs;
    }
    Ok(ch)
}

/// `script` applied in `ns` as node-sync's `apply_in` does it (netkit's
/// `nsenter --net=<ns> nft -f -`), but killed on Ctrl-C or after
/// [`FULL_LIMIT`] rather than waited for.
fn nft_apply(ns: &Path, script: &str) -> Result<()> {
    let mut err = tempfile::tempfile().context("a temporary file")?;
    let mut child = netkit::nft::command(Some(ns))
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(err.try_clone().context("a temporary file")?)
        .spawn()
        .context("starting nft")?;
    // nft reads all of it before it starts.
    let written = child
        .stdin
        .take()
        .context("nft's stdin")
        .and_then(|mut i| Ok(i.write_all(script.as_bytes())?));
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().context("waiting for nft")? {
            break st;
        }
        if crate::interrupted().is_some() || t.elapsed() > FULL_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            check_interrupt()?;
            bail!("nft -f still running after {FULL_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        let mut msg = String::new();
        err.rewind().context("reading nft's errors")?;
        err.read_to_string(&mut msg)
            .context("reading nft's errors")?;
        bail!("nft -f failed ({status}): {}", msg.trim());
    }
    written.context("writing the script to nft")
}

/// `nft -f` of node-sync's table on its own, in a scratch netns.
fn nft_alone(n: u32) -> Result<Alone> {
    let ns = testbed::Netns::new("nftalone");
    let path = ns.path();
    let cidr = cluster_cidr();
    let mut eps: Vec<Vec<Ipv4Addr>> = (0..n).map(initial).collect();
    let mut cur = want(&eps);
    let t = Instant::now();
    let script = render(&cur, cidr);
    let render_t = t.elapsed();
    let cold = timed(|| nft_apply(&path, &script).context("nft -f of the whole table"))?;
    let mut change = Vec::new();
    for k in 0..ALONE_CHANGES {
        check_interrupt()?;
        let i = pick(n, k) as usize;
        eps[i][0] = new_ip(n, ALONE_IP_BASE + k);
        let next = want(&eps);
        let script = render_changes(&cur, &next, cidr).context("a change renders nothing")?;
        let t = Instant::now();
        nft_apply(&path, &script).context("nft -f of a change")?;
        change.push(t.elapsed());
        cur = next;
    }
    drop(ns);
    let a = Alone {
        script_bytes: script.len(),
        render: render_t,
        cold,
        change,
    };
    println!(
        "nft alone: whole table {:.0} ms; a change {:.1} ms (p50)",
        ms(a.cold.wall),
        ms(median(&a.change))
    );
    Ok(a)
}

// ---------------------------------------------------------------- report

fn report(o: &Options, r: &Outcome, load_before: &str) -> Result<()> {
    let load_after = loadavg();
    let f = &r.full;
    let ch = &r.changes;
    let n = r.services;
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let apply = f.line.took;
    let apply_start = f.line.at - secs(apply);
    let list = f.running.map(|run| apply_start - run);
    let full_log_ok = apply <= FULL_TARGET;
    let full_metric_ok = f.metric.is_some_and(|s| s <= secs(FULL_TARGET));
    let replaced = ch.took(|r| !r.removed);
    let removed = ch.took(|r| r.removed);
    let all = ch.took(|_| true);
    let idle = ch.took(|r| !r.busy);
    let change_ok =
        |v: &[Duration]| median(v) <= CHANGE_TARGET && percentile(v, 99.0) <= CHANGE_TARGET;
    let hwm_mib = r.hwm_kib as f64 / 1024.0;
    let rss_ok = hwm_mib <= RSS_TARGET_MIB;
    let in_ms = |d: Duration| format!("{:.1} ms", ms(d));
    let opt_ms = |v: Option<f64>| {
        v.map(|s| format!("{:.1} ms", s * 1e3))
            .unwrap_or_else(|| "n/a".into())
    };
    let p = |v: &[Duration]| format!("{:.1} / {:.1} ms", ms(median(v)), ms(percentile(v, 99.0)));
    let row = |what: &str, value: &str, target: &str, result: &str| {
        println!("{what:<56} {value:>20}  {target:<10} {result}");
    };
    let info = |what: &str, value: &str| row(what, value, "", "");

    println!();
    println!("load average before {load_before}, after {load_after} (2 cores shared)");
    println!();
    row("measure", "value", "target", "result");
    info(
        &format!("full sync, {n} Services: spawn -> programmed (log)"),
        &format!("{:.1} ms", f.line.at * 1e3),
    );
    info("  start: spawn -> node-sync running", &opt_ms(f.running));
    info("  list + model: running -> apply begins", &opt_ms(list));
    info("  apply: render + nft -f (log took)", &in_ms(apply));
    row(
        "full sync: list complete -> programmed (log took)",
        &in_ms(apply),
        "<= 2 s",
        verdict(full_log_ok),
    );
    row(
        "full sync: services sync duration (metric)",
        &opt_ms(f.metric),
        "<= 2 s",
        verdict(full_metric_ok),
    );
    row(
        "  services map elements (nft -j list map)",
        &format!("{} in {:.0} ms", f.map_count, ms(f.map_read)),
        &format!("= {n}"),
        verdict(f.map_count == n as usize),
    );
    for (what, v) in [
        ("endpoint replaced", &replaced),
        ("endpoint removed", &removed),
        ("any endpoint change", &all),
    ] {
        row(
            &format!("{what} -> kernel, {} runs (p50 / p99)", v.len()),
            &p(v),
            "<= 50 ms",
            verdict(change_ok(v)),
        );
    }
    info("  max", &in_ms(percentile(&all, 100.0)));
    info(
        &format!(
            "  begun with node-sync not in nft ({} runs, p50 / p99)",
            idle.len()
        ),
        &p(&idle),
    );
    info("  of which the API request (p50 / p99)", &p(&ch.api));
    info(
        &format!("  node-sync's sync per change (metric, {})", ch.sync.len()),
        &p(&ch.sync),
    );
    row(
        &format!("peak RSS (VmHWM) of node-sync, {n} Services"),
        &format!("{hwm_mib:.1} MiB"),
        "<= 60 MiB",
        verdict(rss_ok),
    );
    info(
        "  after the full sync / RSS at the end",
        &format!(
            "{:.1} / {:.1} MiB",
            f.hwm_kib as f64 / 1024.0,
            r.rss_kib as f64 / 1024.0
        ),
    );
    info(
        "table read back whole (nft -j list table + parse)",
        &format!("{:.0} ms", ms(ch.readback)),
    );
    info(
        "  reader's RSS before / its peak during it",
        &format!(
            "{:.0} / {:.0} MiB",
            ch.readback_kib.0 as f64 / 1024.0,
            ch.readback_kib.1 as f64 / 1024.0
        ),
    );
    info(
        "API list of the Services + Endpoints (admin, setup)",
        &format!("{:.0} ms", ms(f.list_admin)),
    );
    if let Some(a) = &r.alone {
        info(
            &format!(
                "nft alone: render the table ({:.1} MiB script)",
                a.script_bytes as f64 / f64::from(1 << 20)
            ),
            &in_ms(a.render),
        );
        info(
            "nft alone: nft -f of the table, empty netns",
            &in_ms(a.cold.wall),
        );
        info(
            "  CPU of nft: user / system (kernel)",
            &format!("{:.0} / {:.0} ms", ms(a.cold.user), ms(a.cold.sys)),
        );
        info(
            &format!(
                "nft alone: one change, nft -f ({} runs, p50 / max)",
                a.change.len()
            ),
            &format!(
                "{:.1} / {:.1} ms",
                ms(median(&a.change)),
                ms(percentile(&a.change, 100.0))
            ),
        );
    }
    if f.metric.is_none() {
        println!(
            "note: the first services sync's metric was overwritten: syncs_total was {} when read",
            f.metric_syncs
        );
    }
    if f.partial > 0 {
        println!(
            "note: node-sync programmed {} time(s) with fewer than {n} services first",
            f.partial
        );
    }
    if ch.other_syncs > 0 {
        println!(
            "note: {} changes shared their sync count with another services sync; their sync metric is left out",
            ch.other_syncs
        );
    }
    if ch.stray > 0 {
        println!(
            "note: {} nftables transactions in the node netns were not a change's own",
            ch.stray
        );
    }
    println!(
        "node-sync ran {:.0} s (its resync reads the whole table back every 30 s); it exited {:.0} ms after SIGTERM",
        secs(r.ran),
        ms(r.stop)
    );
    println!("node-sync warnings in its log: {}", r.warnings);
    println!("errors: 0");
    let fig = |v: &[Duration]| json!({"p50_ms": ms(median(v)), "p99_ms": ms(percentile(v, 99.0)), "max_ms": ms(percentile(v, 100.0)), "runs": v.len()});
    let all_pass = full_log_ok && full_metric_ok && change_ok(&all) && rss_ok;
    let alone = r.alone.as_ref().map(|a| {
        json!({"script_bytes": a.script_bytes, "render_ms": ms(a.render),
            "apply": {"wall_ms": ms(a.cold.wall), "user_ms": ms(a.cold.user), "sys_ms": ms(a.cold.sys)},
            "change": fig(&a.change)})
    });
    let result = json!({
        "bench": "node-sync-services-nftables", "services": n, "change_rounds": o.changes,
        "setup_s": secs(f.setup), "api_list_ms": ms(f.list_admin),
        "full_ms": {
            "running_from_spawn": f.running.map(|s| s * 1e3),
            "apply_begins_from_spawn": apply_start * 1e3,
            "programmed_from_spawn": f.line.at * 1e3,
            "list_and_model": list.map(|s| s * 1e3),
            "apply_log": ms(apply),
            "sync_metric": f.metric.map(|s| s * 1e3),
            "map_read": ms(f.map_read),
        },
        "change_ms": {"replaced": fig(&replaced), "removed": fig(&removed), "all": fig(&all),
            "not_busy": fig(&idle), "api_request": fig(&ch.api), "sync_metric": fig(&ch.sync)},
        "readback_ms": ms(ch.readback), "readback_rss_before_kib": ch.readback_kib.0,
        "readback_peak_rss_kib": ch.readback_kib.1,
        "peak_rss_kib": r.hwm_kib, "peak_rss_after_full_kib": f.hwm_kib, "rss_end_kib": r.rss_kib,
        "nft_alone": alone,
        "node_sync_ran_s": secs(r.ran), "node_sync_stop_ms": ms(r.stop), "node_sync_warnings": r.warnings,
        "loadavg": {"before": load_before, "after": load_after},
        "errors": 0,
        "all_pass": all_pass,
    });
    println!("RESULT {result}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn addresses_are_unique_and_in_their_ranges() {
        let n = 20000;
        let vips: BTreeSet<Ipv4Addr> = (0..n).map(vip).collect();
        assert_eq!(vips.len(), n as usize);
        let range = ipnetwork::Ipv4Network::new(Ipv4Addr::new(10, 96, 0, 0), 12).expect("net");
        assert!(vips.iter().all(|v| range.contains(*v)));
        let mut pods: BTreeSet<Ipv4Addr> = (0..n).flat_map(initial).collect();
        assert_eq!(pods.len(), 3 * n as usize);
        for k in 0..1000 {
            assert!(pods.insert(new_ip(n, k)), "round {k}");
        }
        assert!(pods.iter().all(|p| cluster_cidr().contains(IpAddr::V4(*p))));
        assert!(!pods.contains(&Ipv4Addr::new(10, 244, 0, 0)));
    }

    #[test]
    fn rounds_touch_distinct_services() {
        let picked: BTreeSet<u32> = (0..1000).map(|k| pick(10000, k)).collect();
        assert_eq!(picked.len(), 1000);
        assert!((0..100).all(|k| pick(7, k) < 7));
    }

    #[test]
    fn programmed_lines_of_the_log() {
        let log = "2025-01-31T12:34:56.000000Z  INFO node-sync running node=inajob\n\
            \u{1b}[2m2025-01-31T12:34:58.500000Z\u{1b}[0m  INFO services: nftables programmed services=10000 took=1.25s\n\
            2025-01-31T12:35:00.000000Z  INFO services: nftables programmed services=10000 took=12.5ms\n";
        let since = log_time("2025-01-31T12:34:56.000000Z x").expect("t");
        let p = programmed_lines(log, since);
        assert_eq!(p.len(), 2);
        assert!((p[0].at - 2.5).abs() < 1e-6);
        assert_eq!(p[0].services, 10000);
        assert_eq!(p[0].took, Duration::from_millis(1250));
        assert_eq!(p[1].took, Duration::from_micros(12500));
        assert_eq!(
            parse_debug_duration("950µs"),
            Some(Duration::from_micros(950))
        );
        assert_eq!(parse_debug_duration("7ns"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_debug_duration("x"), None);
    }

    /// A netlink message of the nftables subsystem: header, nfgenmsg,
    /// attributes.
    fn nft_msg(msg: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = vec![0u8; 20];
        m[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
        for (t, v) in attrs {
            m.extend(((4 + v.len()) as u16).to_ne_bytes());
            m.extend(t.to_ne_bytes());
            m.extend(*v);
            m.resize(m.len().next_multiple_of(4), 0);
        }
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    #[test]
    fn nftables_notifications() {
        let ip = Ipv4Addr::new(10, 244, 117, 49);
        let mut exprs = vec![1, 2, 3];
        exprs.extend(ip.octets());
        let mut buf = nft_msg(
            NFT_MSG_NEWRULE,
            &[
                (1, b"node-sync\0"),
                (NFTA_RULE_CHAIN, b"svc_10_96_0_1_tcp_80\0"),
                (NFTA_RULE_EXPRESSIONS | 0x8000, &exprs),
            ],
        );
        buf.extend(nft_msg(NFT_MSG_NEWGEN, &[]));
        let mut out = Vec::new();
        parse_nft(&buf, Instant::now(), &mut out);
        let what: Vec<Nft> = out.into_iter().map(|e| e.what).collect();
        assert_eq!(what.len(), 2);
        assert_eq!(what[1], Nft::Generation);
        let address = |i, ip| Marker::Address {
            chain: chain(i),
            ip,
        };
        assert!(address(0, ip).matches(&what[0]));
        assert!(!address(0, Ipv4Addr::new(10, 244, 117, 50)).matches(&what[0]));
        assert!(!address(1, ip).matches(&what[0]));
        assert!(Marker::Rule(chain(0)).matches(&what[0]));
        assert!(!Marker::Rule(chain(1)).matches(&what[0]));
    }

    #[test]
    fn objects_and_what_node_sync_should_program() {
        let s = service_object(0).expect("svc");
        assert_eq!(
            s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
            Some("10.96.0.1")
        );
        let e = endpoints_object(1).expect("eps");
        let (w, skipped) = node_sync::services::model::desired(
            &[service_object(1).expect("svc").into()],
            &[],
            &[e.into()],
        );
        assert!(skipped.is_empty());
        assert_eq!(w, want(&[initial(0), initial(1)])[1..]);
        assert_eq!(chain(0), "svc_10_96_0_1_tcp_80");
        assert!(render(&w, cluster_cidr()).contains(&format!("chain {} {{", chain(1))));
    }
}
