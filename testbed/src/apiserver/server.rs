//! HTTPS, routing and the handlers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio_rustls::TlsAcceptor;

use super::ApiError;
use super::auth;
use super::resources::{self, Resource};
use super::select::{FieldSelector, LabelSelector};
use super::store::{self, PatchType, Store};
use super::table;
use crate::pki::{Identity, Pki};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// openapi_v2.Document { swagger: "2.0", info: { title: "Kubernetes",
/// version: "v1.33.0" } } in protobuf wire format.
const OPENAPI_V2_PB: &[u8] = b"\x0a\x032.0\x12\x15\x0a\x0aKubernetes\x12\x07v1.33.0";

pub fn tls_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, ApiError> {
    let err = |e: &dyn std::fmt::Display| ApiError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).map_err(|e| err(&e))?;
    roots.add(ca).map_err(|e| err(&e))?;
    // Requests without a client certificate are allowed in, as
    // system:anonymous, the way kube-apiserver treats them.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| err(&e))?;
    let cert =
        CertificateDer::from_pem_slice(pki.server_cert_pem.as_bytes()).map_err(|e| err(&e))?;
    let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).map_err(|e| err(&e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .map_err(|e| err(&e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

struct State {
    port: u16,
    store: Arc<Mutex<Store>>,
    identities: Arc<Mutex<HashMap<Vec<u8>, Identity>>>,
    persist: Option<PathBuf>,
}

pub async fn serve(
    listener: std::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    pki: Arc<Pki>,
    store: Arc<Mutex<Store>>,
    persist: Option<PathBuf>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let acceptor = TlsAcceptor::from(config);
    let state = Arc::new(State {
        port,
        store: store.clone(),
        identities: pki.registry(),
        persist,
    });
    loop {
        let conn = tokio::select! {
            _ = &mut shutdown => return,
            c = listener.accept() => c,
        };
        let Ok((tcp, _)) = conn else { continue };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let who = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| state.identities.lock().ok()?.get(c.as_ref()).cloned())
                .unwrap_or_else(Identity::anonymous);
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let who = who.clone();
                async move { Ok::<_, Infallible>(handle(&state, &who, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()))
}

fn error_response(e: &ApiError) -> Response<Body> {
    let (code, v) = e.status();
    json_response(code, &v)
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> Option<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Where a request points.
struct Target {
    resource: &'static Resource,
    namespace: String,
    name: String,
    sub: Option<String>,
}

fn route(path: &str) -> Result<Option<Target>, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Ok(None),
    };
    let find = |plural: &str| Resource::find(group, version, plural).ok_or(ApiError::NoRoute);
    let t = |resource, ns: &str, name: &str, sub: Option<&str>| Target {
        resource,
        namespace: ns.to_string(),
        name: name.to_string(),
        sub: sub.map(str::to_string),
    };
    Ok(Some(match rest {
        [] => return Ok(None),
        ["namespaces", ns, plural] if *plural != "status" && *plural != "finalize" => {
            t(find(plural)?, ns, "", None)
        }
        ["namespaces", ns, plural, name] => t(find(plural)?, ns, name, None),
        ["namespaces", ns, plural, name, sub] => t(find(plural)?, ns, name, Some(sub)),
        [plural] => t(find(plural)?, "", "", None),
        [plural, name] => t(find(plural)?, "", name, None),
        [plural, name, sub] => t(find(plural)?, "", name, Some(sub)),
        _ => return Err(ApiError::NoRoute),
    }))
}

async fn read_json(req: Request<Incoming>) -> Result<(Value, Option<String>), ApiError> {
    let ctype = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_string());
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()))?
        .to_bytes();
    if bytes.is_empty() {
        return Ok((Value::Null, ctype));
    }
    let v = if ctype.as_deref().is_some_and(|c| c.contains("yaml")) {
        serde_yaml::from_slice(&bytes).map_err(|e| ApiError::BadRequest(e.to_string()))?
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::BadRequest(format!(
                "the body of the request was in an unknown format: {e}"
            ))
        })?
    };
    Ok((v, ctype))
}

fn text_response(code: u16, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()))
}

async fn handle(state: &State, who: &Identity, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let resource_request = match segs.as_slice() {
        ["api", _, _, ..] => true,
        ["apis", g, _, _, ..] => resources::RESOURCES.iter().any(|r| r.group == *g),
        _ => false,
    };
    if !resource_request {
        if let Err(e) = auth::authorize_path(who, &path) {
            return error_response(&e);
        }
        return match path.as_str() {
            "/version" => json_response(
                200,
                &json!({"major": "1", "minor": "36", "emulationMajor": "1", "emulationMinor": "36",
                "minCompatibilityMajor": "1", "minCompatibilityMinor": "35",
                "gitVersion": "v1.36.0-testbed", "gitCommit": "", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "n/a", "compiler": "gc",
                "platform": "linux/amd64"}),
            ),
            "/healthz" | "/livez" | "/readyz" => text_response(200, "ok"),
            // A minimal OpenAPI v2 document (protobuf, as kubectl asks
            // for it) with no definitions: kubectl's client-side
            // validation then finds no schema for a kind and skips it.
            "/openapi/v2" => Response::builder()
                .status(200)
                .header("Content-Type", "application/octet-stream")
                .body(Full::new(Bytes::from_static(OPENAPI_V2_PB)).boxed_unsync())
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync())),
            "/api" => json_response(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                    "serverAddress": format!("127.0.0.1:{}", state.port)}]}),
            ),
            "/apis" => json_response(200, &resources::group_list()),
            _ => {
                let discovery = match segs.as_slice() {
                    ["api", v] => resources::resource_list("", v),
                    ["apis", g, v] => resources::resource_list(g, v),
                    _ => None,
                };
                match discovery {
                    Some(d) => json_response(200, &d),
                    None if segs.first() == Some(&"api") => error_response(&ApiError::NoRoute),
                    // What the real server's mux answers for a path no
                    // API group serves.
                    None => text_response(404, "404 page not found\n"),
                }
            }
        };
    }
    match dispatch(state, who, req).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

fn lock(state: &State) -> Result<std::sync::MutexGuard<'_, Store>, ApiError> {
    state
        .store
        .lock()
        .map_err(|_| ApiError::Tls("store lock poisoned".into()))
}

fn save(state: &State, store: &Store) {
    if let Some(path) = &state.persist {
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, store.dump().to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

async fn dispatch(
    state: &State,
    who: &Identity,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let Some(t) = route(&path)? else {
        return Err(ApiError::NoRoute);
    };
    let q = query(&req);
    let r = t.resource;
    let ns = t.namespace.as_str();
    let method = req.method().clone();
    let as_table = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(table::wants_table);
    let sub = t.sub.as_deref();
    if let Some(s) = sub
        && !((s == "status" && r.status) || (s == "binding" && r.plural == "pods"))
    {
        return Err(ApiError::NoRoute);
    }
    let verb = match (&method, t.name.is_empty(), sub) {
        (&Method::GET, true, _) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            "watch"
        }
        (&Method::GET, true, _) => "list",
        (&Method::GET, false, _) => "get",
        (&Method::POST, true, _) | (&Method::POST, false, Some("binding")) => "create",
        (&Method::PUT, false, _) => "update",
        (&Method::PATCH, false, _) => "patch",
        (&Method::DELETE, false, _) => "delete",
        (&Method::DELETE, true, None) => "deletecollection",
        _ => return Err(ApiError::MethodNotAllowed),
    };
    let fields = FieldSelector::parse_for(
        r.plural,
        q.get("fieldSelector").map(String::as_str).unwrap_or(""),
    )?;
    // A create names its object in the body; authorization needs the name.
    let (body, ctype) = if matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    ) {
        read_json(req).await?
    } else {
        (Value::Null, None)
    };
    let name = if verb == "create" && sub.is_none() {
        body.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    } else {
        t.name.clone()
    };
    // Authorization knows the name from the URL only (none on a create);
    // admission sees the object's.
    let mut areq = auth::Request {
        verb,
        group: r.group,
        plural: r.plural,
        subresource: sub,
        namespace: ns,
        name: &t.name,
        fields: &fields,
    };
    auth::authorize(who, &areq, &*lock(state)?)?;
    areq.name = &name;
    if r.plural == "selfsubjectaccessreviews" {
        if verb != "create" {
            return Err(ApiError::MethodNotAllowed);
        }
        return Ok(json_response(
            201,
            &auth::review(who, &body, &*lock(state)?),
        ));
    }
    let patch_type = || match ctype.as_deref() {
        Some("application/merge-patch+json") => Ok(PatchType::Merge),
        Some("application/json-patch+json") => Ok(PatchType::Json),
        Some("application/strategic-merge-patch+json") => Ok(PatchType::Strategic),
        _ => Err(ApiError::UnsupportedMediaType),
    };
    // NodeRestriction, with the object as it is and as it would be.
    {
        let s = lock(state)?;
        let existing = if t.name.is_empty() || verb == "get" {
            None
        } else {
            Some(s.get(r, ns, &t.name)?)
        };
        let next = match verb {
            "create" | "update" => Some(body.clone()),
            "patch" => Some(s.patched(r, ns, &t.name, patch_type()?, body.clone())?),
            _ => None,
        };
        if sub != Some("binding") {
            auth::admit(who, &areq, existing.as_ref(), next.as_ref())?;
        }
    }
    match verb {
        "get" => {
            let s = lock(state)?;
            let o = s.get(r, ns, &t.name)?;
            if as_table {
                return Ok(json_response(
                    200,
                    &table::table(r, &[o], s.resource_version()),
                ));
            }
            Ok(json_response(200, &o))
        }
        "list" => {
            let labels =
                LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
            if let Some(rv) = q.get("resourceVersion").filter(|v| !v.is_empty())
                && rv.parse::<u64>().is_err()
            {
                return Err(ApiError::BadRequest(format!(
                    "invalid resource version: resourceVersion: Invalid value: {rv:?}: strconv.ParseUint: parsing {rv:?}: invalid syntax"
                )));
            }
            let s = lock(state)?;
            let items = s.list(r, (!ns.is_empty()).then_some(ns), &labels, &fields);
            if as_table {
                return Ok(json_response(
                    200,
                    &table::table(r, &items, s.resource_version()),
                ));
            }
            Ok(json_response(
                200,
                &store::list_value(r, items, s.resource_version()),
            ))
        }
        "watch" => watch(state, r, ns, &q),
        "create" if sub == Some("binding") => {
            let mut s = lock(state)?;
            s.bind(r, ns, &t.name, &body)?;
            save(state, &s);
            Ok(json_response(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Success", "code": 201}),
            ))
        }
        "create" => {
            let mut s = lock(state)?;
            let o = s.create(r, ns, body)?;
            save(state, &s);
            Ok(json_response(201, &o))
        }
        "update" => {
            let mut s = lock(state)?;
            let o = s.update(r, ns, &t.name, body, sub == Some("status"))?;
            save(state, &s);
            Ok(json_response(200, &o))
        }
        "patch" => {
            let kind = patch_type()?;
            let mut s = lock(state)?;
            let o = s.patch(r, ns, &t.name, kind, body, sub == Some("status"))?;
            save(state, &s);
            Ok(json_response(200, &o))
        }
        "deletecollection" => {
            // Each match deleted as a DELETE would; the answer lists them as
            // they were before.
            let labels =
                LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
            let grace = body.get("gracePeriodSeconds").and_then(Value::as_i64).or(q
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse::<i64>().ok()));
            let mut s = lock(state)?;
            let items = s.list(r, (!ns.is_empty()).then_some(ns), &labels, &fields);
            for o in &items {
                let name = o
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let ns = o
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                s.delete(r, ns, name, grace, None)?;
            }
            save(state, &s);
            Ok(json_response(
                200,
                &store::list_value(r, items, s.resource_version()),
            ))
        }
        "delete" => {
            let grace_q = q
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse::<i64>().ok());
            let grace = body
                .get("gracePeriodSeconds")
                .and_then(Value::as_i64)
                .or(grace_q);
            let uid = body
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_string);
            let mut s = lock(state)?;
            let o = s.delete(r, ns, &t.name, grace, uid.as_deref())?;
            save(state, &s);
            Ok(json_response(200, &o))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn frame(kind: &str, object: &Value) -> Result<Frame<Bytes>, Infallible> {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Ok(Frame::data(Bytes::from(line)))
}

/// A watch stream: the backlog after `resourceVersion` (or, without one,
/// ADDED for every current object), then live events; BOOKMARKs every
/// second when allowed; the end after `timeoutSeconds`. A version older
/// than the event log is an ERROR event with a 410 Status, as the real
/// server sends it.
fn watch(
    state: &State,
    r: &'static Resource,
    ns: &str,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fields = FieldSelector::parse_for(
        r.plural,
        q.get("fieldSelector").map(String::as_str).unwrap_or(""),
    )?;
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let ns = ns.to_string();
    let matches = move |o: &Value| {
        (ns.is_empty()
            || o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns.as_str()))
            && labels.matches(o)
            && fields.matches(o)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
    let (backlog, mut live, mut last) = {
        let s = lock(state)?;
        let live = s.subscribe();
        let rv = q
            .get("resourceVersion")
            .filter(|v| !v.is_empty() && *v != "0");
        match rv.map(|v| (v, v.parse::<u64>())) {
            Some((v, Err(_))) => {
                return Err(ApiError::Internal(format!(
                    "resourceVersion: Invalid value: {v:?}: strconv.ParseUint: parsing {v:?}: invalid syntax"
                )));
            }
            Some((_, Ok(rv))) => match s.events_since(r.plural, rv) {
                Ok(evs) => (
                    evs.into_iter()
                        .filter(|e| matches(&e.object))
                        .map(|e| (e.kind, e.object))
                        .collect::<Vec<_>>(),
                    live,
                    s.resource_version(),
                ),
                Err(e) => {
                    let (_, status) = e.status();
                    let _ = tx.try_send(frame("ERROR", &status));
                    drop(tx);
                    return Ok(stream_response(rx));
                }
            },
            None => {
                let all = s.list(
                    r,
                    None,
                    &LabelSelector::default(),
                    &FieldSelector::default(),
                );
                (
                    all.into_iter()
                        .filter(|o| matches(o))
                        .map(|o| ("ADDED", o))
                        .collect(),
                    live,
                    s.resource_version(),
                )
            }
        }
    };
    let kind = r.kind;
    let api = r.api_version();
    let plural = r.plural;
    tokio::spawn(async move {
        for (k, o) in backlog {
            if tx.send(frame(k, &o)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": last.to_string()}});
                    if tx.send(frame("BOOKMARK", &bm)).await.is_err() { return; }
                }
                ev = live.recv() => match ev {
                    Ok(e) => {
                        last = last.max(e.rv);
                        if e.plural != plural || !matches(&e.object) { continue; }
                        if tx.send(frame(e.kind, &e.object)).await.is_err() { return; }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let (_, status) = ApiError::Gone("watch fell behind".into()).status();
                        let _ = tx.send(frame("ERROR", &status)).await;
                        return;
                    }
                    Err(_) => return,
                }
            }
        }
    });
    Ok(stream_response(rx))
}

fn stream_response(
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> Response<Body> {
    let stream = tokio_stream_from(rx);
    Response::builder()
        .status(200)
        .header("Content-Type", "application/json")
        .header("Transfer-Encoding", "chunked")
        .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}
