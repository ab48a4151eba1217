//! node-sync's routes reconciler with 1,000 other Nodes in the API: cold
//! start, single Node changes, peak memory.
//!
//! The node is node-sync's e2e test's: the API server stand-in (with
//! `deploy/node-sync-rbac.yaml` applied, as on a real cluster), node
//! inajob (192.168.43.111) on a LAN netns, a relay so the node reaches the
//! API on its own 127.0.0.1, the node's kubeconfig. Before node-sync
//! starts, `--nodes` other Nodes are created through the admin kubeconfig
//! (concurrently, untimed), node i with podCIDR 10.(100+i/250).(i%250).0/24
//! and an InternalIP on the LAN (192.168.43.2..254 without the node's own,
//! repeated: many CIDRs share a gateway, which must be on-link).
//!
//! How each figure is taken:
//!
//! - Routes in the kernel are seen through a netlink socket in the node's
//!   netns subscribed to IPv4 route notifications (no polling): every
//!   RTM_NEWROUTE/RTM_DELROUTE in the main table with protocol 200 is
//!   stamped when it arrives. The table is also checked against the Nodes
//!   with `ip route show proto 200` after the cold start and at the end.
//! - Cold start: from spawning `node-sync run` in the node netns until the
//!   last of the routes is in the kernel (wall). node-sync's log marks
//!   `node-sync running` and `routes: applying put=N` (printed after the
//!   list completed, the reflector was filled and the plan made), so the
//!   wall time splits into start, list, and programming. Right when the
//!   last route appears, `/metrics` is read on the node's loopback for
//!   `node_sync_sync_duration_seconds{reconciler="routes"}` while
//!   `node_sync_syncs_total{reconciler="routes"}` is still 1 (the first
//!   sync's own figure; a later sync would overwrite it). Target: the time
//!   after the list completes <= 0.5 s, by both the log and the metric.
//! - Single change, `--changes` rounds of three, 100 ms apart: a Node
//!   created (podCIDR and InternalIP in the create) until its route is in
//!   the kernel; its InternalIP patched (status subresource) until the
//!   route is replaced with the new gateway; the Node deleted until the
//!   route is gone. Timed from just before the API request, so the figure
//!   includes the write to the API server. Target: p99 <= 20 ms each.
//! - Peak RSS: VmHWM of the node-sync process after all of it (and after
//!   the cold start alone).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, setsockopt,
    socket, sockopt,
};
use serde_json::{Value, json};
use testbed::api::Apiserver;
use testbed::apiserver::ApiServer;
use testbed::cluster::{Cluster, INAJOB};
use testbed::relay::Relay;

use crate::stats::{median, ms, percentile, secs};

#[derive(clap::Args)]
pub struct Options {
    /// The node-sync binary (release: ./scripts/build-plugins.sh -p node-sync).
    #[arg(long, value_name = "FILE")]
    node_sync: PathBuf,
    /// Other Nodes in the API before node-sync starts.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=25000))]
    nodes: u32,
    /// Single-change rounds (each: a Node added, its address changed, deleted).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=250))]
    changes: u32,
    /// Concurrent API requests while the Nodes are created.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    concurrency: u32,
}

const NODE: (&str, Ipv4Addr) = INAJOB;
const POD_CIDR: &str = "10.244.1.0/24";
const PROTO: u8 = 200;
const METRICS: &str = "127.0.0.1:10249";
const COLD_TARGET: Duration = Duration::from_millis(500);
const CHANGE_TARGET: Duration = Duration::from_millis(20);
/// How long any one step may take before the run is an error.
const COLD_LIMIT: Duration = Duration::from_secs(60);
const CHANGE_LIMIT: Duration = Duration::from_secs(5);
const CHANGE_GAP: Duration = Duration::from_millis(100);

/// The LAN gateway of Node `i`: 192.168.43.2..=254 without the node's own.
fn gateway(i: u32) -> Ipv4Addr {
    let mut g = 2 + (i % 252) as u8;
    if g >= NODE.1.octets()[3] {
        g += 1;
    }
    Ipv4Addr::new(192, 168, 43, g)
}

fn pod_cidr(i: u32) -> (Ipv4Addr, u8) {
    (
        Ipv4Addr::new(10, (100 + i / 250) as u8, (i % 250) as u8, 0),
        24,
    )
}

/// The change rounds' Nodes, in a range of their own.
fn change_cidr(k: u32) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(10, 99, (k % 250) as u8, 0), 24)
}

fn node_object(name: &str, cidr: (Ipv4Addr, u8), gw: Ipv4Addr) -> Result<Node> {
    let cidr = format!("{}/{}", cidr.0, cidr.1);
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": gw.to_string()}]},
    }))
    .context("building a Node")
}

fn address_patch(gw: Ipv4Addr) -> Value {
    json!({"status": {"addresses": [{"type": "InternalIP", "address": gw.to_string()}]}})
}

fn internal_ip(n: &Node) -> Option<String> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
}

/// Creates the Node; when the API server dropped the status of the
/// create, sets it through the status subresource. Returns whether that
/// second request was needed.
async fn create_node(
    api: &Api<Node>,
    name: &str,
    cidr: (Ipv4Addr, u8),
    gw: Ipv4Addr,
) -> Result<bool> {
    let made = api
        .create(&PostParams::default(), &node_object(name, cidr, gw)?)
        .await
        .with_context(|| format!("creating Node {name}"))?;
    if internal_ip(&made).as_deref() == Some(gw.to_string().as_str()) {
        return Ok(false);
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&address_patch(gw)),
    )
    .await
    .with_context(|| format!("setting the status of Node {name}"))?;
    Ok(true)
}

// ---------------------------------------------------------------- netns

/// Opens the netns at `path` for `setns`.
fn open_netns(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("opening netns {}", path.display()))
}

/// Runs `f` on a new thread inside the netns at `path`.
fn spawn_in<T: Send + 'static>(
    path: &Path,
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let ns = open_netns(path)?;
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering netns {}", path.display()))?;
            Ok(f())
        })
        .context("starting a thread")
}

fn run_in<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    spawn_in(path, "in-netns", f)?
        .join()
        .map_err(|_| anyhow!("a thread in the node netns panicked"))?
}

// -------------------------------------------------------------- metrics

/// A reconciler whose figures are read from `/metrics`: its label and
/// the gauge of what it programmed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reconciler {
    pub(crate) name: &'static str,
    pub(crate) programmed: &'static str,
}

const ROUTES: Reconciler = Reconciler {
    name: "routes",
    programmed: "node_sync_routes_programmed",
};

/// node-sync's `/metrics`, the values we read for one reconciler.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Reading {
    pub(crate) syncs: f64,
    pub(crate) duration: f64,
    pub(crate) programmed: f64,
    pub(crate) errors: f64,
}

fn parse_metrics(text: &str, rec: Reconciler) -> Reading {
    let labelled = |m: &str| format!("{m}{{reconciler=\"{}\"}}", rec.name);
    let (syncs, duration, errors) = (
        labelled("node_sync_syncs_total"),
        labelled("node_sync_sync_duration_seconds"),
        labelled("node_sync_errors_total"),
    );
    let mut r = Reading::default();
    for line in text.lines() {
        let Some((key, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = v.parse::<f64>() else { continue };
        match key {
            k if k == syncs => r.syncs = v,
            k if k == duration => r.duration = v,
            k if k == errors => r.errors = v,
            k if k == rec.programmed => r.programmed = v,
            _ => {}
        }
    }
    r
}

/// `GET /metrics` on the node's loopback, for `rec`.
pub(crate) fn metrics(ns: &Path, rec: Reconciler) -> Result<Reading> {
    let body = run_in(ns, || -> std::io::Result<String> {
        let addr: SocketAddr = METRICS.parse().map_err(std::io::Error::other)?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?
    .with_context(|| format!("GET http://{METRICS}/metrics on the node"))?;
    ensure!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "/metrics answered {body:?}"
    );
    Ok(parse_metrics(&body, rec))
}

/// Reads `/metrics` until `rec`'s sync counter passes `after` (the
/// counter is bumped right after the sync's last kernel call returns).
pub(crate) fn metrics_after(ns: &Path, rec: Reconciler, after: f64) -> Result<(Reading, Duration)> {
    let t = Instant::now();
    loop {
        let r = metrics(ns, rec)?;
        if r.syncs > after {
            return Ok((r, t.elapsed()));
        }
        ensure!(
            t.elapsed() < Duration::from_secs(5),
            "node_sync_syncs_total{{reconciler=\"{}\"}} stayed at {} for 5 s",
            rec.name,
            r.syncs
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

// -------------------------------------------------------- route monitor

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLMSG_ERROR: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;

/// One single change: a Node created, its InternalIP changed, deleted.
#[derive(Clone, Copy, Debug)]
enum Step {
    Add,
    Move,
    Delete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    New,
    Del,
}

/// One of our routes appearing, replaced or going, as the kernel told us.
#[derive(Clone, Copy, Debug)]
struct RouteEvent {
    at: Instant,
    change: Change,
    dst: (Ipv4Addr, u8),
    via: Option<Ipv4Addr>,
}

enum Seen<E> {
    Event(E),
    /// The socket's buffer overflowed: notifications were lost.
    Lost,
    Failed(String),
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// The netlink messages in one datagram: each one's type and the whole
/// message (header included).
pub(crate) fn nl_messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let (len, kind) = (u32_at(buf, off)? as usize, u16_at(buf, off + 4)?);
        if len < 16 || off + len > buf.len() {
            return None;
        }
        let msg = &buf[off..off + len];
        off += (len + 3) & !3;
        Some((kind, msg))
    })
}

/// The attributes of a netlink message from byte `start` on: each one's
/// type (without the nested and byte-order flags) and its payload.
pub(crate) fn nl_attrs(msg: &[u8], start: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut a = start;
    std::iter::from_fn(move || {
        let (alen, atype) = (u16_at(msg, a)? as usize, u16_at(msg, a + 2)?);
        if alen < 4 || a + alen > msg.len() {
            return None;
        }
        let payload = &msg[a + 4..a + alen];
        a += (alen + 3) & !3;
        Some((atype & 0x3fff, payload))
    })
}

fn ipv4_at(b: &[u8], i: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(i..i + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

/// The route messages in one datagram: protocol-200 IPv4 routes of the
/// main table.
fn parse_routes(buf: &[u8], at: Instant, out: &mut Vec<RouteEvent>) {
    for (kind, msg) in nl_messages(buf) {
        let change = match kind {
            RTM_NEWROUTE => Change::New,
            RTM_DELROUTE => Change::Del,
            _ => continue,
        };
        // struct rtmsg after the 16-byte header: family, dst_len, src_len,
        // tos, table, protocol, scope, type, flags (u32).
        let Some(rt) = msg.get(16..28) else { continue };
        let (family, dst_len, mut table, protocol) = (rt[0], rt[1], u32::from(rt[4]), rt[5]);
        if family != nix::libc::AF_INET as u8 || protocol != PROTO {
            continue;
        }
        let (mut dst, mut via) = (Ipv4Addr::UNSPECIFIED, None);
        for (atype, p) in nl_attrs(msg, 28) {
            match atype {
                RTA_DST => dst = ipv4_at(p, 0).unwrap_or(dst),
                RTA_GATEWAY => via = ipv4_at(p, 0),
                RTA_TABLE => table = u32_at(p, 0).unwrap_or(table),
                _ => {}
            }
        }
        if table == RT_TABLE_MAIN {
            out.push(RouteEvent {
                at,
                change,
                dst: (dst, dst_len),
                via,
            });
        }
    }
}

/// Turns one datagram's messages into events stamped `at`.
pub(crate) type Parse<E> = fn(&[u8], Instant, &mut Vec<E>);

/// A netlink socket in the node netns subscribed to notification groups
/// (every IPv4 route change; every nftables change), read on its own
/// thread into a channel as the events `parse` makes of them. Dropping it
/// stops the thread and closes the socket (which would otherwise keep the
/// netns alive).
pub(crate) struct Monitor<E> {
    what: &'static str,
    rx: mpsc::Receiver<Seen<E>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<E: Send + 'static> Monitor<E> {
    /// Subscribed to `groups` (a bitmask) of netlink `family` when this
    /// returns: nothing after it is missed.
    pub(crate) fn start(
        ns: &Path,
        what: &'static str,
        family: SockProtocol,
        groups: u32,
        parse: Parse<E>,
    ) -> Result<Monitor<E>> {
        let fd: OwnedFd = run_in(ns, move || -> nix::Result<OwnedFd> {
            let fd = socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                family,
            )?;
            // Room for every notification of a full table at once (root
            // may go past rmem_max).
            setsockopt(&fd, sockopt::RcvBufForce, &(32 << 20))?;
            setsockopt(
                &fd,
                sockopt::ReceiveTimeout,
                &nix::sys::time::TimeVal::new(0, 50_000),
            )?;
            bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
            Ok(fd)
        })?
        .with_context(|| format!("a netlink {what} socket in the node netns"))?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("{what}-monitor"))
            .spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                let mut evs = Vec::new();
                while !flag.load(Ordering::SeqCst) {
                    match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                        Ok(n) => {
                            let at = Instant::now();
                            if u16_at(&buf[..n], 4) == Some(NLMSG_ERROR) {
                                continue;
                            }
                            parse(&buf[..n], at, &mut evs);
                            for e in evs.drain(..) {
                                if tx.send(Seen::Event(e)).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                        Err(nix::errno::Errno::ENOBUFS) => {
                            let _ = tx.send(Seen::Lost);
                        }
                        Err(e) => {
                            let _ = tx.send(Seen::Failed(e.to_string()));
                            return;
                        }
                    }
                }
            })
            .with_context(|| format!("starting the {what} monitor"))?;
        Ok(Monitor {
            what,
            rx,
            stop,
            thread: Some(thread),
        })
    }

    /// The next event within `limit`; `Ok(None)` on timeout.
    pub(crate) fn next(&self, limit: Duration) -> Result<Option<E>> {
        let what = self.what;
        match self.rx.recv_timeout(limit) {
            Ok(Seen::Event(e)) => Ok(Some(e)),
            Ok(Seen::Lost) => bail!("the {what} monitor's socket overflowed: notifications lost"),
            Ok(Seen::Failed(e)) => bail!("the {what} monitor failed: {e}"),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the {what} monitor stopped"),
        }
    }
}

impl<E> Drop for Monitor<E> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- agent

/// The node-sync process: killed and reaped on drop.
pub(crate) struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait().context("waiting for node-sync")? {
            bail!(
                "node-sync exited ({st}); its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// SIGTERM (it leaves the routes in place); how long it took to exit,
    /// an error when it has not after `limit` (the drop kills it).
    pub(crate) fn stop(&mut self, limit: Duration) -> Result<Duration> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(st) = self.child.try_wait().context("waiting for node-sync")? {
                ensure!(st.success(), "node-sync exited with {st} on SIGTERM");
                return Ok(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("node-sync did not stop within {limit:?} of SIGTERM");
    }
}

impl Drop for Agent {
    /// Kills node-sync and what it started: it leads its own process
    /// group, and an `nft -f` of a large table would otherwise run on.
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// `VmHWM` and `VmRSS` of `pid`, in KiB.
pub(crate) fn memory(pid: u32) -> Result<(u64, u64)> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        st.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

// ------------------------------------------------------------------ log

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The timestamp tracing-subscriber starts a line with,
/// `2025-01-31T12:34:56.123456Z`, as seconds since the epoch.
pub(crate) fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let (h, mi) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let s = t.next()?.parse::<f64>().ok()?;
    Some((days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60) as f64 + s)
}

/// Drops ANSI colour sequences.
pub(crate) fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Seconds after `since` (epoch seconds) of the first log line containing
/// `what`.
pub(crate) fn logged_at(log: &str, what: &str, since: f64) -> Option<f64> {
    log.lines()
        .map(plain)
        .find(|l| l.contains(what))
        .and_then(|l| log_time(&l))
        .map(|t| t - since)
}

pub(crate) fn epoch(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

// ------------------------------------------------------------------ run

/// Everything of the run; fields drop in order: node-sync, the monitor's
/// socket, the relay and the API server, the netns, the directory.
pub(crate) struct Env {
    agent: Option<Agent>,
    monitor: Option<Monitor<RouteEvent>>,
    _relay: Relay,
    _server: ApiServer,
    cluster: Cluster,
    dir: tempfile::TempDir,
    pub(crate) rt: tokio::runtime::Runtime,
}

impl Env {
    fn new() -> Result<Env> {
        let dir = tempfile::Builder::new()
            .prefix("cni-bench-node-sync-")
            .tempdir()
            .context("temporary directory")?;
        let mut cluster = Cluster::new("nsbench");
        cluster.add_node(NODE.0, NODE.1);
        let server = ApiServer::start(0, None).map_err(|e| anyhow!("API server: {e}"))?;
        server
            .write_kubeconfigs(dir.path(), &[NODE.0])
            .map_err(|e| anyhow!("kubeconfigs: {e}"))?;
        let relay = Relay::start(&cluster.node(NODE.0).ns, server.port())
            .context("relay to the API server")?;
        std::fs::create_dir_all(dir.path().join("net.d")).context("creating net.d")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a tokio runtime")?;
        let env = Env {
            agent: None,
            monitor: None,
            _relay: relay,
            _server: server,
            cluster,
            dir,
            rt,
        };
        // The node identity lists every Node, Service and EndpointSlice
        // only with the RBAC an operator applies (the stand-in, like the
        // real server, refuses it otherwise).
        let rbac = testbed::testdata::dir().join("../deploy/node-sync-rbac.yaml");
        let text = std::fs::read_to_string(&rbac)
            .with_context(|| format!("reading {}", rbac.display()))?;
        let admin = env.admin()?;
        env.rt
            .block_on(testbed::kubectl::apply(&admin, &text))
            .context("applying node-sync's RBAC")?;
        Ok(env)
    }

    /// The node's netns.
    pub(crate) fn ns(&self) -> PathBuf {
        self.cluster.node(NODE.0).ns.path()
    }

    /// A file in the run's directory (removed with it).
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client of the API server as its admin (`system:masters`).
    pub(crate) fn admin(&self) -> Result<Client> {
        let kc = Kubeconfig::read_from(self.file("admin.kubeconfig"))
            .context("reading the admin kubeconfig")?;
        self.rt.block_on(async {
            let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
            anyhow::Ok(Client::try_from(cfg)?)
        })
    }

    fn nodes(&self) -> Result<Api<Node>> {
        Ok(Api::all(self.admin()?))
    }

    /// Our routes in the node's main table, `dst -> gateway`, from `ip`.
    fn table(&self) -> Result<BTreeMap<String, String>> {
        let out = self
            .cluster
            .node(NODE.0)
            .ns
            .try_sh(&format!("ip -4 route show table main proto {PROTO}"))
            .map_err(|e| anyhow!("ip route show on the node: {e}"))?;
        let mut t = BTreeMap::new();
        for l in out.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                [dst, "via", gw, ..] => {
                    t.insert(dst.to_string(), gw.to_string());
                }
                _ => bail!("unexpected route on the node: {l:?}"),
            }
        }
        Ok(t)
    }

    /// Spawns `node-sync <extra> run` in the node netns, its log to a file.
    pub(crate) fn start_agent(&mut self, bin: &Path, extra: &[&str]) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let log = self.file("node-sync.log");
        let f = File::create(&log).context("creating the node-sync log")?;
        let mut cmd = Command::new("nsenter");
        // Its own process group, for the drop; a Ctrl-C reaches us only.
        cmd.process_group(0);
        let child = crate::default_signal_mask(&mut cmd)
            .arg(format!("--net={}", self.ns().display()))
            .arg(bin)
            .arg("--kubeconfig")
            .arg(self.dir.path().join(format!("{}.kubeconfig", NODE.0)))
            .args(["--node-name", NODE.0, "--node-ip", &NODE.1.to_string()])
            .args(["--pod-cidr", POD_CIDR, "--metrics-addr", METRICS])
            // No containerd and no CNI config on this node: the Node is
            // NotReady, which the routes do not depend on.
            .arg("--containerd-socket")
            .arg(self.dir.path().join("no-containerd.sock"))
            .arg("--cni-conf-dir")
            .arg(self.dir.path().join("net.d"))
            .args(extra)
            .arg("run")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .context("starting node-sync")?;
        self.agent = Some(Agent { child, log });
        Ok(())
    }

    pub(crate) fn agent(&mut self) -> Result<&mut Agent> {
        self.agent.as_mut().context("node-sync is not running")
    }

    /// node-sync's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.file("node-sync.log")).unwrap_or_default()
    }
}

/// Checks what a node-sync benchmark needs: root, the binary, `tools` on
/// PATH. Returns the binary's canonical path.
pub(crate) fn preflight(bench: &str, node_sync: &Path, tools: &[&str]) -> Result<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the {bench} benchmark creates network namespaces: run it as root");
    }
    let bin = std::fs::canonicalize(node_sync)
        .with_context(|| format!("no node-sync at {}", node_sync.display()))?;
    ensure!(bin.is_file(), "{} is not a file", bin.display());
    for t in tools {
        ensure!(
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file())),
            "{t} is not on PATH"
        );
    }
    Ok(bin)
}

/// Runs `f` in a fresh [`Env`]; when it fails, prints the end of
/// node-sync's log. node-sync, the netns and the directory are gone when
/// this returns, whatever `f` did.
pub(crate) fn with_env<T>(f: impl FnOnce(&mut Env) -> Result<T>) -> Result<T> {
    let mut env = Env::new()?;
    let outcome = f(&mut env);
    if outcome.is_err() {
        let log = env.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        if !tail.is_empty() {
            eprintln!("node-sync log (last lines):");
            for l in tail.into_iter().rev() {
                eprintln!("  {}", plain(l));
            }
        }
    }
    drop(env);
    outcome
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

struct Cold {
    setup: Duration,
    status_patched: bool,
    /// From spawn: node-sync's "running" line, its "routes: applying"
    /// line, the last route in the kernel.
    running: Option<f64>,
    applying: Option<f64>,
    all_routes: Duration,
    /// The first routes sync's own duration, and the sync count when read.
    metric: Option<f64>,
    metric_syncs: f64,
    metric_read_after: Duration,
    hwm_cold_kib: u64,
}

struct Changes {
    add: Vec<Duration>,
    change: Vec<Duration>,
    delete: Vec<Duration>,
    /// The API request alone, of all of them.
    api: Vec<Duration>,
    /// node-sync's own sync duration for each change (when the count
    /// showed exactly that one sync).
    sync: Vec<Duration>,
    other_syncs: u32,
}

struct Outcome {
    nodes: u32,
    cold: Cold,
    changes: Changes,
    hwm_kib: u64,
    rss_kib: u64,
    warnings: usize,
}

pub fn run(o: &Options) -> Result<()> {
    let bin = preflight("node-sync", &o.node_sync, &["nsenter", "ip"])?;
    let load_before = loadavg();
    println!(
        "node-sync: {} on node {} {}, {} other Nodes, {} change rounds",
        bin.display(),
        NODE.0,
        NODE.1,
        o.nodes,
        o.changes
    );
    let outcome = with_env(|env| measure(o, &bin, env))?;
    report(o, &outcome, &load_before)
}

pub(crate) fn check_interrupt() -> Result<()> {
    if let Some(sig) = crate::interrupted() {
        bail!("interrupted by signal {sig}");
    }
    Ok(())
}

fn measure(o: &Options, bin: &Path, env: &mut Env) -> Result<Outcome> {
    let api = env.nodes()?;
    let ns = env.ns();
    let n = o.nodes;

    // The Nodes, concurrently (untimed).
    let t = Instant::now();
    let status_patched = env.rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..o.concurrency.min(n) {
            let api = api.clone();
            let (step, count) = (o.concurrency as usize, n);
            tasks.spawn(async move {
                let mut patched = false;
                for i in (w..count).step_by(step) {
                    check_interrupt()?;
                    patched |= create_node(&api, &format!("bench-{i:05}"), pod_cidr(i), gateway(i))
                        .await?;
                }
                anyhow::Ok(patched)
            });
        }
        let mut patched = false;
        while let Some(r) = tasks.join_next().await {
            patched |= r.context("a create task")??;
        }
        anyhow::Ok(patched)
    })?;
    let setup = t.elapsed();
    let listed = env
        .rt
        .block_on(api.list(&ListParams::default()))
        .context("listing the Nodes")?;
    ensure!(
        listed.items.len() == n as usize,
        "{} Nodes in the API, {n} created",
        listed.items.len()
    );
    println!(
        "setup: {n} Nodes created in {:.2} s ({} concurrent{})",
        secs(setup),
        o.concurrency,
        if status_patched {
            ", status set through /status"
        } else {
            ", status in the create"
        }
    );
    let want: BTreeMap<String, String> = (0..n)
        .map(|i| {
            let c = pod_cidr(i);
            (format!("{}/{}", c.0, c.1), gateway(i).to_string())
        })
        .collect();
    ensure!(
        env.table()?.is_empty(),
        "routes with protocol {PROTO} before node-sync started"
    );

    // Cold start.
    env.monitor = Some(Monitor::start(
        &ns,
        "route",
        SockProtocol::NetlinkRoute,
        RTMGRP_IPV4_ROUTE,
        parse_routes,
    )?);
    check_interrupt()?;
    let (spawned, spawned_wall) = (Instant::now(), SystemTime::now());
    env.start_agent(bin, &[])?;
    let pid = env.agent()?.pid();
    let mut ours: BTreeMap<(Ipv4Addr, u8), Option<Ipv4Addr>> = BTreeMap::new();
    let mut last = spawned;
    while ours.len() < n as usize {
        check_interrupt()?;
        ensure!(
            spawned.elapsed() < COLD_LIMIT,
            "{} of {n} routes after {COLD_LIMIT:?}",
            ours.len()
        );
        let monitor = env.monitor.as_ref().context("no monitor")?;
        match monitor.next(Duration::from_millis(100))? {
            Some(e) => {
                match e.change {
                    Change::New => ours.insert(e.dst, e.via),
                    Change::Del => ours.remove(&e.dst),
                };
                last = e.at;
            }
            None => env.agent()?.alive()?,
        }
    }
    let all_routes = last.duration_since(spawned);
    let (first, read_after) = metrics_after(&ns, ROUTES, 0.0)?;
    let (hwm_cold_kib, _) = memory(pid)?;
    let log = env.log();
    let since = epoch(spawned_wall);
    let cold = Cold {
        setup,
        status_patched,
        running: logged_at(&log, "node-sync running", since),
        applying: logged_at(&log, "routes: applying", since),
        all_routes,
        metric: (first.syncs == 1.0).then_some(first.duration),
        metric_syncs: first.syncs,
        metric_read_after: read_after,
        hwm_cold_kib,
    };
    ensure!(
        first.programmed == f64::from(n),
        "node_sync_routes_programmed is {} with {n} Nodes",
        first.programmed
    );
    let table = env.table()?;
    ensure!(
        table == want,
        "the node's routes are not the Nodes' ({} routes, {} wanted; first differences: {:?})",
        table.len(),
        want.len(),
        table
            .iter()
            .filter(|(k, v)| want.get(*k) != Some(*v))
            .take(3)
            .collect::<Vec<_>>()
    );
    println!(
        "cold start: {n} routes in the kernel {:.0} ms after spawn",
        ms(all_routes)
    );

    // Let the syncs the start caused (its own Node's registration and
    // status) pass.
    std::thread::sleep(Duration::from_secs(2));
    let mut ch = Changes {
        add: Vec::new(),
        change: Vec::new(),
        delete: Vec::new(),
        api: Vec::new(),
        sync: Vec::new(),
        other_syncs: 0,
    };
    let mut syncs = metrics(&ns, ROUTES)?.syncs;
    for k in 0..o.changes {
        let name = format!("bench-change-{k:03}");
        let dst = change_cidr(k);
        let (a, b) = (gateway(k), gateway(k + 1));
        for step in [Step::Add, Step::Move, Step::Delete] {
            check_interrupt()?;
            std::thread::sleep(CHANGE_GAP);
            // Nothing else is expected in between; anything that came
            // would be taken for the change's own.
            let monitor = env.monitor.as_ref().context("no monitor")?;
            if let Some(e) = monitor.next(Duration::ZERO)? {
                bail!("an unexpected route event before a change: {e:?}");
            }
            let (kind, via) = match step {
                Step::Add => (Change::New, Some(a)),
                Step::Move => (Change::New, Some(b)),
                Step::Delete => (Change::Del, None),
            };
            let t0 = Instant::now();
            env.rt.block_on(async {
                match step {
                    Step::Add => create_node(&api, &name, dst, a).await.map(|_| ()),
                    Step::Move => api
                        .patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(&address_patch(b)),
                        )
                        .await
                        .map(|_| ())
                        .with_context(|| format!("changing the address of Node {name}")),
                    Step::Delete => api
                        .delete(&name, &DeleteParams::default())
                        .await
                        .map(|_| ())
                        .with_context(|| format!("deleting Node {name}")),
                }
            })?;
            ch.api.push(t0.elapsed());
            let took = loop {
                ensure!(
                    t0.elapsed() < CHANGE_LIMIT,
                    "Node {name}: no {kind:?} of {}/{} (via {via:?}) in the kernel after {CHANGE_LIMIT:?}",
                    dst.0,
                    dst.1
                );
                let monitor = env.monitor.as_ref().context("no monitor")?;
                match monitor.next(Duration::from_millis(100))? {
                    Some(e)
                        if e.dst == dst && e.change == kind && (via.is_none() || e.via == via) =>
                    {
                        break e.at.duration_since(t0);
                    }
                    Some(e) => {
                        bail!("an unexpected route event after {step:?} of Node {name}: {e:?}")
                    }
                    None => env.agent()?.alive()?,
                }
            };
            match step {
                Step::Add => ch.add.push(took),
                Step::Move => ch.change.push(took),
                Step::Delete => ch.delete.push(took),
            }
            let (r, _) = metrics_after(&ns, ROUTES, syncs)?;
            if r.syncs == syncs + 1.0 {
                ch.sync.push(Duration::from_secs_f64(r.duration));
            } else {
                ch.other_syncs += 1;
            }
            syncs = r.syncs;
        }
    }
    let table = env.table()?;
    ensure!(
        table == want,
        "after the changes, the node's routes are not the Nodes' ({} routes)",
        table.len()
    );

    let (hwm_kib, rss_kib) = memory(pid)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    ensure!(
        comm.trim() == "node-sync",
        "process {pid} is {comm:?}, not node-sync"
    );
    let last = metrics(&ns, ROUTES)?;
    ensure!(
        last.errors == 0.0,
        "node-sync counted {} routes errors",
        last.errors
    );
    env.agent()?.stop(Duration::from_secs(5))?;
    let log = env.log();
    ensure!(!log.contains("panicked"), "node-sync panicked:\n{log}");
    let warnings = log.lines().filter(|l| plain(l).contains(" WARN ")).count();
    Ok(Outcome {
        nodes: n,
        cold,
        changes: ch,
        hwm_kib,
        rss_kib,
        warnings,
    })
}

fn report(o: &Options, r: &Outcome, load_before: &str) -> Result<()> {
    let load_after = loadavg();
    let c = &r.cold;
    let n = r.nodes;
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let all = secs(c.all_routes);
    // After the list: from node-sync's "routes: applying" line (logged
    // once the list is in, the plan made) to the last route in the kernel.
    let after_list = c.applying.map(|a| all - a);
    let cold_log_ok = after_list.is_some_and(|s| s <= secs(COLD_TARGET));
    let cold_metric_ok = c.metric.is_some_and(|s| s <= secs(COLD_TARGET));
    let ch = &r.changes;
    let kinds: [(&str, &Vec<Duration>); 3] = [
        ("added", &ch.add),
        ("address changed", &ch.change),
        ("deleted", &ch.delete),
    ];
    let change_ok: Vec<bool> = kinds
        .iter()
        .map(|(_, v)| percentile(v, 99.0) <= CHANGE_TARGET)
        .collect();
    let opt_ms = |v: Option<f64>| {
        v.map(|s| format!("{:>9.1} ms", s * 1e3))
            .unwrap_or_else(|| format!("{:>12}", "n/a"))
    };

    println!("load average before {load_before}, after {load_after} (2 cores shared)");
    println!();
    println!(
        "{:<44} {:>12}",
        format!("cold start, {n} Nodes"),
        "from spawn"
    );
    println!("{:<44} {}", "  node-sync running (log)", opt_ms(c.running));
    println!(
        "{:<44} {}",
        "  list complete, plan made (log)",
        opt_ms(c.applying)
    );
    println!(
        "{:<44} {:>9.1} ms",
        format!("  all {n} routes in the kernel"),
        all * 1e3
    );
    println!();
    println!("{:<44} {:>12} {:>12}  target", "", "value / p50", "p99");
    println!(
        "{:<44} {} {:>12}  <= 500 ms {}",
        "cold: list complete -> all routes (log)",
        opt_ms(after_list),
        "",
        verdict(cold_log_ok)
    );
    println!(
        "{:<44} {} {:>12}  <= 500 ms {}",
        "cold: first routes sync (metric)",
        opt_ms(c.metric),
        "",
        verdict(cold_metric_ok)
    );
    for ((what, v), ok) in kinds.iter().zip(&change_ok) {
        println!(
            "{:<44} {:>9.1} ms {:>9.1} ms  p99 <= 20 ms {}",
            format!("Node {what} -> kernel, {} runs", v.len()),
            ms(median(v)),
            ms(percentile(v, 99.0)),
            verdict(*ok)
        );
    }
    println!(
        "{:<44} {:>9.1} ms {:>9.1} ms",
        "  of which the API request",
        ms(median(&ch.api)),
        ms(percentile(&ch.api, 99.0))
    );
    println!(
        "{:<44} {:>9.1} ms {:>9.1} ms",
        format!("  node-sync's sync per change (metric, {})", ch.sync.len()),
        ms(median(&ch.sync)),
        ms(percentile(&ch.sync, 99.0))
    );
    println!(
        "{:<44} {:>9.1} MiB (after the cold start {:.1} MiB; RSS at the end {:.1} MiB)",
        format!("peak RSS (VmHWM), {n} Nodes"),
        r.hwm_kib as f64 / 1024.0,
        c.hwm_cold_kib as f64 / 1024.0,
        r.rss_kib as f64 / 1024.0
    );
    if c.metric.is_none() {
        println!(
            "note: the first sync's metric was overwritten: syncs_total was {} when read {:.1} ms after the last route",
            c.metric_syncs,
            ms(c.metric_read_after)
        );
    }
    if ch.other_syncs > 0 {
        println!(
            "note: {} changes shared their sync count with another sync (resync or heartbeat); their sync metric is left out",
            ch.other_syncs
        );
    }
    println!("node-sync warnings in its log: {}", r.warnings);
    println!("errors: 0");
    let fig = |v: &[Duration]| json!({"p50_ms": ms(median(v)), "p99_ms": ms(percentile(v, 99.0)), "max_ms": ms(percentile(v, 100.0)), "runs": v.len()});
    let all_pass = cold_log_ok && cold_metric_ok && change_ok.iter().all(|b| *b);
    let result = json!({
        "bench": "node-sync-routes", "nodes": n, "change_rounds": o.changes,
        "setup_s": secs(c.setup), "status_via_subresource": c.status_patched,
        "cold_ms": {
            "running_from_spawn": c.running.map(|s| s * 1e3),
            "list_done_from_spawn": c.applying.map(|s| s * 1e3),
            "all_routes_from_spawn": all * 1e3,
            "after_list_log": after_list.map(|s| s * 1e3),
            "first_sync_metric": c.metric.map(|s| s * 1e3),
        },
        "change_ms": {"add": fig(&ch.add), "address": fig(&ch.change), "delete": fig(&ch.delete),
            "api_request": fig(&ch.api), "sync_metric": fig(&ch.sync)},
        "peak_rss_kib": r.hwm_kib, "peak_rss_after_cold_kib": c.hwm_cold_kib, "rss_end_kib": r.rss_kib,
        "node_sync_warnings": r.warnings,
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
    fn gateways_are_on_the_lan_and_never_the_node() {
        let all: BTreeSet<Ipv4Addr> = (0..1000).map(gateway).collect();
        assert_eq!(all.len(), 252);
        assert!(!all.contains(&NODE.1));
        assert!(all.iter().all(|g| g.octets()[..3] == [192, 168, 43]
            && g.octets()[3] >= 2
            && g.octets()[3] <= 254));
    }

    #[test]
    fn pod_cidrs_are_unique_and_apart_from_the_node() {
        let all: BTreeSet<(Ipv4Addr, u8)> = (0..25000).map(pod_cidr).collect();
        assert_eq!(all.len(), 25000);
        assert!(!all.contains(&(Ipv4Addr::new(10, 244, 1, 0), 24)));
        assert!((0..250).map(change_cidr).all(|c| !all.contains(&c)));
    }

    #[test]
    fn log_times() {
        let t = log_time("2025-01-31T12:34:56.250000Z  INFO routes: applying put=1000").expect("t");
        assert!((t - 1_738_326_896.25).abs() < 1e-6, "{t}");
        assert_eq!(plain("\u{1b}[2m2025\u{1b}[0m x"), "2025 x");
    }

    #[test]
    fn metrics_text() {
        let r = parse_metrics(
            "# TYPE node_sync_sync_duration_seconds gauge\nnode_sync_sync_duration_seconds{reconciler=\"heartbeat\"} 0.5\nnode_sync_sync_duration_seconds{reconciler=\"routes\"} 0.125\nnode_sync_syncs_total{reconciler=\"routes\"} 2\nnode_sync_routes_programmed 1000\n",
            ROUTES,
        );
        assert_eq!((r.syncs, r.duration, r.programmed), (2.0, 0.125, 1000.0));
    }

    #[test]
    fn route_messages() {
        // RTM_NEWROUTE 10.100.0.0/24 via 192.168.43.2 proto 200, table main.
        let mut m = vec![0u8; 16];
        m[4..6].copy_from_slice(&RTM_NEWROUTE.to_ne_bytes());
        m.extend([
            nix::libc::AF_INET as u8,
            24,
            0,
            0,
            254,
            PROTO,
            0,
            1,
            0,
            0,
            0,
            0,
        ]);
        for (t, v) in [
            (RTA_TABLE, 254u32.to_ne_bytes()),
            (RTA_DST, [10, 100, 0, 0]),
            (RTA_GATEWAY, [192, 168, 43, 2]),
        ] {
            m.extend(8u16.to_ne_bytes());
            m.extend(t.to_ne_bytes());
            m.extend(v);
        }
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        let mut out = Vec::new();
        parse_routes(&m, Instant::now(), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].dst, (Ipv4Addr::new(10, 100, 0, 0), 24));
        assert_eq!(out[0].via, Some(Ipv4Addr::new(192, 168, 43, 2)));
        assert_eq!(out[0].change, Change::New);
        // Another protocol is not ours.
        m[21] = 4;
        out.clear();
        parse_routes(&m, Instant::now(), &mut out);
        assert!(out.is_empty());
    }
}
