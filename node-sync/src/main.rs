//! `node-sync`: the node agent (`run`), one full reconcile (`sync --once`),
//! per-part runs for operators, and `status`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ipnetwork::IpNetwork;
use kube::Client;
use node_sync::access::{self, Access, Resource};
use node_sync::agent::{Agent, Beat};
use node_sync::config::{Config, FileConfig};
use node_sync::kubeclient::Clients;
use node_sync::metrics::Metrics;
use node_sync::routes::Kernel;
use node_sync::services::backend::Backend;
use node_sync::steps::Steps;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Parser)]
#[command(
    name = "node-sync",
    version,
    about = "The node agent: registers the Node, reports its status and Lease, routes to other nodes' pods"
)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct Flags {
    /// TOML config file (keys as the long flags, e.g. node-ip = "...")
    #[arg(long, global = true, env = "NODE_SYNC_CONFIG")]
    config: Option<PathBuf>,
    /// Node name (default: the hostname)
    #[arg(long, global = true)]
    node_name: Option<String>,
    /// The node's InternalIP
    #[arg(long, global = true)]
    node_ip: Option<IpAddr>,
    /// This node's pod CIDR (set when the Node is registered)
    #[arg(long, global = true)]
    pod_cidr: Option<IpNetwork>,
    /// The cluster's pod network (default 10.244.0.0/16)
    #[arg(long, global = true)]
    cluster_cidr: Option<IpNetwork>,
    /// The Service CIDR
    #[arg(long, global = true)]
    service_cidr: Option<IpNetwork>,
    /// kubeconfig (else KUBECONFIG, else ~/.kube/config, as kubectl)
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Where /metrics and /healthz are served (default 127.0.0.1:10249)
    #[arg(long, global = true)]
    metrics_addr: Option<SocketAddr>,
    /// containerd's socket (default /run/containerd/containerd.sock)
    #[arg(long, global = true)]
    containerd_socket: Option<PathBuf>,
    /// CNI configs (default /etc/cni/net.d)
    #[arg(long, global = true)]
    cni_conf_dir: Option<PathBuf>,
    /// A path on the node's filesystem whose free space is DiskPressure
    /// (default /var/lib, where containerd and the kubelet keep their state)
    #[arg(long, global = true)]
    nodefs: Option<PathBuf>,
    /// The route protocol number that marks our routes (default 200)
    #[arg(long, global = true)]
    route_protocol: Option<u8>,
    /// Seconds between reads of the node's state (default 10)
    #[arg(long, global = true)]
    status_interval_seconds: Option<u64>,
    /// How ClusterIP Services are programmed: none (default), nftables, ipvs, or auto (IPVS when the kernel has it)
    #[arg(long, global = true, value_enum)]
    proxy_mode: Option<node_sync::config::ProxyMode>,
    /// The IPVS scheduler (default rr)
    #[arg(long, global = true)]
    ipvs_scheduler: Option<String>,
    /// Seconds after which the API server ends each watch, which then
    /// resumes where it was (default 290)
    #[arg(long, global = true)]
    watch_timeout_seconds: Option<u32>,
    /// A label for the Node when it is registered, KEY=VALUE (repeatable)
    #[arg(long = "label", global = true, value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Subcommand)]
enum Cmd {
    /// The daemon
    Run,
    /// Every reconciler once
    Sync {
        #[arg(long, required = true)]
        once: bool,
    },
    /// Routes to other nodes' pods, once
    Routes {
        #[arg(long, required = true)]
        once: bool,
    },
    /// ClusterIP Services (per --proxy-mode), once
    Services {
        #[arg(long, required = true)]
        once: bool,
    },
    /// Node registration, status and Lease, once
    NodeStatus {
        #[arg(long, required = true)]
        once: bool,
    },
    /// What this node is and what node-sync programmed
    Status,
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

fn config(f: &Flags) -> Result<Config> {
    let file = match &f.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let flags = FileConfig {
        node_name: f.node_name.clone(),
        node_ip: f.node_ip,
        pod_cidr: f.pod_cidr,
        cluster_cidr: f.cluster_cidr,
        service_cidr: f.service_cidr,
        kubeconfig: f.kubeconfig.clone(),
        metrics_addr: f.metrics_addr,
        containerd_socket: f.containerd_socket.clone(),
        cni_conf_dir: f.cni_conf_dir.clone(),
        nodefs: f.nodefs.clone(),
        route_protocol: f.route_protocol,
        status_interval_seconds: f.status_interval_seconds,
        proxy_mode: f.proxy_mode,
        ipvs_scheduler: f.ipvs_scheduler.clone(),
        watch_timeout_seconds: f.watch_timeout_seconds,
        labels: f.labels.iter().cloned().collect(),
    };
    Ok(Config::merge(flags, file, &hostname())?)
}

/// Requests and watches timed apart (see node_sync::kubeclient).
async fn clients(cfg: &Config) -> Result<Clients> {
    Ok(node_sync::kubeclient::clients(cfg.kubeconfig.as_deref()).await?)
}

async fn client(cfg: &Config) -> Result<Client> {
    Ok(clients(cfg).await?.requests)
}

/// `status`'s routes: ours in the kernel, each marked when the next sync
/// would delete it, the routes it would add, and every podCIDR refused.
/// The planner runs here on a fresh list of the Nodes and the kernel, as
/// the daemon's sync does: one source of truth, current, and there while
/// the daemon is stopped or its metrics are out of reach.
async fn routes_status(
    kernel: &Kernel,
    cfg: &Config,
    api: std::result::Result<&Client, String>,
) -> Result<()> {
    use k8s_openapi::api::core::v1::Node;
    use node_sync::routes::plan::{Ours, default_metric};
    let nodes: Result<Vec<Node>, String> = match api {
        Ok(c) => kube::Api::<Node>::all(c.clone())
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .map_err(|e| access::explain(e, Resource::Nodes, access::Verb::List).to_string()),
        Err(e) => Err(e),
    };
    let show = |o: &Ours| {
        let mut s = o.dst.to_string();
        if let Some(v) = o.via {
            s.push_str(&format!(" via {v}"));
        }
        if o.metric != default_metric(&o.dst) {
            s.push_str(&format!(" metric {}", o.metric));
        }
        s
    };
    let (mut ours, assessed) = match &nodes {
        Ok(list) => {
            let a = node_sync::routes::assess(kernel, list, &cfg.node_name).await?;
            (a.table.ours.clone(), Some(a))
        }
        Err(_) => (kernel.read().await?.ours, None),
    };
    ours.sort_by_key(|a| (a.dst, a.via, a.metric));
    println!("routes      {} (proto {})", ours.len(), cfg.route_protocol);
    for o in &ours {
        let stale = assessed.as_ref().is_some_and(|a| a.plan.delete.contains(o));
        let mark = if stale {
            "  (stale: the next sync deletes it)"
        } else {
            ""
        };
        println!("  {}{mark}", show(o));
    }
    match (&assessed, &nodes) {
        (Some(a), _) => {
            for (dst, via) in &a.plan.add {
                println!("  {dst} via {via}  (missing: the next sync adds it)");
            }
            if a.desired.refused.is_empty() {
                println!("refused     none");
            }
            for r in &a.desired.refused {
                println!("refused     {r} ({})", r.reason.as_str());
            }
        }
        (None, Err(e)) => println!("refused     not checked: {e}"),
        (None, Ok(_)) => {}
    }
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn run(cli: Cli) -> Result<()> {
    let cfg = config(&cli.flags)?;
    let kernel = Kernel::open(cfg.route_protocol)?.with_pod_cidr(cfg.pod_cidr);
    if let Cmd::Status = cli.cmd {
        println!("node        {}", cfg.node_name);
        println!("node IP     {}", cfg.node_ip);
        println!(
            "pod CIDR    {}",
            cfg.pod_cidr
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into())
        );
        println!("cluster     {}", cfg.cluster_cidr);
        let api = client(&cfg).await;
        routes_status(&kernel, &cfg, api.as_ref().map_err(|e| format!("{e:#}"))).await?;
        let mode = format!("{:?}", cfg.proxy_mode).to_lowercase();
        match Backend::choose(cfg.proxy_mode, cfg.cluster_cidr, &cfg.ipvs_scheduler) {
            Ok(None) => println!("proxy mode  none"),
            Ok(Some(mut b)) => {
                println!("proxy mode  {} ({mode})", b.name());
                match b.programmed().await.map(Option::unwrap_or_default) {
                    Ok(p) => println!(
                        "services    {} ports, {} endpoints",
                        p.len(),
                        p.iter().map(|s| s.endpoints.len()).sum::<usize>()
                    ),
                    Err(e) => println!("services    {e}"),
                }
            }
            Err(e) => println!("proxy mode  {mode}: {e}"),
        }
        // The daemon's own account of its reconcilers' last steps.
        match node_sync::steps::fetch(cfg.metrics_addr) {
            Ok(text) => {
                for line in text.lines() {
                    println!("reconciler  {line}");
                }
            }
            Err(e) => println!("daemon      no answer at {}: {e}", cfg.metrics_addr),
        }
        match api {
            Ok(c) => {
                // Asked of the API server's authorizer, not of the daemon:
                // the answer is current (a refused watcher retries only
                // every 30 s), and holds while the daemon is stopped.
                let mut needed = vec![Resource::Nodes];
                if cfg.proxy_mode != node_sync::config::ProxyMode::None {
                    needed.extend([
                        Resource::Services,
                        Resource::EndpointSlices,
                        Resource::Endpoints,
                    ]);
                }
                for line in access::report(&c, &needed).await {
                    println!("access      {line}");
                }
                let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(c);
                match nodes.get_opt(&cfg.node_name).await {
                    Ok(Some(n)) => {
                        for cond in n.status.and_then(|s| s.conditions).unwrap_or_default() {
                            println!(
                                "condition   {}={} {}",
                                cond.type_,
                                cond.status,
                                cond.message.unwrap_or_default()
                            );
                        }
                    }
                    Ok(None) => println!("api         the Node is not registered"),
                    Err(e) => println!("api         {e}"),
                }
            }
            Err(e) => println!("api         {e:#}"),
        }
        return Ok(());
    }
    let metrics = Arc::new(Metrics::default());
    let steps = Arc::new(Steps::new(Arc::clone(&metrics)));
    let kube = clients(&cfg).await?;
    let agent = Agent {
        client: kube.requests,
        watch_client: kube.watches,
        metrics: Arc::clone(&metrics),
        steps: Arc::clone(&steps),
        hostname: hostname(),
        routes_ready: Arc::new(AtomicBool::new(false)),
        access: Arc::new(Access::new(Arc::clone(&metrics))),
        cfg,
    };
    match cli.cmd {
        Cmd::Run => {
            node_sync::http::serve(agent.cfg.metrics_addr, Arc::clone(&metrics), steps)
                .await
                .with_context(|| format!("serving metrics on {}", agent.cfg.metrics_addr))?;
            tracing::info!(node = %agent.cfg.node_name, metrics = %agent.cfg.metrics_addr, "node-sync running");
            agent.run(kernel, shutdown()).await;
        }
        Cmd::Sync { .. } => {
            let n = agent.routes_once(&kernel).await?;
            let svcs = agent.services_once().await?;
            agent.beat(&mut Beat::default(), true).await?;
            println!("node {} reported; {n} routes", agent.cfg.node_name);
            if let Some((n, backend)) = svcs {
                println!("{n} service ports ({backend})");
            }
        }
        Cmd::Services { .. } => match agent.services_once().await? {
            Some((n, backend)) => println!("{n} service ports ({backend})"),
            None => println!("--proxy-mode none: Services left alone"),
        },
        Cmd::Routes { .. } => {
            let n = agent.routes_once(&kernel).await?;
            println!("{n} routes");
        }
        Cmd::NodeStatus { .. } => {
            agent.beat(&mut Beat::default(), true).await?;
            println!("node {} reported", agent.cfg.node_name);
        }
        Cmd::Status => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // kube-runtime's watcher warns of every 403 it retries; node-sync
    // reports a 403 itself, once per transition (see access.rs).
    let quiet = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("kube_runtime::watcher", tracing::Level::ERROR);
    // Colour only for a terminal: a log file or the journal gets plain
    // text that grep finds.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .finish()
        .with(quiet)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("node-sync: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node-sync: {e:#}");
            ExitCode::FAILURE
        }
    }
}
