//! A stand-in for kube-apiserver, for tests and the demo: HTTPS with client
//! certificates on loopback, the resources pod-runner and node-sync use,
//! and the semantics they rely on (resourceVersion, list+watch, selectors,
//! status subresources, strategic merge patch, bindings, graceful pod
//! deletion, Status errors, discovery), with the real server's Node and
//! RBAC authorizers, NodeRestriction and default admission.
//! `tests/apiserver_diff.rs` compares it with kube-apiserver;
//! `docs/apiserver.md` says what it still does differently, and why.

mod admission;
mod auth;
mod meta;
mod resources;
mod select;
mod server;
mod smp;
mod store;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

pub use crate::pki::Identity;
use crate::pki::Pki;
pub use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{res} \"{name}\" not found")]
    NotFound { res: String, name: String },
    #[error("namespaces \"{0}\" not found")]
    NotFoundNamespace(String),
    #[error("{res} \"{name}\" already exists")]
    AlreadyExists { res: String, name: String },
    #[error(
        "Operation cannot be fulfilled on {res} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict { res: String, name: String },
    #[error("{msg}")]
    ConflictMsg {
        res: String,
        name: String,
        msg: String,
    },
    #[error("{kind} \"{name}\" is invalid: {}", invalid_causes(causes))]
    Invalid {
        kind: String,
        name: String,
        causes: Vec<(String, &'static str, String)>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{msg}")]
    Forbidden { msg: String, details: Value },
    #[error("{0}")]
    Gone(String),
    /// A 500 the real server sends without a reason.
    #[error("{0}")]
    Internal(String),
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("415: Unsupported Media Type")]
    UnsupportedMediaType,
    #[error("the server rejected our request due to an error in our request")]
    PatchFailed,
    #[error("tls: {0}")]
    Tls(String),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn invalid_causes(causes: &[(String, &'static str, String)]) -> String {
    let all: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.0, c.2)).collect();
    if all.len() == 1 {
        all.join("")
    } else {
        format!("[{}]", all.join(", "))
    }
}

impl ApiError {
    pub fn not_found(r: &resources::Resource, name: &str) -> Self {
        ApiError::NotFound {
            res: r.qualified(),
            name: name.to_string(),
        }
    }

    /// The HTTP code and the `Status` object the real server would send.
    pub fn status(&self) -> (u16, Value) {
        let (code, reason) = match self {
            ApiError::NotFound { .. } | ApiError::NotFoundNamespace(_) | ApiError::NoRoute => {
                (404, "NotFound")
            }
            ApiError::AlreadyExists { .. } => (409, "AlreadyExists"),
            ApiError::Conflict { .. } | ApiError::ConflictMsg { .. } => (409, "Conflict"),
            ApiError::Invalid { .. } | ApiError::PatchFailed => (422, "Invalid"),
            ApiError::BadRequest(_) => (400, "BadRequest"),
            ApiError::Forbidden { .. } => (403, "Forbidden"),
            ApiError::Gone(_) => (410, "Expired"),
            ApiError::MethodNotAllowed => (405, "MethodNotAllowed"),
            ApiError::UnsupportedMediaType => (415, "UnsupportedMediaType"),
            ApiError::Tls(_) | ApiError::Pki(_) | ApiError::Io(_) => (500, "InternalError"),
            ApiError::Internal(_) => (500, ""),
        };
        let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                           "status": "Failure", "message": self.to_string(), "reason": reason, "code": code});
        if reason.is_empty()
            && let Some(m) = s.as_object_mut()
        {
            m.remove("reason");
        }
        match self {
            ApiError::NotFound { res, name }
            | ApiError::AlreadyExists { res, name }
            | ApiError::Conflict { res, name }
            | ApiError::ConflictMsg { res, name, .. } => {
                let (kind, group) = res.split_once('.').unwrap_or((res, ""));
                s["details"] = json!({"name": name, "kind": kind});
                if !group.is_empty() {
                    s["details"]["group"] = json!(group);
                }
            }
            ApiError::NotFoundNamespace(ns) => {
                s["details"] = json!({"name": ns, "kind": "namespaces"})
            }
            ApiError::Invalid { kind, name, causes } => {
                let causes: Vec<Value> = causes
                    .iter()
                    .map(|(f, r, m)| json!({"reason": r, "message": m, "field": f}))
                    .collect();
                // "EndpointSlice.discovery.k8s.io": the kind and its group.
                let (kind, group) = kind.split_once('.').unwrap_or((kind, ""));
                s["details"] = json!({"name": name, "kind": kind, "causes": causes});
                if !group.is_empty() {
                    s["details"]["group"] = json!(group);
                }
            }
            ApiError::Forbidden { details, .. } => s["details"] = details.clone(),
            ApiError::NoRoute | ApiError::UnsupportedMediaType | ApiError::PatchFailed => {
                s["details"] = json!({})
            }
            _ => {}
        }
        (code, s)
    }
}

/// A running stand-in. Dropping it stops the server.
pub struct ApiServer {
    pub addr: SocketAddr,
    pki: Arc<Pki>,
    store: Arc<Mutex<Store>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Starts on 127.0.0.1 (port 0 picks a free one), on its own thread and
    /// runtime. With `state`, objects are loaded from and saved to that file.
    pub fn start(port: u16, state: Option<PathBuf>) -> Result<Self, ApiError> {
        let pki = Arc::new(Pki::new()?);
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let mut store = Store::new();
        if let Some(path) = &state
            && let Ok(text) = std::fs::read_to_string(path)
            && let Ok(saved) = serde_json::from_str::<Value>(&text)
        {
            store.restore(&saved);
        }
        store.kubernetes_service(addr.port());
        let store = Arc::new(Mutex::new(store));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let config = server::tls_config(&pki)?;
        let (p2, s2) = (pki.clone(), store.clone());
        let thread = std::thread::Builder::new()
            .name("apiserver".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("apiserver runtime: {e}");
                        return;
                    }
                };
                rt.block_on(server::serve(listener, config, p2, s2, state, rx));
            })?;
        Ok(ApiServer {
            addr,
            pki,
            store,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// The store, for tests that look behind the API.
    pub fn store(&self) -> Arc<Mutex<Store>> {
        self.store.clone()
    }
}

impl crate::api::Apiserver for ApiServer {
    fn describe(&self) -> String {
        "the API server stand-in".into()
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn kubeconfig(&self, user: &str, groups: &[&str]) -> Result<String, crate::pki::PkiError> {
        self.pki.kubeconfig(&self.url(), user, groups)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
