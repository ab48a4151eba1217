//! host-local, ours against the reference, in one run:
//!
//! - (a) one ADD+DEL on a fresh data directory, the two plugins taking turns
//!   call by call; median over `--runs` pairs. Target: ours <= 0.5x.
//! - (b) `--leases` ADDs with distinct container ids in a /16, then as many
//!   DELs, in blocks of `--block` calls taking turns; total time. Target:
//!   ours <= 0.1x. Every address handed out must be distinct, and at the end
//!   the network directory must hold only `lock` and `last_reserved_ip.0`.
//! - (c) ADD+DEL on a store of 10 leases and on the full store of (b)
//!   (between its ADDs and its DELs), the four stores taking turns; median
//!   over `--probes` pairs each. Target: ours at `--leases` <= 2.0x ours at
//!   10. The reference's growth is shown for information.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::plugin::call;
use crate::stats::{median, ms, percentile, ratio, secs};

#[derive(clap::Args)]
pub struct Options {
    /// Our host-local binary.
    #[arg(long, value_name = "PATH")]
    ours: PathBuf,
    /// The reference host-local binary.
    #[arg(long, value_name = "PATH")]
    reference: PathBuf,
    /// (a): ADD+DEL pairs per plugin.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// (b), (c): leases in the full /16 store, 11 to 65532 (more than the
    /// small store of (c), and room left for one more).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(11..=65532))]
    leases: u32,
    /// (b): calls per plugin before the other one takes its turn.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    block: u32,
    /// (c): ADD+DEL pairs per store.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    probes: u32,
    /// Untimed ADD+DEL pairs per plugin first, to warm caches.
    #[arg(long, default_value_t = 5)]
    warmup: u32,
    /// Where the data directories go: on disk, as /var/lib/cni is, rather
    /// than a tmpfs /tmp.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    tmpdir: PathBuf,
}

const NETWORK: &str = "bench";
const SUBNET: &str = "10.10.0.0/16";
/// Leases in the small store of (c).
const FEW: u32 = 10;
const TARGET_A: f64 = 0.5;
const TARGET_B: f64 = 0.1;
const TARGET_C: f64 = 2.0;

const OURS: usize = 0;
const REF: usize = 1;
const NAMES: [&str; 2] = ["ours", "reference"];

/// Both plugins, ours first, then the other way round on odd turns.
fn turns(turn: u32) -> [usize; 2] {
    if turn.is_multiple_of(2) {
        [OURS, REF]
    } else {
        [REF, OURS]
    }
}

/// One plugin with its own data directory.
struct Store {
    bin: PathBuf,
    data_dir: PathBuf,
    conf: String,
}

impl Store {
    fn new(bin: &Path, data_dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let dir = data_dir
            .to_str()
            .with_context(|| format!("{} is not UTF-8", data_dir.display()))?;
        let conf = json!({
            "cniVersion": "0.3.1",
            "name": NETWORK,
            "type": "host-local",
            "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": dir},
        })
        .to_string();
        Ok(Store {
            bin: bin.to_owned(),
            data_dir,
            conf,
        })
    }

    /// ADD; what it took and the address it handed out, checked to be in
    /// the subnet.
    fn add(&self, id: &str) -> Result<(Duration, Ipv4Addr)> {
        let reply = call(&self.bin, "ADD", id, &self.conf)?;
        let ip = leased_ip(&reply.stdout).with_context(|| {
            format!(
                "{} ADD for {id}: unexpected result {:?}",
                self.bin.display(),
                String::from_utf8_lossy(&reply.stdout)
            )
        })?;
        Ok((reply.took, ip))
    }

    fn del(&self, id: &str) -> Result<Duration> {
        Ok(call(&self.bin, "DEL", id, &self.conf)?.took)
    }

    fn add_del(&self, id: &str) -> Result<Duration> {
        Ok(self.add(id)?.0 + self.del(id)?)
    }

    fn network_dir(&self) -> PathBuf {
        self.data_dir.join(NETWORK)
    }

    /// Sorted names in the network directory.
    fn entries(&self) -> Result<Vec<String>> {
        let dir = self.network_dir();
        let mut names = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("reading {}", dir.display()))?;
        names.sort();
        Ok(names)
    }

    fn expect_leases(&self, n: u32) -> Result<()> {
        let leases = self
            .entries()?
            .iter()
            .filter(|name| name.parse::<Ipv4Addr>().is_ok())
            .count();
        ensure!(
            leases == n as usize,
            "{}: {leases} lease files, expected {n}",
            self.network_dir().display()
        );
        Ok(())
    }

    /// After every lease was released: only the lock and the round-robin
    /// position remain.
    fn expect_only_bookkeeping(&self) -> Result<()> {
        let names = self.entries()?;
        ensure!(
            names == ["last_reserved_ip.0", "lock"],
            "{} should hold only lock and last_reserved_ip.0 after the DELs, holds {names:?}",
            self.network_dir().display()
        );
        Ok(())
    }
}

/// The address of a 0.3.1 ADD result, `ips[0].address` = "a.b.c.d/16",
/// checked to be in 10.10.0.0/16.
fn leased_ip(stdout: &[u8]) -> Result<Ipv4Addr> {
    let result: Value = serde_json::from_slice(stdout).context("not JSON")?;
    let cidr = result["ips"][0]["address"]
        .as_str()
        .context("no ips[0].address")?;
    let (ip, prefix) = cidr.split_once('/').context("address without prefix")?;
    let ip: Ipv4Addr = ip.parse().context("address is not IPv4")?;
    ensure!(
        prefix == "16" && ip.octets()[..2] == [10, 10],
        "{cidr} is not in {SUBNET}"
    );
    Ok(ip)
}

pub fn run(o: &Options) -> Result<()> {
    for bin in [&o.ours, &o.reference] {
        ensure!(bin.is_file(), "{} is not a file", bin.display());
    }
    let bins = [o.ours.as_path(), o.reference.as_path()];
    // Everything goes under one directory, removed when this returns, error
    // or not.
    let root = tempfile::Builder::new()
        .prefix("cni-bench-host-local-")
        .tempdir_in(&o.tmpdir)
        .with_context(|| format!("creating a directory in {}", o.tmpdir.display()))?;
    let dir = |name: String| root.path().join(name);

    println!(
        "host-local: ours {} vs reference {}",
        o.ours.display(),
        o.reference.display()
    );
    println!(
        "runs {}, leases {}, block {}, probes {}, warm-up {}, data under {}",
        o.runs,
        o.leases,
        o.block,
        o.probes,
        o.warmup,
        root.path().display()
    );

    // Warm-up, untimed: page cache, dynamic loader, first-run costs.
    let warm = [
        Store::new(bins[OURS], dir("warm-ours".into()))?,
        Store::new(bins[REF], dir("warm-ref".into()))?,
    ];
    for i in 0..o.warmup {
        for k in turns(i) {
            warm[k].add_del(&format!("warm-{i}"))?;
        }
    }
    for s in &warm {
        s.expect_only_bookkeeping()?;
    }

    // (a) One ADD+DEL on a fresh data directory per run and plugin, taking
    // turns call by call: ADD, ADD, DEL, DEL, who goes first alternating.
    eprintln!("(a) {} ADD+DEL pairs per plugin", o.runs);
    let mut a_add: [Vec<Duration>; 2] = Default::default();
    let mut a_del: [Vec<Duration>; 2] = Default::default();
    let mut a_pair: [Vec<Duration>; 2] = Default::default();
    for i in 0..o.runs {
        let stores = [
            Store::new(bins[OURS], dir(format!("a-{i}-ours")))?,
            Store::new(bins[REF], dir(format!("a-{i}-ref")))?,
        ];
        let id = format!("bench-a-{i}");
        let mut add = [Duration::ZERO; 2];
        for k in turns(i) {
            add[k] = stores[k].add(&id)?.0;
        }
        for k in turns(i) {
            let del = stores[k].del(&id)?;
            a_add[k].push(add[k]);
            a_del[k].push(del);
            a_pair[k].push(add[k] + del);
        }
        for s in &stores {
            s.expect_only_bookkeeping()?;
            std::fs::remove_dir_all(&s.data_dir)
                .with_context(|| format!("removing {}", s.data_dir.display()))?;
        }
    }
    let a_med = [median(&a_pair[OURS]), median(&a_pair[REF])];
    let a_ratio = ratio(a_med[OURS], a_med[REF]);

    // (b) Fill, in blocks taking turns.
    let full = [
        Store::new(bins[OURS], dir("b-ours".into()))?,
        Store::new(bins[REF], dir("b-ref".into()))?,
    ];
    let mut b_add = [Duration::ZERO; 2];
    let mut b_del = [Duration::ZERO; 2];
    let mut handed_out: [HashSet<Ipv4Addr>; 2] = Default::default();
    let blocks: Vec<(u32, u32)> = (0..o.leases)
        .step_by(o.block as usize)
        .map(|start| (start, (start + o.block).min(o.leases)))
        .collect();
    for (turn, &(start, end)) in (0u32..).zip(&blocks) {
        for k in turns(turn) {
            for i in start..end {
                let (took, ip) = full[k].add(&format!("bench-b-{i}"))?;
                b_add[k] += took;
                ensure!(
                    handed_out[k].insert(ip),
                    "{} handed out {ip} twice",
                    NAMES[k]
                );
            }
        }
        eprintln!(
            "(b) {end}/{} ADDs: ours {:.2}s, reference {:.2}s",
            o.leases,
            secs(b_add[OURS]),
            secs(b_add[REF])
        );
    }
    for s in &full {
        s.expect_leases(o.leases)?;
    }

    // (c) ADD+DEL on 10 leases and on the full stores, the four stores
    // taking turns pair by pair, each in every position equally often.
    let few = [
        Store::new(bins[OURS], dir("c-ours".into()))?,
        Store::new(bins[REF], dir("c-ref".into()))?,
    ];
    for i in 0..FEW {
        for k in turns(i) {
            few[k].add(&format!("bench-c-{i}"))?;
        }
    }
    eprintln!(
        "(c) {} ADD+DEL pairs per store, at {FEW} and {} leases",
        o.probes, o.leases
    );
    let probed: [&Store; 4] = [&few[OURS], &full[OURS], &few[REF], &full[REF]];
    let mut c_pair: [Vec<Duration>; 4] = Default::default();
    for i in 0..o.probes {
        for j in 0..4 {
            let s = (i as usize + j) % 4;
            c_pair[s].push(probed[s].add_del(&format!("bench-probe-{i}"))?);
        }
    }
    for s in &few {
        s.expect_leases(FEW)?;
    }
    for s in &full {
        s.expect_leases(o.leases)?;
    }
    let c_med: Vec<Duration> = c_pair.iter().map(|s| median(s)).collect();
    let c_growth = [ratio(c_med[1], c_med[0]), ratio(c_med[3], c_med[2])];

    // (b) Empty, in blocks taking turns.
    for (turn, &(start, end)) in (0u32..).zip(&blocks) {
        for k in turns(turn) {
            for i in start..end {
                b_del[k] += full[k].del(&format!("bench-b-{i}"))?;
            }
        }
        eprintln!(
            "(b) {end}/{} DELs: ours {:.2}s, reference {:.2}s",
            o.leases,
            secs(b_del[OURS]),
            secs(b_del[REF])
        );
    }
    for s in &full {
        s.expect_only_bookkeeping()?;
    }
    let b_total = [b_add[OURS] + b_del[OURS], b_add[REF] + b_del[REF]];
    let b_ratio = ratio(b_total[OURS], b_total[REF]);

    root.close().context("removing the data directories")?;

    // Report.
    let pass = [
        a_ratio <= TARGET_A,
        b_ratio <= TARGET_B,
        c_growth[0] <= TARGET_C,
    ];
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    println!();
    println!(
        "{:<44} {:>12} {:>12} {:>8}  target",
        "", "ours", "reference", "ratio"
    );
    let ms_row = |label: &str, ours: Duration, reference: Duration| {
        println!(
            "{label:<44} {:>9.3} ms {:>9.3} ms {:>8.3}",
            ms(ours),
            ms(reference),
            ratio(ours, reference)
        );
    };
    println!(
        "{:<44} {:>9.3} ms {:>9.3} ms {:>8.3}  <= {TARGET_A}  {}",
        format!("(a) ADD+DEL, fresh store, median of {}", o.runs),
        ms(a_med[OURS]),
        ms(a_med[REF]),
        a_ratio,
        verdict(pass[0])
    );
    ms_row(
        "      ADD median",
        median(&a_add[OURS]),
        median(&a_add[REF]),
    );
    ms_row(
        "      DEL median",
        median(&a_del[OURS]),
        median(&a_del[REF]),
    );
    ms_row(
        "      ADD+DEL p90",
        percentile(&a_pair[OURS], 90.0),
        percentile(&a_pair[REF], 90.0),
    );
    println!(
        "{:<44} {:>10.2} s {:>10.2} s {:>8.3}  <= {TARGET_B}  {}",
        format!("(b) {} ADDs + {} DELs in a /16, total", o.leases, o.leases),
        secs(b_total[OURS]),
        secs(b_total[REF]),
        b_ratio,
        verdict(pass[1])
    );
    for (label, t) in [("      ADDs", b_add), ("      DELs", b_del)] {
        println!(
            "{label:<44} {:>10.2} s {:>10.2} s {:>8.3}",
            secs(t[OURS]),
            secs(t[REF]),
            ratio(t[OURS], t[REF])
        );
    }
    ms_row(
        &format!("(c) ADD+DEL at {FEW} leases, median of {}", o.probes),
        c_med[0],
        c_med[2],
    );
    ms_row(
        &format!("      at {} leases, median of {}", o.leases, o.probes),
        c_med[1],
        c_med[3],
    );
    println!(
        "{:<44} {:>11.3}x {:>11.3}x {:>8}  ours <= {TARGET_C}  {}",
        format!("      growth, {} vs {FEW} leases", o.leases),
        c_growth[0],
        c_growth[1],
        "",
        verdict(pass[2])
    );
    println!();
    println!("targets: {}/3 met", pass.iter().filter(|&&ok| ok).count());

    let side = |ours: f64, reference: f64| json!({"ours": ours, "reference": reference});
    let result = json!({
        "bench": "host-local",
        "ours": o.ours.display().to_string(),
        "reference": o.reference.display().to_string(),
        "runs": o.runs,
        "leases": o.leases,
        "block": o.block,
        "probes": o.probes,
        "a": {
            "add_del_median_ms": side(ms(a_med[OURS]), ms(a_med[REF])),
            "add_median_ms": side(ms(median(&a_add[OURS])), ms(median(&a_add[REF]))),
            "del_median_ms": side(ms(median(&a_del[OURS])), ms(median(&a_del[REF]))),
            "add_del_p90_ms": side(
                ms(percentile(&a_pair[OURS], 90.0)),
                ms(percentile(&a_pair[REF], 90.0))
            ),
            "ratio": a_ratio,
            "target": TARGET_A,
            "pass": pass[0],
        },
        "b": {
            "total_s": side(secs(b_total[OURS]), secs(b_total[REF])),
            "add_s": side(secs(b_add[OURS]), secs(b_add[REF])),
            "del_s": side(secs(b_del[OURS]), secs(b_del[REF])),
            "ratio": b_ratio,
            "target": TARGET_B,
            "pass": pass[1],
        },
        "c": {
            "few_leases": FEW,
            "few_median_ms": side(ms(c_med[0]), ms(c_med[2])),
            "full_median_ms": side(ms(c_med[1]), ms(c_med[3])),
            "growth": side(c_growth[0], c_growth[1]),
            "target": TARGET_C,
            "pass": pass[2],
        },
        "all_pass": pass.iter().all(|&ok| ok),
    });
    println!("RESULT {result}");
    Ok(())
}
