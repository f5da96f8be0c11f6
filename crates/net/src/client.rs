//! The routes a client pod gets on the gateway network: everything except
//! the excludes via the router VIP, and an `unreachable` twin of every such
//! route so that losing the gateway interface never lets the traffic fall
//! through to the pod's primary interface.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::cidr::{complement, overlaps};

/// What a client's routes are computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientNetwork {
    /// The gateway network (on-link for the client).
    pub network: Ipv4Net,
    /// The router VIP, the clients' next hop.
    pub vip: Ipv4Addr,
    /// Destinations that stay on the primary interface (cluster pod CIDRs,
    /// service range, user excludes, and whatever the primary plugin routed).
    pub excludes: Vec<Ipv4Net>,
}

/// The client's routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRoutes {
    /// Prefixes routed via the VIP: `0.0.0.0/0` minus excludes minus the
    /// gateway network (which is on-link), minimal and ascending.
    pub via_vip: Vec<Ipv4Net>,
    /// Prefixes given an `unreachable` route at a worse metric: `0.0.0.0/0`
    /// minus excludes. They outlive the interface, so its loss makes these
    /// destinations unreachable instead of reachable via the primary route.
    pub unreachable: Vec<Ipv4Net>,
}

/// Why a client network cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientRoutesError {
    /// The VIP is not inside the gateway network.
    #[error("router VIP {vip} is outside the gateway network {network}")]
    VipOutsideNetwork {
        /// The VIP.
        vip: Ipv4Addr,
        /// The network.
        network: Ipv4Net,
    },
    /// An exclude overlaps the gateway network.
    #[error("exclude {exclude} overlaps the gateway network {network}")]
    ExcludeOverlapsNetwork {
        /// The exclude.
        exclude: Ipv4Net,
        /// The network.
        network: Ipv4Net,
    },
}

/// Plans the client's routes.
pub fn plan(net: &ClientNetwork) -> Result<ClientRoutes, ClientRoutesError> {
    let network = net.network.trunc();
    if !network.contains(&net.vip) {
        return Err(ClientRoutesError::VipOutsideNetwork {
            vip: net.vip,
            network,
        });
    }
    if let Some(exclude) = net.excludes.iter().find(|e| overlaps(e, &network)) {
        return Err(ClientRoutesError::ExcludeOverlapsNetwork {
            exclude: *exclude,
            network,
        });
    }
    let mut with_network = net.excludes.clone();
    with_network.push(network);
    Ok(ClientRoutes {
        via_vip: complement(&with_network),
        unreachable: complement(&net.excludes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn typical() -> ClientNetwork {
        ClientNetwork {
            network: n("192.168.24.0/22"),
            vip: "192.168.24.1".parse().unwrap(),
            excludes: vec![n("10.244.0.0/16"), n("10.96.0.0/12"), n("172.16.0.0/12")],
        }
    }

    fn has(nets: &[Ipv4Net], a: &str) -> bool {
        let a: Ipv4Addr = a.parse().unwrap();
        nets.iter().any(|n| n.contains(&a))
    }

    #[test]
    fn internet_goes_via_vip_cluster_stays_and_network_is_on_link() {
        let r = plan(&typical()).unwrap();
        for a in [
            "198.51.100.1",
            "8.8.8.8",
            "1.1.1.1",
            "10.0.0.1",
            "192.168.0.1",
            "255.255.255.254",
        ] {
            assert!(has(&r.via_vip, a), "{a} via VIP");
            assert!(has(&r.unreachable, a), "{a} unreachable fallback");
        }
        for a in ["10.244.3.4", "10.96.0.10", "172.20.0.1"] {
            assert!(
                !has(&r.via_vip, a) && !has(&r.unreachable, a),
                "{a} excluded"
            );
        }
        assert!(
            !has(&r.via_vip, "192.168.25.7"),
            "the gateway network is on-link"
        );
        assert!(
            has(&r.unreachable, "192.168.25.7"),
            "but never via the primary"
        );
    }

    #[test]
    fn fallback_covers_every_vip_route() {
        let r = plan(&typical()).unwrap();
        for v in &r.via_vip {
            assert!(r.unreachable.iter().any(|u| u.contains(v)), "{v}");
        }
    }

    #[test]
    fn without_excludes_everything_but_the_network_goes_via_vip() {
        let mut c = typical();
        c.excludes.clear();
        let r = plan(&c).unwrap();
        assert_eq!(r.unreachable, vec![n("0.0.0.0/0")]);
        assert_eq!(r.via_vip.len(), 22, "{:?}", r.via_vip);
    }

    #[test]
    fn vip_outside_network_is_an_error() {
        let mut c = typical();
        c.vip = "10.0.0.1".parse().unwrap();
        assert!(matches!(
            plan(&c),
            Err(ClientRoutesError::VipOutsideNetwork { .. })
        ));
    }

    #[test]
    fn exclude_overlapping_the_network_is_an_error() {
        let mut c = typical();
        c.excludes.push(n("192.168.0.0/16"));
        assert_eq!(
            plan(&c),
            Err(ClientRoutesError::ExcludeOverlapsNetwork {
                exclude: n("192.168.0.0/16"),
                network: n("192.168.24.0/22")
            })
        );
    }
}
