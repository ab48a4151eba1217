//! A plain HTTP/1.0 GET from inside a netns, retried while the server
//! comes up: what tests use to see that a pod answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::Netns;

/// The whole response (status line, headers, body) of `GET /` to `addr`,
/// sent from `ns`. Panics when nothing answers within about five seconds.
pub fn get(ns: &Netns, addr: SocketAddr) -> String {
    ns.run(|| {
        let mut last = None;
        for _ in 0..50 {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
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
    .unwrap_or_else(|e: std::io::Error| panic!("GET http://{addr}/: {e}"))
}
