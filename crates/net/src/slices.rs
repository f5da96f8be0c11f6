//! Per-node slices of the gateway network: each node's client pods take
//! addresses from its own slice, so nodes never coordinate per address.
//!
//! [`allocate`] is deterministic (same nodes and prior allocations, same
//! answer) and stable (a node keeps its slice while it exists; nodes coming or
//! going never move another node's slice).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::cidr::overlaps;

/// The default gateway network.
pub const DEFAULT_NETWORK: &str = "192.168.24.0/22";
/// The default slice size: /26 = 64 addresses per node, 16 slices in the default network.
pub const DEFAULT_SLICE_PREFIX: u8 = 26;

/// How the gateway network is cut up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceLayout {
    /// The whole gateway network (one L2 segment across nodes).
    pub network: Ipv4Net,
    /// Prefix length of each node's slice.
    pub slice_prefix: u8,
    /// Ranges no node may get (the VIP, routers' and gateways' addresses).
    pub reserved: Vec<Ipv4Net>,
}

/// Why slices cannot be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    /// The slice prefix is not longer than the network's, or beyond /30.
    #[error("slice prefix /{slice} does not fit network {network} (must be /{min}../30)", min = network.prefix_len() + 1)]
    BadPrefix {
        /// The network.
        network: Ipv4Net,
        /// The asked slice prefix.
        slice: u8,
    },
    /// More nodes than free slices.
    #[error("gateway network {network} has no free /{slice} slice for nodes {nodes:?}")]
    Exhausted {
        /// The network.
        network: Ipv4Net,
        /// The slice prefix.
        slice: u8,
        /// Nodes left without a slice (sorted).
        nodes: Vec<String>,
    },
}

impl SliceLayout {
    /// The layout with the first slice reserved for the network's own
    /// members (VIP, routers, gateways).
    pub fn with_infrastructure_slice(
        network: Ipv4Net,
        slice_prefix: u8,
    ) -> Result<Self, SliceError> {
        let mut layout = SliceLayout {
            network,
            slice_prefix,
            reserved: Vec::new(),
        };
        let first = layout.slices()?.next();
        layout.reserved.extend(first);
        Ok(layout)
    }

    /// Every slice of the network, in address order.
    pub fn slices(&self) -> Result<impl Iterator<Item = Ipv4Net> + '_, SliceError> {
        if self.slice_prefix <= self.network.prefix_len() || self.slice_prefix > 30 {
            return Err(SliceError::BadPrefix {
                network: self.network,
                slice: self.slice_prefix,
            });
        }
        // Checked above: slice_prefix is in (network prefix, 30].
        Ok(self
            .network
            .trunc()
            .subnets(self.slice_prefix)
            .expect("slice prefix checked"))
    }

    fn usable(&self, slice: &Ipv4Net) -> bool {
        slice.prefix_len() == self.slice_prefix
            && self.network.contains(slice)
            && slice.network() == slice.trunc().network()
            && !self.reserved.iter().any(|r| overlaps(r, slice))
    }
}

/// Slices for `nodes`: a node keeps a valid prior slice (inside the
/// network, the right size, not reserved, not claimed twice — the
/// alphabetically first claimant wins); every other node, in name order, gets
/// the lowest free slice. Nodes not in `nodes` lose theirs.
pub fn allocate(
    layout: &SliceLayout,
    nodes: &BTreeSet<String>,
    existing: &BTreeMap<String, Ipv4Net>,
) -> Result<BTreeMap<String, Ipv4Net>, SliceError> {
    let all: Vec<Ipv4Net> = layout.slices()?.collect();
    let mut taken: BTreeSet<Ipv4Net> = BTreeSet::new();
    let mut out = BTreeMap::new();
    for node in nodes {
        if let Some(slice) = existing.get(node)
            && layout.usable(slice)
            && taken.insert(*slice)
        {
            out.insert(node.clone(), *slice);
        }
    }
    let mut free = all
        .into_iter()
        .filter(|s| layout.usable(s) && !taken.contains(s));
    let mut unplaced = Vec::new();
    let homeless: Vec<&String> = nodes.iter().filter(|n| !out.contains_key(*n)).collect();
    for node in homeless {
        match free.next() {
            Some(slice) => {
                out.insert(node.clone(), slice);
            }
            None => unplaced.push(node.clone()),
        }
    }
    if !unplaced.is_empty() {
        return Err(SliceError::Exhausted {
            network: layout.network,
            slice: layout.slice_prefix,
            nodes: unplaced,
        });
    }
    Ok(out)
}

/// Whether `addr` may be given to a client pod from `slice` of `network`:
/// inside the slice, and neither the network's own network nor broadcast
/// address (the whole network is one segment, so a slice's edges are fine).
pub fn assignable(network: &Ipv4Net, slice: &Ipv4Net, addr: Ipv4Addr) -> bool {
    slice.contains(&addr) && addr != network.network() && addr != network.broadcast()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> SliceLayout {
        SliceLayout::with_infrastructure_slice(
            DEFAULT_NETWORK.parse().unwrap(),
            DEFAULT_SLICE_PREFIX,
        )
        .unwrap()
    }

    fn nodes(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn fresh_nodes_get_lowest_slices_in_name_order_after_the_reserved_one() {
        let got = allocate(&layout(), &nodes(&["b", "a", "c"]), &BTreeMap::new()).unwrap();
        assert_eq!(got["a"], n("192.168.24.64/26"));
        assert_eq!(got["b"], n("192.168.24.128/26"));
        assert_eq!(got["c"], n("192.168.24.192/26"));
    }

    #[test]
    fn allocation_is_deterministic() {
        let l = layout();
        let ns = nodes(&["x", "y", "z", "w"]);
        assert_eq!(
            allocate(&l, &ns, &BTreeMap::new()).unwrap(),
            allocate(&l, &ns, &BTreeMap::new()).unwrap()
        );
    }

    #[test]
    fn existing_nodes_keep_slices_when_others_come_and_go() {
        let l = layout();
        let first = allocate(&l, &nodes(&["a", "b", "c"]), &BTreeMap::new()).unwrap();
        // b leaves; a new node "aa" sorts before c but must not take c's slice.
        let second = allocate(&l, &nodes(&["a", "aa", "c"]), &first).unwrap();
        assert_eq!(second["a"], first["a"]);
        assert_eq!(second["c"], first["c"]);
        assert_eq!(second["aa"], first["b"], "the freed slice is reused");
        assert!(!second.contains_key("b"));
    }

    #[test]
    fn invalid_or_duplicate_prior_slices_are_reassigned() {
        let l = layout();
        let prior = BTreeMap::from([
            ("a".to_string(), n("192.168.24.128/26")),
            ("b".to_string(), n("192.168.24.128/26")), // duplicate of a's
            ("c".to_string(), n("10.0.0.0/26")),       // outside
            ("d".to_string(), n("192.168.24.0/26")),   // reserved
            ("e".to_string(), n("192.168.25.0/25")),   // wrong size
        ]);
        let got = allocate(&l, &nodes(&["a", "b", "c", "d", "e"]), &prior).unwrap();
        assert_eq!(got["a"], n("192.168.24.128/26"));
        let slices: BTreeSet<_> = got.values().collect();
        assert_eq!(slices.len(), 5, "all distinct: {got:?}");
        for s in got.values() {
            assert!(l.usable(s), "{s}");
        }
        assert_eq!(got["b"], n("192.168.24.64/26"));
    }

    #[test]
    fn too_many_nodes_names_the_ones_left_out() {
        let l = layout(); // 16 slices, 1 reserved
        let names: Vec<String> = (0..17).map(|i| format!("node-{i:02}")).collect();
        let ns: BTreeSet<String> = names.iter().cloned().collect();
        let err = allocate(&l, &ns, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err,
            SliceError::Exhausted {
                network: l.network,
                slice: 26,
                nodes: vec!["node-15".into(), "node-16".into()]
            }
        );
        let ok: BTreeSet<String> = names[..15].iter().cloned().collect();
        assert_eq!(allocate(&l, &ok, &BTreeMap::new()).unwrap().len(), 15);
    }

    #[test]
    fn bad_slice_prefixes_are_rejected() {
        let net = n(DEFAULT_NETWORK);
        for p in [22, 20, 31, 32] {
            assert!(matches!(
                SliceLayout::with_infrastructure_slice(net, p),
                Err(SliceError::BadPrefix { .. })
            ));
        }
    }

    /// Random churn: after every step, slices are distinct, usable, and every
    /// surviving node kept its slice.
    #[test]
    fn churn_keeps_survivors_stable() {
        let l = layout();
        let mut state: BTreeMap<String, Ipv4Net> = BTreeMap::new();
        let mut seed = 12345u64;
        for _ in 0..300 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let ns: BTreeSet<String> = (0..20)
                .filter(|i| (seed >> (i + 20)) & 1 == 1)
                .take(15)
                .map(|i| format!("n{i}"))
                .collect();
            let next = allocate(&l, &ns, &state).unwrap();
            for (node, slice) in &next {
                if let Some(old) = state.get(node) {
                    assert_eq!(old, slice, "{node} moved");
                }
                assert!(l.usable(slice));
            }
            assert_eq!(next.values().collect::<BTreeSet<_>>().len(), next.len());
            assert_eq!(next.keys().cloned().collect::<BTreeSet<_>>(), ns);
            state = next;
        }
    }

    #[test]
    fn assignable_skips_only_the_networks_edges() {
        let net = n("192.168.24.0/22");
        let first = n("192.168.24.0/26");
        let last = n("192.168.27.192/26");
        assert!(!assignable(&net, &first, "192.168.24.0".parse().unwrap()));
        assert!(assignable(&net, &first, "192.168.24.63".parse().unwrap()));
        assert!(assignable(&net, &last, "192.168.27.192".parse().unwrap()));
        assert!(!assignable(&net, &last, "192.168.27.255".parse().unwrap()));
        assert!(!assignable(&net, &first, "192.168.24.64".parse().unwrap()));
    }
}
