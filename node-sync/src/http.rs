//! `/metrics`, `/healthz` and `/status` (each reconciler's last step,
//! for `node-sync status`) on a local address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::steps::Steps;

/// Healthy while the heartbeat succeeded within this many seconds.
const HEALTHY_WITHIN: f64 = 60.0;

fn answer(m: &Metrics, steps: &Steps, path: &str) -> Response<Full<Bytes>> {
    let (code, body) = match path {
        "/metrics" => (StatusCode::OK, m.render()),
        "/status" => (StatusCode::OK, steps.render()),
        "/healthz" => {
            let last = m
                .get(
                    "node_sync_last_success_timestamp_seconds",
                    &[("reconciler", "heartbeat")],
                )
                .unwrap_or(0.0);
            if crate::metrics::now() - last <= HEALTHY_WITHIN {
                (StatusCode::OK, "ok\n".to_string())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no successful heartbeat in the last minute\n".to_string(),
                )
            }
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r
}

/// Binds `addr` and serves until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    steps: Arc<Steps>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (m, st) = (Arc::clone(&metrics), Arc::clone(&steps));
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (m, st) = (Arc::clone(&m), Arc::clone(&st));
                    async move { Ok::<_, Infallible>(answer(&m, &st, req.uri().path())) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}
