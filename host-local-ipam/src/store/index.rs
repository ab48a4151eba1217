//! A rebuildable index from container id to leases, so a call costs the same
//! with 10 leases or 50,000. The reference reads every lease file on every
//! call instead.
//!
//! It lives beside the network's directory, in `<dataDir>/.host-local/<net>/`
//! (no network name can start with a dot), so the lease directory stays
//! byte-for-byte what the reference writes. It is trusted only while the
//! lease directory's mtime equals the value in `stamp`: after each change
//! we set that mtime to a moment in the past, which no later create or unlink
//! (ours after a crash, or the reference's) can reproduce, since the kernel
//! stamps those with the current time. Anything else triggers a rebuild.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use sha2::{Digest, Sha256};

use super::StoreError;
use super::lease::Lease;

const IDS: &str = "ids";
const STAMP: &str = "stamp";

pub struct Index {
    root: PathBuf,
    /// Leases per id that this call has read or changed.
    cached: HashMap<String, Vec<Lease>>,
    touched: Vec<String>,
    /// Set after a full scan: `cached` then holds every id.
    complete: bool,
}

fn key(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn mtime_of(dir: &Path) -> Result<(i64, i64), StoreError> {
    let md = fs::metadata(dir).map_err(|e| io(dir, e))?;
    Ok((md.mtime(), md.mtime_nsec()))
}

impl Index {
    /// Opens the index for `net_dir`, rebuilding it if it cannot be trusted.
    pub fn open(data_dir: &Path, network: &str, net_dir: &Path) -> Result<Self, StoreError> {
        let root = data_dir.join(".host-local").join(network);
        let mut index = Index {
            root,
            cached: HashMap::new(),
            touched: Vec::new(),
            complete: false,
        };
        let trusted = fs::read_to_string(index.root.join(STAMP))
            .ok()
            .and_then(|s| {
                let (a, b) = s.trim().split_once(' ')?;
                Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?))
            })
            .is_some_and(|stamp| mtime_of(net_dir).ok() == Some(stamp));
        if !trusted {
            index.rebuild(net_dir)?;
        }
        Ok(index)
    }

    /// Where a lease file is written before it is renamed into place.
    pub fn scratch_dir(&self) -> Result<&Path, StoreError> {
        fs::create_dir_all(&self.root).map_err(|e| io(&self.root, e))?;
        Ok(&self.root)
    }

    /// Reads every lease in `net_dir`; the reference's files are the truth.
    pub fn rebuild(&mut self, net_dir: &Path) -> Result<(), StoreError> {
        let mut all: HashMap<String, Vec<Lease>> = HashMap::new();
        for lease in scan(net_dir)? {
            all.entry(lease.id.clone()).or_default().push(lease);
        }
        for leases in all.values_mut() {
            leases.sort_by_key(|l| crate::range::to_u128(l.ip));
        }
        self.touched = all.keys().cloned().collect();
        self.cached = all;
        self.complete = true;
        Ok(())
    }

    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Every lease; only valid after a rebuild.
    pub fn all(&self) -> impl Iterator<Item = &Lease> {
        self.cached.values().flatten()
    }

    pub fn leases_of(&mut self, id: &str) -> Result<&[Lease], StoreError> {
        if !self.complete && !self.cached.contains_key(id) {
            let loaded = self.load(id)?;
            self.cached.insert(id.to_string(), loaded);
        }
        Ok(self.cached.get(id).map(Vec::as_slice).unwrap_or(&[]))
    }

    fn load(&self, id: &str) -> Result<Vec<Lease>, StoreError> {
        let path = self.root.join(IDS).join(key(id));
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&path, e)),
        };
        let mut lines = text.lines();
        if lines.next() != Some(id) {
            return Err(StoreError::Stale);
        }
        lines
            .map(|line| {
                let (ip, ifname) = match line.split_once('\t') {
                    Some((ip, ifname)) => (ip, Some(ifname.to_string())),
                    None => (line, None),
                };
                let ip: IpAddr = ip.parse().map_err(|_| StoreError::Stale)?;
                Ok(Lease {
                    ip,
                    id: id.to_string(),
                    ifname,
                })
            })
            .collect()
    }

    pub fn add(&mut self, lease: Lease) -> Result<(), StoreError> {
        let id = lease.id.clone();
        self.leases_of(&id)?;
        self.cached.entry(id.clone()).or_default().push(lease);
        self.touched.push(id);
        Ok(())
    }

    pub fn remove(&mut self, id: &str, ip: IpAddr) -> Result<(), StoreError> {
        self.leases_of(id)?;
        if let Some(list) = self.cached.get_mut(id) {
            list.retain(|l| l.ip != ip);
        }
        self.touched.push(id.to_string());
        Ok(())
    }

    /// Writes what changed, then stamps `net_dir` so the next call trusts
    /// the index. Must run last, with the lock held.
    pub fn commit(&mut self, net_dir: &Path) -> Result<(), StoreError> {
        let ids = self.root.join(IDS);
        // Drop the stamp first: a crash below must leave an untrusted index.
        match fs::remove_file(self.root.join(STAMP)) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(io(&self.root, e)),
            _ => {}
        }
        if self.complete {
            match fs::remove_dir_all(&ids) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(io(&ids, e)),
                _ => {}
            }
        }
        fs::create_dir_all(&ids).map_err(|e| io(&ids, e))?;
        self.touched.sort();
        self.touched.dedup();
        for id in &self.touched {
            let path = ids.join(key(id));
            match self.cached.get(id).filter(|l| !l.is_empty()) {
                Some(leases) => {
                    let mut text = format!("{id}\n");
                    for l in leases {
                        match &l.ifname {
                            Some(ifname) => text.push_str(&format!("{}\t{ifname}\n", l.ip)),
                            None => text.push_str(&format!("{}\n", l.ip)),
                        }
                    }
                    fs::write(&path, text).map_err(|e| io(&path, e))?;
                }
                None => match fs::remove_file(&path) {
                    Err(e) if e.kind() != ErrorKind::NotFound => return Err(io(&path, e)),
                    _ => {}
                },
            }
        }
        self.touched.clear();
        let stamp = stamp_dir(net_dir)?;
        let stamp_path = self.root.join(STAMP);
        fs::write(&stamp_path, format!("{} {}\n", stamp.0, stamp.1)).map_err(|e| io(&stamp_path, e))
    }
}

/// Sets the directory's mtime one second into the past and returns what the
/// filesystem stored (it may round the nanoseconds).
fn stamp_dir(dir: &Path) -> Result<(i64, i64), StoreError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let past = TimeSpec::new(now.as_secs() as i64 - 1, i64::from(now.subsec_nanos()));
    utimensat(
        nix::fcntl::AT_FDCWD,
        dir,
        &TimeSpec::UTIME_OMIT,
        &past,
        UtimensatFlags::FollowSymlink,
    )
    .map_err(|e| io(dir, e.into()))?;
    mtime_of(dir)
}

/// Every lease file in `net_dir`: files named by an IP address.
pub fn scan(net_dir: &Path) -> Result<Vec<Lease>, StoreError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(net_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(net_dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io(net_dir, e))?;
        let Some(ip) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let path = entry.path();
        match fs::read_to_string(&path) {
            Ok(text) => out.extend(Lease::parse(ip, &text)),
            // Removed under us, or not a regular file: not a lease.
            Err(_) => continue,
        }
    }
    Ok(out)
}
