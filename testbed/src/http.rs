//! A plain HTTP/1.0 GET from inside a netns, retried while the server
//! comes up: what tests use to see that a pod answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use std::path::Path;

use crate::Netns;

/// The whole response (status line, headers, body) of `GET /` to `addr`,
/// sent from `ns`. Panics when nothing answers within about five seconds.
pub fn get(ns: &Netns, addr: SocketAddr) -> String {
    get_in(&ns.path(), addr)
}

/// Like [`get`], from the netns at `path` (a pod's pinned netns, say).
pub fn get_in(path: &Path, addr: SocketAddr) -> String {
    get_path_in(path, addr, "/")
}

/// `GET <url_path>` to `addr` from the netns at `path`.
pub fn get_path_in(path: &Path, addr: SocketAddr, url_path: &str) -> String {
    try_get_path_in(path, addr, url_path)
        .unwrap_or_else(|e| panic!("GET http://{addr}/ from {}: {e}", path.display()))
}

/// [`get_path_in`] returning the error (for the benchmarks, which report
/// it instead of panicking).
pub fn try_get_path_in(path: &Path, addr: SocketAddr, url_path: &str) -> std::io::Result<String> {
    netkit::netns::run_in(path, || {
        let mut last = None;
        for _ in 0..50 {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    s.write_all(format!("GET {url_path} HTTP/1.0\r\n\r\n").as_bytes())?;
                    let mut out = String::new();
                    s.read_to_string(&mut out)?;
                    return Ok(out);
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no attempt")))
    })
    .map_err(|e| std::io::Error::other(e.to_string()))
    .and_then(|r| r)
}

/// A server in `ns` on :8080 answering `<name> <peer ip>` to each
/// connection, for the rest of the process: which backend answered, and
/// whom it saw. The socket stays in `ns` though a plain thread serves it.
pub fn serve_name(ns: &Netns, name: &'static str) {
    let l = ns
        .run(|| std::net::TcpListener::bind("0.0.0.0:8080"))
        .unwrap_or_else(|e| panic!("bind :8080 in {}: {e}", ns.name()));
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let peer = c
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 512];
            let _ = c.read(&mut buf);
            let _ = write!(c, "HTTP/1.0 200 OK\r\n\r\n{name} {peer}\n");
        }
    });
}
