//! `web`: the tutorial's web app for test images. It answers every HTTP
//! request on :8080 (or the port in $PORT) with the pod's hostname, except
//! the probe paths the daemon tests use:
//!
//! - `/ready`: 200, or 503 once `/unready` was requested;
//! - `/healthz`: 200, or 500 once `/sick` was requested;
//! - `/unready` and `/sick` set those flags and answer 200.
//!
//! The flags live in the process: a restarted container starts healthy.
//! `web exit <N>` prints a line and exits with status N at once (crash
//! loops, pods that complete). `web eat` takes memory until the kernel's
//! OOM killer stops it (a container over its memory limit).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};

static UNREADY: AtomicBool = AtomicBool::new(false);
static SICK: AtomicBool = AtomicBool::new(false);

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// As PID 1 of its container, the kernel gives SIGTERM no default action:
/// exit on it ourselves, as a well-behaved app does.
fn exit_on_sigterm() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    if set.thread_block().is_ok() {
        std::thread::spawn(move || {
            if set.wait().is_ok() {
                println!("web: stopping");
                std::process::exit(0);
            }
        });
    }
}

/// The path of a request's first line (`GET /ready HTTP/1.1`), `/` when
/// there is none.
fn path_of(request: &[u8]) -> String {
    let text = String::from_utf8_lossy(request);
    let line = text.lines().next().unwrap_or("");
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    path.split('?').next().unwrap_or("/").to_string()
}

/// Status line and body for `path`.
fn answer(path: &str) -> (&'static str, String) {
    let flag = |set: bool, bad: &'static str| {
        if set {
            (bad, format!("{bad}\n"))
        } else {
            ("200 OK", "ok\n".to_string())
        }
    };
    match path {
        "/ready" => flag(UNREADY.load(Ordering::SeqCst), "503 Service Unavailable"),
        "/healthz" => flag(SICK.load(Ordering::SeqCst), "500 Internal Server Error"),
        "/unready" => {
            UNREADY.store(true, Ordering::SeqCst);
            ("200 OK", "unready\n".to_string())
        }
        "/sick" => {
            SICK.store(true, Ordering::SeqCst);
            ("200 OK", "sick\n".to_string())
        }
        _ => ("200 OK", format!("{}\n", hostname())),
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("exit") {
        let code: i32 = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(0);
        println!("web: exiting with {code} as {}", hostname());
        std::process::exit(code);
    }
    if args.get(1).map(String::as_str) == Some("eat") {
        println!("web: eating memory");
        let mut heap: Vec<Vec<u8>> = Vec::new();
        loop {
            // Written, so the pages are really taken.
            heap.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&heap);
        }
    }
    exit_on_sigterm();
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}"))?;
    // What `logs` shows: one line at start, one per request.
    println!("web: listening on :{port} as {}", hostname());
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        // One short request per connection; the body does not matter.
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        let path = path_of(&buf[..n]);
        if let Ok(peer) = s.peer_addr() {
            println!("web: request from {peer} for {path}");
        }
        let (status, body) = answer(&path);
        let _ = write!(
            s,
            "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
    Ok(())
}
