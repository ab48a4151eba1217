//! Container probes and lifecycle hook handlers, as the kubelet runs them
//! (pkg/kubelet/prober, pkg/probe/{http,tcp}, pkg/kubelet/lifecycle).
//!
//! [`handler`]/[`hook`]/[`spec`] turn the API objects into a [`Handler`]
//! with its port resolved; [`check`] runs one attempt; [`Verdict`] applies
//! the thresholds. The daemon owns the timers and the exec into containers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::header::{ACCEPT, CONNECTION, HOST, HeaderName, HeaderValue, USER_AGENT};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{
    ContainerPort, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::TcpStream;

/// The kubelet's probe User-Agent (`kube-probe/<major>.<minor>`).
pub const PROBE_USER_AGENT: &str = "kube-probe/1.36";
/// The kubelet's User-Agent for HTTP lifecycle hooks.
pub const HOOK_USER_AGENT: &str = "kube-lifecycle/1.36";
/// The kubelet reads at most this much of a probe's response body.
const MAX_BODY: usize = 10 * 1024;

/// A probe's or hook's port: a number, or the name of one of the
/// container's ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    Number(u16),
    Name(String),
}

impl Port {
    /// The API's `IntOrString`; an int outside 1..=65535 is a bad port.
    pub fn from_api(p: &IntOrString) -> Result<Port, ProbeError> {
        match p {
            IntOrString::Int(n) => valid_port(i64::from(*n)).map(Port::Number),
            IntOrString::String(s) => Ok(Port::Name(s.clone())),
        }
    }

    /// The port number, as the kubelet's ResolveContainerPort: a name is
    /// looked up in the container's ports first, then parsed as a number.
    pub fn resolve(&self, ports: &[ContainerPort]) -> Result<u16, ProbeError> {
        match self {
            Port::Number(n) => valid_port(i64::from(*n)),
            Port::Name(name) => {
                if let Some(p) = ports.iter().find(|p| p.name.as_deref() == Some(name)) {
                    return valid_port(i64::from(p.container_port));
                }
                match name.parse::<i64>() {
                    Ok(n) => valid_port(n),
                    Err(_) => Err(ProbeError::UnknownPort(name.clone())),
                }
            }
        }
    }
}

fn valid_port(n: i64) -> Result<u16, ProbeError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(ProbeError::BadPort(n))
}

/// What one check does, its port resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// Run in the container through [`Exec`].
    Exec { command: Vec<String> },
    /// `host` defaults to the pod IP; `path` starts with `/`.
    HttpGet {
        host: Option<String>,
        port: u16,
        path: String,
        https: bool,
        headers: Vec<(String, String)>,
    },
    /// Connect, then close.
    Tcp { host: Option<String>, port: u16 },
    /// A hook's sleep action.
    Sleep { secs: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// grpc probes; tcpSocket hooks (the kubelet fails them at run time).
    #[error("{0} not supported")]
    Unsupported(&'static str),
    /// The kubelet's findPortByName wording.
    #[error("port {0} not found")]
    UnknownPort(String),
    /// The kubelet's ResolveContainerPort wording.
    #[error("invalid port number: {0}")]
    BadPort(i64),
    #[error("missing probe handler")]
    NoAction,
    #[error("exec action without a command")]
    EmptyCommand,
    #[error("unsupported protocol scheme {0:?}")]
    BadScheme(String),
    #[error("invalid sleep duration: {0}s")]
    BadSleep(i64),
}

/// A probe's action, in the kubelet's order: exec, httpGet, tcpSocket, grpc.
pub fn handler(p: &Probe, ports: &[ContainerPort]) -> Result<Handler, ProbeError> {
    if let Some(e) = &p.exec {
        return exec_handler(e.command.as_deref());
    }
    if let Some(h) = &p.http_get {
        return http_handler(h, ports, PROBE_USER_AGENT);
    }
    if let Some(t) = &p.tcp_socket {
        return tcp_handler(t, ports);
    }
    if p.grpc.is_some() {
        return Err(ProbeError::Unsupported("grpc probes"));
    }
    Err(ProbeError::NoAction)
}

/// A postStart/preStop action, in the kubelet's order: exec, httpGet,
/// sleep. A tcpSocket hook is only kept in the API for compatibility: the
/// kubelet fails it ("invalid handler"), so it is `Unsupported` here.
///
/// The HTTP handler carries the kubelet's hook User-Agent. Note that the
/// kubelet fails an HTTP hook only when the request fails, whatever the
/// status; [`check`] judges the status as for a probe, so a caller that
/// wants the kubelet's leniency treats a "statuscode" failure as success.
pub fn hook(h: &LifecycleHandler, ports: &[ContainerPort]) -> Result<Handler, ProbeError> {
    if let Some(e) = &h.exec {
        return exec_handler(e.command.as_deref());
    }
    if let Some(g) = &h.http_get {
        // The kubelet's hook runner takes an empty port name as port 80.
        if matches!(&g.port, IntOrString::String(s) if s.is_empty()) {
            let g = HTTPGetAction {
                port: IntOrString::Int(80),
                ..g.clone()
            };
            return http_handler(&g, ports, HOOK_USER_AGENT);
        }
        return http_handler(g, ports, HOOK_USER_AGENT);
    }
    if let Some(s) = &h.sleep {
        return u64::try_from(s.seconds)
            .map(|secs| Handler::Sleep { secs })
            .map_err(|_| ProbeError::BadSleep(s.seconds));
    }
    if h.tcp_socket.is_some() {
        return Err(ProbeError::Unsupported("tcpSocket lifecycle hooks"));
    }
    Err(ProbeError::NoAction)
}

fn exec_handler(command: Option<&[String]>) -> Result<Handler, ProbeError> {
    match command {
        Some(c) if !c.is_empty() => Ok(Handler::Exec {
            command: c.to_vec(),
        }),
        _ => Err(ProbeError::EmptyCommand),
    }
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.clone().filter(|s| !s.is_empty())
}

fn http_handler(
    h: &HTTPGetAction,
    ports: &[ContainerPort],
    user_agent: &str,
) -> Result<Handler, ProbeError> {
    let port = Port::from_api(&h.port)?.resolve(ports)?;
    let https = match h.scheme.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("http") => false,
        Some("https") => true,
        Some(other) => return Err(ProbeError::BadScheme(other.to_string())),
    };
    // Go's URL formatting puts the `/` between host and path.
    let path = match h.path.as_deref().unwrap_or("") {
        p if p.starts_with('/') => p.to_string(),
        p => format!("/{p}"),
    };
    let mut headers: Vec<(String, String)> = h
        .http_headers
        .iter()
        .flatten()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect();
    if user_agent != PROBE_USER_AGENT && !has_header(&headers, "user-agent") {
        headers.push(("User-Agent".into(), user_agent.into()));
    }
    Ok(Handler::HttpGet {
        host: non_empty(&h.host),
        port,
        path,
        https,
        headers,
    })
}

fn has_header(headers: &[(String, String)], name: &str) -> bool {
    headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
}

fn tcp_handler(t: &TCPSocketAction, ports: &[ContainerPort]) -> Result<Handler, ProbeError> {
    Ok(Handler::Tcp {
        host: non_empty(&t.host),
        port: Port::from_api(&t.port)?.resolve(ports)?,
    })
}

/// A probe with the API defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub handler: Handler,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// The probe's handler and timing; unset (or invalid, non-positive) values
/// take the API defaults: period 10 s, timeout 1 s, success 1, failure 3,
/// initial delay 0.
pub fn spec(p: &Probe, ports: &[ContainerPort]) -> Result<Spec, ProbeError> {
    let positive = |v: Option<i32>, default: u32| -> u32 {
        v.and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(default)
    };
    let secs = |v: u32| Duration::from_secs(u64::from(v));
    Ok(Spec {
        handler: handler(p, ports)?,
        initial_delay: secs(positive(p.initial_delay_seconds, 0)),
        period: secs(positive(p.period_seconds, 10)),
        timeout: secs(positive(p.timeout_seconds, 1)),
        success_threshold: positive(p.success_threshold, 1),
        failure_threshold: positive(p.failure_threshold, 3),
    })
}

/// One check's result; a failure's message is worded as the kubelet's.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Success,
    Failure(String),
}

/// Runs a command in the container (the daemon's exec via containerd).
pub trait Exec: Send + Sync {
    fn exec(&self, command: Vec<String>, timeout: Duration) -> BoxFuture<'_, Outcome>;
}

/// Runs one check. `pod_ip` is the default host; exec goes through `exec`,
/// which owns its timeout. A sleep hook is cut short by `timeout` (pass the
/// remaining grace period for preStop).
pub async fn check(h: &Handler, pod_ip: &str, timeout: Duration, exec: &dyn Exec) -> Outcome {
    match h {
        Handler::Exec { command } => exec.exec(command.clone(), timeout).await,
        Handler::HttpGet {
            host,
            port,
            path,
            https,
            headers,
        } => {
            let host = host.as_deref().unwrap_or(pod_ip);
            http_check(host, *port, path, *https, headers, timeout).await
        }
        Handler::Tcp { host, port } => {
            tcp_check(host.as_deref().unwrap_or(pod_ip), *port, timeout).await
        }
        Handler::Sleep { secs } => {
            let want = Duration::from_secs(*secs);
            if want <= timeout {
                tokio::time::sleep(want).await;
                Outcome::Success
            } else {
                tokio::time::sleep(timeout).await;
                Outcome::Failure("container terminated before sleep hook finished".into())
            }
        }
    }
}

/// Go's net.JoinHostPort: IPv6 literals in brackets.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An I/O error as Go words a failed dial: "connect: connection refused".
fn dial_error(addr: &str, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            // strerror without std's " (os error N)", lower-cased as Go's.
            let text = std::io::Error::from_raw_os_error(code).to_string();
            let text = text.split(" (os error").next().unwrap_or(&text);
            let mut chars = text.chars();
            let lower: String = match chars.next() {
                Some(c) => c.to_lowercase().chain(chars).collect(),
                None => String::new(),
            };
            format!("dial tcp {addr}: connect: {lower}")
        }
        None => format!("dial tcp {addr}: {e}"),
    }
}

async fn connect(host: &str, port: u16) -> Result<TcpStream, String> {
    TcpStream::connect((host, port))
        .await
        .map_err(|e| dial_error(&join_host_port(host, port), &e))
}

async fn tcp_check(host: &str, port: u16, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, connect(host, port)).await {
        Ok(Ok(stream)) => {
            drop(stream);
            Outcome::Success
        }
        Ok(Err(msg)) => Outcome::Failure(msg),
        Err(_) => Outcome::Failure(format!(
            "dial tcp {}: i/o timeout",
            join_host_port(host, port)
        )),
    }
}

async fn http_check(
    host: &str,
    port: u16,
    path: &str,
    https: bool,
    headers: &[(String, String)],
    timeout: Duration,
) -> Outcome {
    let authority = join_host_port(host, port);
    let scheme = if https { "https" } else { "http" };
    let url = format!("{scheme}://{authority}{path}");
    let attempt = async {
        let req = request(&authority, path, headers)?;
        let stream = connect(host, port).await?;
        if https {
            let tls = tls_connect(host, stream).await?;
            exchange(TokioIo::new(tls), req).await
        } else {
            exchange(TokioIo::new(stream), req).await
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        // pkg/probe/http: 2xx and 3xx pass (redirects are not followed
        // here; the kubelet passes one to another host as a warning).
        Ok(Ok(status)) if (200..400).contains(&status) => Outcome::Success,
        Ok(Ok(status)) => Outcome::Failure(format!("HTTP probe failed with statuscode: {status}")),
        Ok(Err(msg)) => Outcome::Failure(format!("Get \"{url}\": {msg}")),
        Err(_) => Outcome::Failure(format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// The GET as the kubelet's newProbeRequest builds it: the probe's headers,
/// then User-Agent and `Accept: */*` unless given (an empty Accept removes
/// it), `Host` from a "Host" header or the address; no keep-alive.
fn request(
    authority: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<Request<Empty<Bytes>>, String> {
    let mut req = Request::get(path)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let map = req.headers_mut();
    for (name, value) in headers {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("net/http: invalid header field name {name:?}"))?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| format!("net/http: invalid header field value for {name:?}"))?;
        map.append(n, v);
    }
    if !map.contains_key(USER_AGENT) {
        map.insert(USER_AGENT, HeaderValue::from_static(PROBE_USER_AGENT));
    }
    if !map.contains_key(ACCEPT) {
        map.insert(ACCEPT, HeaderValue::from_static("*/*"));
    } else if map.get_all(ACCEPT).iter().all(|v| v.is_empty()) {
        map.remove(ACCEPT);
    }
    if !map.contains_key(HOST) {
        let v = HeaderValue::from_str(authority).map_err(|e| e.to_string())?;
        map.insert(HOST, v);
    }
    map.insert(CONNECTION, HeaderValue::from_static("close"));
    Ok(req)
}

/// Sends `req` over `io` and returns the status, after reading at most
/// `MAX_BODY` of the body as the kubelet does.
async fn exchange<T>(io: T, req: Request<Empty<Bytes>>) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let response = async move {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut read = 0;
        while read < MAX_BODY {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                Some(Err(e)) => return Err(e.to_string()),
                None => break,
            }
        }
        Ok(status)
    };
    tokio::pin!(response);
    // The connection is driven here rather than spawned, so a timed-out
    // check drops its socket with it.
    tokio::select! {
        r = &mut response => r,
        c = conn => match c {
            Ok(()) => response.await,
            Err(e) => Err(e.to_string()),
        },
    }
}

async fn tls_connect(
    host: &str,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = tls::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let config = tls::insecure_config().map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| e.to_string())
}

/// TLS as the kubelet's prober does it: InsecureSkipVerify, i.e. any
/// certificate, though the handshake signatures are still checked.
mod tls {
    use super::Arc;
    use tokio_rustls::rustls::client::danger::{
        HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
    };
    use tokio_rustls::rustls::crypto::{self, CryptoProvider};
    use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
    use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, Error, SignatureScheme};

    pub use tokio_rustls::rustls::pki_types::ServerName;

    pub fn insecure_config() -> Result<Arc<ClientConfig>, Error> {
        let provider = Arc::new(crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    #[derive(Debug)]
    struct AnyCert(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

/// The thresholds, as the kubelet's probe worker applies them: a result
/// changes the verdict only after `success_threshold` consecutive
/// successes or `failure_threshold` consecutive failures.
#[derive(Debug, Clone)]
pub struct Verdict {
    success_threshold: u32,
    failure_threshold: u32,
    current: Option<bool>,
    last: Option<bool>,
    run: u32,
}

impl Verdict {
    /// `initial` is the verdict before any result: the kubelet starts
    /// readiness at false, liveness and startup at true (None: unknown).
    pub fn new(success_threshold: u32, failure_threshold: u32, initial: Option<bool>) -> Self {
        Verdict {
            success_threshold: success_threshold.max(1),
            failure_threshold: failure_threshold.max(1),
            current: initial,
            last: None,
            run: 0,
        }
    }

    /// Returns Some(new verdict) when this result flips it (after
    /// success_threshold consecutive successes / failure_threshold
    /// consecutive failures).
    pub fn feed(&mut self, ok: bool) -> Option<bool> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < threshold || self.current == Some(ok) {
            return None;
        }
        self.current = Some(ok);
        Some(ok)
    }

    pub fn current(&self) -> Option<bool> {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ExecAction, GRPCAction, HTTPHeader, SleepAction};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    fn ports() -> Vec<ContainerPort> {
        vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            ..ContainerPort::default()
        }]
    }

    fn http_probe(port: IntOrString) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                port,
                path: Some("/healthz".into()),
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        }
    }

    #[test]
    fn spec_defaults() {
        let s = spec(&http_probe(IntOrString::Int(80)), &[]).expect("spec");
        assert_eq!(s.initial_delay, Duration::ZERO);
        assert_eq!(s.period, Duration::from_secs(10));
        assert_eq!(s.timeout, Duration::from_secs(1));
        assert_eq!((s.success_threshold, s.failure_threshold), (1, 3));
        assert_eq!(
            s.handler,
            Handler::HttpGet {
                host: None,
                port: 80,
                path: "/healthz".into(),
                https: false,
                headers: vec![],
            }
        );
    }

    #[test]
    fn spec_explicit_values() {
        let p = Probe {
            initial_delay_seconds: Some(5),
            period_seconds: Some(2),
            timeout_seconds: Some(3),
            success_threshold: Some(2),
            failure_threshold: Some(7),
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Probe::default()
        };
        let s = spec(&p, &[]).expect("spec");
        assert_eq!(s.initial_delay, Duration::from_secs(5));
        assert_eq!(s.period, Duration::from_secs(2));
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert_eq!((s.success_threshold, s.failure_threshold), (2, 7));
        assert_eq!(
            s.handler,
            Handler::Exec {
                command: vec!["true".into()]
            }
        );
    }

    #[test]
    fn named_ports() {
        let h = handler(&http_probe(IntOrString::String("http".into())), &ports());
        assert!(
            matches!(h, Ok(Handler::HttpGet { port: 8080, .. })),
            "{h:?}"
        );
        // A number in a string is a last resort, as in the kubelet.
        let h = handler(&http_probe(IntOrString::String("9090".into())), &ports());
        assert!(
            matches!(h, Ok(Handler::HttpGet { port: 9090, .. })),
            "{h:?}"
        );
        let e = handler(&http_probe(IntOrString::String("metrics".into())), &ports());
        assert!(
            matches!(&e, Err(ProbeError::UnknownPort(n)) if n == "metrics"),
            "{e:?}"
        );
        assert_eq!(e.expect_err("err").to_string(), "port metrics not found");
        let e = handler(&http_probe(IntOrString::Int(70000)), &ports());
        assert!(matches!(e, Err(ProbeError::BadPort(70000))), "{e:?}");
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                host: Some(String::new()),
                port: IntOrString::String("http".into()),
            }),
            ..Probe::default()
        };
        assert_eq!(
            handler(&tcp, &ports()).expect("tcp"),
            Handler::Tcp {
                host: None,
                port: 8080
            }
        );
    }

    #[test]
    fn unsupported_and_missing() {
        let grpc = Probe {
            grpc: Some(GRPCAction {
                port: 9000,
                service: None,
            }),
            ..Probe::default()
        };
        assert!(matches!(
            handler(&grpc, &[]),
            Err(ProbeError::Unsupported(_))
        ));
        assert!(matches!(
            handler(&Probe::default(), &[]),
            Err(ProbeError::NoAction)
        ));
        let tcp_hook = LifecycleHandler {
            tcp_socket: Some(TCPSocketAction {
                host: None,
                port: IntOrString::Int(80),
            }),
            ..LifecycleHandler::default()
        };
        assert!(matches!(
            hook(&tcp_hook, &[]),
            Err(ProbeError::Unsupported(_))
        ));
    }

    #[test]
    fn hooks() {
        let sleep = LifecycleHandler {
            sleep: Some(SleepAction { seconds: 5 }),
            ..LifecycleHandler::default()
        };
        assert_eq!(
            hook(&sleep, &[]).expect("sleep"),
            Handler::Sleep { secs: 5 }
        );
        let http = LifecycleHandler {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String(String::new()),
                scheme: Some("HTTPS".into()),
                path: Some("stop".into()),
                ..HTTPGetAction::default()
            }),
            ..LifecycleHandler::default()
        };
        assert_eq!(
            hook(&http, &[]).expect("http"),
            Handler::HttpGet {
                host: None,
                port: 80,
                path: "/stop".into(),
                https: true,
                headers: vec![("User-Agent".into(), HOOK_USER_AGENT.into())],
            }
        );
    }

    /// Serves one canned response per connection on 127.0.0.1 and passes
    /// each request's head on; `None` accepts and never answers.
    async fn server(response: Option<&'static str>) -> (u16, mpsc::UnboundedReceiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                    match response {
                        Some(r) => {
                            let _ = s.write_all(r.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                });
            }
        });
        (port, rx)
    }

    struct NoExec;
    impl Exec for NoExec {
        fn exec(&self, _: Vec<String>, _: Duration) -> BoxFuture<'_, Outcome> {
            Box::pin(async { Outcome::Failure("no exec".into()) })
        }
    }

    fn get(port: u16, headers: Vec<(String, String)>) -> Handler {
        Handler::HttpGet {
            host: None,
            port,
            path: "/healthz".into(),
            https: false,
            headers,
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn http_200_sends_the_kubelet_headers() {
        let (port, mut rx) = server(Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
        let h = get(port, vec![("X-Probe".into(), "yes".into())]);
        assert_eq!(
            check(&h, "127.0.0.1", SECOND, &NoExec).await,
            Outcome::Success
        );
        let head = rx.recv().await.expect("request").to_ascii_lowercase();
        assert!(head.starts_with("get /healthz http/1.1\r\n"), "{head}");
        assert!(head.contains("user-agent: kube-probe/1.36\r\n"), "{head}");
        assert!(head.contains("accept: */*\r\n"), "{head}");
        assert!(
            head.contains(&format!("host: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
        assert!(head.contains("x-probe: yes\r\n"), "{head}");

        let h = get(port, vec![("Host".into(), "example.com".into())]);
        assert_eq!(
            check(&h, "127.0.0.1", SECOND, &NoExec).await,
            Outcome::Success
        );
        let head = rx.recv().await.expect("request").to_ascii_lowercase();
        assert!(head.contains("host: example.com\r\n"), "{head}");
        assert!(!head.contains("host: 127.0.0.1"), "{head}");
    }

    #[tokio::test]
    async fn http_503_fails_and_302_passes() {
        let (port, _rx) = server(Some(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nsick",
        ))
        .await;
        assert_eq!(
            check(&get(port, vec![]), "127.0.0.1", SECOND, &NoExec).await,
            Outcome::Failure("HTTP probe failed with statuscode: 503".into())
        );
        let (port, _rx) = server(Some(
            "HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n",
        ))
        .await;
        assert_eq!(
            check(&get(port, vec![]), "127.0.0.1", SECOND, &NoExec).await,
            Outcome::Success
        );
    }

    #[tokio::test]
    async fn http_timeout() {
        let (port, _rx) = server(None).await;
        let start = Instant::now();
        let out = check(
            &get(port, vec![]),
            "127.0.0.1",
            Duration::from_millis(300),
            &NoExec,
        )
        .await;
        assert!(start.elapsed() < SECOND, "{:?}", start.elapsed());
        assert_eq!(
            out,
            Outcome::Failure(format!(
                "Get \"http://127.0.0.1:{port}/healthz\": context deadline exceeded \
                 (Client.Timeout exceeded while awaiting headers)"
            ))
        );
    }

    #[tokio::test]
    async fn https_accepts_any_certificate() {
        use tokio_rustls::rustls::ServerConfig;
        use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let Ok(mut s) = acceptor.accept(s).await else {
                    continue;
                };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
                let _ = s.shutdown().await;
            }
        });
        let h = Handler::HttpGet {
            host: None,
            port,
            path: "/".into(),
            https: true,
            headers: vec![],
        };
        assert_eq!(
            check(&h, "127.0.0.1", SECOND, &NoExec).await,
            Outcome::Success
        );
    }

    #[tokio::test]
    async fn tcp_success_and_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let h = Handler::Tcp { host: None, port };
        assert_eq!(
            check(&h, "127.0.0.1", SECOND, &NoExec).await,
            Outcome::Success
        );
        drop(l);
        assert_eq!(
            check(&h, "127.0.0.1", SECOND, &NoExec).await,
            Outcome::Failure(format!(
                "dial tcp 127.0.0.1:{port}: connect: connection refused"
            ))
        );
        let h = get(port, vec![]);
        assert_eq!(
            check(&h, "127.0.0.1", SECOND, &NoExec).await,
            Outcome::Failure(format!(
                "Get \"http://127.0.0.1:{port}/healthz\": dial tcp 127.0.0.1:{port}: connect: connection refused"
            ))
        );
    }

    struct FakeExec;
    impl Exec for FakeExec {
        fn exec(&self, command: Vec<String>, timeout: Duration) -> BoxFuture<'_, Outcome> {
            Box::pin(async move {
                match command.first().map(String::as_str) {
                    Some("true") if timeout == SECOND => Outcome::Success,
                    _ => Outcome::Failure(format!("command {command:?} exited with 1")),
                }
            })
        }
    }

    #[tokio::test]
    async fn exec_goes_through_the_exec() {
        let ok = Handler::Exec {
            command: vec!["true".into()],
        };
        assert_eq!(check(&ok, "", SECOND, &FakeExec).await, Outcome::Success);
        let bad = Handler::Exec {
            command: vec!["false".into()],
        };
        assert!(matches!(
            check(&bad, "", SECOND, &FakeExec).await,
            Outcome::Failure(m) if m.contains("false")
        ));
    }

    #[tokio::test]
    async fn sleep_is_cut_by_the_timeout() {
        let h = Handler::Sleep { secs: 5 };
        let out = check(&h, "", Duration::from_millis(50), &NoExec).await;
        assert!(matches!(out, Outcome::Failure(_)), "{out:?}");
        let h = Handler::Sleep { secs: 0 };
        assert_eq!(check(&h, "", SECOND, &NoExec).await, Outcome::Success);
    }

    #[test]
    fn failure_threshold() {
        let mut v = Verdict::new(1, 3, Some(true));
        assert_eq!(v.feed(false), None);
        assert_eq!(v.feed(false), None);
        assert_eq!(v.current(), Some(true));
        assert_eq!(v.feed(false), Some(false));
        assert_eq!(v.feed(false), None, "no flip while it stays failed");
        assert_eq!(v.current(), Some(false));
        // A success in between restarts the count.
        let mut v = Verdict::new(1, 3, Some(true));
        v.feed(false);
        v.feed(false);
        assert_eq!(v.feed(true), None);
        assert_eq!(v.feed(false), None);
        assert_eq!(v.current(), Some(true));
    }

    #[test]
    fn success_threshold_after_failing() {
        let mut v = Verdict::new(2, 1, Some(false));
        assert_eq!(v.feed(true), None);
        assert_eq!(v.feed(false), None);
        assert_eq!(v.feed(true), None);
        assert_eq!(v.feed(true), Some(true));
        assert_eq!(v.feed(false), Some(false));
        assert_eq!(v.feed(true), None);
        assert_eq!(v.feed(true), Some(true));
        // From unknown, the first threshold reached sets it.
        let mut v = Verdict::new(1, 3, None);
        assert_eq!(v.current(), None);
        assert_eq!(v.feed(true), Some(true));
    }

    #[test]
    fn hook_headers_keep_a_given_user_agent() {
        let h = LifecycleHandler {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(8080),
                http_headers: Some(vec![HTTPHeader {
                    name: "user-agent".into(),
                    value: "mine".into(),
                }]),
                ..HTTPGetAction::default()
            }),
            ..LifecycleHandler::default()
        };
        let Ok(Handler::HttpGet { headers, path, .. }) = hook(&h, &[]) else {
            panic!("not an http hook");
        };
        assert_eq!(headers, vec![("user-agent".into(), "mine".into())]);
        assert_eq!(path, "/");
    }
}
