//! Where the members of one gateway network live: the first slice of the
//! network (the one [`SliceLayout::with_infrastructure_slice`] reserves)
//! holds the VIP, the routers, the DNS resolvers and the gateways, at fixed
//! offsets, so every party (controller, CNI plugin, routers, node agents)
//! computes the same addresses from the network alone, with no allocation
//! to agree on. Client pods take addresses from their node's slice.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::slices::{DEFAULT_SLICE_PREFIX, SliceError, SliceLayout};

/// Offset of the VIP in the network.
const VIP_OFFSET: u32 = 1;
/// Offset of router 0; routers take [`ROUTER_OFFSET`] .. [`RESOLVER_OFFSET`].
const ROUTER_OFFSET: u32 = 2;
/// Offset of resolver 0; resolvers take [`RESOLVER_OFFSET`] .. [`GATEWAY_OFFSET`].
const RESOLVER_OFFSET: u32 = 10;
/// Offset of gateway 0; gateways take the rest of the infrastructure slice.
const GATEWAY_OFFSET: u32 = 16;

/// The most routers a network has room for.
pub const MAX_ROUTERS: u32 = RESOLVER_OFFSET - ROUTER_OFFSET;
/// The most DNS resolvers a network has room for.
pub const MAX_RESOLVERS: u32 = GATEWAY_OFFSET - RESOLVER_OFFSET;

/// The VIP's MAC address, the same on every router (like VRRP's virtual
/// MAC; the router's `--vip-mac` default).
pub const VIP_MAC: [u8; 6] = [0x02, 0x56, 0x50, 0x4e, 0x4f, 0x01];

/// The MAC address router `index` pins on its gateway-network interface
/// (`vpn-operator router --interface-mac`), so gateways (`--router-mac`) and
/// the node's anti-spoofing rules know the routers' MACs without asking:
/// `02:56:50:52:00:<index>` (locally administered, unicast).
pub fn router_mac(index: u32) -> [u8; 6] {
    [0x02, 0x56, 0x50, 0x52, (index >> 8) as u8, index as u8]
}

/// Why a member has no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The network cannot be cut into slices.
    #[error(transparent)]
    Slices(#[from] SliceError),
    /// The infrastructure slice is too small for the asked member.
    #[error(
        "gateway network {network} has room for {capacity} {what}s in its first /{slice} (asked for {what} {index})"
    )]
    NoRoom {
        /// The network.
        network: Ipv4Net,
        /// The slice prefix.
        slice: u8,
        /// `router`, `resolver` or `gateway`.
        what: &'static str,
        /// The asked index.
        index: u32,
        /// How many fit.
        capacity: u32,
    },
}

/// The fixed addresses of one gateway network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayLayout {
    /// How the network is sliced (the first slice reserved for members).
    pub slices: SliceLayout,
    /// The infrastructure slice.
    pub infrastructure: Ipv4Net,
}

impl GatewayLayout {
    /// The layout of `network` with `/slice_prefix` slices.
    pub fn new(network: Ipv4Net, slice_prefix: u8) -> Result<Self, LayoutError> {
        let network = network.trunc();
        let slices = SliceLayout::with_infrastructure_slice(network, slice_prefix)?;
        let infrastructure = slices.reserved[0];
        Ok(Self {
            slices,
            infrastructure,
        })
    }

    /// The layout of `network` with the default /26 slices.
    pub fn with_default_slices(network: Ipv4Net) -> Result<Self, LayoutError> {
        Self::new(network, DEFAULT_SLICE_PREFIX)
    }

    /// The whole network.
    pub fn network(&self) -> Ipv4Net {
        self.slices.network
    }

    /// The VIP clients route through.
    pub fn vip(&self) -> Ipv4Addr {
        self.at(VIP_OFFSET)
    }

    /// Router `index`'s address.
    pub fn router(&self, index: u32) -> Result<Ipv4Addr, LayoutError> {
        self.member("router", ROUTER_OFFSET, MAX_ROUTERS, index)
    }

    /// Resolver `index`'s address.
    pub fn resolver(&self, index: u32) -> Result<Ipv4Addr, LayoutError> {
        self.member("resolver", RESOLVER_OFFSET, MAX_RESOLVERS, index)
    }

    /// Gateway `ordinal`'s address.
    pub fn gateway(&self, ordinal: u32) -> Result<Ipv4Addr, LayoutError> {
        self.member("gateway", GATEWAY_OFFSET, self.gateway_capacity(), ordinal)
    }

    /// How many gateways fit (the infrastructure slice minus its fixed
    /// members and its broadcast-style last address).
    pub fn gateway_capacity(&self) -> u32 {
        self.room_from(GATEWAY_OFFSET)
    }

    /// `address` with the network's prefix length, as pods carry it.
    pub fn with_prefix(&self, address: Ipv4Addr) -> Ipv4Net {
        Ipv4Net::new(address, self.network().prefix_len()).expect("prefix of a valid network")
    }

    fn member(
        &self,
        what: &'static str,
        offset: u32,
        capacity: u32,
        index: u32,
    ) -> Result<Ipv4Addr, LayoutError> {
        let capacity = capacity.min(self.room_from(offset));
        if index >= capacity {
            return Err(LayoutError::NoRoom {
                network: self.network(),
                slice: self.slices.slice_prefix,
                what,
                index,
                capacity,
            });
        }
        Ok(self.at(offset + index))
    }

    /// Addresses left in the infrastructure slice from `offset` on (tiny
    /// slices cannot hold every member kind).
    fn room_from(&self, offset: u32) -> u32 {
        let size = 1u32 << (32 - u32::from(self.infrastructure.prefix_len()));
        size.saturating_sub(offset + 1)
    }

    fn at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.infrastructure.network()) + offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(net: &str) -> GatewayLayout {
        GatewayLayout::with_default_slices(net.parse().unwrap()).unwrap()
    }

    #[test]
    fn default_network_places_members_at_fixed_offsets() {
        let l = layout("192.168.24.0/22");
        assert_eq!(l.vip(), Ipv4Addr::new(192, 168, 24, 1));
        assert_eq!(l.router(0).unwrap(), Ipv4Addr::new(192, 168, 24, 2));
        assert_eq!(l.router(7).unwrap(), Ipv4Addr::new(192, 168, 24, 9));
        assert_eq!(l.resolver(0).unwrap(), Ipv4Addr::new(192, 168, 24, 10));
        assert_eq!(l.gateway(0).unwrap(), Ipv4Addr::new(192, 168, 24, 16));
        assert_eq!(l.gateway_capacity(), 47);
        assert_eq!(l.gateway(46).unwrap(), Ipv4Addr::new(192, 168, 24, 62));
        assert_eq!(l.with_prefix(l.vip()).to_string(), "192.168.24.1/22");
        assert_eq!(l.infrastructure.to_string(), "192.168.24.0/26");
    }

    #[test]
    fn members_beyond_the_slice_are_refused_with_the_capacity() {
        let l = layout("10.9.0.0/22");
        let err = l.gateway(47).unwrap_err();
        assert!(err.to_string().contains("room for 47 gateways"), "{err}");
        assert!(l.router(8).is_err());
        assert!(l.resolver(6).is_err());
    }

    #[test]
    fn members_never_land_in_a_client_slice() {
        let l = layout("10.9.0.0/24");
        let client_slices: Vec<Ipv4Net> = l
            .slices
            .slices()
            .unwrap()
            .filter(|s| *s != l.infrastructure)
            .collect();
        let mut members = vec![l.vip()];
        members.extend((0..MAX_ROUTERS).map(|i| l.router(i).unwrap()));
        members.extend((0..l.gateway_capacity()).map(|i| l.gateway(i).unwrap()));
        for m in members {
            assert!(l.infrastructure.contains(&m), "{m}");
            assert!(!client_slices.iter().any(|s| s.contains(&m)), "{m}");
        }
    }

    #[test]
    fn an_unaligned_network_is_truncated() {
        let l = layout("192.168.25.7/22");
        assert_eq!(l.network().to_string(), "192.168.24.0/22");
        assert_eq!(l.vip(), Ipv4Addr::new(192, 168, 24, 1));
    }

    #[test]
    fn router_macs_are_distinct_unicast_and_not_the_vip_mac() {
        let macs: Vec<[u8; 6]> = (0..MAX_ROUTERS).map(router_mac).collect();
        assert_eq!(router_mac(1), [0x02, 0x56, 0x50, 0x52, 0, 1]);
        for (i, m) in macs.iter().enumerate() {
            assert_eq!(m[0] & 0b11, 0b10, "locally administered unicast");
            assert_ne!(*m, VIP_MAC);
            assert!(!macs[..i].contains(m));
        }
    }
}
