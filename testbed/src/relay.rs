//! The API server stand-in listens on the host's loopback; programs run on
//! an emulated node (pod-runner, node-sync) live in the node's netns, whose
//! loopback is its own. A relay listens on the node's `127.0.0.1:<port>`
//! and forwards each connection to the host's, byte for byte (TLS stays
//! end to end), so the same kubeconfig works on the host and on the node.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::Netns;

pub struct Relay {
    stop: Arc<AtomicBool>,
    /// Open connections (the node side), cut when the relay goes: a
    /// dropped relay is an API server the node cannot reach at all.
    open: Arc<Mutex<Vec<TcpStream>>>,
    addr: SocketAddr,
    ns_path: std::path::PathBuf,
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

impl Relay {
    /// Relays `127.0.0.1:<port>` in `ns` to `127.0.0.1:<port>` here.
    pub fn start(ns: &Netns, port: u16) -> io::Result<Relay> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // A socket belongs to the netns it was made in, whichever thread
        // uses it later.
        let listener = ns.run(|| TcpListener::bind(addr))?;
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let flag = Arc::clone(&stop);
        let conns = Arc::clone(&open);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(inside) = conn else { continue };
                if let (Ok(mut list), Ok(c)) = (conns.lock(), inside.try_clone()) {
                    list.retain(|s: &TcpStream| s.peer_addr().is_ok());
                    list.push(c);
                }
                std::thread::spawn(move || {
                    let Ok(outside) = TcpStream::connect(addr) else {
                        // Nothing behind the relay: the node sees the
                        // connection end at once, as with no server at
                        // all (the open list holds a clone of it).
                        let _ = inside.shutdown(Shutdown::Both);
                        return;
                    };
                    let (Ok(i2), Ok(o2)) = (inside.try_clone(), outside.try_clone()) else {
                        return;
                    };
                    let t = std::thread::spawn(move || pipe(i2, o2));
                    pipe(outside, inside);
                    let _ = t.join();
                });
            }
        });
        Ok(Relay {
            stop,
            open,
            addr,
            ns_path: ns.path(),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(list) = self.open.lock() {
            for s in list.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        // Wake the accept loop so it sees the flag and drops the listener.
        let addr = self.addr;
        let _ = netkit::netns::run_in(&self.ns_path, || TcpStream::connect(addr));
    }
}
