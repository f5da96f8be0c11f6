//! Interoperability with Debian's `wireguard-go` in network namespaces:
//! our client with its server, and its client with our server. ICMP and UDP
//! at the MTU edges and bulk TCP both ways, every byte verified. Needs root,
//! `wireguard-go` and `wg` (scripts/setup); skips loudly without them, and
//! fails under CI=true.

use vpno_tunnel::external::{External, ExternalConfig, Implementation};
use vpno_tunnel::netns::require_root;
use vpno_tunnel::{Keypair, PeerConfig, Tunnel, TunnelConfig};

mod common;
use common::{Pair, pair, ping, tcp_echo, udp_echo, unique};

const MTU: usize = 1420;

fn wireguard_go_available(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    let found = Implementation::WireguardGo.program();
    vpno_sys::require(
        found.is_ok(),
        &format!(
            "{test}: {}",
            found.err().map(|e| e.to_string()).unwrap_or_default()
        ),
    )
}

/// Ours in one namespace, wireguard-go in the other; `ours_is_client`
/// picks the roles. Server 10.201.0.1 in `a` on port 51820, client
/// 10.201.0.2 in `b`.
async fn check(pair: &Pair, ours_is_client: bool) {
    let server_keys = Keypair::generate();
    let client_keys = Keypair::generate();
    let external_config = |own: &Keypair, peer: &Keypair, server: bool| ExternalConfig {
        interface: unique("wgo"),
        private_key: own.private.clone(),
        listen_port: server.then_some(51820),
        address: if server {
            "10.201.0.1/24"
        } else {
            "10.201.0.2/24"
        }
        .parse()
        .unwrap(),
        mtu: MTU as u16,
        peer: peer.public,
        allowed_ips: if server {
            "10.201.0.2/32"
        } else {
            "10.201.0.0/24"
        }
        .parse()
        .unwrap(),
        endpoint: (!server).then(|| "198.51.100.1:51820".parse().unwrap()),
    };
    let ours_config = |own: &Keypair, peer: &Keypair, server: bool| {
        let mut config = TunnelConfig::new("wg0", own.private.clone());
        config.mtu = MTU as u16;
        let mut p = PeerConfig::new(peer.public);
        if server {
            config.listen_port = Some(51820);
            config.addresses = vec!["10.201.0.1/24".parse().unwrap()];
            p.allowed_ips = vec!["10.201.0.2/32".parse().unwrap()];
        } else {
            config.addresses = vec!["10.201.0.2/24".parse().unwrap()];
            p.allowed_ips = vec!["10.201.0.0/24".parse().unwrap()];
            p.endpoint = Some("198.51.100.1:51820".parse().unwrap());
        }
        config.peers.push(p);
        config
    };
    let (ours, _external) = if ours_is_client {
        let external = External::start(
            Implementation::WireguardGo,
            &pair.a,
            &external_config(&server_keys, &client_keys, true),
        )
        .expect("wireguard-go server");
        let config = ours_config(&client_keys, &server_keys, false);
        (
            pair.rt_b
                .run(Tunnel::start(config))
                .await
                .expect("our client"),
            external,
        )
    } else {
        let config = ours_config(&server_keys, &client_keys, true);
        let ours = pair
            .rt_a
            .run(Tunnel::start(config))
            .await
            .expect("our server");
        let external = External::start(
            Implementation::WireguardGo,
            &pair.b,
            &external_config(&client_keys, &server_keys, false),
        )
        .expect("wireguard-go client");
        (ours, external)
    };
    let role = if ours_is_client {
        "our client → wireguard-go server"
    } else {
        "wireguard-go client → our server"
    };
    for ip_len in [MTU - 1, MTU, MTU + 1] {
        assert!(
            ping(&pair.b, "10.201.0.1", ip_len),
            "{role}: ping b→a {ip_len} bytes"
        );
        assert!(
            ping(&pair.a, "10.201.0.2", ip_len),
            "{role}: ping a→b {ip_len} bytes"
        );
        udp_echo(&pair.rt_a, "10.201.0.1", &pair.rt_b, ip_len)
            .await
            .unwrap_or_else(|e| panic!("{role}: UDP b→a: {e}"));
    }
    let (up, down) = tokio::join!(
        tcp_echo(&pair.rt_a, "10.201.0.1", &pair.rt_b, 4 << 20),
        tcp_echo(&pair.rt_b, "10.201.0.2", &pair.rt_a, 4 << 20),
    );
    up.unwrap_or_else(|e| panic!("{role}: TCP b→a: {e}"));
    down.unwrap_or_else(|e| panic!("{role}: TCP a→b: {e}"));
    let stats = ours.stats();
    assert!(stats.peers[0].last_handshake.is_some(), "{role}: {stats:?}");
    assert_eq!(stats.source_drops, 0, "{role}: {stats:?}");
    let rt = if ours_is_client {
        &pair.rt_b
    } else {
        &pair.rt_a
    };
    rt.run(async move { drop(ours) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_with_wireguard_go_server() {
    if !wireguard_go_available("our_client_with_wireguard_go_server") {
        return;
    }
    check(&pair(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wireguard_go_client_with_our_server() {
    if !wireguard_go_available("wireguard_go_client_with_our_server") {
        return;
    }
    check(&pair(), false).await;
}
