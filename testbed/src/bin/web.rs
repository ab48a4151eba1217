//! `web`: the tutorial's web app for test images. It answers every HTTP
//! request on :8080 (or the port in $PORT) with the pod's hostname.

use std::io::{Read, Write};
use std::net::TcpListener;

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

fn main() -> std::io::Result<()> {
    exit_on_sigterm();
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}"))?;
    // What `logs` shows: one line at start, one per request.
    println!("web: listening on :{port} as {}", hostname());
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        if let Ok(peer) = s.peer_addr() {
            println!("web: request from {peer}");
        }
        // One short request per connection; the body does not matter.
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let body = format!("{}\n", hostname());
        let _ = write!(
            s,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
    Ok(())
}
