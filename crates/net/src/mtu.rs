//! The gateway network's MTU: the tunnel's MTU, validated against the
//! underlay (node-to-node) MTU minus the VXLAN encapsulation.

/// VXLAN over IPv4: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// VXLAN over IPv6: outer IPv6 (40) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// WireGuard's usual MTU (1500 minus its IPv6-worst-case overhead of 80).
pub const DEFAULT_TUNNEL_MTU: u32 = 1420;
/// Below this, IPv4 hosts are not required to reassemble; refuse to plan it.
pub const MIN_MTU: u32 = 576;

/// The address family of the underlay the VXLAN links run over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underlay {
    /// Nodes talk IPv4.
    V4,
    /// Nodes talk IPv6.
    V6,
}

/// The MTU client pods and the gateway network use, and whether the tunnel's fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtuPlan {
    /// MTU for the bridge, VXLAN links and client interfaces.
    pub mtu: u32,
    /// Why `mtu` is below the tunnel's (absent when the tunnel's fits).
    pub reduced: Option<String>,
}

/// Why no usable MTU exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MtuError {
    /// Underlay minus VXLAN overhead is too small to carry anything useful.
    #[error(
        "underlay MTU {underlay} minus {overhead} bytes of VXLAN overhead leaves {left}, below the minimum {MIN_MTU}"
    )]
    UnderlayTooSmall {
        /// The underlay MTU.
        underlay: u32,
        /// The VXLAN overhead.
        overhead: u32,
        /// What is left (saturating).
        left: u32,
    },
    /// The tunnel MTU asked for is below the minimum.
    #[error("tunnel MTU {0} is below the minimum {MIN_MTU}")]
    TunnelTooSmall(u32),
}

/// Plans the MTU: the tunnel's (`tunnel`, default [`DEFAULT_TUNNEL_MTU`]) when
/// it fits in `underlay_mtu` minus VXLAN overhead; otherwise what fits, with the
/// reason (clients then never send packets the VXLAN links would drop).
pub fn plan(
    tunnel: Option<u32>,
    underlay_mtu: u32,
    underlay: Underlay,
) -> Result<MtuPlan, MtuError> {
    let tunnel = tunnel.unwrap_or(DEFAULT_TUNNEL_MTU);
    if tunnel < MIN_MTU {
        return Err(MtuError::TunnelTooSmall(tunnel));
    }
    let overhead = match underlay {
        Underlay::V4 => VXLAN_OVERHEAD_V4,
        Underlay::V6 => VXLAN_OVERHEAD_V6,
    };
    let left = underlay_mtu.saturating_sub(overhead);
    if left < MIN_MTU {
        return Err(MtuError::UnderlayTooSmall {
            underlay: underlay_mtu,
            overhead,
            left,
        });
    }
    if tunnel <= left {
        return Ok(MtuPlan {
            mtu: tunnel,
            reduced: None,
        });
    }
    Ok(MtuPlan {
        mtu: left,
        reduced: Some(format!(
            "tunnel MTU {tunnel} does not fit the underlay: {underlay_mtu} minus {overhead} bytes of VXLAN overhead is {left}; clients use {left}"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tunnel_fits_a_1500_underlay() {
        assert_eq!(
            plan(None, 1500, Underlay::V4).unwrap(),
            MtuPlan {
                mtu: 1420,
                reduced: None
            }
        );
        assert_eq!(plan(None, 1500, Underlay::V6).unwrap().mtu, 1420);
    }

    #[test]
    fn exact_fit_is_not_reduced() {
        assert_eq!(plan(Some(1450), 1500, Underlay::V4).unwrap().reduced, None);
        assert_eq!(plan(Some(1430), 1500, Underlay::V6).unwrap().reduced, None);
    }

    #[test]
    fn too_big_a_tunnel_is_cut_to_the_underlay_with_a_reason() {
        let p = plan(Some(1420), 1450, Underlay::V4).unwrap();
        assert_eq!(p.mtu, 1400);
        let why = p.reduced.unwrap();
        assert!(
            why.contains("1420") && why.contains("1450") && why.contains("1400"),
            "{why}"
        );
        assert_eq!(plan(Some(1500), 1500, Underlay::V6).unwrap().mtu, 1430);
    }

    #[test]
    fn jumbo_underlay_keeps_the_tunnel_mtu() {
        assert_eq!(plan(Some(1420), 9000, Underlay::V4).unwrap().mtu, 1420);
    }

    #[test]
    fn impossible_sizes_are_errors() {
        assert_eq!(
            plan(None, 600, Underlay::V4),
            Err(MtuError::UnderlayTooSmall {
                underlay: 600,
                overhead: 50,
                left: 550
            })
        );
        assert_eq!(
            plan(None, 10, Underlay::V6),
            Err(MtuError::UnderlayTooSmall {
                underlay: 10,
                overhead: 70,
                left: 0
            })
        );
        assert_eq!(
            plan(Some(500), 1500, Underlay::V4),
            Err(MtuError::TunnelTooSmall(500))
        );
    }
}
