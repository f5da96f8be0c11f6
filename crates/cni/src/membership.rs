//! Which part a pod plays in a MaskGateway's network, decided from what is
//! known about it: its annotations, its labels and its namespace's labels.
//!
//! - A *role* pod is one of the MaskGateway's own gateways or routers (in
//!   its namespace, labelled `vpn.beebs.dev/mask-gateway: <name>` and
//!   `vpn.beebs.dev/role: gateway|router` by the controller, which also
//!   gives it `vpn.beebs.dev/network-address`). It gets exactly that address.
//! - A *client* opts in with the annotation `vpn.beebs.dev/gateway`, or is
//!   chosen by the MaskGateway's `clients` selectors. Pods carrying a role
//!   label are never chosen by selectors (they are some gateway's members).
//! - Every other pod is left alone.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use vpno_api::gateway::ClientsSpec;
use vpno_api::names::{
    GATEWAY_LABEL, GATEWAY_ROLE_LABEL, NETWORK_ADDRESS_ANNOTATION, ROLE_GATEWAY, ROLE_ROUTER,
};

use crate::config::GatewayRef;
use crate::plan::opts_in;

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A gateway (tunnel + agent).
    Gateway,
    /// A router (holds or stands by for the VIP).
    Router,
}

/// What is known about a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// Its labels (empty when only the runtime's annotations are known).
    pub labels: BTreeMap<String, String>,
    /// Its namespace's labels, when looked up.
    pub namespace_labels: Option<BTreeMap<String, String>>,
}

/// The part a pod plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Not ours: passed through untouched.
    Outside,
    /// A client: an address from the node's slice, routes via the VIP.
    Client,
    /// A member with its fixed address.
    Role {
        /// Gateway or router.
        role: Role,
        /// Its address on the gateway network.
        address: Ipv4Addr,
    },
}

/// A label, else an annotation, of the pod.
fn tag<'a>(facts: &'a PodFacts, key: &str) -> Option<&'a str> {
    facts
        .labels
        .get(key)
        .or_else(|| facts.annotations.get(key))
        .map(|v| v.trim())
}

/// Decides the pod's membership of `gateway` (network `network`, selectors
/// `clients`); `Err` says why a role pod cannot be attached.
pub fn decide(
    facts: &PodFacts,
    pod_namespace: &str,
    gateway: &GatewayRef,
    network: Ipv4Net,
    clients: Option<&ClientsSpec>,
) -> Result<Membership, String> {
    let role = tag(facts, GATEWAY_ROLE_LABEL);
    if let Some(role) = role {
        let ours = pod_namespace == gateway.namespace
            && tag(facts, GATEWAY_LABEL) == Some(gateway.name.as_str());
        let role = match role {
            ROLE_GATEWAY => Role::Gateway,
            ROLE_ROUTER => Role::Router,
            _ => return Ok(Membership::Outside),
        };
        if !ours {
            return Ok(Membership::Outside);
        }
        let address = member_address(facts, network)?;
        return Ok(Membership::Role { role, address });
    }
    if opts_in(&facts.annotations, pod_namespace, gateway) {
        return Ok(Membership::Client);
    }
    let Some(clients) = clients else {
        return Ok(Membership::Outside);
    };
    let namespace_ok = match &clients.namespace_selector {
        None => pod_namespace == gateway.namespace,
        Some(s) => facts
            .namespace_labels
            .as_ref()
            .is_some_and(|l| s.matches(l)),
    };
    let pod_ok = clients
        .pod_selector
        .as_ref()
        .is_none_or(|s| s.matches(&facts.labels));
    Ok(if namespace_ok && pod_ok {
        Membership::Client
    } else {
        Membership::Outside
    })
}

/// A role pod's address from [`NETWORK_ADDRESS_ANNOTATION`]: inside the
/// network, neither its first nor its last address.
fn member_address(facts: &PodFacts, network: Ipv4Net) -> Result<Ipv4Addr, String> {
    let raw = facts
        .annotations
        .get(NETWORK_ADDRESS_ANNOTATION)
        .ok_or_else(|| format!("member pod has no {NETWORK_ADDRESS_ANNOTATION} annotation"))?
        .trim();
    let address = raw
        .parse::<Ipv4Net>()
        .map(|n| n.addr())
        .or_else(|_| raw.parse::<Ipv4Addr>())
        .map_err(|_| format!("{NETWORK_ADDRESS_ANNOTATION} {raw:?} is not an IPv4 address"))?;
    if !network.contains(&address) || address == network.network() || address == network.broadcast()
    {
        return Err(format!(
            "{NETWORK_ADDRESS_ANNOTATION} {raw:?} is not a host address of the gateway network {network}"
        ));
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpno_api::gateway::LabelSelector;
    use vpno_api::names::GATEWAY_ANNOTATION;

    fn gw() -> GatewayRef {
        GatewayRef {
            namespace: "vpn".into(),
            name: "egress".into(),
        }
    }

    fn net() -> Ipv4Net {
        "192.168.24.0/22".parse().unwrap()
    }

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn member(role: &str, gateway: &str, address: Option<&str>) -> PodFacts {
        let mut annotations = BTreeMap::new();
        if let Some(a) = address {
            annotations.insert(NETWORK_ADDRESS_ANNOTATION.to_string(), a.to_string());
        }
        PodFacts {
            annotations,
            labels: map(&[(GATEWAY_ROLE_LABEL, role), (GATEWAY_LABEL, gateway)]),
            namespace_labels: None,
        }
    }

    fn selector(kv: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(map(kv)),
            match_expressions: None,
        }
    }

    #[test]
    fn members_get_their_annotated_address() {
        let f = member("router", "egress", Some("192.168.24.2/22"));
        assert_eq!(
            decide(&f, "vpn", &gw(), net(), None),
            Ok(Membership::Role {
                role: Role::Router,
                address: "192.168.24.2".parse().unwrap()
            })
        );
        let f = member("gateway", "egress", Some("192.168.24.16"));
        assert!(matches!(
            decide(&f, "vpn", &gw(), net(), None),
            Ok(Membership::Role {
                role: Role::Gateway,
                ..
            })
        ));
    }

    #[test]
    fn members_of_another_gateway_or_namespace_are_outside() {
        let f = member("gateway", "other", Some("192.168.24.16/22"));
        assert_eq!(
            decide(&f, "vpn", &gw(), net(), None),
            Ok(Membership::Outside)
        );
        let f = member("gateway", "egress", Some("192.168.24.16/22"));
        assert_eq!(
            decide(&f, "apps", &gw(), net(), None),
            Ok(Membership::Outside)
        );
        let f = member("dns", "egress", Some("192.168.24.10/22"));
        assert_eq!(
            decide(&f, "vpn", &gw(), net(), None),
            Ok(Membership::Outside)
        );
        // A member is never a selector's client, even of an all-pods selector.
        let all = ClientsSpec::default();
        let f = member("gateway", "other", Some("192.168.24.16/22"));
        assert_eq!(
            decide(&f, "vpn", &gw(), net(), Some(&all)),
            Ok(Membership::Outside)
        );
    }

    #[test]
    fn a_member_without_a_good_address_is_an_error() {
        for (address, says) in [
            (None, "has no"),
            (Some("nonsense"), "not an IPv4"),
            (Some("10.0.0.5/22"), "not a host address"),
            (Some("192.168.24.0/22"), "not a host address"),
            (Some("192.168.27.255"), "not a host address"),
        ] {
            let err = decide(
                &member("router", "egress", address),
                "vpn",
                &gw(),
                net(),
                None,
            )
            .unwrap_err();
            assert!(err.contains(says), "{address:?}: {err}");
        }
    }

    #[test]
    fn clients_by_annotation_or_selectors() {
        let annotated = PodFacts {
            annotations: map(&[(GATEWAY_ANNOTATION, "vpn/egress")]),
            ..Default::default()
        };
        assert_eq!(
            decide(&annotated, "apps", &gw(), net(), None),
            Ok(Membership::Client)
        );
        let plain = PodFacts {
            labels: map(&[("app", "web")]),
            namespace_labels: Some(map(&[("team", "a")])),
            ..Default::default()
        };
        assert_eq!(
            decide(&plain, "apps", &gw(), net(), None),
            Ok(Membership::Outside)
        );

        // No namespace selector: the MaskGateway's own namespace only.
        let pods = ClientsSpec {
            namespace_selector: None,
            pod_selector: Some(selector(&[("app", "web")])),
        };
        assert_eq!(
            decide(&plain, "vpn", &gw(), net(), Some(&pods)),
            Ok(Membership::Client)
        );
        assert_eq!(
            decide(&plain, "apps", &gw(), net(), Some(&pods)),
            Ok(Membership::Outside)
        );

        let namespaces = ClientsSpec {
            namespace_selector: Some(selector(&[("team", "a")])),
            pod_selector: None,
        };
        assert_eq!(
            decide(&plain, "apps", &gw(), net(), Some(&namespaces)),
            Ok(Membership::Client)
        );
        let other_team = PodFacts {
            namespace_labels: Some(map(&[("team", "b")])),
            ..plain.clone()
        };
        assert_eq!(
            decide(&other_team, "apps", &gw(), net(), Some(&namespaces)),
            Ok(Membership::Outside)
        );
        let both = ClientsSpec {
            namespace_selector: Some(selector(&[("team", "a")])),
            pod_selector: Some(selector(&[("app", "db")])),
        };
        assert_eq!(
            decide(&plain, "apps", &gw(), net(), Some(&both)),
            Ok(Membership::Outside)
        );
        let unknown_namespace = PodFacts {
            namespace_labels: None,
            ..plain
        };
        assert_eq!(
            decide(&unknown_namespace, "apps", &gw(), net(), Some(&namespaces)),
            Ok(Membership::Outside)
        );
    }
}
