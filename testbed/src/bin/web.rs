//! `web`: the tutorial's web app for test images. It answers every HTTP
//! request on :8080 (or the port in $PORT) with the pod's hostname.

use std::io::{Read, Write};
use std::net::TcpListener;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> std::io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}"))?;
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
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
