//! ADD, DEL, CHECK, GC and STATUS of a network's plugin chain, with
//! libcni's rules: ADD passes each plugin's result to the next as
//! `prevResult` and caches the last; DEL runs the chain in reverse with the
//! cached result (from 0.4.0); CHECK needs 0.4.0; GC and STATUS need
//! 1.1.0. ADD, CHECK and STATUS stop at the first failure and share one
//! deadline (libcni's context); DEL and GC try every plugin, so each call
//! has the whole timeout: a plugin hung in DEL must not starve the others
//! of theirs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cni_protocol::{CniError, CniResult, Command, SpecVersion, ValidAttachment};
use serde_json::{Value, json};

use crate::cache::{Cache, CacheError, Entry, KIND};
use crate::conf::NetworkConfigList;
use crate::exec::{ExecError, Executor, Invocation, parse_result};

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("plugin type={plugin:?} failed ({op}): {source}")]
    Plugin {
        plugin: String,
        op: &'static str,
        source: Box<ExecError>,
    },
    /// A plugin still running at the operation's deadline, killed.
    #[error("plugin type={plugin:?} failed ({op}): the operation did not finish within {} and the plugin was killed", secs(.after))]
    TimedOut {
        plugin: String,
        op: &'static str,
        after: Duration,
    },
    #[error("configuration version {version:?} does not support the {command} command")]
    Unsupported {
        version: &'static str,
        command: &'static str,
    },
    #[error("invalid attachment: {0}")]
    Invalid(CniError),
    #[error("network {net:?}: {source}")]
    Cache { net: String, source: CacheError },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Many(Vec<ChainError>),
}

fn secs(d: &Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

impl ChainError {
    /// Whether a plugin ran out of time (in any of several errors).
    pub fn is_timeout(&self) -> bool {
        match self {
            ChainError::TimedOut { .. } => true,
            ChainError::Plugin { source, .. } => source.is_timeout(),
            ChainError::Many(v) => v.iter().any(ChainError::is_timeout),
            _ => false,
        }
    }
}

/// One attachment's arguments (libcni's `RuntimeConf`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConf {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` pairs, in order.
    pub args: Vec<[String; 2]>,
    /// Values for the capabilities plugins declare (`portMappings`, ...).
    pub capability_args: BTreeMap<String, Value>,
}

impl RuntimeConf {
    fn invocation(&self, command: Command) -> Invocation {
        Invocation {
            command,
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            args: self
                .args
                .iter()
                .map(|[k, v]| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";"),
        }
    }

    fn validate(&self) -> Result<(), ChainError> {
        cni_protocol::validate::container_id(&self.container_id)
            .and_then(|_| cni_protocol::validate::interface_name(&self.ifname))
            .map_err(ChainError::Invalid)
    }
}

/// The runtime: where plugins are, where results are cached, and how long
/// one chain operation may take.
#[derive(Debug, Clone)]
pub struct CniConfig {
    pub exec: Executor,
    pub cache: Cache,
    pub timeout: Duration,
}

/// The deadline of one chain operation, shared by its calls.
struct Deadline(Instant);

impl Deadline {
    fn left(&self) -> Duration {
        // A spent budget still starts the call, which then times out at
        // once and says so, rather than a failure of another kind.
        self.0
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }
}

fn to_value(r: &CniResult, v: SpecVersion) -> Value {
    serde_json::from_slice(&r.to_json(v)).unwrap_or(Value::Null)
}

fn at_least(list: &NetworkConfigList, v: SpecVersion) -> bool {
    list.cni_version >= v
}

impl CniConfig {
    fn deadline(&self) -> Deadline {
        Deadline(Instant::now() + self.timeout)
    }

    fn call(
        &self,
        list: &NetworkConfigList,
        i: usize,
        inv: &Invocation,
        stdin: &[u8],
        deadline: &Deadline,
        op: &'static str,
    ) -> Result<Vec<u8>, ChainError> {
        let plugin = &list.plugins[i].plugin_type;
        self.exec
            .exec(plugin, inv, stdin, deadline.left())
            .map_err(|source| {
                if source.is_timeout() {
                    ChainError::TimedOut {
                        plugin: plugin.clone(),
                        op,
                        after: self.timeout,
                    }
                } else {
                    ChainError::Plugin {
                        plugin: plugin.clone(),
                        op,
                        source: Box::new(source),
                    }
                }
            })
    }

    /// ADD of every plugin in order, each with the result before it; the
    /// last result is cached and returned. A failure stops the chain and
    /// leaves the undoing to the caller's DEL, as libcni does.
    pub fn add(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<CniResult, ChainError> {
        rt.validate()?;
        let deadline = self.deadline();
        let inv = rt.invocation(Command::Add);
        let mut prev: Option<Value> = None;
        let mut result = CniResult::default();
        for i in 0..list.plugins.len() {
            let stdin = list.plugin_stdin(i, prev.as_ref(), &rt.capability_args);
            let out = self.call(list, i, &inv, &stdin, &deadline, "add")?;
            result = parse_result(&list.plugins[i].plugin_type, &out, list.cni_version).map_err(
                |source| ChainError::Plugin {
                    plugin: list.plugins[i].plugin_type.clone(),
                    op: "add",
                    source: Box::new(source),
                },
            )?;
            prev = Some(to_value(&result, list.cni_version));
        }
        let entry = Entry {
            kind: KIND.into(),
            container_id: rt.container_id.clone(),
            config: list.bytes.clone(),
            if_name: rt.ifname.clone(),
            network_name: list.name.clone(),
            netns: rt.netns.clone(),
            cni_args: rt.args.clone(),
            capability_args: rt.capability_args.clone(),
            result: prev,
        };
        self.cache
            .write(&entry)
            .map_err(|source| ChainError::Cache {
                net: list.name.clone(),
                source,
            })?;
        Ok(result)
    }

    /// The cached result of this attachment in the list's version.
    pub fn cached_result(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<Option<CniResult>, ChainError> {
        let cache = |source| ChainError::Cache {
            net: list.name.clone(),
            source,
        };
        let Some(e) = self
            .cache
            .read(&list.name, &rt.container_id, &rt.ifname)
            .map_err(cache)?
        else {
            return Ok(None);
        };
        let Some(v) = e.result else { return Ok(None) };
        CniResult::from_value(v, list.cni_version)
            .map(Some)
            .map_err(ChainError::Invalid)
    }

    fn prev_value(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<Option<Value>, ChainError> {
        Ok(self
            .cached_result(list, rt)?
            .map(|r| to_value(&r, list.cni_version)))
    }

    /// DEL of every plugin in reverse order, with the cached result from
    /// 0.4.0 on; the cache entry goes once all succeeded. Unlike libcni,
    /// which stops at the first failure, every plugin is tried (the first
    /// error is returned): a one-shot runtime must not leave the earlier
    /// plugins' addresses and links behind because a later one failed.
    pub fn del(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), ChainError> {
        let prev = if at_least(list, SpecVersion::V0_4_0) {
            // An unreadable entry is dropped, as libcni does: DEL must work.
            self.prev_value(list, rt).unwrap_or_else(|_| {
                let _ = self.cache.remove(&list.name, &rt.container_id, &rt.ifname);
                None
            })
        } else {
            None
        };
        let inv = rt.invocation(Command::Del);
        let mut errors = Vec::new();
        for i in (0..list.plugins.len()).rev() {
            let stdin = list.plugin_stdin(i, prev.as_ref(), &rt.capability_args);
            if let Err(e) = self.call(list, i, &inv, &stdin, &self.deadline(), "delete") {
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            return Err(errors.remove(0));
        }
        self.cache
            .remove(&list.name, &rt.container_id, &rt.ifname)
            .or_else(|e| match e {
                // No entry can exist for a key that is not a plain name.
                CacheError::BadKey { .. } => Ok(()),
                other => Err(other),
            })
            .map_err(|source| ChainError::Cache {
                net: list.name.clone(),
                source,
            })
    }

    /// CHECK of every plugin in order with the cached result (0.4.0 on;
    /// nothing when the list disables it).
    pub fn check(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), ChainError> {
        if !at_least(list, SpecVersion::V0_4_0) {
            return Err(ChainError::Unsupported {
                version: list.cni_version.as_str(),
                command: "CHECK",
            });
        }
        if list.disable_check {
            return Ok(());
        }
        let prev = self.prev_value(list, rt)?;
        let deadline = self.deadline();
        let inv = rt.invocation(Command::Check);
        for i in 0..list.plugins.len() {
            let stdin = list.plugin_stdin(i, prev.as_ref(), &rt.capability_args);
            self.call(list, i, &inv, &stdin, &deadline, "check")?;
        }
        Ok(())
    }

    /// GC: DEL of every cached attachment of this network not in `valid`,
    /// then (1.1.0 on, unless disabled) GC of every plugin with the valid
    /// attachments. Every step is tried; the errors come back together.
    pub fn gc(
        &self,
        list: &NetworkConfigList,
        valid: &[ValidAttachment],
    ) -> Result<(), ChainError> {
        let mut errors = Vec::new();
        let cached = self.cache.attachments(None).unwrap_or_default();
        for e in cached.into_iter().filter(|e| e.network_name == list.name) {
            let live = valid
                .iter()
                .any(|v| v.container_id == e.container_id && v.ifname == e.if_name);
            if live {
                continue;
            }
            let rt = RuntimeConf {
                container_id: e.container_id,
                netns: e.netns,
                ifname: e.if_name,
                args: e.cni_args,
                capability_args: e.capability_args,
            };
            if let Err(err) = self.del(list, &rt) {
                errors.push(err);
            }
        }
        if at_least(list, SpecVersion::V1_1_0) && !list.disable_gc {
            let attachments: Vec<Value> = valid
                .iter()
                .map(|v| json!({"containerID": v.container_id, "ifname": v.ifname}))
                .collect();
            let inv = Invocation::global(Command::Gc);
            for i in 0..list.plugins.len() {
                let stdin = with_key(
                    &list.plugin_stdin(i, None, &BTreeMap::new()),
                    "cni.dev/valid-attachments",
                    Value::Array(attachments.clone()),
                );
                if let Err(e) = self.call(list, i, &inv, &stdin, &self.deadline(), "gc") {
                    errors.push(e);
                }
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ChainError::Many(errors)),
        }
    }

    /// STATUS of every plugin in order (1.1.0 on; before, always ready);
    /// the first failure is the answer.
    pub fn status(&self, list: &NetworkConfigList) -> Result<(), ChainError> {
        if !at_least(list, SpecVersion::V1_1_0) {
            return Ok(());
        }
        let deadline = self.deadline();
        let inv = Invocation::global(Command::Status);
        for i in 0..list.plugins.len() {
            let stdin = list.plugin_stdin(i, None, &BTreeMap::new());
            self.call(list, i, &inv, &stdin, &deadline, "status")?;
        }
        Ok(())
    }
}

fn with_key(stdin: &[u8], key: &str, v: Value) -> Vec<u8> {
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(mut m)) => {
            m.insert(key.into(), v);
            Value::Object(m).to_string().into_bytes()
        }
        _ => stdin.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::tests::script;
    use std::path::Path;

    /// Plugins a, b and c that log `<type> <command> <stdin>` and answer
    /// ADD with an address of their own; `bad` fails every command.
    struct Bed {
        dir: tempfile::TempDir,
        cni: CniConfig,
    }

    fn bed() -> Bed {
        let dir = tempfile::tempdir().expect("tmp");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir");
        let log = dir.path().join("log");
        for (name, n) in [("a", 1), ("b", 2), ("c", 3)] {
            script(
                &bin,
                name,
                &format!(
                    "printf '%s %s %s\\n' {name} \"$CNI_COMMAND\" \"$(cat)\" >> {log}\n\
                     [ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.0.0.{n}/24\"}}]}}'\n\
                     exit 0",
                    log = log.display()
                ),
            );
        }
        script(
            &bin,
            "bad",
            &format!(
                "printf '%s %s %s\\n' bad \"$CNI_COMMAND\" \"$(cat)\" >> {}\n\
                 echo '{{\"code\":11,\"msg\":\"try later\"}}'; exit 1",
                log.display()
            ),
        );
        let cni = CniConfig {
            exec: Executor::new(vec![bin]),
            cache: Cache::new(dir.path().join("cache")),
            timeout: Duration::from_secs(20),
        };
        Bed { dir, cni }
    }

    impl Bed {
        /// (type, command, stdin) of every call so far; the log emptied.
        fn calls(&self) -> Vec<(String, String, Value)> {
            let log = self.dir.path().join("log");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_file(&log);
            text.lines()
                .map(|l| {
                    let mut p = l.splitn(3, ' ');
                    let t = p.next().unwrap_or_default().to_string();
                    let c = p.next().unwrap_or_default().to_string();
                    let v = serde_json::from_str(p.next().unwrap_or("null")).unwrap_or(Value::Null);
                    (t, c, v)
                })
                .collect()
        }

        fn cache_file(&self, net: &str) -> std::path::PathBuf {
            self.dir.path().join(format!("cache/results/{net}-c1-eth0"))
        }
    }

    fn list(version: &str, types: &[&str]) -> NetworkConfigList {
        let plugins: Vec<Value> = types.iter().map(|t| json!({"type": t})).collect();
        let v = json!({"cniVersion": version, "name": "net", "plugins": plugins});
        NetworkConfigList::from_bytes(v.to_string().as_bytes()).expect("list")
    }

    fn rt() -> RuntimeConf {
        RuntimeConf {
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: vec![["K8S_POD_NAME".into(), "web".into()]],
            capability_args: BTreeMap::new(),
        }
    }

    fn order(calls: &[(String, String, Value)]) -> Vec<String> {
        calls.iter().map(|(t, c, _)| format!("{t} {c}")).collect()
    }

    #[test]
    fn add_threads_prev_results_and_caches_the_last() {
        let b = bed();
        let l = list("1.0.0", &["a", "b", "c"]);
        let r = b.cni.add(&l, &rt()).expect("add");
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.3/24");
        let calls = b.calls();
        assert_eq!(order(&calls), ["a ADD", "b ADD", "c ADD"]);
        assert!(calls[0].2.get("prevResult").is_none());
        assert_eq!(calls[1].2["prevResult"]["ips"][0]["address"], "10.0.0.1/24");
        assert_eq!(calls[2].2["prevResult"]["ips"][0]["address"], "10.0.0.2/24");
        assert_eq!(calls[2].2["name"], "net");
        let doc: Value =
            serde_json::from_slice(&std::fs::read(b.cache_file("net")).expect("cached"))
                .expect("json");
        assert_eq!(doc["result"]["ips"][0]["address"], "10.0.0.3/24");
        assert_eq!(doc["cniArgs"], json!([["K8S_POD_NAME", "web"]]));
    }

    #[test]
    fn del_runs_in_reverse_with_the_cached_result_from_0_4_0() {
        let b = bed();
        let l = list("1.0.0", &["a", "b", "c"]);
        b.cni.add(&l, &rt()).expect("add");
        b.calls();
        b.cni.del(&l, &rt()).expect("del");
        let calls = b.calls();
        assert_eq!(order(&calls), ["c DEL", "b DEL", "a DEL"]);
        for (_, _, stdin) in &calls {
            assert_eq!(stdin["prevResult"]["ips"][0]["address"], "10.0.0.3/24");
        }
        assert!(!b.cache_file("net").exists());
        // 0.3.1: no prevResult on DEL.
        let old = list("0.3.1", &["a", "b"]);
        b.cni.add(&old, &rt()).expect("add");
        b.calls();
        b.cni.del(&old, &rt()).expect("del");
        assert!(
            b.calls()
                .iter()
                .all(|(_, _, s)| s.get("prevResult").is_none())
        );
    }

    #[test]
    fn a_failing_del_still_runs_the_rest_and_keeps_the_cache() {
        let b = bed();
        let l = list("1.0.0", &["a", "bad", "c"]);
        let e = b.cni.add(&l, &rt()).expect_err("bad fails");
        assert!(e.to_string().contains("type=\"bad\" failed (add)"), "{e}");
        assert_eq!(order(&b.calls()), ["a ADD", "bad ADD"]);
        assert!(!b.cache_file("net").exists(), "no cache for a failed ADD");
        let e = b.cni.del(&l, &rt()).expect_err("bad fails");
        assert!(matches!(e, ChainError::Plugin { op: "delete", .. }), "{e}");
        assert_eq!(order(&b.calls()), ["c DEL", "bad DEL", "a DEL"]);
    }

    #[test]
    fn check_gc_and_status_are_gated_by_version() {
        let b = bed();
        let old = list("0.3.1", &["a"]);
        let e = b.cni.check(&old, &rt()).expect_err("0.3.1");
        assert_eq!(
            e.to_string(),
            "configuration version \"0.3.1\" does not support the CHECK command"
        );
        b.cni
            .status(&list("1.0.0", &["a"]))
            .expect("no STATUS before 1.1.0");
        b.cni
            .gc(&list("1.0.0", &["a"]), &[])
            .expect("no GC before 1.1.0");
        assert!(b.calls().is_empty());

        let l = list("1.1.0", &["a", "b"]);
        b.cni.add(&l, &rt()).expect("add");
        b.calls();
        b.cni.check(&l, &rt()).expect("check");
        let calls = b.calls();
        assert_eq!(order(&calls), ["a CHECK", "b CHECK"]);
        assert_eq!(calls[0].2["prevResult"]["ips"][0]["address"], "10.0.0.2/24");
        b.cni.status(&l).expect("status");
        assert_eq!(order(&b.calls()), ["a STATUS", "b STATUS"]);

        let mut off = l.clone();
        off.disable_check = true;
        b.cni.check(&off, &rt()).expect("disabled");
        assert!(b.calls().is_empty());
    }

    #[test]
    fn gc_deletes_stale_cached_attachments_then_collects() {
        let b = bed();
        let l = list("1.1.0", &["a", "b"]);
        b.cni.add(&l, &rt()).expect("add");
        let mut live = rt();
        live.container_id = "c2".into();
        b.cni.add(&l, &live).expect("add");
        b.calls();
        let valid = [ValidAttachment {
            container_id: "c2".into(),
            ifname: "eth0".into(),
        }];
        b.cni.gc(&l, &valid).expect("gc");
        let calls = b.calls();
        assert_eq!(order(&calls), ["b DEL", "a DEL", "a GC", "b GC"]);
        assert_eq!(
            calls[2].2["cni.dev/valid-attachments"],
            json!([{"containerID": "c2", "ifname": "eth0"}])
        );
        assert!(
            !b.cache_file("net").exists(),
            "c1's entry went with its DEL"
        );
        assert!(Path::new(&b.dir.path().join("cache/results/net-c2-eth0")).exists());
    }

    /// [`bed`] with `slow` (never answers) and `nap` (answers after
    /// 300 ms), and a 500 ms timeout.
    fn slow_bed() -> Bed {
        let mut b = bed();
        let bin = &b.cni.exec.bin_dirs[0];
        script(bin, "slow", "cat >/dev/null; exec sleep 1000");
        script(
            bin,
            "nap",
            "cat >/dev/null; sleep 0.3; echo '{\"cniVersion\":\"1.0.0\"}'",
        );
        b.cni.timeout = Duration::from_millis(500);
        b
    }

    #[test]
    fn one_deadline_for_the_whole_add() {
        let b = slow_bed();
        // Each nap fits the timeout alone; the second does not fit what the
        // first left of it.
        let t = Instant::now();
        let e = b
            .cni
            .add(&list("1.0.0", &["nap", "nap"]), &rt())
            .expect_err("timeout");
        assert!(e.is_timeout(), "{e}");
        assert_eq!(
            e.to_string(),
            "plugin type=\"nap\" failed (add): the operation did not finish within 0.500s and the plugin was killed"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        b.cni
            .add(&list("1.0.0", &["nap"]), &rt())
            .expect("one nap fits");
    }

    #[test]
    fn a_plugin_hung_in_del_does_not_starve_the_others() {
        let b = slow_bed();
        let e = b
            .cni
            .del(&list("1.0.0", &["a", "b", "slow"]), &rt())
            .expect_err("timeout");
        assert!(e.is_timeout(), "{e}");
        assert_eq!(order(&b.calls()), ["b DEL", "a DEL"]);
    }

    #[test]
    fn attachments_are_validated_before_any_call() {
        let b = bed();
        let mut bad = rt();
        bad.container_id = "../x".into();
        assert!(matches!(
            b.cni.add(&list("1.0.0", &["a"]), &bad),
            Err(ChainError::Invalid(_))
        ));
        assert!(b.calls().is_empty());
    }
}
