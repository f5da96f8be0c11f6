//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) for inbound
//! port-forwards: a lookup table of prime size `M` in which every slot names
//! one backend. A flow's hash picks a slot, so all routers holding the same
//! backends send a flow to the same backend without sharing connection
//! state, and adding or removing a backend moves (almost) only the slots
//! that must move.
//!
//! The table is computed here (pure, deterministic: the same backends give
//! the same table on every router and every run) and installed in nftables
//! by [`render_nft`], where the kernel's `jhash` over the flow key picks
//! the slot. [`nft_jhash_slot`] recomputes the kernel's choice in Rust, so
//! the router can tell which backend a flow goes to and tests can check it.
//!
//! Why `jhash` and an anonymous map (nftables 1.0.6, Debian bookworm):
//! - `numgen` (random / round robin) is not a function of the flow, so it
//!   cannot be consistent across routers; `symhash` uses the kernel's
//!   per-boot random flow-dissector key, so two routers disagree and
//!   userspace cannot predict it. `jhash` with an explicit `seed` is
//!   Jenkins' hash of the named fields: the same on every host, and
//!   reproducible here. Without `seed` the kernel picks a random one, so the
//!   seed is always rendered.
//! - nft types `jhash`'s result as a plain integer: a named map of `type
//!   mark` is refused ("datatype mismatch") and one declared `typeof jhash
//!   ...` loads but crashes `nft list`. An anonymous map inside the rule has
//!   no such problem; the whole table is replaced in one `nft -f` batch, so
//!   the switch to a new table is still atomic.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// A table size Maglev can use: a prime, larger than the backend count.
/// The paper's rule of thumb is `M ≥ 100 × backends` for even shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableSize(u32);

impl TableSize {
    /// A small default that keeps nft batches quick (4093 map elements) and
    /// shares within 1 % for up to 40 backends.
    pub const DEFAULT: TableSize = TableSize(4093);
    /// The paper's size, for many backends.
    pub const LARGE: TableSize = TableSize(65537);

    /// `size` if it is a prime of at least 3 (so every skip `1..M` is coprime with `M`).
    pub fn new(size: u32) -> Result<TableSize, MaglevError> {
        if size >= 3 && is_prime(size) {
            Ok(TableSize(size))
        } else {
            Err(MaglevError::NotPrime(size))
        }
    }

    /// The number of slots.
    pub fn get(self) -> u32 {
        self.0
    }
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d: &u32| u64::from(*d) * u64::from(*d) <= u64::from(n))
            .all(|d| !n.is_multiple_of(d))
}

/// Why a table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// Maglev's permutations need a prime table size.
    #[error("Maglev table size {0} is not a prime of at least 3")]
    NotPrime(u32),
    /// Every slot must name a backend, so there must be fewer backends than slots.
    #[error("{backends} backends do not fit a Maglev table of {size} slots")]
    TooManyBackends {
        /// Backends given.
        backends: usize,
        /// Table size.
        size: u32,
    },
    /// nftables DNATs to addresses: every backend key must be an IPv4 address.
    #[error("backend {0:?} is not an IPv4 address, so it cannot go into nftables")]
    NotAnAddress(String),
    /// The same backend key twice would give it two shares.
    #[error("backend {0:?} is listed twice")]
    Duplicate(String),
}

/// A filled Maglev table: `slots[i]` is the index (into [`backends`](Self::backends))
/// of the backend owning slot `i`. Empty when there are no backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevTable {
    backends: Vec<String>,
    slots: Vec<u32>,
    size: TableSize,
}

impl MaglevTable {
    /// Fills a table of `size` slots for `backends` (keys such as `10.0.0.5`
    /// or a pod name; the order does not matter, the keys do).
    pub fn build(
        backends: &[impl AsRef<str>],
        size: TableSize,
    ) -> Result<MaglevTable, MaglevError> {
        let mut keys: Vec<String> = backends.iter().map(|b| b.as_ref().to_owned()).collect();
        keys.sort();
        if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(MaglevError::Duplicate(w[0].clone()));
        }
        let m = size.get();
        if keys.len() >= m as usize {
            return Err(MaglevError::TooManyBackends {
                backends: keys.len(),
                size: m,
            });
        }
        let slots = if keys.is_empty() {
            Vec::new()
        } else {
            populate(&keys, m)
        };
        Ok(MaglevTable {
            backends: keys,
            slots,
            size,
        })
    }

    /// The backend keys, sorted; slot entries index into this.
    pub fn backends(&self) -> &[String] {
        &self.backends
    }

    /// The table size.
    pub fn size(&self) -> TableSize {
        self.size
    }

    /// The backend owning `slot` (`None` without backends or out of range).
    pub fn backend(&self, slot: u32) -> Option<&str> {
        let i = *self.slots.get(slot as usize)?;
        Some(&self.backends[i as usize])
    }

    /// The backend index of every slot, in slot order.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// How many slots each backend owns, in [`backends`](Self::backends) order.
    pub fn shares(&self) -> Vec<u32> {
        let mut shares = vec![0; self.backends.len()];
        for &i in &self.slots {
            shares[i as usize] += 1;
        }
        shares
    }

    /// Slots whose backend differs between `self` and `other` (same size
    /// required; a table without backends differs everywhere).
    pub fn moved_slots(&self, other: &MaglevTable) -> u32 {
        (0..self.size.get().max(other.size.get()))
            .filter(|&s| self.backend(s).is_none() || self.backend(s) != other.backend(s))
            .count() as u32
    }
}

/// The paper's population: each backend walks its own permutation of the
/// slots (`offset + j × skip mod M`) and, in turn, takes its next free slot,
/// until every slot is taken. Shares differ by at most one slot.
fn populate(keys: &[String], m: u32) -> Vec<u32> {
    let perms: Vec<(u64, u64)> = keys
        .iter()
        .map(|k| {
            let offset = hash(k, 0x6d61676c_65763031) % u64::from(m);
            let skip = hash(k, 0x6d61676c_65763032) % u64::from(m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; keys.len()];
    let mut slots = vec![u32::MAX; m as usize];
    let mut filled = 0;
    'fill: loop {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % u64::from(m);
            while slots[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % u64::from(m);
            }
            slots[c as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    slots
}

/// A fixed, platform-independent 64-bit hash (FNV-1a, then the SplitMix64
/// finaliser for avalanche). `std`'s hasher is randomly keyed per process,
/// and every router must compute the same permutations.
fn hash(key: &str, seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Which fields of an inbound packet choose the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowKey {
    /// The remote address: one remote always reaches the same backend.
    SourceAddress,
    /// Remote address and port: each connection hashed on its own.
    SourceAddressAndPort,
}

impl FlowKey {
    fn nft(self) -> &'static str {
        match self {
            FlowKey::SourceAddress => "ip saddr",
            FlowKey::SourceAddressAndPort => "ip saddr . th sport",
        }
    }

    /// The bytes nftables hashes for this key: each field in network order,
    /// padded to 32-bit registers as nft lays out concatenations.
    pub fn bytes(self, source: Ipv4Addr, source_port: u16) -> Vec<u8> {
        let mut v = source.octets().to_vec();
        if self == FlowKey::SourceAddressAndPort {
            v.extend_from_slice(&source_port.to_be_bytes());
            v.extend_from_slice(&[0, 0]);
        }
        v
    }
}

/// One inbound forward as nftables should balance it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftForward {
    /// Table the rules live in (family `ip`), replaced as a whole.
    pub table: String,
    /// Protocol of the forward.
    pub protocol: Protocol,
    /// Address the forward arrives on (e.g. the per-gateway address on the router).
    pub address: Ipv4Addr,
    /// Port it arrives on.
    pub port: u16,
    /// Port on the backends.
    pub target_port: u16,
    /// Fields hashed.
    pub key: FlowKey,
    /// `jhash` seed; the same on every router so they agree.
    pub seed: u32,
    /// Hook the DNAT runs in (`prerouting` for forwarded traffic; tests also use `output`).
    pub hook: NatHook,
}

/// Transport protocol of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// The netfilter hook of the DNAT chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatHook {
    /// Packets arriving from an interface.
    Prerouting,
    /// Locally generated packets.
    Output,
}

/// The nft script (for `nft -f`) that (re)creates `forward.table` with one
/// DNAT rule mapping `jhash(key) mod M` to the table's backends. The
/// `add`/`delete`/`add` preamble makes it one atomic replacement whether or
/// not the table exists. Without backends the forward drops its packets
/// rather than leaving them to whatever listens on the router.
pub fn render_nft(forward: &NftForward, table: &MaglevTable) -> Result<String, MaglevError> {
    let f = forward;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "add table ip {t}\ndelete table ip {t}\ntable ip {t} {{",
        t = f.table
    );
    let (hook, prio) = match f.hook {
        NatHook::Prerouting => ("prerouting", "dstnat"),
        NatHook::Output => ("output", "-100"),
    };
    let _ = writeln!(
        s,
        "  chain balance {{\n    type nat hook {hook} priority {prio}; policy accept;"
    );
    let matcher = format!(
        "ip daddr {} {} dport {}",
        f.address,
        f.protocol.nft(),
        f.port
    );
    if table.backends().is_empty() {
        let _ = writeln!(s, "    {matcher} drop");
    } else {
        let addrs = table
            .backends()
            .iter()
            .map(|b| b.parse().map_err(|_| MaglevError::NotAnAddress(b.clone())))
            .collect::<Result<Vec<Ipv4Addr>, _>>()?;
        let elements: Vec<String> = table
            .slots()
            .iter()
            .enumerate()
            .map(|(slot, &i)| format!("{slot} : {}", addrs[i as usize]))
            .collect();
        let _ = writeln!(
            s,
            "    {matcher} dnat ip to jhash {key} mod {m} seed {seed:#x} map {{ {elements} }} : {port}",
            key = f.key.nft(),
            m = table.size().get(),
            seed = f.seed,
            elements = elements.join(", "),
            port = f.target_port,
        );
    }
    s.push_str("  }\n}\n");
    Ok(s)
}

/// A table whose keys are the backends' addresses, ready for [`render_nft`].
pub fn nft_backends(
    backends: &BTreeSet<Ipv4Addr>,
    size: TableSize,
) -> Result<MaglevTable, MaglevError> {
    let keys: Vec<String> = backends.iter().map(Ipv4Addr::to_string).collect();
    MaglevTable::build(&keys, size)
}

/// The slot the kernel's `jhash <key> mod M seed <seed>` picks for `data`
/// (`nft_jhash_eval`: Linux `jhash`, then `reciprocal_scale` onto `0..M`).
pub fn nft_jhash_slot(data: &[u8], seed: u32, size: TableSize) -> u32 {
    let h = linux_jhash(data, seed);
    ((u64::from(h) * u64::from(size.get())) >> 32) as u32
}

/// Linux `jhash()` (include/linux/jhash.h, Bob Jenkins' lookup3), written
/// here because no kept library reproduces the kernel's variant. Full
/// 12-byte blocks are read in CPU byte order, as the kernel does; the tail
/// (all of any key up to 12 bytes) byte by byte.
fn linux_jhash(key: &[u8], seed: u32) -> u32 {
    let init = 0xdead_beef_u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(seed);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut k = key;
    let word = |s: &[u8]| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]);
    while k.len() > 12 {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        jhash_mix(&mut a, &mut b, &mut c);
        k = &k[12..];
    }
    if k.is_empty() {
        return c;
    }
    for (i, &byte) in k.iter().enumerate() {
        let v = u32::from(byte) << (8 * (i % 4));
        match i / 4 {
            0 => a = a.wrapping_add(v),
            1 => b = b.wrapping_add(v),
            _ => c = c.wrapping_add(v),
        }
    }
    jhash_final(&mut a, &mut b, &mut c);
    c
}

fn jhash_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c) ^ c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c) ^ c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn jhash_final(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: [&str; 4] = ["10.1.0.8", "10.1.0.5", "10.1.0.4", "10.1.0.6"];

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.1.{}.{}", i / 250, i % 250 + 1))
            .collect()
    }

    fn table(keys: &[String], size: TableSize) -> MaglevTable {
        MaglevTable::build(keys, size).unwrap()
    }

    #[test]
    fn sizes_must_be_prime() {
        assert!(TableSize::new(4093).is_ok());
        assert!(TableSize::new(65537).is_ok());
        assert_eq!(TableSize::new(4096), Err(MaglevError::NotPrime(4096)));
        assert_eq!(TableSize::new(1), Err(MaglevError::NotPrime(1)));
        assert_eq!(TableSize::new(2), Err(MaglevError::NotPrime(2)));
    }

    #[test]
    fn refuses_duplicates_and_overfull_tables() {
        let dup = ["a", "b", "a"];
        assert_eq!(
            MaglevTable::build(&dup, TableSize::DEFAULT),
            Err(MaglevError::Duplicate("a".into()))
        );
        let seven = TableSize::new(7).unwrap();
        assert!(matches!(
            MaglevTable::build(&names(7), seven),
            Err(MaglevError::TooManyBackends { .. })
        ));
    }

    #[test]
    fn is_deterministic_and_order_independent() {
        let keys = names(9);
        let mut reversed = keys.clone();
        reversed.reverse();
        let a = table(&keys, TableSize::DEFAULT);
        assert_eq!(a, table(&reversed, TableSize::DEFAULT));
        // A slot's owner is part of the contract across versions and hosts
        // (routers must agree): pin a few.
        let pinned: Vec<&str> = [0, 1, 2, 4092]
            .iter()
            .map(|&s| a.backend(s).unwrap())
            .collect();
        assert_eq!(pinned, PINNED);
    }

    #[test]
    fn shares_differ_by_at_most_one_slot() {
        for n in [1, 2, 3, 10, 37] {
            let t = table(&names(n), TableSize::DEFAULT);
            let shares = t.shares();
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(max - min <= 1, "{n} backends: shares {min}..{max}");
            assert_eq!(shares.iter().sum::<u32>(), 4093);
        }
    }

    #[test]
    fn no_backends_means_an_empty_table() {
        let t = table(&[], TableSize::DEFAULT);
        assert_eq!(t.backend(0), None);
        assert!(t.slots().is_empty());
    }

    /// Removing one of N backends must move its own slots (≈ M/N) and only
    /// few others: the paper reports a small extra disruption. Measured over
    /// every backend of several N; asserted: the removed backend's slots all
    /// move, and the extra is below 1 % of the table (M = 65537; measured
    /// 0.12–0.51 % for N = 5…50).
    #[test]
    fn removing_a_backend_moves_little_more_than_its_share() {
        let size = TableSize::LARGE;
        let m = size.get();
        for n in [5, 10, 50] {
            let keys = names(n);
            let before = table(&keys, size);
            let mut extra_total = 0u64;
            let mut extra_max = 0u32;
            for removed in &keys {
                let rest: Vec<String> = keys.iter().filter(|k| *k != removed).cloned().collect();
                let after = table(&rest, size);
                let own = (0..m)
                    .filter(|&s| before.backend(s) == Some(removed.as_str()))
                    .count() as u32;
                let moved = before.moved_slots(&after);
                assert!(moved >= own, "the removed backend's slots must all move");
                let extra = moved - own;
                extra_total += u64::from(extra);
                extra_max = extra_max.max(extra);
            }
            let mean = extra_total as f64 / n as f64 / f64::from(m);
            eprintln!(
                "maglev M={m} N={n}: removing one backend moves its share ({:.2} %) plus {:.3} % on average, {:.3} % at worst",
                100.0 / n as f64,
                mean * 100.0,
                f64::from(extra_max) / f64::from(m) * 100.0
            );
            assert!(mean < 0.01, "N={n}: mean extra disruption {mean}");
            assert!(
                f64::from(extra_max) / f64::from(m) < 0.01,
                "N={n}: worst extra {extra_max}"
            );
        }
    }

    /// Adding a backend: it takes ≈ M/(N+1) slots, and the slots that move are
    /// mostly those it takes.
    #[test]
    fn adding_a_backend_moves_little_more_than_its_share() {
        let size = TableSize::LARGE;
        let m = size.get();
        for n in [4, 9, 49] {
            let keys = names(n + 1);
            let before = table(&keys[..n], size);
            let after = table(&keys, size);
            let new = keys[n].as_str();
            let taken = (0..m).filter(|&s| after.backend(s) == Some(new)).count() as u32;
            let moved = before.moved_slots(&after);
            let extra = moved - taken;
            eprintln!(
                "maglev M={m} N={n}+1: the new backend takes {:.2} %, {:.3} % more move",
                f64::from(taken) / f64::from(m) * 100.0,
                f64::from(extra) / f64::from(m) * 100.0
            );
            assert!(moved >= taken);
            assert!(
                f64::from(extra) / f64::from(m) < 0.01,
                "N={n}: extra {extra}"
            );
        }
    }

    #[test]
    fn renders_one_dnat_rule_over_every_slot() {
        let backends: BTreeSet<Ipv4Addr> = ["10.9.0.1", "10.9.0.2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let size = TableSize::new(7).unwrap();
        let t = nft_backends(&backends, size).unwrap();
        let f = NftForward {
            table: "vpno-inbound".into(),
            protocol: Protocol::Tcp,
            address: "10.8.0.1".parse().unwrap(),
            port: 80,
            target_port: 8080,
            key: FlowKey::SourceAddressAndPort,
            seed: 0x1234,
            hook: NatHook::Prerouting,
        };
        let nft = render_nft(&f, &t).unwrap();
        assert!(nft.starts_with("add table ip vpno-inbound\ndelete table ip vpno-inbound\n"));
        let rule = nft.lines().find(|l| l.contains("dnat ip to")).unwrap();
        assert!(rule.contains("ip daddr 10.8.0.1 tcp dport 80 dnat ip to jhash ip saddr . th sport mod 7 seed 0x1234 map {"));
        assert!(rule.ends_with("} : 8080"));
        for slot in 0..7 {
            assert!(
                rule.contains(&format!("{slot} : {}", t.backend(slot).unwrap())),
                "slot {slot}"
            );
        }
        let empty = render_nft(&f, &nft_backends(&BTreeSet::new(), size).unwrap()).unwrap();
        assert!(empty.contains("ip daddr 10.8.0.1 tcp dport 80 drop"));
        let named = MaglevTable::build(&["pod-a"], size).unwrap();
        assert_eq!(
            render_nft(&f, &named),
            Err(MaglevError::NotAnAddress("pod-a".into()))
        );
    }

    /// The kernel's own choice is checked against this in the netns test
    /// (crates/net/tests/maglev_nft.rs); here only its shape.
    #[test]
    fn jhash_slot_stays_in_range_and_depends_on_every_input() {
        let size = TableSize::DEFAULT;
        let key = FlowKey::SourceAddressAndPort.bytes("192.0.2.7".parse().unwrap(), 40000);
        assert_eq!(key, vec![192, 0, 2, 7, 0x9c, 0x40, 0, 0]);
        let s = nft_jhash_slot(&key, 1, size);
        assert!(s < size.get());
        assert_ne!(linux_jhash(&key, 1), linux_jhash(&key, 2));
        let other = FlowKey::SourceAddressAndPort.bytes("192.0.2.7".parse().unwrap(), 40001);
        assert_ne!(linux_jhash(&key, 1), linux_jhash(&other, 1));
        assert_eq!(linux_jhash(&[], 0), 0xdead_beef);
    }
}
