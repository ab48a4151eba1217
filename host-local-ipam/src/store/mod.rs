//! The lease store, on disk in the reference's layout:
//!
//! ```text
//! <dataDir>/<network>/lock                 empty, flock'ed around every call
//! <dataDir>/<network>/<ip>                 "<containerID>\r\n<ifname>"
//! <dataDir>/<network>/last_reserved_ip.<n> the last address given out in range set n
//! ```
//!
//! so the reference and we can share a directory during a migration. A lease
//! appears atomically with its contents (written aside, then renamed into
//! place without replacing), so a crash never leaves an empty or partial one.

mod index;
pub mod lease;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

use index::Index;
pub use lease::Lease;

const LAST_RESERVED: &str = "last_reserved_ip.";
const SCRATCH: &str = "lease.tmp";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lease index is stale")]
    Stale,
}

impl StoreError {
    pub fn is_io(&self) -> bool {
        matches!(self, StoreError::Io { .. })
    }
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// An open, locked store. Dropping it releases the lock; call [`Store::commit`]
/// first to persist the index.
pub struct Store {
    dir: PathBuf,
    index: Index,
    changed: bool,
    // Held for the flock; released on drop.
    _lock: File,
}

impl Store {
    /// Creates `<dataDir>/<network>` if needed and takes its lock. `network`
    /// must already be validated (it is one path component).
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, StoreError> {
        let dir = data_dir.join(network);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| io(&dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(false)
            .create(false)
            .open(&lock_path)
            .or_else(|e| match e.kind() {
                // std refuses create without write; the reference's lock is
                // created read-only with mode 0750, so do the same by hand.
                ErrorKind::NotFound => OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o750)
                    .open(&lock_path),
                _ => Err(e),
            })
            .map_err(|e| io(&lock_path, e))?;
        lock.lock().map_err(|e| io(&lock_path, e))?;
        let index = Index::open(data_dir, network, &dir)?;
        let changed = index.is_complete();
        if changed {
            // A rebuild follows a crash or a foreign writer; clear what an
            // interrupted cross-filesystem write may have left.
            let _ = fs::remove_file(dir.join(format!(".{SCRATCH}")));
        }
        Ok(Store {
            dir,
            index,
            changed,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the lease for `ip` unless it exists. Returns whether it did.
    pub fn reserve(
        &mut self,
        id: &str,
        ifname: &str,
        ip: IpAddr,
        range_idx: usize,
    ) -> Result<bool, StoreError> {
        let target = self.dir.join(ip.to_string());
        let contents = Lease::contents(id, ifname);
        if !self.place_lease(&target, contents.as_bytes())? {
            return Ok(false);
        }
        self.changed = true;
        self.index.add(Lease {
            ip,
            id: id.trim().to_string(),
            ifname: Some(ifname.to_string()),
        })?;
        self.write_last_reserved(range_idx, ip)?;
        Ok(true)
    }

    /// Overwrites `last_reserved_ip.<n>` in place and then trims it, so a
    /// crash never leaves it empty (the reference truncates first and can).
    /// A rename over it would cost an ext4 flush (auto_da_alloc) per ADD,
    /// and at worst a torn write leaves a stale or unparsable hint, which
    /// only moves where round-robin resumes.
    fn write_last_reserved(&mut self, range_idx: usize, ip: IpAddr) -> Result<(), StoreError> {
        let last = self.dir.join(format!("{LAST_RESERVED}{range_idx}"));
        let text = ip.to_string();
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&last)
            .and_then(|f| {
                f.write_all_at(text.as_bytes(), 0)?;
                f.set_len(text.len() as u64)
            })
            .map_err(|e| io(&last, e))
    }

    /// Writes the lease aside and renames it into place without replacing
    /// anything: the lease appears whole or not at all, whenever the
    /// process dies. No fsync: it would double the cost of an ADD, and a
    /// power loss ends every container the lease could belong to anyway; a
    /// lease lost that way frees an address nobody holds, and an empty one
    /// keeps its address until GC.
    fn place_lease(&mut self, target: &Path, contents: &[u8]) -> Result<bool, StoreError> {
        let scratch = self.index.scratch_dir()?.join(SCRATCH);
        write_mode(&scratch, contents, 0o644).map_err(|e| io(&scratch, e))?;
        let rename = |from: &Path| {
            renameat2(
                AT_FDCWD,
                from,
                AT_FDCWD,
                target,
                RenameFlags::RENAME_NOREPLACE,
            )
        };
        match rename(&scratch) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::EEXIST) => Ok(false),
            // The index sits on another filesystem: stage inside the lease
            // directory instead (a crash may then leave `.lease.tmp` there,
            // which the next rebuild removes).
            Err(nix::errno::Errno::EXDEV) => {
                let local = self.dir.join(format!(".{SCRATCH}"));
                write_mode(&local, contents, 0o644).map_err(|e| io(&local, e))?;
                match rename(&local) {
                    Ok(()) => Ok(true),
                    Err(nix::errno::Errno::EEXIST) => Ok(false),
                    Err(e) => Err(io(target, e.into())),
                }
            }
            Err(e) => Err(io(target, e.into())),
        }
    }

    pub fn last_reserved(&self, range_idx: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_RESERVED}{range_idx}")))
            .ok()
            .and_then(|s| s.parse().ok())
    }

    /// The addresses this attachment holds (its legacy leases included).
    pub fn get_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, StoreError> {
        let id = id.trim();
        Ok(self
            .index
            .leases_of(id)?
            .iter()
            .filter(|l| l.matches(id, ifname))
            .map(|l| l.ip)
            .collect())
    }

    /// Removes the attachment's leases (the reference's DEL rule) and returns
    /// their addresses. A lease whose file no longer says what the index
    /// says means the index is stale: rebuild and try once more.
    pub fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, StoreError> {
        match self.release_once(id, ifname) {
            Err(StoreError::Stale) => {
                self.index.rebuild(&self.dir)?;
                self.changed = true;
                self.release_once(id, ifname)
            }
            other => other,
        }
    }

    fn release_once(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, StoreError> {
        let id = id.trim();
        let leases = self.index.leases_of(id)?.to_vec();
        let chosen: Vec<Lease> = Lease::select(&leases, id, ifname)
            .into_iter()
            .cloned()
            .collect();
        for lease in &chosen {
            let path = self.dir.join(lease.ip.to_string());
            let on_disk = fs::read_to_string(&path)
                .ok()
                .and_then(|t| Lease::parse(lease.ip, &t));
            if on_disk.as_ref() != Some(lease) {
                return Err(StoreError::Stale);
            }
        }
        let mut released = Vec::new();
        for lease in chosen {
            self.remove_lease(&lease)?;
            released.push(lease.ip);
        }
        Ok(released)
    }

    fn remove_lease(&mut self, lease: &Lease) -> Result<(), StoreError> {
        let path = self.dir.join(lease.ip.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(io(&path, e)),
            _ => {}
        }
        self.changed = true;
        self.index.remove(&lease.id, lease.ip)
    }

    /// Removes one lease this call created, if it is still ours (rollback).
    pub fn release_ip(&mut self, id: &str, ifname: &str, ip: IpAddr) -> Result<(), StoreError> {
        let lease = Lease {
            ip,
            id: id.trim().to_string(),
            ifname: Some(ifname.to_string()),
        };
        let path = self.dir.join(ip.to_string());
        let on_disk = fs::read_to_string(&path)
            .ok()
            .and_then(|t| Lease::parse(ip, &t));
        if on_disk.as_ref() == Some(&lease) {
            self.remove_lease(&lease)?;
        }
        Ok(())
    }

    /// Every lease, read from the lease files themselves (GC, STATUS).
    pub fn all_leases(&mut self) -> Result<Vec<Lease>, StoreError> {
        if !self.index.is_complete() {
            self.index.rebuild(&self.dir)?;
            self.changed = true;
        }
        Ok(self.index.all().cloned().collect())
    }

    /// Removes a lease found by [`Store::all_leases`].
    pub fn release_lease(&mut self, lease: &Lease) -> Result<(), StoreError> {
        self.remove_lease(lease)
    }

    /// Persists the index and releases the lock.
    pub fn commit(mut self) -> Result<(), StoreError> {
        if self.changed {
            self.index.commit(&self.dir)?;
        }
        Ok(())
    }
}

/// `os.WriteFile` semantics: create with `mode` (less umask) or truncate.
fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)
}
