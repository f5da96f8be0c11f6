//! How the lab starts each process: command lines and environment, as pure
//! functions of the plan (the gateway and router agents are `vpn-operator
//! gateway` / `vpn-operator router`; the lab's own services are hidden `lab`
//! subcommands).

use std::path::Path;

use crate::kernel::Daemon;
use crate::plan::{
    ECHO_ADDR, ECHO_PORT, GATEWAY_HTTP_PORT, LAN_IFACE, NodeName, ROUTER_HTTP_PORT, TUNNEL_MTU,
    Topology, WIREGUARD_PORT,
};

/// gluetun's custom-provider variables for gateway `i`, as a provider would
/// hand them out.
pub fn gateway_env(t: &Topology, i: u32) -> Option<Vec<(String, String)>> {
    let g = t.gateway(i)?;
    let p = t.provider(g.provider)?;
    Some(vec![
        ("VPN_SERVICE_PROVIDER".into(), "custom".into()),
        ("VPN_TYPE".into(), "wireguard".into()),
        ("WIREGUARD_PRIVATE_KEY".into(), g.keys.private.clone()),
        ("WIREGUARD_PUBLIC_KEY".into(), p.keys.public.clone()),
        (
            "WIREGUARD_ADDRESSES".into(),
            format!("{}/32", g.tunnel_addr),
        ),
        ("WIREGUARD_ENDPOINT_IP".into(), p.endpoint.to_string()),
        ("WIREGUARD_ENDPOINT_PORT".into(), WIREGUARD_PORT.to_string()),
        ("WIREGUARD_MTU".into(), TUNNEL_MTU.to_string()),
    ])
}

/// The env file (`KEY=VALUE` lines) holding gateway `i`'s variables.
pub fn gateway_env_file(t: &Topology, i: u32) -> Option<String> {
    let env = gateway_env(t, i)?;
    Some(env.iter().map(|(k, v)| format!("{k}={v}\n")).collect())
}

/// Path the probe of every gateway fetches on the echo service (kept out of
/// the echo's log of client egress).
pub const PROBE_PATH: &str = "/gateway-probe";

/// The MAC address router `j` pins on its gateway-network interface, so
/// the gateways can forward client traffic from the routers only.
pub fn router_mac(j: u32) -> String {
    vpno_sys::format_mac(&vpno_net::layout::router_mac(j))
}

/// The command line of gateway `i`'s agent, reading its variables from `env_file`.
pub fn gateway_daemon(t: &Topology, i: u32, binary: &Path, env_file: &Path) -> Option<Daemon> {
    t.gateway(i)?;
    let mut args = vec![
        "gateway".to_string(),
        "--env-file".into(),
        path_str(env_file),
        "--lan-interface".into(),
        LAN_IFACE.into(),
        "--gateway-network".into(),
        t.lan_subnet.to_string(),
        "--listen".into(),
        format!("0.0.0.0:{GATEWAY_HTTP_PORT}"),
        "--probe-url".into(),
        format!("http://{ECHO_ADDR}:{ECHO_PORT}{PROBE_PATH}"),
        // Probe twice per router health interval so an outage shows within
        // about one router interval plus timeout; the timeout stays generous
        // because a tunnel at full load on a busy host answers slowly, and a
        // false "down" moves flows.
        "--probe-interval".into(),
        "500ms".into(),
        "--probe-timeout".into(),
        "900ms".into(),
    ];
    // Client traffic is forwarded only when a router sends it.
    for r in &t.routers {
        args.push("--router-mac".into());
        args.push(router_mac(r.index));
    }
    Some(Daemon {
        netns: t.spec.name.netns(&NodeName::Gateway(i)),
        program: path_str(binary),
        args,
        env: Vec::new(),
    })
}

/// The command line of router `j`'s agent; heartbeats authenticated with
/// the key in `key_file` (the same for every router).
pub fn router_daemon(t: &Topology, j: u32, binary: &Path, key_file: &Path) -> Option<Daemon> {
    let r = t.router(j)?;
    let mut args = vec![
        "router".to_string(),
        "--interface".into(),
        LAN_IFACE.into(),
        "--client-subnet".into(),
        t.lan_subnet.to_string(),
        "--vip".into(),
        format!("{}/{}", t.vip, t.lan_subnet.prefix_len()),
        "--priority".into(),
        r.priority.to_string(),
        "--listen".into(),
        format!("0.0.0.0:{ROUTER_HTTP_PORT}"),
        "--interface-mac".into(),
        router_mac(j),
        "--heartbeat-key-file".into(),
        path_str(key_file),
    ];
    for g in &t.gateways {
        args.push("--gateway".into());
        args.push(format!("gateway-{}={}", g.index, g.lan_addr));
    }
    // Every other router is a peer; without any, this one is always active.
    for peer in t.routers.iter().filter(|p| p.index != j) {
        args.push("--peer".into());
        args.push(peer.lan_addr.to_string());
    }
    Some(Daemon {
        netns: t.spec.name.netns(&NodeName::Router(j)),
        program: path_str(binary),
        args,
        env: Vec::new(),
    })
}

/// The internet's echo service and sink.
pub fn internet_daemon(t: &Topology, binary: &Path, state_dir: &Path) -> Daemon {
    Daemon {
        netns: t.spec.name.netns(&NodeName::Internet),
        program: path_str(binary),
        args: vec![
            "lab".into(),
            "serve-internet".into(),
            "--state-dir".into(),
            path_str(state_dir),
        ],
        env: Vec::new(),
    }
}

/// Provider `k`'s WireGuard server.
pub fn provider_daemon(t: &Topology, k: u32, binary: &Path, state_dir: &Path) -> Daemon {
    Daemon {
        netns: t.spec.name.netns(&NodeName::Provider(k)),
        program: path_str(binary),
        args: vec![
            "lab".into(),
            "serve-provider".into(),
            "--state-dir".into(),
            path_str(state_dir),
            "--provider".into(),
            k.to_string(),
        ],
        env: Vec::new(),
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::test_topology as topology;

    #[test]
    fn gateway_env_points_at_its_own_provider() {
        let t = topology();
        let env = gateway_env(&t, 2).unwrap();
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let g = t.gateway(2).unwrap();
        let p = t.provider(g.provider).unwrap();
        assert_eq!(get("WIREGUARD_ENDPOINT_IP"), p.endpoint.to_string());
        assert_eq!(get("WIREGUARD_PUBLIC_KEY"), p.keys.public);
        assert_eq!(get("WIREGUARD_PRIVATE_KEY"), g.keys.private);
        assert_eq!(get("WIREGUARD_ADDRESSES"), format!("{}/32", g.tunnel_addr));
        assert!(gateway_env(&t, 5).is_none());
        let file = gateway_env_file(&t, 2).unwrap();
        assert!(file.lines().all(|l| l.split_once('=').is_some()));
        assert!(file.contains(&format!("WIREGUARD_ENDPOINT_PORT={WIREGUARD_PORT}\n")));
    }

    #[test]
    fn routers_know_every_gateway_and_each_other() {
        let t = topology();
        let d = router_daemon(&t, 1, Path::new("/bin/vpn-operator"), Path::new("/s/key")).unwrap();
        assert_eq!(d.netns, "vpno-t-router-1");
        assert_eq!(d.args.iter().filter(|a| *a == "--gateway").count(), 4);
        let peer = t.router(2).unwrap().lan_addr.to_string();
        assert!(d.args.windows(2).any(|w| w[0] == "--peer" && w[1] == peer));
        let own = t.router(1).unwrap().lan_addr.to_string();
        assert!(!d.args.windows(2).any(|w| w[0] == "--peer" && w[1] == own));
        assert!(
            d.args
                .windows(2)
                .any(|w| w[0] == "--heartbeat-key-file" && w[1] == "/s/key")
        );
        assert!(
            d.args
                .windows(2)
                .any(|w| w[0] == "--interface-mac" && w[1] == router_mac(1))
        );
        // Gateways forward only what the routers' pinned MACs send.
        let g = gateway_daemon(&t, 1, Path::new("/bin/vpn-operator"), Path::new("/s/env")).unwrap();
        let macs: Vec<&String> = g
            .args
            .windows(2)
            .filter(|w| w[0] == "--router-mac")
            .map(|w| &w[1])
            .collect();
        assert_eq!(macs, [&router_mac(1), &router_mac(2)]);
    }
}
