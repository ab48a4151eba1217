//! The stand-in against the real kube-apiserver: the same requests, with
//! the same identities, sent to both; the answers (status code, content
//! type, body) normalised for what a server chooses by itself and then
//! compared, as a plugin is compared with the Go reference plugin. The
//! requests are the ones the project sends: node-sync (Node registration,
//! status, Lease, list+watch), pod-runner (Pod get, status, final delete,
//! Node get; the daemon's list+watch of its Pods and its Events), the tests and the demo (create/replace/patch/delete of the
//! objects they use, bindings, RBAC), and the real kubectl's (discovery,
//! Table printing, `get`, `apply`).
//!
//! A difference kept on purpose is named where its request is made, with
//! its reason ([`Allow`]), and must still be there: an allowance that
//! matches nothing fails the test too. docs/apiserver.md says why each is
//! kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::BodyExt;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use testbed::api::Apiserver;
use testbed::apiserver::ApiServer;
use testbed::controlplane::{ControlPlane, Options};

const WHO: [&str; 4] = ["admin", "inajob", "yuanying", "anonymous"];

/// A difference kept on purpose: where (a JSON pointer prefix into the
/// normalised answer; `#status` for the code, `#type` for the content
/// type, `#text` for a text body) and why.
#[derive(Clone, Copy, Debug)]
struct Allow {
    at: &'static str,
    why: &'static str,
}

/// The stand-in records no managedFields (docs/apiserver.md: field
/// ownership is server-side apply's bookkeeping, which no client of ours
/// reads). Checked on every object answer.
const MANAGED_FIELDS: &str = "the stand-in records no managedFields";

/// Discovery: the stand-in serves the resources the project uses, not
/// every built-in API.
const FEWER_RESOURCES: Allow = Allow {
    at: "/resources#more",
    why: "the stand-in serves only the resources the project uses",
};

/// The version document names a build.
const VERSION: [Allow; 4] = [
    Allow {
        at: "/gitVersion",
        why: "the stand-in is no Kubernetes build",
    },
    Allow {
        at: "/gitCommit",
        why: "the stand-in is no Kubernetes build",
    },
    Allow {
        at: "/buildDate",
        why: "the stand-in is no Kubernetes build",
    },
    Allow {
        at: "/goVersion",
        why: "the stand-in is no Kubernetes build",
    },
];

struct Answer {
    code: u16,
    ctype: String,
    body: Value,
}

struct Side {
    label: &'static str,
    port: u16,
    dir: tempfile::TempDir,
    clients: HashMap<&'static str, Client>,
    /// Values captured from earlier answers, for later requests
    /// (`${name}` in a path or body).
    vars: HashMap<String, String>,
    /// Server-chosen uids, named by their objects.
    uids: HashMap<String, String>,
    /// How many uids each object name had.
    incarnations: HashMap<String, usize>,
}

async fn client_for(path: &Path, anonymous: bool) -> Client {
    let kc = Kubeconfig::read_from(path).expect("kubeconfig");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    if anonymous {
        cfg.auth_info = Default::default();
    }
    cfg.read_timeout = Some(Duration::from_secs(20));
    Client::try_from(cfg).expect("client")
}

impl Side {
    async fn new(label: &'static str, server: &dyn Apiserver) -> Side {
        let dir = tempfile::tempdir().expect("tmp");
        server
            .write_kubeconfigs(dir.path(), &["inajob", "yuanying"])
            .expect("kubeconfigs");
        let mut clients = HashMap::new();
        for who in WHO {
            let file = if who == "anonymous" { "admin" } else { who };
            let path = dir.path().join(format!("{file}.kubeconfig"));
            clients.insert(who, client_for(&path, who == "anonymous").await);
        }
        Side {
            label,
            port: server.port(),
            dir,
            clients,
            vars: HashMap::new(),
            uids: HashMap::new(),
            incarnations: HashMap::new(),
        }
    }

    fn kubeconfig(&self, who: &str) -> PathBuf {
        self.dir.path().join(format!("{who}.kubeconfig"))
    }

    fn fill(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (k, v) in &self.vars {
            out = out.replace(&format!("${{{k}}}"), v);
        }
        out
    }

    async fn send(&self, r: &Req) -> Answer {
        let mut b = http::Request::builder()
            .method(r.method)
            .uri(self.fill(&r.path))
            .header("User-Agent", r.agent);
        if let Some(c) = r.ctype {
            b = b.header("Content-Type", c);
        }
        if let Some(a) = r.accept {
            b = b.header("Accept", a);
        }
        let body = r.body.as_ref().map(|v| self.fill(&v.to_string()));
        let req = b
            .body(body.unwrap_or_default().into_bytes().into())
            .expect("request");
        let client = &self.clients[r.who];
        let resp = tokio::time::timeout(Duration::from_secs(30), client.send(req))
            .await
            .unwrap_or_else(|_| panic!("{}: {} timed out", self.label, r.name))
            .unwrap_or_else(|e| panic!("{}: {}: {e}", self.label, r.name));
        let code = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{}: {}: the body timed out", self.label, r.name))
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = if !ctype.starts_with("application/json") {
            json!({ "#text": text })
        } else if r.watch {
            // One event a line; bookmarks carry only a resourceVersion and
            // come when a server likes, so they are not compared.
            Value::Array(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| serde_json::from_str(l).unwrap_or_else(|_| json!({ "#line": l })))
                    .filter(|e: &Value| e["type"] != "BOOKMARK")
                    .collect(),
            )
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| json!({ "#text": text }))
        };
        Answer { code, ctype, body }
    }

    /// Names each object's uid after the object ("<uid default/web-001
    /// #1>"), so that references to it read the same on both sides.
    fn register_uids(&mut self, v: &Value) {
        match v {
            Value::Object(m) => {
                if let Some(meta) = m.get("metadata")
                    && let (Some(uid), Some(name)) = (
                        meta.get("uid").and_then(Value::as_str),
                        meta.get("name").and_then(Value::as_str),
                    )
                    && !self.uids.contains_key(uid)
                {
                    let ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
                    let name = match meta.get("generateName").and_then(Value::as_str) {
                        Some(g) if name.starts_with(g) => format!("{g}<suffix>"),
                        _ => name.to_string(),
                    };
                    let id = format!("{ns}/{name}");
                    let n = self.incarnations.entry(id.clone()).or_default();
                    *n += 1;
                    self.uids
                        .insert(uid.to_string(), format!("<uid {id} #{n}>"));
                }
                m.values().for_each(|c| self.register_uids(c));
            }
            Value::Array(a) => a.iter().for_each(|c| self.register_uids(c)),
            _ => {}
        }
    }

    /// Replaces what a server chooses by itself.
    fn normalise(&mut self, v: &mut Value, key: &str, now: SystemTime) {
        match v {
            Value::Object(m) => {
                let generated = m
                    .get("generateName")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                for (k, child) in m.iter_mut() {
                    self.normalise(child, k, now);
                }
                if let (Some(g), Some(Value::String(name))) = (generated, m.get_mut("name"))
                    && name.starts_with(&g)
                    && name.len() == g.len() + 5
                {
                    *name = format!("{g}<suffix>");
                }
            }
            Value::Array(a) => {
                for child in a {
                    self.normalise(child, key, now);
                }
            }
            Value::String(s) => {
                if key == "uid" {
                    let n = self.uids.len() + 1;
                    *s = self
                        .uids
                        .entry(s.clone())
                        .or_insert_with(|| format!("<uid ?{n}>"))
                        .clone();
                } else if key == "resourceVersion" && !s.is_empty() {
                    *s = "<rv>".into();
                } else if let Some(rest) = s.strip_prefix("kube-api-access-")
                    && rest.len() == 5
                {
                    *s = "kube-api-access-<suffix>".into();
                } else if let Some((uid, token)) =
                    self.uids.iter().find(|(u, _)| s.contains(u.as_str()))
                {
                    *s = s.replace(uid.as_str(), token);
                } else if is_now(s, now) {
                    *s = "<now>".into();
                } else if s.contains(&format!("127.0.0.1:{}", self.port)) {
                    *s = s.replace(&format!("127.0.0.1:{}", self.port), "127.0.0.1:<port>");
                }
            }
            // The `kubernetes` Service points at the server's own port.
            Value::Number(n) if key == "targetPort" && n.as_u64() == Some(u64::from(self.port)) => {
                *v = json!("<port>");
            }
            _ => {}
        }
    }
}

/// A server-chosen time: within ten minutes of now (the requests' own
/// times are in 2020).
fn is_now(s: &str, now: SystemTime) -> bool {
    if s.len() < 20 || !s.ends_with('Z') || s.as_bytes().get(10) != Some(&b'T') {
        return false;
    }
    let Ok(t) = humantime::parse_rfc3339_weak(s.trim_end_matches('Z')) else {
        return false;
    };
    let d = match t.duration_since(now) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    d < Duration::from_secs(600)
}

/// A request, sent to both servers.
struct Req {
    name: String,
    who: &'static str,
    method: &'static str,
    path: String,
    ctype: Option<&'static str>,
    accept: Option<&'static str>,
    agent: &'static str,
    body: Option<Value>,
    watch: bool,
    allow: Vec<Allow>,
    /// JSON pointers whose values a server picks at random, with why.
    masks: Vec<(&'static str, &'static str)>,
    capture: Vec<(&'static str, &'static str)>,
    /// The real server's authorizers and admission read caches that
    /// follow writes within moments: the request is repeated on it while
    /// it answers this code.
    settle: Option<u16>,
    expect: Option<u16>,
    /// Only the objects whose names start with this are compared in a
    /// list, Table or watch, with why.
    ours: Option<(&'static str, &'static str)>,
}

struct Diff {
    real: Side,
    fake: Side,
    failures: Vec<String>,
    requests: usize,
    kubectl_runs: usize,
    allowances_used: usize,
    managed_fields_seen: usize,
}

fn pointer_escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<(String, String)>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = format!("{path}/{}", pointer_escape(k));
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => diff_values(&p, u, v, out),
                    (u, v) => out.push((p, format!("real {} / stand-in {}", show(u), show(v)))),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                diff_values(&format!("{path}/{i}"), u, v, out);
            }
        }
        _ if a != b => out.push((
            path.to_string(),
            format!("real {} / stand-in {}", show(Some(a)), show(Some(b))),
        )),
        _ => {}
    }
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(v) => {
            let s = v.to_string();
            if s.len() > 600 {
                format!("{}…", &s[..600])
            } else {
                s
            }
        }
    }
}

/// Drops `managedFields` from every object in an answer, counting them.
fn strip_managed_fields(v: &mut Value) -> usize {
    match v {
        Value::Object(m) => {
            let mut n = 0;
            if let Some(Value::Object(meta)) = m.get_mut("metadata")
                && meta.remove("managedFields").is_some()
            {
                n += 1;
            }
            for child in m.values_mut() {
                n += strip_managed_fields(child);
            }
            n
        }
        Value::Array(a) => a.iter_mut().map(strip_managed_fields).sum(),
        _ => 0,
    }
}

impl Diff {
    fn req(&mut self, name: &str, who: &'static str, method: &'static str, path: &str) -> ReqB<'_> {
        ReqB {
            d: self,
            r: Req {
                name: name.to_string(),
                who,
                method,
                path: path.to_string(),
                ctype: None,
                accept: None,
                agent: "heartful-diff/0.1.0 (linux/amd64)",
                body: None,
                watch: false,
                allow: Vec::new(),
                masks: Vec::new(),
                capture: Vec::new(),
                settle: None,
                expect: None,
                ours: None,
            },
        }
    }

    async fn run(&mut self, r: Req) -> (Answer, Answer) {
        self.requests += 1;
        let now = SystemTime::now();
        let mut real = self.real.send(&r).await;
        if let Some(code) = r.settle {
            let t = Instant::now();
            while real.code == code && t.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                real = self.real.send(&r).await;
            }
        }
        let fake = self.fake.send(&r).await;
        for (var, ptr) in &r.capture {
            for (side, ans) in [(&mut self.real, &real), (&mut self.fake, &fake)] {
                if let Some(v) = ans.body.pointer(ptr).and_then(Value::as_str) {
                    side.vars.insert(var.to_string(), v.to_string());
                }
            }
        }
        let mut a = real.body.clone();
        let mut b = fake.body.clone();
        // managedFields: the real server's name our field manager; the
        // stand-in records none.
        let text = a.to_string();
        let seen = strip_managed_fields(&mut a);
        if seen > 0 {
            self.managed_fields_seen += seen;
            if r.method != "GET" && real.code < 300 && text.contains("\"manager\"") {
                let want = match r.agent.split('/').next() {
                    Some(a) if !r.path.contains("fieldManager=") => a.to_string(),
                    _ => r
                        .path
                        .split("fieldManager=")
                        .nth(1)
                        .and_then(|s| s.split('&').next())
                        .unwrap_or("")
                        .to_string(),
                };
                if !text.contains(&format!("\"manager\":\"{want}\"")) {
                    self.failures.push(format!(
                        "{}: the real server did not record manager {want}: {text}",
                        r.name
                    ));
                }
            }
        }
        if strip_managed_fields(&mut b) > 0 {
            self.failures.push(format!(
                "{}: the stand-in now records managedFields: compare them and drop the named difference ({MANAGED_FIELDS})",
                r.name
            ));
        }
        if let Some((prefix, _why)) = r.ours {
            for v in [&mut a, &mut b] {
                keep_ours(v, prefix);
            }
        }
        for (ptr, _why) in &r.masks {
            for v in [&mut a, &mut b] {
                if let Some(x) = v.pointer_mut(ptr) {
                    *x = json!("<masked>");
                }
            }
        }
        for v in [&mut a, &mut b] {
            age_cells(v);
        }
        self.real.register_uids(&a);
        self.fake.register_uids(&b);
        self.real.normalise(&mut a, "", now);
        self.fake.normalise(&mut b, "", now);
        let mut diffs = Vec::new();
        if real.code != fake.code {
            diffs.push((
                "#status".to_string(),
                format!("real {} / stand-in {}", real.code, fake.code),
            ));
        }
        if real.ctype != fake.ctype {
            diffs.push((
                "#type".to_string(),
                format!("real {:?} / stand-in {:?}", real.ctype, fake.ctype),
            ));
        }
        diff_values("", &a, &b, &mut diffs);
        self.judge(&r.name, &r.allow, diffs, &a, &b);
        if let Some(code) = r.expect
            && real.code != code
        {
            self.failures.push(format!(
                "{}: the real server answered {} (the scenario expects {code}): {}",
                r.name,
                real.code,
                show(Some(&a))
            ));
        }
        (real, fake)
    }

    fn judge(
        &mut self,
        name: &str,
        allow: &[Allow],
        diffs: Vec<(String, String)>,
        a: &Value,
        b: &Value,
    ) {
        let mut used = vec![false; allow.len()];
        let mut unexplained = Vec::new();
        for (path, what) in diffs {
            match allow.iter().position(|x| path.starts_with(x.at)) {
                Some(i) => used[i] = true,
                None => unexplained.push(format!("  {path}: {what}")),
            }
        }
        if !unexplained.is_empty() {
            self.failures.push(format!(
                "{name}: differs\n{}\n  real:     {}\n  stand-in: {}",
                unexplained.join("\n"),
                show(Some(a)),
                show(Some(b))
            ));
        }
        for (x, u) in allow.iter().zip(used) {
            if u {
                self.allowances_used += 1;
            } else {
                self.failures.push(format!(
                    "{name}: the named difference at {} ({}) is gone: remove it",
                    x.at, x.why
                ));
            }
        }
    }

    /// The real kubectl against both, as the admin; stdout and the exit
    /// status compared, AGE columns normalised.
    fn kubectl(&mut self, name: &str, args: &[&str], allow: &[Allow]) -> (String, String) {
        self.kubectl_runs += 1;
        let bin = testbed::controlplane::Assets::find()
            .expect("assets")
            .bin("kubectl");
        let run = |side: &Side| {
            let out = std::process::Command::new(&bin)
                .arg("--kubeconfig")
                .arg(side.kubeconfig("admin"))
                .args(args)
                .output()
                .expect("kubectl");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (
                out.status.code().unwrap_or(-1),
                ages(&text),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (rc_a, out_a, err_a) = run(&self.real);
        let (rc_b, out_b, err_b) = run(&self.fake);
        let mut diffs = Vec::new();
        if rc_a != rc_b {
            diffs.push((
                "#status".to_string(),
                format!(
                    "real {rc_a} ({}) / stand-in {rc_b} ({})",
                    err_a.trim(),
                    err_b.trim()
                ),
            ));
        }
        if out_a != out_b {
            diffs.push(("#text".to_string(), "the output differs".to_string()));
        }
        let a = json!({ "#text": out_a, "stderr": err_a });
        let b = json!({ "#text": out_b, "stderr": err_b });
        self.judge(&format!("kubectl {name}"), allow, diffs, &a, &b);
        (out_a, out_b)
    }
}

/// Drops from a list's items, a Table's rows or a watch's events the
/// objects whose names do not start with `prefix`.
fn keep_ours(v: &mut Value, prefix: &str) {
    let named = |o: &Value, ptr: &str| {
        o.pointer(ptr)
            .and_then(Value::as_str)
            .is_some_and(|n| n.starts_with(prefix))
    };
    if let Some(Value::Array(items)) = v.get_mut("items") {
        items.retain(|o| named(o, "/metadata/name"));
    }
    if let Some(Value::Array(rows)) = v.get_mut("rows") {
        rows.retain(|o| named(o, "/object/metadata/name"));
    }
    if let Value::Array(events) = v {
        events.retain(|e| named(e, "/object/metadata/name"));
    }
}

/// A Table's Age cells: seconds pass between the two answers.
fn age_cells(v: &mut Value) {
    if v["kind"] != "Table" {
        return;
    }
    let Some(i) = v["columnDefinitions"]
        .as_array()
        .and_then(|c| c.iter().position(|c| c["name"] == "Age"))
    else {
        return;
    };
    for row in v["rows"].as_array_mut().into_iter().flatten() {
        if let Some(c) = row["cells"].get_mut(i) {
            *c = json!("<age>");
        }
    }
}

/// kubectl's AGE cells ("5s", "2m3s", "<unknown>") made one.
fn ages(text: &str) -> String {
    text.lines()
        .map(|l| {
            l.split_inclusive(' ')
                .map(|w| {
                    let t = w.trim_end();
                    let is_age = !t.is_empty()
                        && t.chars().next().is_some_and(|c| c.is_ascii_digit())
                        && t.ends_with(['s', 'm', 'h', 'd'])
                        && t.chars().all(|c| c.is_ascii_digit() || "smhd".contains(c));
                    if is_age {
                        w.replacen(t, "<age>", 1)
                    } else {
                        w.to_string()
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct ReqB<'a> {
    d: &'a mut Diff,
    r: Req,
}

impl ReqB<'_> {
    fn json(mut self, body: Value) -> Self {
        self.r.ctype = Some("application/json");
        self.r.body = Some(body);
        self
    }
    fn patch(mut self, ctype: &'static str, body: Value) -> Self {
        self.r.ctype = Some(ctype);
        self.r.body = Some(body);
        self
    }
    fn smp(self, body: Value) -> Self {
        self.patch("application/strategic-merge-patch+json", body)
    }
    fn merge(self, body: Value) -> Self {
        self.patch("application/merge-patch+json", body)
    }
    fn accept(mut self, a: &'static str) -> Self {
        self.r.accept = Some(a);
        self
    }
    fn agent(mut self, a: &'static str) -> Self {
        self.r.agent = a;
        self
    }
    fn watch(mut self) -> Self {
        self.r.watch = true;
        self
    }
    fn allow(mut self, at: &'static str, why: &'static str) -> Self {
        self.r.allow.push(Allow { at, why });
        self
    }
    fn allows(mut self, a: &[Allow]) -> Self {
        self.r.allow.extend_from_slice(a);
        self
    }
    fn mask(mut self, ptr: &'static str, why: &'static str) -> Self {
        self.r.masks.push((ptr, why));
        self
    }
    fn capture(mut self, var: &'static str, ptr: &'static str) -> Self {
        self.r.capture.push((var, ptr));
        self
    }
    fn ours(mut self, prefix: &'static str, why: &'static str) -> Self {
        self.r.ours = Some((prefix, why));
        self
    }
    fn settle(mut self, code: u16) -> Self {
        self.r.settle = Some(code);
        self
    }
    fn expect(mut self, code: u16) -> Self {
        self.r.expect = Some(code);
        self
    }
    async fn go(self) -> (Answer, Answer) {
        self.d.run(self.r).await
    }
}

fn yaml(file: &str) -> Value {
    let text = std::fs::read_to_string(testbed::testdata::dir().join(file)).expect("testdata");
    serde_yaml::from_str(&text).expect("yaml")
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
const NODE_SYNC: &str = "node-sync/0.1.0 (linux/amd64)";
const POD_RUNNER: &str = "pod-runner/0.1.0 (linux/amd64)";
const T0: &str = "2020-01-01T00:00:00Z";

/// node-sync's status patch (nodestatus.rs), with quantities as a
/// machine may give them.
fn node_status(node: &str, ip: &str, cpu: &str, memory: &str, pressure: bool) -> Value {
    let cond = |t: &str, s: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": msg,
               "lastHeartbeatTime": T0, "lastTransitionTime": T0})
    };
    let mut conditions = vec![
        cond(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "node has sufficient memory available",
        ),
        cond(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "node has no disk pressure",
        ),
        cond(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "node has sufficient PID available",
        ),
        cond(
            "Ready",
            "True",
            "KubeletReady",
            "node-sync is posting ready status",
        ),
        json!({"type": "NetworkUnavailable", "status": "False", "reason": "RouteCreated",
               "message": "node-sync created routes", "lastTransitionTime": T0}),
    ];
    if pressure {
        // A later report naming fewer conditions, one of them new.
        conditions = vec![
            cond(
                "Ready",
                "True",
                "KubeletReady",
                "node-sync is posting ready status",
            ),
            cond(
                "CustomPressure",
                "False",
                "Fine",
                "a condition only this report has",
            ),
        ];
    }
    let capacity = json!({"cpu": cpu, "memory": memory, "pods": "110"});
    json!({"status": {
        "conditions": conditions,
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": node}],
        "capacity": capacity,
        "allocatable": capacity,
        "nodeInfo": {"machineID": "m", "systemUUID": "m", "bootID": "b", "kernelVersion": "6.1.0",
            "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "containerd://1.7.24",
            "kubeletVersion": "v0.1.0-node-sync", "kubeProxyVersion": "", "operatingSystem": "linux",
            "architecture": "amd64"}
    }})
}

/// node-sync's Node (nodestatus::node_object).
fn node_object(node: &str, cidr: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node,
            "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
}

/// pod-runner's status patch (status.rs): every container's status, the
/// conditions, the IPs.
fn pod_status(ready: bool, containers: &[&str]) -> Value {
    let cond = |t: &str, ok: bool| {
        let mut c = json!({"type": t, "status": if ok { "True" } else { "False" },
                           "lastProbeTime": null, "lastTransitionTime": T0});
        if !ok {
            c["reason"] = json!("ContainersNotReady");
        }
        c
    };
    let statuses: Vec<Value> = containers
        .iter()
        .map(|n| {
            let mut s = json!({"name": n, "ready": ready, "restartCount": 0,
                "image": "localhost/web:latest", "imageID": "sha256:0123",
                "containerID": format!("containerd://{n}"), "started": ready});
            s["state"] = if ready {
                json!({"running": {"startedAt": T0}})
            } else {
                json!({"waiting": {"reason": "ContainerCreating"}})
            };
            s
        })
        .collect();
    json!({"status": {
        "phase": if ready { "Running" } else { "Pending" },
        "conditions": [cond("PodReadyToStartContainers", true), cond("Initialized", true),
            cond("Ready", ready), cond("ContainersReady", ready)],
        "startTime": T0,
        "containerStatuses": statuses,
        "qosClass": "BestEffort",
        "hostIP": "192.168.43.111", "hostIPs": [{"ip": "192.168.43.111"}],
        "podIP": "10.244.1.2", "podIPs": [{"ip": "10.244.1.2"}]
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_in_answers_as_kube_apiserver_does() {
    let t = Instant::now();
    let cp = tokio::task::spawn_blocking(|| ControlPlane::start(&Options::default()))
        .await
        .expect("join")
        .expect("control plane");
    let fake_server = ApiServer::start(0, None).expect("stand-in");
    let mut d = Diff {
        real: Side::new("kube-apiserver", &cp).await,
        fake: Side::new("stand-in", &fake_server).await,
        failures: Vec::new(),
        requests: 0,
        kubectl_runs: 0,
        allowances_used: 0,
        managed_fields_seen: 0,
    };
    eprintln!("both servers up in {:?}", t.elapsed());

    public_and_discovery(&mut d).await;
    node_registration(&mut d).await;
    leases(&mut d).await;
    pods(&mut d).await;
    services_and_endpoints(&mut d).await;
    rbac_and_watches(&mut d).await;
    roles(&mut d).await;
    errors(&mut d).await;
    kubectl(&mut d).await;

    eprintln!(
        "{} requests and {} kubectl runs compared in {:?}; {} named differences matched; {} managedFields blocks on the real side",
        d.requests,
        d.kubectl_runs,
        t.elapsed(),
        d.allowances_used,
        d.managed_fields_seen
    );
    assert!(
        d.managed_fields_seen > 0,
        "the real server recorded no managedFields"
    );
    assert!(
        d.failures.is_empty(),
        "{} of {} comparisons failed:\n\n{}",
        d.failures.len(),
        d.requests + d.kubectl_runs,
        d.failures.join("\n\n")
    );
    drop(fake_server);
    drop(cp);
}

async fn public_and_discovery(d: &mut Diff) {
    d.req("version (anonymous)", "anonymous", "GET", "/version")
        .allows(&VERSION)
        .go()
        .await;
    for p in ["/healthz", "/readyz", "/livez"] {
        d.req(&format!("{p} (anonymous)"), "anonymous", "GET", p)
            .go()
            .await;
    }
    d.req("discovery (anonymous)", "anonymous", "GET", "/api")
        .go()
        .await;
    d.req(
        "list pods (anonymous)",
        "anonymous",
        "GET",
        "/api/v1/namespaces/default/pods",
    )
    .expect(403)
    .go()
    .await;
    d.req(
        "get a node (anonymous)",
        "anonymous",
        "GET",
        "/api/v1/nodes/inajob",
    )
    .expect(403)
    .go()
    .await;
    d.req("/api", "admin", "GET", "/api").go().await;
    // Every resource the stand-in lists is described as the real server
    // describes it.
    for (path, name, more) in [
        ("/api/v1", "core/v1", true),
        ("/apis/discovery.k8s.io/v1", "discovery.k8s.io/v1", false),
        (
            "/apis/coordination.k8s.io/v1",
            "coordination.k8s.io/v1",
            false,
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1",
            "rbac.authorization.k8s.io/v1",
            false,
        ),
        ("/apis/apps/v1", "apps/v1", true),
        (
            "/apis/authorization.k8s.io/v1",
            "authorization.k8s.io/v1",
            true,
        ),
    ] {
        discovery_subset(d, &format!("discovery {name}"), path, "/resources", more).await;
    }
    discovery_subset(d, "discovery /apis", "/apis", "/groups", true).await;
    d.req(
        "discovery of a version no group has",
        "admin",
        "GET",
        "/api/v2",
    )
    .go()
    .await;
}

/// A discovery document of which the stand-in serves a part: each of its
/// entries must be the real one, and it must list nothing the real one
/// lacks; the real server's other entries are the named difference.
async fn discovery_subset(d: &mut Diff, name: &str, path: &str, list: &'static str, more: bool) {
    d.requests += 1;
    let r = Req {
        name: name.to_string(),
        who: "admin",
        method: "GET",
        path: path.to_string(),
        ctype: None,
        accept: Some("application/json"),
        agent: "kubectl/v1.36.3 (linux/amd64) kubernetes/7b29fb0",
        body: None,
        watch: false,
        allow: Vec::new(),
        masks: Vec::new(),
        capture: Vec::new(),
        settle: None,
        expect: None,
        ours: None,
    };
    let mut real = d.real.send(&r).await;
    let fake = d.fake.send(&r).await;
    let served: Vec<Value> = fake
        .body
        .pointer(list)
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|e| e["name"].clone()).collect())
        .unwrap_or_default();
    let mut dropped = 0;
    if let Some(Value::Array(items)) = real.body.pointer_mut(list) {
        let before = items.len();
        items.retain(|e| served.contains(&e["name"]));
        dropped = before - items.len();
    }
    let mut diffs = Vec::new();
    if real.code != fake.code {
        diffs.push((
            "#status".into(),
            format!("real {} / stand-in {}", real.code, fake.code),
        ));
    }
    if real.ctype != fake.ctype {
        diffs.push((
            "#type".into(),
            format!("{:?} / {:?}", real.ctype, fake.ctype),
        ));
    }
    diff_values("", &real.body, &fake.body, &mut diffs);
    if dropped > 0 {
        diffs.push((
            format!("{list}#more"),
            format!("the real server lists {dropped} more"),
        ));
    }
    let allow = [Allow {
        at: if list == "/resources" {
            "/resources#more"
        } else {
            "/groups#more"
        },
        why: FEWER_RESOURCES.why,
    }];
    d.judge(
        name,
        if more { &allow } else { &[] },
        diffs,
        &real.body,
        &fake.body,
    );
}

async fn node_registration(d: &mut Diff) {
    // node-sync on inajob: get, then create its Node.
    d.req(
        "node-sync: get its Node (none yet)",
        "inajob",
        "GET",
        "/api/v1/nodes/inajob",
    )
    .agent(NODE_SYNC)
    .expect(404)
    .go()
    .await;
    d.req(
        "node-sync: register",
        "inajob",
        "POST",
        "/api/v1/nodes?fieldManager=node-sync",
    )
    .agent(NODE_SYNC)
    .json(node_object("inajob", "10.244.1.0/24"))
    .capture("inajob-uid", "/metadata/uid")
    .expect(201)
    .go()
    .await;
    d.req(
        "node-sync: register again",
        "inajob",
        "POST",
        "/api/v1/nodes?fieldManager=node-sync",
    )
    .agent(NODE_SYNC)
    .json(node_object("inajob", "10.244.1.0/24"))
    .expect(409)
    .go()
    .await;
    d.req(
        "a node registers another",
        "inajob",
        "POST",
        "/api/v1/nodes",
    )
    .json(node_object("yuanying", "10.244.2.0/24"))
    .expect(403)
    .go()
    .await;
    d.req(
        "node-sync on yuanying: register",
        "yuanying",
        "POST",
        "/api/v1/nodes?fieldManager=node-sync",
    )
    .agent(NODE_SYNC)
    .json(node_object("yuanying", "10.244.2.0/24"))
    .expect(201)
    .go()
    .await;
    d.req(
        "node-sync: status",
        "inajob",
        "PATCH",
        "/api/v1/nodes/inajob/status?fieldManager=node-sync",
    )
    .agent(NODE_SYNC)
    .smp(node_status(
        "inajob",
        "192.168.43.111",
        "2000m",
        "4096Mi",
        false,
    ))
    .expect(200)
    .go()
    .await;
    d.req(
        "node-sync: status again",
        "inajob",
        "PATCH",
        "/api/v1/nodes/inajob/status?fieldManager=node-sync",
    )
    .agent(NODE_SYNC)
    .smp(node_status(
        "inajob",
        "192.168.43.111",
        "2",
        "16318428Ki",
        true,
    ))
    .expect(200)
    .go()
    .await;
    d.req(
        "node-sync on yuanying: status",
        "yuanying",
        "PATCH",
        "/api/v1/nodes/yuanying/status?fieldManager=node-sync",
    )
    .agent(NODE_SYNC)
    .smp(node_status(
        "yuanying",
        "192.168.43.112",
        "1500m",
        "1000000Ki",
        false,
    ))
    .expect(200)
    .go()
    .await;
    d.req(
        "pod-runner: get its Node",
        "inajob",
        "GET",
        "/api/v1/nodes/inajob",
    )
    .agent(POD_RUNNER)
    .expect(200)
    .go()
    .await;
    d.req(
        "a node reads another Node",
        "inajob",
        "GET",
        "/api/v1/nodes/yuanying",
    )
    .expect(403)
    .go()
    .await;
    d.req(
        "a node lists all Nodes",
        "inajob",
        "GET",
        "/api/v1/nodes?limit=500",
    )
    .agent(NODE_SYNC)
    .expect(403)
    .go()
    .await;
    d.req(
        "a node watches all Nodes",
        "inajob",
        "GET",
        "/api/v1/nodes?watch=true&timeoutSeconds=1",
    )
    .expect(403)
    .go()
    .await;
    d.req(
        "a node lists its own Node",
        "inajob",
        "GET",
        "/api/v1/nodes?fieldSelector=metadata.name%3Dinajob",
    )
    .expect(200)
    .go()
    .await;
    d.req(
        "a node patches another's status",
        "inajob",
        "PATCH",
        "/api/v1/nodes/yuanying/status",
    )
    .merge(json!({"status": {"addresses": []}}))
    .expect(403)
    .go()
    .await;
    d.req(
        "a node changes its taints",
        "inajob",
        "PATCH",
        "/api/v1/nodes/inajob",
    )
    .merge(json!({"spec": {"taints": []}}))
    .expect(403)
    .go()
    .await;
    d.req(
        "a node labels itself",
        "inajob",
        "PATCH",
        "/api/v1/nodes/inajob?fieldManager=node-sync",
    )
    .agent(NODE_SYNC)
    .merge(json!({"metadata": {"labels": {"tutorial": "heartful"}}}))
    .expect(200)
    .go()
    .await;
    d.req(
        "a node deletes itself",
        "inajob",
        "DELETE",
        "/api/v1/nodes/inajob",
    )
    .expect(403)
    .go()
    .await;
    // The admin, as the node-sync agent test does: a third Node, its
    // address by a merge patch, deleted and made again.
    d.req("admin: a Node", "admin", "POST", "/api/v1/nodes")
        .json(json!({"metadata": {"name": "third"}, "spec": {"podCIDR": "10.244.3.0/24"}}))
        .expect(201)
        .go()
        .await;
    d.req(
        "admin: a Node's address",
        "admin",
        "PATCH",
        "/api/v1/nodes/third/status",
    )
    .merge(json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.168.43.113"}]}}))
    .expect(200)
    .go()
    .await;
    d.req(
        "admin: delete a Node",
        "admin",
        "DELETE",
        "/api/v1/nodes/third",
    )
    .json(json!({}))
    .expect(200)
    .go()
    .await;
    d.req(
        "admin: the deleted Node",
        "admin",
        "GET",
        "/api/v1/nodes/third",
    )
    .expect(404)
    .go()
    .await;
    // A Node made with its status, as the testdata Nodes are.
    d.req("admin: a Node with a status", "admin", "POST", "/api/v1/nodes")
        .json(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "fourth"},
            "spec": {"podCIDR": "10.244.4.0/24", "taints": [{"key": "x", "value": "y", "effect": "NoExecute"}]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.43.114"}],
                "capacity": {"cpu": "4000m"}}}))
        .expect(201)
        .go()
        .await;
    d.req(
        "admin: delete it",
        "admin",
        "DELETE",
        "/api/v1/nodes/fourth",
    )
    .expect(200)
    .go()
    .await;
    // The testdata Nodes, through kube-rs as testbed::kubectl::apply
    // does: create, 409, replace.
    for n in yaml_docs(&testbed::testdata::dir().join("nodes.yaml")) {
        let name = n["metadata"]["name"].as_str().unwrap_or("").to_string();
        d.req(
            &format!("admin: create Node {name} (testdata)"),
            "admin",
            "POST",
            "/api/v1/nodes",
        )
        .json(n.clone())
        .go()
        .await;
    }
    d.req(
        "admin: get a Node",
        "admin",
        "GET",
        "/api/v1/nodes/yuanying",
    )
    .capture("yuanying-rv", "/metadata/resourceVersion")
    .go()
    .await;
    let mut y = node_object("yuanying", "10.244.2.0/24");
    y["metadata"]["resourceVersion"] = json!("${yuanying-rv}");
    y["metadata"]["labels"]["replaced"] = json!("yes");
    d.req(
        "admin: replace a Node",
        "admin",
        "PUT",
        "/api/v1/nodes/yuanying",
    )
    .json(y.clone())
    .expect(200)
    .go()
    .await;
    d.req(
        "admin: replace a Node with a stale version",
        "admin",
        "PUT",
        "/api/v1/nodes/yuanying",
    )
    .json(y)
    .expect(409)
    .go()
    .await;
    d.req("admin: nodes as a Table", "admin", "GET", "/api/v1/nodes")
        .accept(TABLE)
        .expect(200)
        .go()
        .await;
}

async fn leases(d: &mut Diff) {
    let base = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let spec =
        |t: &str| json!({"holderIdentity": "inajob", "leaseDurationSeconds": 40, "renewTime": t});
    d.req(
        "node-sync: get its Lease (none yet)",
        "inajob",
        "GET",
        &format!("{base}/inajob"),
    )
    .agent(NODE_SYNC)
    .expect(404)
    .go()
    .await;
    d.req("node-sync: create its Lease", "inajob", "POST", &format!("{base}?fieldManager=node-sync"))
        .agent(NODE_SYNC)
        .json(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "inajob", "namespace": "kube-node-lease",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "inajob", "uid": "${inajob-uid}"}]},
            "spec": spec("2020-01-01T00:00:00.123456Z")}))
        .expect(201)
        .go()
        .await;
    d.req(
        "node-sync: renew its Lease",
        "inajob",
        "PATCH",
        &format!("{base}/inajob?fieldManager=node-sync"),
    )
    .agent(NODE_SYNC)
    .merge(json!({"spec": spec("2020-01-01T00:00:10.000001Z")}))
    .expect(200)
    .go()
    .await;
    d.req(
        "node-sync: get its Lease",
        "inajob",
        "GET",
        &format!("{base}/inajob"),
    )
    .agent(NODE_SYNC)
    .expect(200)
    .go()
    .await;
    d.req(
        "a node reads another's Lease",
        "inajob",
        "GET",
        &format!("{base}/yuanying"),
    )
    .expect(403)
    .go()
    .await;
    d.req("a node creates another's Lease", "inajob", "POST", base)
        .json(json!({"metadata": {"name": "yuanying"}, "spec": {"holderIdentity": "yuanying"}}))
        .expect(403)
        .go()
        .await;
    d.req("a node lists Leases", "inajob", "GET", base)
        .expect(403)
        .go()
        .await;
    d.req(
        "a node creates a Lease elsewhere",
        "inajob",
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/default/leases",
    )
    .json(json!({"metadata": {"name": "inajob"}, "spec": {"holderIdentity": "inajob"}}))
    .expect(403)
    .go()
    .await;
    d.req("admin: leases as a Table", "admin", "GET", base)
        .accept(TABLE)
        .go()
        .await;
}

async fn pods(d: &mut Diff) {
    let pods = "/api/v1/namespaces/default/pods";
    for name in ["web-001", "web-002"] {
        d.req(&format!("admin: create {name}"), "admin", "POST", pods)
            .json(yaml(&format!("pod-{name}.yaml")))
            .capture(
                if name == "web-001" {
                    "web-001-uid"
                } else {
                    "web-002-uid"
                },
                "/metadata/uid",
            )
            .expect(201)
            .go()
            .await;
    }
    d.req("admin: create a Pod twice", "admin", "POST", pods)
        .json(yaml("pod-web-001.yaml"))
        .expect(409)
        .go()
        .await;
    d.req("admin: a Pod with generateName", "admin", "POST", pods)
        .json(json!({"metadata": {"generateName": "gen-", "labels": {"app": "gen"}},
            "spec": {"containers": [{"name": "c", "image": "localhost/web:v1",
                "resources": {"requests": {"cpu": "500m", "memory": "128Mi"}, "limits": {"cpu": "1000m", "memory": "131072Ki"}},
                "env": [{"name": "A", "value": "1"}]}]}}))
        .capture("gen-name", "/metadata/name")
        .expect(201)
        .go()
        .await;
    d.req(
        "admin: delete the generated Pod",
        "admin",
        "DELETE",
        &format!("{pods}/${{gen-name}}"),
    )
    .expect(200)
    .go()
    .await;
    for (pod, node) in [("web-002", "inajob"), ("web-001", "yuanying")] {
        d.req(
            &format!("admin: bind {pod} to {node}"),
            "admin",
            "POST",
            &format!("{pods}/{pod}/binding"),
        )
        .json(
            json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
                "target": {"kind": "Node", "name": node}}),
        )
        .expect(201)
        .go()
        .await;
    }
    d.req(
        "admin: bind a bound Pod",
        "admin",
        "POST",
        &format!("{pods}/web-002/binding"),
    )
    .json(
        json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "web-002"},
            "target": {"kind": "Node", "name": "yuanying"}}),
    )
    .expect(409)
    .go()
    .await;
    d.req(
        "admin: bind a missing Pod",
        "admin",
        "POST",
        &format!("{pods}/nope/binding"),
    )
    .json(
        json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "nope"},
            "target": {"kind": "Node", "name": "inajob"}}),
    )
    .expect(404)
    .go()
    .await;
    d.req(
        "pod-runner: get its Pod",
        "inajob",
        "GET",
        &format!("{pods}/web-002"),
    )
    .agent(POD_RUNNER)
    .settle(403)
    .expect(200)
    .go()
    .await;
    // pod-runner run: kube-runtime's watcher lists (a page of 500; its
    // "any" version is not sent with a limit), then watches from the
    // list's version.
    d.req(
        "pod-runner run: list its Pods",
        "inajob",
        "GET",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dinajob&limit=500",
    )
    .agent(POD_RUNNER)
    .capture("rv-pods", "/metadata/resourceVersion")
    .expect(200)
    .go()
    .await;
    d.req(
        "a node reads a Pod bound elsewhere",
        "inajob",
        "GET",
        &format!("{pods}/web-001"),
    )
    .expect(403)
    .go()
    .await;
    d.req(
        "a node reads a missing Pod",
        "inajob",
        "GET",
        &format!("{pods}/nope"),
    )
    .go()
    .await;
    d.req(
        "a node lists its Pods",
        "inajob",
        "GET",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dinajob",
    )
    .expect(200)
    .go()
    .await;
    d.req("a node lists all Pods", "inajob", "GET", pods)
        .expect(403)
        .go()
        .await;
    d.req(
        "a node lists another's Pods",
        "inajob",
        "GET",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dyuanying",
    )
    .expect(403)
    .go()
    .await;
    d.req("a node creates a Pod", "inajob", "POST", pods)
        .json(json!({"metadata": {"name": "x"}, "spec": {"nodeName": "inajob", "containers": [{"name": "a", "image": "b"}]}}))
        .expect(403)
        .go()
        .await;
    d.req(
        "pod-runner: status while starting",
        "inajob",
        "PATCH",
        &format!("{pods}/web-002/status?fieldManager=pod-runner"),
    )
    .agent(POD_RUNNER)
    .smp(pod_status(false, &["web"]))
    .expect(200)
    .go()
    .await;
    d.req(
        "pod-runner: status running",
        "inajob",
        "PATCH",
        &format!("{pods}/web-002/status?fieldManager=pod-runner"),
    )
    .agent(POD_RUNNER)
    .smp(pod_status(true, &["web"]))
    .capture("web-002-rv", "/metadata/resourceVersion")
    .expect(200)
    .go()
    .await;
    pod_events(d).await;
    // The pod up again on a new IP: the list merges by address, so naming
    // only the new one leaves two of a family, which the server refuses;
    // pod-runner replaces the list.
    d.req(
        "the pod on a new IP, podIPs merged",
        "inajob",
        "PATCH",
        &format!("{pods}/web-002/status"),
    )
    .smp(json!({"status": {"podIP": "10.244.1.3", "podIPs": [{"ip": "10.244.1.3"}]}}))
    .expect(422)
    .go()
    .await;
    d.req(
        "the pod on a new IP, podIPs replaced",
        "inajob",
        "PATCH",
        &format!("{pods}/web-002/status"),
    )
    .smp(json!({"status": {"podIP": "10.244.1.3", "podIPs": [{"$patch": "replace"}, {"ip": "10.244.1.3"}]}}))
    .expect(200)
    .go()
    .await;
    d.req("a sparse containerStatuses list", "inajob", "PATCH", &format!("{pods}/web-002/status"))
        .smp(json!({"status": {"podIP": "10.244.1.3", "podIPs": null, "containerStatuses": [{"name": "web", "ready": false}]}}))
        .expect(200)
        .go()
        .await;
    d.req(
        "a node writes status of a Pod bound elsewhere",
        "inajob",
        "PATCH",
        &format!("{pods}/web-001/status"),
    )
    .merge(json!({"status": {"phase": "Running"}}))
    .expect(403)
    .go()
    .await;
    d.req(
        "a node deletes a Pod bound elsewhere",
        "inajob",
        "DELETE",
        &format!("{pods}/web-001"),
    )
    .json(json!({"gracePeriodSeconds": 0}))
    .expect(403)
    .go()
    .await;
    d.req("admin: pods as a Table", "admin", "GET", pods)
        .accept(TABLE)
        .go()
        .await;
    // The admin deletes; the node finishes.
    d.req(
        "admin: delete a bound Pod",
        "admin",
        "DELETE",
        &format!("{pods}/web-002"),
    )
    .json(json!({}))
    .expect(200)
    .go()
    .await;
    d.req(
        "admin: delete it again",
        "admin",
        "DELETE",
        &format!("{pods}/web-002"),
    )
    .expect(200)
    .go()
    .await;
    d.req(
        "admin: a Pod being deleted",
        "admin",
        "GET",
        &format!("{pods}/web-002"),
    )
    .expect(200)
    .go()
    .await;
    d.req("pod-runner: final delete of another incarnation", "inajob", "DELETE", &format!("{pods}/web-002"))
        .agent(POD_RUNNER)
        .json(json!({"gracePeriodSeconds": 0, "preconditions": {"uid": "0d2a4f3e-0000-4000-8000-000000000000"}}))
        .expect(409)
        .go()
        .await;
    d.req(
        "pod-runner: final delete",
        "inajob",
        "DELETE",
        &format!("{pods}/web-002"),
    )
    .agent(POD_RUNNER)
    .json(json!({"gracePeriodSeconds": 0, "preconditions": {"uid": "${web-002-uid}"}}))
    .expect(200)
    .go()
    .await;
    // The watch kube-runtime's watcher makes from its list (pod-runner
    // asks timeoutSeconds=290; here the stream ends at once, with what
    // happened since).
    d.req(
        "pod-runner run: watch its Pods",
        "inajob",
        "GET",
        "/api/v1/pods?watch=true&timeoutSeconds=1&fieldSelector=spec.nodeName%3Dinajob&allowWatchBookmarks=true&resourceVersion=${rv-pods}",
    )
    .agent(POD_RUNNER)
    .watch()
    .expect(200)
    .go()
    .await;
    d.req(
        "pod-runner: the Pod is gone",
        "inajob",
        "GET",
        &format!("{pods}/web-002"),
    )
    .agent(POD_RUNNER)
    .go()
    .await;
    d.req(
        "admin: the Pod is gone",
        "admin",
        "GET",
        &format!("{pods}/web-002"),
    )
    .expect(404)
    .go()
    .await;
    // An unscheduled Pod goes at once.
    d.req("admin: create web-003", "admin", "POST", pods)
        .capture("rv-web-003", "/metadata/resourceVersion")
        .json(
            json!({"metadata": {"name": "web-003", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "localhost/web:latest"}]}}),
        )
        .expect(201)
        .go()
        .await;
    d.req(
        "admin: delete an unscheduled Pod",
        "admin",
        "DELETE",
        &format!("{pods}/web-003"),
    )
    .expect(200)
    .go()
    .await;
    d.req(
        "admin: delete a missing Pod",
        "admin",
        "DELETE",
        &format!("{pods}/web-003"),
    )
    .expect(404)
    .go()
    .await;
    d.req(
        "admin: watch an unscheduled Pod go",
        "admin",
        "GET",
        &format!(
            "{pods}?watch=true&timeoutSeconds=1&fieldSelector=metadata.name%3Dweb-003&resourceVersion=${{rv-web-003}}"
        ),
    )
    .watch()
    .expect(200)
    .go()
    .await;
    // Replace with a stale version, merge and JSON patches.
    d.req(
        "admin: get web-001",
        "admin",
        "GET",
        &format!("{pods}/web-001"),
    )
    .capture("web-001-rv", "/metadata/resourceVersion")
    .go()
    .await;
    d.req(
        "admin: label web-001",
        "admin",
        "PATCH",
        &format!("{pods}/web-001"),
    )
    .merge(json!({"metadata": {"labels": {"m": "1"}}}))
    .expect(200)
    .go()
    .await;
    d.req(
        "admin: unlabel web-001 (JSON patch)",
        "admin",
        "PATCH",
        &format!("{pods}/web-001"),
    )
    .patch(
        "application/json-patch+json",
        json!([{"op": "remove", "path": "/metadata/labels/m"}]),
    )
    .expect(200)
    .go()
    .await;
    d.req(
        "admin: a JSON patch that fails",
        "admin",
        "PATCH",
        &format!("{pods}/web-001"),
    )
    .patch(
        "application/json-patch+json",
        json!([{"op": "remove", "path": "/metadata/labels/m"}]),
    )
    .expect(422)
    .go()
    .await;
    d.req(
        "admin: a JSON patch that tests",
        "admin",
        "PATCH",
        &format!("{pods}/web-001"),
    )
    .patch(
        "application/json-patch+json",
        json!([{"op": "test", "path": "/metadata/name", "value": "x"}]),
    )
    .go()
    .await;
    d.req(
        "admin: replace web-001 with a stale version",
        "admin",
        "PUT",
        &format!("{pods}/web-001"),
    )
    .json({
        let mut p = yaml("pod-web-001.yaml");
        p["metadata"]["resourceVersion"] = json!("${web-001-rv}");
        p
    })
    .expect(409)
    .go()
    .await;
    // Invalid Pods, a missing namespace, no ServiceAccount.
    d.req("admin: an invalid Pod", "admin", "POST", pods)
        .json(json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": []}}))
        .expect(422)
        .go()
        .await;
    d.req("admin: a Pod without an image", "admin", "POST", pods)
        .json(json!({"metadata": {"name": "noimage"}, "spec": {"containers": [{"name": "a"}]}}))
        .expect(422)
        .go()
        .await;
    d.req(
        "admin: a Pod in a missing namespace",
        "admin",
        "POST",
        "/api/v1/namespaces/nowhere/pods",
    )
    .json(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "b"}]}}))
    .expect(404)
    .go()
    .await;
    d.req("admin: a namespace", "admin", "POST", "/api/v1/namespaces")
        .json(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "nosa"}}))
        .expect(201)
        .go()
        .await;
    d.req(
        "admin: a Pod before its ServiceAccount",
        "admin",
        "POST",
        "/api/v1/namespaces/nosa/pods",
    )
    .json(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "b"}]}}))
    .expect(403)
    .go()
    .await;
    d.req(
        "admin: the ServiceAccount",
        "admin",
        "POST",
        "/api/v1/namespaces/nosa/serviceaccounts",
    )
    .json(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}))
    .expect(201)
    .go()
    .await;
    d.req(
        "admin: a Pod after its ServiceAccount",
        "admin",
        "POST",
        "/api/v1/namespaces/nosa/pods",
    )
    .json(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "b"}]}}))
    .settle(403)
    .expect(201)
    .go()
    .await;
    d.req(
        "admin: namespaces as a Table",
        "admin",
        "GET",
        "/api/v1/namespaces",
    )
    .accept(TABLE)
    .go()
    .await;
}

/// The real server records Events of its own in `default` (its
/// ClusterIP repair, its readiness), when it likes; the stand-in has
/// neither.
const SERVER_EVENTS: &str = "the real server's own Events (ClusterIP repair, readyz) come and go on its own clock; the stand-in records none";

/// pod-runner's Event about a Pod (daemon/events.rs): the client-go
/// recorder's name, the kubelet's fields, `source` and the reporting
/// pair naming pod-runner on its node.
fn pod_event(name: &str, kind: &str, reason: &str, message: &str, container: bool) -> Value {
    let mut involved = json!({"apiVersion": "v1", "kind": "Pod", "name": "web-002",
        "namespace": "default", "uid": "${web-002-uid}", "resourceVersion": "${web-002-rv}"});
    if container {
        involved["fieldPath"] = json!("spec.containers{web}");
    }
    json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": "default"},
        "involvedObject": involved, "reason": reason, "message": message, "type": kind,
        "source": {"component": "pod-runner", "host": "inajob"},
        "reportingComponent": "pod-runner", "reportingInstance": "inajob",
        "firstTimestamp": T0, "lastTimestamp": T0, "count": 1})
}

/// pod-runner run's Events: a node creates them (the Node authorizer's
/// static rules), may not read them; the admin reads, lists, watches
/// and deletes them, as `kubectl get events` and `kubectl describe pod`
/// do.
async fn pod_events(d: &mut Diff) {
    let events = "/api/v1/namespaces/default/events";
    d.req("pod-runner run: an Event", "inajob", "POST", events)
        .agent(POD_RUNNER)
        .json(pod_event(
            "web-002.17f0c3a1b2d4e5f6",
            "Normal",
            "Started",
            "Started container web",
            true,
        ))
        .expect(201)
        .go()
        .await;
    d.req("pod-runner run: a Warning", "inajob", "POST", events)
        .agent(POD_RUNNER)
        .json(pod_event(
            "web-002.17f0c3a1b2d4e5f7",
            "Warning",
            "Unhealthy",
            "Readiness probe failed: HTTP probe failed with statuscode: 503",
            true,
        ))
        .expect(201)
        .go()
        .await;
    d.req(
        "pod-runner run: an Event of the Pod",
        "inajob",
        "POST",
        events,
    )
    .agent(POD_RUNNER)
    .json(pod_event(
        "web-002.17f0c3a1b2d4e5f8",
        "Normal",
        "Scheduled",
        "Successfully assigned default/web-002 to inajob",
        false,
    ))
    .expect(201)
    .go()
    .await;
    d.req("an Event created twice", "inajob", "POST", events)
        .json(pod_event(
            "web-002.17f0c3a1b2d4e5f8",
            "Normal",
            "Scheduled",
            "Successfully assigned default/web-002 to inajob",
            false,
        ))
        .expect(409)
        .go()
        .await;
    d.req(
        "an Event about an object in another namespace",
        "inajob",
        "POST",
        events,
    )
    .json({
        let mut e = pod_event("web-002.17f0c3a1b2d4e5f9", "Normal", "Pulled", "x", true);
        e["involvedObject"]["namespace"] = json!("kube-system");
        e
    })
    .expect(422)
    .go()
    .await;
    // The recorder's aggregation: the same Event again, counted.
    d.req(
        "a node counts an Event again",
        "inajob",
        "PATCH",
        &format!("{events}/web-002.17f0c3a1b2d4e5f7"),
    )
    .smp(json!({"count": 2, "lastTimestamp": "2020-01-01T00:01:00Z",
        "message": "Readiness probe failed: HTTP probe failed with statuscode: 500"}))
    .expect(200)
    .go()
    .await;
    d.req("a node lists Events", "inajob", "GET", events)
        .expect(403)
        .go()
        .await;
    d.req("a node lists all Events", "inajob", "GET", "/api/v1/events")
        .expect(403)
        .go()
        .await;
    d.req(
        "a node reads its Event",
        "inajob",
        "GET",
        &format!("{events}/web-002.17f0c3a1b2d4e5f6"),
    )
    .expect(403)
    .go()
    .await;
    d.req(
        "a node deletes its Event",
        "inajob",
        "DELETE",
        &format!("{events}/web-002.17f0c3a1b2d4e5f6"),
    )
    .expect(403)
    .go()
    .await;
    d.req(
        "admin: get an Event",
        "admin",
        "GET",
        &format!("{events}/web-002.17f0c3a1b2d4e5f6"),
    )
    .expect(200)
    .go()
    .await;
    d.req("admin: list Events", "admin", "GET", events)
        .ours("web-002.", SERVER_EVENTS)
        .capture("rv-events", "/metadata/resourceVersion")
        .expect(200)
        .go()
        .await;
    d.req("admin: list all Events", "admin", "GET", "/api/v1/events")
        .ours("web-002.", SERVER_EVENTS)
        .expect(200)
        .go()
        .await;
    d.req(
        "admin: a Pod's Events, as kubectl describe asks",
        "admin",
        "GET",
        "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dweb-002%2CinvolvedObject.namespace%3Ddefault%2CinvolvedObject.uid%3D${web-002-uid}&limit=500",
    )
    .expect(200)
    .go()
    .await;
    d.req(
        "admin: Warnings",
        "admin",
        "GET",
        "/api/v1/events?fieldSelector=type%3DWarning%2Csource%3Dpod-runner",
    )
    .expect(200)
    .go()
    .await;
    d.req(
        "admin: Events by a field they lack",
        "admin",
        "GET",
        "/api/v1/events?fieldSelector=spec.nodeName%3Dinajob",
    )
    .expect(400)
    .go()
    .await;
    d.req("admin: events as a Table", "admin", "GET", events)
        .ours("web-002.", SERVER_EVENTS)
        .accept(TABLE)
        .go()
        .await;
    d.req(
        "admin: delete an Event",
        "admin",
        "DELETE",
        &format!("{events}/web-002.17f0c3a1b2d4e5f8"),
    )
    .expect(200)
    .go()
    .await;
    d.req(
        "admin: watch Events",
        "admin",
        "GET",
        &format!(
            "{events}?watch=true&timeoutSeconds=1&allowWatchBookmarks=true&resourceVersion=${{rv-events}}"
        ),
    )
    .ours("web-002.", SERVER_EVENTS)
    .watch()
    .expect(200)
    .go()
    .await;
}

async fn services_and_endpoints(d: &mut Diff) {
    let svcs = "/api/v1/namespaces/default/services";
    d.req("admin: web-service", "admin", "POST", svcs)
        .json(yaml("service-web.yaml"))
        .expect(201)
        .go()
        .await;
    d.req("admin: a Service with a taken clusterIP", "admin", "POST", svcs)
        .json(json!({"metadata": {"name": "dup"}, "spec": {"clusterIP": "10.254.10.128", "ports": [{"port": 80}]}}))
        .expect(422)
        .go()
        .await;
    d.req("admin: an SCTP Service", "admin", "POST", svcs)
        .json(
            json!({"metadata": {"name": "sctp"}, "spec": {"clusterIP": "10.254.10.201",
            "ports": [{"port": 80, "protocol": "SCTP"}]}}),
        )
        .expect(201)
        .go()
        .await;
    d.req(
        "admin: a Service with an allocated clusterIP",
        "admin",
        "POST",
        svcs,
    )
    .json(
        json!({"metadata": {"name": "auto"}, "spec": {"selector": {"app": "x"},
            "ports": [{"name": "http", "port": 8080}]}}),
    )
    .mask(
        "/spec/clusterIP",
        "the real server picks a free address at random",
    )
    .mask(
        "/spec/clusterIPs/0",
        "the real server picks a free address at random",
    )
    .expect(201)
    .go()
    .await;
    d.req(
        "admin: delete the Service with an allocated clusterIP",
        "admin",
        "DELETE",
        &format!("{svcs}/auto"),
    )
    .mask(
        "/spec/clusterIP",
        "the real server picks a free address at random",
    )
    .mask(
        "/spec/clusterIPs/0",
        "the real server picks a free address at random",
    )
    .expect(200)
    .go()
    .await;
    d.req("admin: a Service without ports", "admin", "POST", svcs)
        .json(json!({"metadata": {"name": "noports"}, "spec": {"clusterIP": "10.254.10.130"}}))
        .expect(422)
        .go()
        .await;
    d.req(
        "admin: a Service's selector",
        "admin",
        "PATCH",
        &format!("{svcs}/sctp"),
    )
    .merge(json!({"spec": {"selector": {"app": "sctp"}}}))
    .expect(200)
    .go()
    .await;
    d.req("admin: services as a Table", "admin", "GET", svcs)
        .accept(TABLE)
        .go()
        .await;
    d.req(
        "admin: delete a Service",
        "admin",
        "DELETE",
        &format!("{svcs}/sctp"),
    )
    .json(json!({}))
    .expect(200)
    .go()
    .await;
    let eps = "/api/v1/namespaces/default/endpoints";
    d.req("admin: web-service's Endpoints", "admin", "POST", eps)
        .json(yaml("endpoints-web.yaml"))
        .expect(201)
        .go()
        .await;
    d.req("admin: Endpoints with a bad address", "admin", "POST", eps)
        .json(
            json!({"metadata": {"name": "empty"}, "subsets": [{"addresses": [{"ip": "not-an-ip"}],
            "ports": [{"name": "http", "port": 8080}]}]}),
        )
        .expect(422)
        .go()
        .await;
    d.req("admin: one endpoint fewer", "admin", "PATCH", &format!("{eps}/web-service"))
        .merge(json!({"subsets": [{"addresses": [{"ip": "10.244.2.2"}], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}))
        .expect(200)
        .go()
        .await;
    d.req("admin: endpoints as a Table", "admin", "GET", eps)
        .accept(TABLE)
        .go()
        .await;
    let slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-service-abc12", "labels": {"kubernetes.io/service-name": "web-service"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.244.2.2"], "conditions": {"ready": true}, "nodeName": "yuanying",
             "targetRef": {"kind": "Pod", "name": "web-001", "namespace": "default"}},
            {"addresses": ["10.244.1.2"], "conditions": {"ready": true}, "nodeName": "inajob",
             "targetRef": {"kind": "Pod", "name": "web-002", "namespace": "default"}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]});
    d.req("admin: an EndpointSlice", "admin", "POST", slices)
        .json(slice)
        .expect(201)
        .go()
        .await;
    d.req(
        "admin: an EndpointSlice without addressType",
        "admin",
        "POST",
        slices,
    )
    .json(json!({"metadata": {"name": "bad"}, "endpoints": []}))
    .expect(422)
    .go()
    .await;
    d.req("admin: endpointslices as a Table", "admin", "GET", slices)
        .accept(TABLE)
        .go()
        .await;
}

async fn rbac_and_watches(d: &mut Diff) {
    let lists = [
        ("nodes", "/api/v1/nodes"),
        ("services", "/api/v1/services"),
        ("endpoints", "/api/v1/endpoints"),
        ("endpointslices", "/apis/discovery.k8s.io/v1/endpointslices"),
    ];
    // node-sync's lists before its ClusterRole: only services.
    for (what, path) in lists {
        d.req(
            &format!("node-sync: list {what} without RBAC"),
            "inajob",
            "GET",
            &format!("{path}?limit=500"),
        )
        .agent(NODE_SYNC)
        .go()
        .await;
    }
    access_reviews(d, "without RBAC").await;
    let rbac = testbed::testdata::dir().join("../deploy/node-sync-rbac.yaml");
    for doc in yaml_docs(&rbac) {
        let (kind, plural) = match doc["kind"].as_str() {
            Some("ClusterRole") => ("ClusterRole", "clusterroles"),
            _ => ("ClusterRoleBinding", "clusterrolebindings"),
        };
        d.req(
            &format!("admin: {kind} node-sync"),
            "admin",
            "POST",
            &format!("/apis/rbac.authorization.k8s.io/v1/{plural}"),
        )
        .json(doc)
        .expect(201)
        .go()
        .await;
    }
    d.req(
        "admin: get the ClusterRole",
        "admin",
        "GET",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/node-sync",
    )
    .expect(200)
    .go()
    .await;
    for who in ["inajob", "yuanying"] {
        for (what, path) in lists {
            d.req(
                &format!("node-sync on {who}: list {what} with RBAC"),
                who,
                "GET",
                &format!("{path}?limit=500"),
            )
            .agent(NODE_SYNC)
            .settle(403)
            .expect(200)
            .capture(
                match what {
                    "nodes" => "rv-nodes",
                    "services" => "rv-services",
                    "endpoints" => "rv-endpoints",
                    _ => "rv-endpointslices",
                },
                "/metadata/resourceVersion",
            )
            .go()
            .await;
        }
    }
    access_reviews(d, "with RBAC").await;
    d.req(
        "the ClusterRole grants no get",
        "inajob",
        "GET",
        "/api/v1/namespaces/default/endpoints/web-service",
    )
    .go()
    .await;
    d.req(
        "the ClusterRole grants no writes",
        "inajob",
        "DELETE",
        "/api/v1/namespaces/default/services/web-service",
    )
    .expect(403)
    .go()
    .await;
    // Changes after the lists, then the watches from the lists' versions
    // (kube-runtime's watcher).
    d.req("admin: a Service to watch", "admin", "POST", "/api/v1/namespaces/default/services")
        .json(json!({"metadata": {"name": "watched"}, "spec": {"clusterIP": "10.254.10.140",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}], "selector": {"app": "web"}}}))
        .expect(201)
        .go()
        .await;
    d.req(
        "admin: its Endpoints",
        "admin",
        "POST",
        "/api/v1/namespaces/default/endpoints",
    )
    .json(
        json!({"metadata": {"name": "watched"}, "subsets": [{"addresses": [{"ip": "10.244.1.9"}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}),
    )
    .expect(201)
    .go()
    .await;
    d.req(
        "admin: delete its Endpoints",
        "admin",
        "DELETE",
        "/api/v1/namespaces/default/endpoints/watched",
    )
    .expect(200)
    .go()
    .await;
    d.req("node-sync on yuanying: status for the watch", "yuanying", "PATCH", "/api/v1/nodes/yuanying/status?fieldManager=node-sync")
        .agent(NODE_SYNC)
        .smp(json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "node-sync is posting ready status", "lastHeartbeatTime": "2020-01-01T00:01:00Z",
            "lastTransitionTime": T0}]}}))
        .expect(200)
        .go()
        .await;
    for (what, path) in lists {
        let var = match what {
            "nodes" => "rv-nodes",
            "services" => "rv-services",
            "endpoints" => "rv-endpoints",
            _ => "rv-endpointslices",
        };
        d.req(&format!("node-sync: watch {what}"), "inajob", "GET",
            &format!("{path}?allowWatchBookmarks=true&resourceVersion=${{{var}}}&timeoutSeconds=1&watch=true"))
            .agent(NODE_SYNC)
            .watch()
            .expect(200)
            .go()
            .await;
    }
    d.req(
        "a watch from a version that is not one",
        "admin",
        "GET",
        "/api/v1/services?watch=true&resourceVersion=abc&timeoutSeconds=1",
    )
    .go()
    .await;
    d.req("a watch of one namespace's Services with a selector", "admin", "GET",
        "/api/v1/namespaces/default/services?watch=true&labelSelector=none%3Dsuch&resourceVersion=${rv-services}&timeoutSeconds=1")
        .watch()
        .go()
        .await;
}

/// A Role and RoleBinding: RBAC grants what the Node authorizer refuses,
/// in one namespace only.
async fn roles(d: &mut Diff) {
    let rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/default";
    d.req("admin: a Role", "admin", "POST", &format!("{rbac}/roles"))
        .json(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}),
        )
        .expect(201)
        .go()
        .await;
    d.req("admin: a RoleBinding", "admin", "POST", &format!("{rbac}/rolebindings"))
        .json(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "yuanying-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:node:yuanying"}]}))
        .expect(201)
        .go()
        .await;
    d.req(
        "a RoleBinding lets a node list Pods",
        "yuanying",
        "GET",
        "/api/v1/namespaces/default/pods",
    )
    .settle(403)
    .expect(200)
    .go()
    .await;
    d.req(
        "in its namespace only",
        "yuanying",
        "GET",
        "/api/v1/namespaces/nosa/pods",
    )
    .expect(403)
    .go()
    .await;
    d.req(
        "and not for another node",
        "inajob",
        "GET",
        "/api/v1/namespaces/default/pods",
    )
    .expect(403)
    .go()
    .await;
    d.req("may it, says the review", "yuanying", "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
        .json(json!({"spec": {"resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "default"}}}))
        .expect(201)
        .go()
        .await;
}

/// node-sync's SelfSubjectAccessReviews (access.rs): may this node list
/// and watch what it needs? Plus the questions around them.
async fn access_reviews(d: &mut Diff, when: &str) {
    let ssar = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    let ask = |verb: &str, group: &str, resource: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
               "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource}}})
    };
    for (group, resource) in [
        ("", "nodes"),
        ("", "services"),
        ("", "endpoints"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        for verb in ["list", "watch"] {
            d.req(
                &format!("node-sync: may it {verb} {resource} ({when})"),
                "inajob",
                "POST",
                ssar,
            )
            .agent(NODE_SYNC)
            .json(ask(verb, group, resource))
            .expect(201)
            .go()
            .await;
        }
    }
    if when != "without RBAC" {
        return;
    }
    d.req("may a node get Nodes (no name)", "inajob", "POST", ssar)
        .json(ask("get", "", "nodes"))
        .expect(201)
        .go()
        .await;
    d.req("may a node list Pods in a namespace", "inajob", "POST", ssar)
        .json(json!({"spec": {"resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "default"}}}))
        .expect(201)
        .go()
        .await;
    d.req("may a node list its own Pods", "inajob", "POST", ssar)
        .json(
            json!({"spec": {"resourceAttributes": {"verb": "list", "resource": "pods",
            "fieldSelector": {"rawSelector": "spec.nodeName=inajob"}}}}),
        )
        .expect(201)
        .go()
        .await;
    d.req("may a node renew its Lease", "inajob", "POST", ssar)
        .json(
            json!({"spec": {"resourceAttributes": {"verb": "update", "group": "coordination.k8s.io",
            "resource": "leases", "namespace": "kube-node-lease", "name": "inajob"}}}),
        )
        .expect(201)
        .go()
        .await;
    d.req("may the admin list Services", "admin", "POST", ssar)
        .json(ask("list", "", "services"))
        .expect(201)
        .go()
        .await;
    d.req("may the anonymous ask", "anonymous", "POST", ssar)
        .json(ask("list", "", "services"))
        .expect(403)
        .go()
        .await;
}

async fn errors(d: &mut Diff) {
    d.req(
        "a list at a version that is not one",
        "admin",
        "GET",
        "/api/v1/namespaces/default/pods?resourceVersion=abc",
    )
    .expect(400)
    .go()
    .await;
    d.req(
        "a label selector that does not parse",
        "admin",
        "GET",
        "/api/v1/namespaces/default/pods?labelSelector=a+b",
    )
    .expect(400)
    .go()
    .await;
    d.req(
        "a field selector on an unknown field",
        "admin",
        "GET",
        "/api/v1/namespaces/default/pods?fieldSelector=spec.nope%3Dx",
    )
    .expect(400)
    .go()
    .await;
    d.req(
        "a label selector that matches",
        "admin",
        "GET",
        "/api/v1/namespaces/default/pods?labelSelector=app+in+(web,db)",
    )
    .expect(200)
    .go()
    .await;
    d.req(
        "an unknown group",
        "admin",
        "GET",
        "/apis/nope.example.com/v1/things",
    )
    .expect(404)
    .go()
    .await;
    d.req("an unknown resource", "admin", "GET", "/api/v1/nopes")
        .expect(404)
        .go()
        .await;
    d.req(
        "an unknown subresource",
        "admin",
        "GET",
        "/api/v1/namespaces/default/pods/web-001/nope",
    )
    .expect(404)
    .go()
    .await;
    d.req(
        "a patch of an unknown type",
        "admin",
        "PATCH",
        "/api/v1/namespaces/default/pods/web-001",
    )
    .patch("text/plain", json!({}))
    .expect(415)
    .go()
    .await;
    d.req(
        "server-side apply without a manager",
        "admin",
        "PATCH",
        "/api/v1/namespaces/default/pods/web-001",
    )
    .patch("application/apply-patch+yaml", json!({}))
    .allow("", "the stand-in has no server-side apply")
    .go()
    .await;
    d.req(
        "a body that is not JSON",
        "admin",
        "POST",
        "/api/v1/namespaces/default/services",
    )
    .patch("application/json", json!("not an object"))
    .go()
    .await;
    d.req(
        "a kind that does not match the URL",
        "admin",
        "POST",
        "/api/v1/namespaces/default/services",
    )
    .json(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}))
    .go()
    .await;
    d.req(
        "a name that does not match the URL",
        "admin",
        "PUT",
        "/api/v1/nodes/inajob",
    )
    .json(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "other"}}))
    .go()
    .await;
    d.req(
        "deletecollection by label",
        "admin",
        "DELETE",
        "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
    )
    .json(json!({}))
    .expect(200)
    .go()
    .await;
    d.req(
        "deletecollection",
        "admin",
        "DELETE",
        "/api/v1/namespaces/nosa/pods",
    )
    .expect(200)
    .go()
    .await;
    d.req("the Pods left", "admin", "GET", "/api/v1/pods")
        .expect(200)
        .go()
        .await;
}

async fn kubectl(d: &mut Diff) {
    d.kubectl("get nodes -o wide", &["get", "nodes", "-o", "wide"], &[]);
    d.kubectl("get pods -o wide", &["get", "pods", "-o", "wide"], &[]);
    d.kubectl("get endpointslices", &["get", "endpointslices"], &[]);
    d.kubectl("get svc", &["get", "svc"], &[]);
    // The Events of Pods: the real server's own (SERVER_EVENTS) are
    // about a Service and a Namespace.
    d.kubectl(
        "get events",
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=Pod",
        ],
        &[],
    );
    d.kubectl(
        "get events -o wide",
        &[
            "get",
            "events",
            "-o",
            "wide",
            "--field-selector",
            "involvedObject.kind=Pod",
        ],
        &[],
    );
    d.kubectl("get ep", &["get", "endpoints"], &[]);
    d.kubectl(
        "get leases",
        &["get", "leases", "-n", "kube-node-lease"],
        &[],
    );
    let td = testbed::testdata::dir();
    d.kubectl(
        "apply -f service-web.yaml",
        &[
            "apply",
            "-f",
            &td.join("service-web.yaml").to_string_lossy(),
        ],
        &[],
    );
    d.kubectl(
        "apply -f replicaset-web.yaml",
        &[
            "apply",
            "-f",
            &td.join("replicaset-web.yaml").to_string_lossy(),
        ],
        &[],
    );
    d.kubectl("get rs", &["get", "replicasets", "-o", "wide"], &[]);
    d.kubectl(
        "apply -f deploy/node-sync-rbac.yaml",
        &[
            "apply",
            "-f",
            &td.join("../deploy/node-sync-rbac.yaml").to_string_lossy(),
        ],
        &[],
    );
}
