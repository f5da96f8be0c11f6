//! The address store: one file per leased address under
//! `<dataDir>/<network name>/`, like host-local's, written under an
//! exclusive lock on that directory's `lock` file. A lease names its
//! container, interface and network namespace path; a lease whose namespace
//! no longer exists is stale and reclaimed by the next allocation.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use vpno_net::slices::assignable;

/// Errors of the address store.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// File system trouble.
    #[error("address store {dir}: {source}")]
    Io {
        /// The store directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Every address of the slice is leased.
    #[error("no free address left in slice {0}")]
    Exhausted(Ipv4Net),
}

/// One leased address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The address.
    pub address: Ipv4Addr,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// Our pod-side interface name.
    pub interface: String,
    /// `CNI_NETNS` at ADD.
    pub netns: String,
}

/// Where addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// The whole gateway network.
    pub network: Ipv4Net,
    /// This node's slice.
    pub slice: Ipv4Net,
    /// Never handed out (the VIP, configured reservations).
    pub reserved: BTreeSet<Ipv4Addr>,
}

/// The next free address after `last` (round robin, so a just-released
/// address is not handed straight to the next pod), or `None`.
pub fn next_free(
    pool: &Pool,
    used: &BTreeSet<Ipv4Addr>,
    last: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let start = u32::from(pool.slice.network());
    let size = 1u64 << (32 - pool.slice.prefix_len());
    let offset = last
        .filter(|a| pool.slice.contains(a))
        .map(|a| u64::from(u32::from(a) - start) + 1)
        .unwrap_or(0);
    (0..size)
        .map(|i| Ipv4Addr::from(start + ((offset + i) % size) as u32))
        .find(|a| {
            assignable(&pool.network, &pool.slice, *a)
                && !pool.reserved.contains(a)
                && !used.contains(a)
        })
}

/// The address store of one network.
#[derive(Debug, Clone)]
pub struct AddressStore {
    dir: PathBuf,
}

/// The store's lock, held until dropped (closing the file releases it, also
/// when the process is killed).
#[derive(Debug)]
pub struct StoreLock(#[allow(dead_code)] File);

const LAST: &str = "last_reserved";

impl AddressStore {
    /// The store for network `name` under `data_dir` (created if missing).
    pub fn open(data_dir: &Path, name: &str) -> Result<Self, IpamError> {
        let dir = data_dir.join(name);
        fs::create_dir_all(&dir).map_err(|source| IpamError::Io {
            dir: dir.clone(),
            source,
        })?;
        Ok(AddressStore { dir })
    }

    fn io(&self) -> impl Fn(io::Error) -> IpamError + '_ {
        |source| IpamError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Takes the exclusive lock (blocking).
    pub fn lock(&self) -> Result<StoreLock, IpamError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))
            .map_err(self.io())?;
        file.lock().map_err(self.io())?;
        Ok(StoreLock(file))
    }

    /// Every lease (call with the lock held).
    pub fn leases(&self, _lock: &StoreLock) -> Result<Vec<Lease>, IpamError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(self.io())? {
            let entry = entry.map_err(self.io())?;
            let Some(address) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let text = match fs::read_to_string(entry.path()) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io()(e)),
            };
            let mut lines = text.lines();
            let mut next = || lines.next().unwrap_or_default().to_string();
            out.push(Lease {
                address,
                container_id: next(),
                interface: next(),
                netns: next(),
            });
        }
        out.sort_by_key(|l| l.address);
        Ok(out)
    }

    /// Leases `owner.container_id`/`owner.interface` an address from `pool`
    /// (the same one again if it already holds one), after reclaiming every
    /// lease for which `alive` is false. Returns the address and the
    /// reclaimed leases (whose links the caller removes).
    pub fn allocate(
        &self,
        pool: &Pool,
        owner: &Lease,
        alive: impl Fn(&Lease) -> bool,
    ) -> Result<(Ipv4Addr, Vec<Lease>), IpamError> {
        let lock = self.lock()?;
        self.remove_partial_writes();
        let mut reclaimed = Vec::new();
        let mut used = BTreeSet::new();
        for lease in self.leases(&lock)? {
            if lease.container_id == owner.container_id && lease.interface == owner.interface {
                return Ok((lease.address, reclaimed));
            }
            if alive(&lease) {
                used.insert(lease.address);
            } else {
                self.remove(lease.address)?;
                reclaimed.push(lease);
            }
        }
        let last = fs::read_to_string(self.dir.join(LAST))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let address = next_free(pool, &used, last).ok_or(IpamError::Exhausted(pool.slice))?;
        let body = format!(
            "{}\n{}\n{}\n",
            owner.container_id, owner.interface, owner.netns
        );
        self.write_atomic(&address.to_string(), &body)?;
        self.write_atomic(LAST, &address.to_string())?;
        Ok((address, reclaimed))
    }

    /// Releases whatever `container_id`/`interface` holds; returns the addresses freed.
    pub fn release(&self, container_id: &str, interface: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        let lock = self.lock()?;
        let mut freed = Vec::new();
        for lease in self.leases(&lock)? {
            if lease.container_id == container_id && lease.interface == interface {
                self.remove(lease.address)?;
                freed.push(lease.address);
            }
        }
        Ok(freed)
    }

    /// The lease of `container_id`/`interface`, if any.
    pub fn find(&self, container_id: &str, interface: &str) -> Result<Option<Lease>, IpamError> {
        let lock = self.lock()?;
        Ok(self
            .leases(&lock)?
            .into_iter()
            .find(|l| l.container_id == container_id && l.interface == interface))
    }

    fn remove(&self, address: Ipv4Addr) -> Result<(), IpamError> {
        match fs::remove_file(self.dir.join(address.to_string())) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(self.io()(e)),
            _ => Ok(()),
        }
    }

    /// A write is a temporary file renamed into place, so a plugin killed
    /// mid-write leaves either no lease or a whole one.
    fn write_atomic(&self, name: &str, body: &str) -> Result<(), IpamError> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, body).map_err(self.io())?;
        fs::rename(&tmp, self.dir.join(name)).map_err(self.io())
    }

    fn remove_partial_writes(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(slice: &str) -> Pool {
        Pool {
            network: "192.168.24.0/22".parse().unwrap(),
            slice: slice.parse().unwrap(),
            reserved: BTreeSet::from(["192.168.24.1".parse().unwrap()]),
        }
    }

    fn owner(id: &str) -> Lease {
        Lease {
            address: Ipv4Addr::UNSPECIFIED,
            container_id: id.into(),
            interface: "vpn0".into(),
            netns: format!("/run/netns/{id}"),
        }
    }

    fn store(tag: &str) -> (AddressStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!("vpno-ipam-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        (AddressStore::open(&dir, "net").unwrap(), dir)
    }

    #[test]
    fn next_free_skips_network_edges_reserved_and_used_round_robin() {
        let p = pool("192.168.24.0/30");
        // .0 is the network's own address, .1 reserved: .2 then .3.
        assert_eq!(
            next_free(&p, &BTreeSet::new(), None),
            Some("192.168.24.2".parse().unwrap())
        );
        let used = BTreeSet::from(["192.168.24.2".parse().unwrap()]);
        assert_eq!(
            next_free(&p, &used, None),
            Some("192.168.24.3".parse().unwrap())
        );
        assert_eq!(
            next_free(&p, &BTreeSet::new(), Some("192.168.24.2".parse().unwrap())),
            Some("192.168.24.3".parse().unwrap())
        );
        assert_eq!(
            next_free(&p, &BTreeSet::new(), Some("192.168.24.3".parse().unwrap())),
            Some("192.168.24.2".parse().unwrap()),
            "wraps"
        );
        let full = BTreeSet::from([
            "192.168.24.2".parse().unwrap(),
            "192.168.24.3".parse().unwrap(),
        ]);
        assert_eq!(next_free(&p, &full, None), None);
        let last = pool("192.168.27.252/30");
        let got: Vec<_> = (0..2)
            .scan(None, |l, _| {
                *l = next_free(&last, &BTreeSet::new(), *l);
                *l
            })
            .collect();
        assert!(!got.contains(&"192.168.27.255".parse().unwrap()), "{got:?}");
    }

    #[test]
    fn allocate_is_idempotent_per_owner_and_release_frees() {
        let (s, dir) = store("idem");
        let p = pool("192.168.24.64/26");
        let (a, _) = s.allocate(&p, &owner("c1"), |_| true).unwrap();
        let (again, _) = s.allocate(&p, &owner("c1"), |_| true).unwrap();
        assert_eq!(a, again);
        let (b, _) = s.allocate(&p, &owner("c2"), |_| true).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            s.find("c1", "vpn0").unwrap().unwrap().netns,
            "/run/netns/c1"
        );
        assert_eq!(s.release("c1", "vpn0").unwrap(), vec![a]);
        assert!(
            s.release("c1", "vpn0").unwrap().is_empty(),
            "second release is a no-op"
        );
        assert!(s.find("c1", "vpn0").unwrap().is_none());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn stale_leases_are_reclaimed_and_exhaustion_is_reported() {
        let (s, dir) = store("gc");
        let p = pool("192.168.24.0/30"); // two usable addresses
        s.allocate(&p, &owner("c1"), |_| true).unwrap();
        s.allocate(&p, &owner("c2"), |_| true).unwrap();
        assert!(matches!(
            s.allocate(&p, &owner("c3"), |_| true),
            Err(IpamError::Exhausted(_))
        ));
        let (a, reclaimed) = s
            .allocate(&p, &owner("c3"), |l| l.container_id != "c1")
            .unwrap();
        assert_eq!(reclaimed.len(), 1);
        assert_eq!(reclaimed[0].container_id, "c1");
        assert_eq!(a, reclaimed[0].address);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let (s, dir) = store("race");
        let p = pool("192.168.24.64/26");
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (s, p) = (s.clone(), p.clone());
                std::thread::spawn(move || {
                    (0..6)
                        .map(|i| {
                            s.allocate(&p, &owner(&format!("t{t}-{i}")), |_| true)
                                .unwrap()
                                .0
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<Ipv4Addr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(all.len(), 48);
        assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 48);
        let _ = fs::remove_dir_all(dir);
    }
}
