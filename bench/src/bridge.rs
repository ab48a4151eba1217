//! bridge, ours against the reference, in one run, each side on its own
//! emulated node (a host netns with its own dataDir and plugin directory):
//!
//! - 200 sequential ADD+DEL cycles of the tutorial config, the two sides
//!   taking turns cycle by cycle: median and p99 of ADD and of DEL.
//!   Target: our median ADD and median DEL <= 0.5x the reference.
//! - 64 concurrent ADDs, then 64 concurrent DELs, per side in turn: wall
//!   time and per-call median. Every call must succeed.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;

use crate::plugin::{Target, call_in};
use crate::stats::{median, ms, percentile, ratio};

#[derive(clap::Args)]
pub struct Options {
    /// Directory with our bridge and host-local.
    #[arg(long, value_name = "DIR")]
    ours: PathBuf,
    /// Directory with the reference bridge and host-local.
    #[arg(long, value_name = "DIR")]
    reference: PathBuf,
    /// Sequential ADD+DEL cycles per side.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Concurrent ADDs (then DELs) per side.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=250))]
    parallel: u32,
}

const NAMES: [&str; 2] = ["ours", "reference"];

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A named netns, deleted on drop.
struct Ns {
    name: String,
}

impl Ns {
    fn new(name: String) -> Result<Self> {
        ip(&["netns", "add", &name])?;
        let ns = Ns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// One side: its node netns, data directory and plugins.
struct Side {
    dir: PathBuf,
    host: Ns,
    host_fd: File,
    data: tempfile::TempDir,
    conf: String,
}

impl Side {
    fn new(k: usize, dir: &Path) -> Result<Self> {
        for p in ["bridge", "host-local"] {
            ensure!(
                dir.join(p).is_file(),
                "{} is missing",
                dir.join(p).display()
            );
        }
        let host = Ns::new(format!("cb-{}-{}", NAMES[k], std::process::id()))?;
        let host_fd = File::open(host.path()).context("opening the node netns")?;
        let data = tempfile::Builder::new()
            .prefix("cni-bench-bridge-")
            .tempdir_in("/var/tmp")?;
        let conf = json!({"cniVersion": "0.3.1", "name": "bridge", "type": "bridge",
            "bridge": "cni0", "isGateway": true, "ipMasq": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/16"}]],
                     "routes": [{"dst": "0.0.0.0/0"}],
                     "dataDir": data.path().display().to_string()}})
        .to_string();
        Ok(Side {
            dir: dir.to_path_buf(),
            host,
            host_fd,
            data,
            conf,
        })
    }

    fn call(&self, cmd: &str, id: &str, netns: &Ns) -> Result<Duration> {
        let target = Target {
            host_netns: Some(self.host_fd.as_raw_fd()),
            netns: netns.path(),
            cni_path: self.dir.display().to_string(),
        };
        Ok(call_in(&self.dir.join("bridge"), cmd, id, &self.conf, &target)?.took)
    }

    /// After all DELs: no veth, no masquerade chain, no lease.
    fn expect_clean(&self) -> Result<()> {
        let links = Command::new("ip")
            .args(["-n", &self.host.name, "-o", "link", "show"])
            .output()?;
        let links = String::from_utf8_lossy(&links.stdout);
        ensure!(!links.contains("veth"), "veths left: {links}");
        let nat = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.host.name,
                "iptables-save",
                "-t",
                "nat",
            ])
            .output()?;
        let nat = String::from_utf8_lossy(&nat.stdout);
        ensure!(!nat.contains("CNI-"), "masquerade rules left: {nat}");
        let leases = std::fs::read_dir(self.data.path().join("bridge"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains('.'))
            .filter(|e| {
                !e.file_name()
                    .to_string_lossy()
                    .starts_with("last_reserved_ip")
            })
            .count();
        ensure!(leases == 0, "{leases} leases left");
        Ok(())
    }
}

pub fn run(o: &Options) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the bridge benchmark creates network namespaces: run it as root");
    }
    let sides = [Side::new(0, &o.ours)?, Side::new(1, &o.reference)?];
    println!(
        "bridge: ours {} vs reference {}",
        o.ours.display(),
        o.reference.display()
    );
    println!("runs {}, parallel {}", o.runs, o.parallel);

    // Sequential cycles; one container netns per side, reused.
    let cont = [
        Ns::new(format!("cb-c0-{}", std::process::id()))?,
        Ns::new(format!("cb-c1-{}", std::process::id()))?,
    ];
    let mut add: [Vec<Duration>; 2] = Default::default();
    let mut del: [Vec<Duration>; 2] = Default::default();
    for i in 0..o.runs {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let id = format!("seq-{i}");
            add[k].push(sides[k].call("ADD", &id, &cont[k])?);
            del[k].push(sides[k].call("DEL", &id, &cont[k])?);
        }
    }
    for s in &sides {
        s.expect_clean()?;
    }
    eprintln!("sequential cycles done");

    // Concurrent ADDs, then DELs.
    let mut wall_add = [Duration::ZERO; 2];
    let mut wall_del = [Duration::ZERO; 2];
    let mut par_add: [Vec<Duration>; 2] = Default::default();
    let mut par_del: [Vec<Duration>; 2] = Default::default();
    for (k, side) in sides.iter().enumerate() {
        let pods: Vec<Ns> = (0..o.parallel)
            .map(|i| Ns::new(format!("cb-p{k}-{i}-{}", std::process::id())))
            .collect::<Result<_>>()?;
        for (cmd, wall, per) in [
            ("ADD", &mut wall_add[k], &mut par_add[k]),
            ("DEL", &mut wall_del[k], &mut par_del[k]),
        ] {
            let t = Instant::now();
            let results: Vec<Result<Duration>> = std::thread::scope(|s| {
                let hs: Vec<_> = pods
                    .iter()
                    .enumerate()
                    .map(|(i, ns)| s.spawn(move || side.call(cmd, &format!("par-{i}"), ns)))
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("thread panicked")))
                    })
                    .collect()
            });
            *wall = t.elapsed();
            for r in results {
                per.push(r.with_context(|| format!("{} concurrent {cmd}", NAMES[k]))?);
            }
        }
        side.expect_clean()?;
    }

    let m = |v: &[Duration]| median(v);
    let r_add = ratio(m(&add[0]), m(&add[1]));
    let r_del = ratio(m(&del[0]), m(&del[1]));
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    println!();
    println!(
        "{:<44} {:>11} {:>11} {:>7}  target",
        "", "ours", "reference", "ratio"
    );
    let row = |what: &str, a: Duration, b: Duration, target: &str| {
        println!(
            "{what:<44} {:>8.2} ms {:>8.2} ms {:>7.3}  {target}",
            ms(a),
            ms(b),
            ratio(a, b)
        )
    };
    row(
        &format!("ADD median, {} sequential", o.runs),
        m(&add[0]),
        m(&add[1]),
        &format!("<= 0.5  {}", verdict(r_add <= 0.5)),
    );
    row(
        "ADD p99",
        percentile(&add[0], 99.0),
        percentile(&add[1], 99.0),
        "",
    );
    row(
        &format!("DEL median, {} sequential", o.runs),
        m(&del[0]),
        m(&del[1]),
        &format!("<= 0.5  {}", verdict(r_del <= 0.5)),
    );
    row(
        "DEL p99",
        percentile(&del[0], 99.0),
        percentile(&del[1], 99.0),
        "",
    );
    row(
        &format!("{} concurrent ADDs, wall", o.parallel),
        wall_add[0],
        wall_add[1],
        "",
    );
    row("    per-call median", m(&par_add[0]), m(&par_add[1]), "");
    row(
        &format!("{} concurrent DELs, wall", o.parallel),
        wall_del[0],
        wall_del[1],
        "",
    );
    row("    per-call median", m(&par_del[0]), m(&par_del[1]), "");
    println!("errors: 0");
    let result = json!({
        "bench": "bridge", "runs": o.runs, "parallel": o.parallel,
        "add_median_ms": {"ours": ms(m(&add[0])), "reference": ms(m(&add[1])), "ratio": r_add},
        "add_p99_ms": {"ours": ms(percentile(&add[0], 99.0)), "reference": ms(percentile(&add[1], 99.0))},
        "del_median_ms": {"ours": ms(m(&del[0])), "reference": ms(m(&del[1])), "ratio": r_del},
        "del_p99_ms": {"ours": ms(percentile(&del[0], 99.0)), "reference": ms(percentile(&del[1], 99.0))},
        "parallel_add_wall_ms": {"ours": ms(wall_add[0]), "reference": ms(wall_add[1])},
        "parallel_del_wall_ms": {"ours": ms(wall_del[0]), "reference": ms(wall_del[1])},
        "errors": 0,
        "all_pass": r_add <= 0.5 && r_del <= 0.5,
    });
    println!("RESULT {result}");
    Ok(())
}
