//! Real-kernel tests: two network namespaces joined by a veth pair, a
//! userspace WireGuard tunnel in each (both named `wg0`, which also shows that
//! same-named tunnels in different namespaces do not collide).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vpno_tunnel::netns::{NamedNetns, NetnsRuntime, require_root};
use vpno_tunnel::{Keypair, PeerConfig, PresharedKey, Tunnel, TunnelConfig};

mod common;
use common::{Configs, configs, pair, unique};

/// Whether a TCP connection from `from` to `to` completes within a second
/// (a listener must exist there, or the peer must answer with a reset).
async fn tcp_connects(from: &NetnsRuntime, to: SocketAddr) -> bool {
    from.run(async move {
        matches!(
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(to)).await,
            Ok(Ok(_))
        )
    })
    .await
}

/// Listens on `addr:0` inside `rt` and accepts connections forever.
async fn listen(rt: &NetnsRuntime, ip: &str) -> SocketAddr {
    let ip = ip.to_string();
    let listener = rt
        .run(async move { tokio::net::TcpListener::bind((ip.as_str(), 0)).await })
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_through_tunnel_with_handshake_stats() {
    if !require_root("tcp_through_tunnel_with_handshake_stats") {
        return;
    }
    let pair = pair();
    let Configs { server, client } = configs(Some(PresharedKey::generate()));
    let server = pair
        .rt_a
        .run(Tunnel::start(server))
        .await
        .expect("server tunnel");
    let client = pair
        .rt_b
        .run(Tunnel::start(client))
        .await
        .expect("client tunnel");
    assert_eq!(server.listen_port(), 51820);

    let probe = listen(&pair.rt_a, "10.200.0.1").await;
    let mut reached = false;
    for _ in 0..5 {
        if tcp_connects(&pair.rt_b, probe).await {
            reached = true;
            break;
        }
    }
    assert!(
        reached,
        "no TCP connection through the tunnel: {:?}",
        client.stats()
    );

    // TCP: 2 MiB client → server, server answers with the byte count.
    let listener = pair
        .rt_a
        .run(async { tokio::net::TcpListener::bind("10.200.0.1:0").await })
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server_side = pair.rt_a.spawn(async move {
        let (mut stream, peer) = listener.accept().await.unwrap();
        let mut total = 0u64;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        stream.write_all(&total.to_be_bytes()).await.unwrap();
        peer
    });
    const PAYLOAD: usize = 2 * 1024 * 1024;
    let echoed = pair
        .rt_b
        .run(async move {
            let mut stream = tokio::net::TcpStream::connect(("10.200.0.1", port))
                .await
                .unwrap();
            stream.write_all(&vec![7u8; PAYLOAD]).await.unwrap();
            stream.shutdown().await.unwrap();
            let mut answer = [0u8; 8];
            stream.read_exact(&mut answer).await.unwrap();
            u64::from_be_bytes(answer)
        })
        .await;
    assert_eq!(echoed, PAYLOAD as u64);
    let tcp_peer: SocketAddr = server_side.await.unwrap();
    assert_eq!(
        tcp_peer.ip().to_string(),
        "10.200.0.2",
        "server saw the inner address"
    );

    let client_stats = client.stats();
    let peer = &client_stats.peers[0];
    assert!(
        peer.last_handshake.is_some(),
        "client has a session: {client_stats:?}"
    );
    assert!(
        peer.tx_bytes >= PAYLOAD as u64,
        "tx bytes counted: {client_stats:?}"
    );
    assert!(peer.rx_packets > 0 && peer.tx_packets > 0);
    let server_stats = server.stats();
    let learnt = server_stats.peers[0]
        .endpoint
        .expect("server learnt the client endpoint");
    assert_eq!(learnt.ip().to_string(), "198.51.100.2");
    assert_eq!(learnt.port(), client.listen_port());
    assert!(server_stats.peers[0].rx_bytes >= PAYLOAD as u64);

    // Stopping the server's tunnel removes its interface.
    pair.rt_a.run(async move { drop(server) }).await;
    assert!(
        pair.a.ip(&["link", "show", "wg0"]).is_err(),
        "wg0 must be gone in a"
    );
    assert!(
        !tcp_connects(&pair.rt_b, probe).await,
        "no path once the server is gone"
    );
    pair.rt_b.run(async move { drop(client) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_key_never_handshakes() {
    if !require_root("wrong_server_key_never_handshakes") {
        return;
    }
    let pair = pair();
    let Configs { server, mut client } = configs(None);
    client.peers[0].public_key = Keypair::generate().public;
    let server = pair
        .rt_a
        .run(Tunnel::start(server))
        .await
        .expect("server tunnel");
    let client = pair
        .rt_b
        .run(Tunnel::start(client))
        .await
        .expect("client tunnel");
    let probe = listen(&pair.rt_a, "10.200.0.1").await;
    assert!(!tcp_connects(&pair.rt_b, probe).await);
    assert_eq!(client.stats().peers[0].last_handshake, None);
    assert_eq!(
        server.stats().peers[0].endpoint,
        None,
        "server never authenticated the client"
    );
    pair.rt_a.run(async move { drop(server) }).await;
    pair.rt_b.run(async move { drop(client) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_interface_reports_failure() {
    if !require_root("deleting_the_interface_reports_failure") {
        return;
    }
    let pair = pair();
    let Configs { server, .. } = configs(None);
    let server = pair
        .rt_a
        .run(Tunnel::start(server))
        .await
        .expect("server tunnel");
    assert!(server.failure().is_none());
    pair.a.ip(&["link", "del", "wg0"]).unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(10), server.failed()).await;
    let error = failed.expect("failure must be reported");
    assert!(error.to_string().contains("wg0"), "{error}");
    pair.rt_a.run(async move { drop(server) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_rejected_before_touching_the_kernel() {
    // Pure validation: no root needed.
    let keys = Keypair::generate();
    let mut config = TunnelConfig::new("wg-self", keys.private.clone());
    config.peers.push(PeerConfig::new(keys.public));
    let err = Tunnel::start(config).await.unwrap_err();
    assert!(err.to_string().contains("own public key"), "{err}");
    let mut config = TunnelConfig::new("wg-dup", keys.private.clone());
    let other = Keypair::generate().public;
    config.peers = vec![PeerConfig::new(other), PeerConfig::new(other)];
    assert!(
        Tunnel::start(config)
            .await
            .unwrap_err()
            .to_string()
            .contains("twice")
    );
}

/// One server, two clients (as a lab provider serving two gateways): both
/// reach the server; blocking one peer cuts only that one, unblocking
/// restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_with_two_peers_and_per_peer_block() {
    if !require_root("server_with_two_peers_and_per_peer_block") {
        return;
    }
    let pair = pair();
    let c = NamedNetns::create(unique("vpno-tun-c-")).unwrap();
    pair.a
        .link_veth(
            ("veth-ac", "198.51.100.5/30"),
            &c,
            ("veth-c", "198.51.100.6/30"),
        )
        .unwrap();
    let rt_c = c.runtime().unwrap();

    let Configs {
        mut server,
        client: client_b,
    } = configs(None);
    let keys_c = Keypair::generate();
    let mut peer_c = PeerConfig::new(keys_c.public);
    peer_c.allowed_ips = vec!["10.200.0.3/32".parse().unwrap()];
    server.peers.push(peer_c);
    let server_public = server.private_key.public_key();
    let mut client_c = TunnelConfig::new("wg0", keys_c.private.clone());
    client_c.addresses = vec!["10.200.0.3/24".parse().unwrap()];
    let mut to_server = PeerConfig::new(server_public);
    to_server.endpoint = Some("198.51.100.5:51820".parse().unwrap());
    to_server.allowed_ips = vec!["10.200.0.0/24".parse().unwrap()];
    client_c.peers.push(to_server);

    let server = pair.rt_a.run(Tunnel::start(server)).await.expect("server");
    let client_b = pair
        .rt_b
        .run(Tunnel::start(client_b))
        .await
        .expect("client b");
    let client_c = rt_c.run(Tunnel::start(client_c)).await.expect("client c");
    let probe = listen(&pair.rt_a, "10.200.0.1").await;
    let reaches = |rt: &NetnsRuntime| {
        let rt_handle = rt.handle().clone();
        async move {
            for _ in 0..3 {
                let ok = rt_handle
                    .spawn(async move {
                        matches!(
                            tokio::time::timeout(
                                Duration::from_secs(1),
                                tokio::net::TcpStream::connect(probe)
                            )
                            .await,
                            Ok(Ok(_))
                        )
                    })
                    .await
                    .unwrap();
                if ok {
                    return true;
                }
            }
            false
        }
    };
    assert!(reaches(&pair.rt_b).await, "client b reaches the server");
    assert!(reaches(&rt_c).await, "client c reaches the server");

    assert!(server.set_peer_blocked(&keys_c.public, true));
    assert!(
        !server.set_peer_blocked(&Keypair::generate().public, true),
        "unknown peer"
    );
    assert!(!tcp_connects(&rt_c, probe).await, "blocked peer is cut off");
    assert!(reaches(&pair.rt_b).await, "the other peer is unaffected");
    server.set_peer_blocked(&keys_c.public, false);
    assert!(
        reaches(&rt_c).await,
        "unblocked peer reaches the server again"
    );

    rt_c.run(async move { drop(client_c) }).await;
    pair.rt_b.run(async move { drop(client_b) }).await;
    pair.rt_a.run(async move { drop(server) }).await;
    drop(rt_c);
}

/// The packet counter of the (single) counter rule in `chain` of table
/// `inet vpno_roam` in namespace `netns`.
fn nft_counter(netns: &NamedNetns, chain: &str) -> u64 {
    let out = netns
        .exec("nft", &["list", "chain", "inet", "vpno_roam", chain])
        .expect("run nft");
    assert!(out.status.success(), "nft list: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in chain {chain}: {text}"))
}

/// A multi-homed server answers from another address than the one the
/// client is configured with (its route back to the client carries
/// `src 198.51.100.9`). The client sits behind a kill switch like the
/// gateway's (own WireGuard traffic only to the configured endpoint): it must
/// keep sending to the configured endpoint instead of roaming to the
/// answering address, so the tunnel keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keeps_configured_endpoint_when_server_answers_from_another_address() {
    if !require_root("client_keeps_configured_endpoint_when_server_answers_from_another_address") {
        return;
    }
    let pair = pair();
    // Server: a second address; replies to the client leave from it.
    pair.a
        .ip(&["addr", "add", "198.51.100.9/32", "dev", "veth-a"])
        .unwrap();
    pair.a
        .ip(&[
            "route",
            "add",
            "198.51.100.2/32",
            "dev",
            "veth-a",
            "src",
            "198.51.100.9",
        ])
        .unwrap();
    // Client: the second address is reachable, but the kill switch lets
    // WireGuard out only to the configured endpoint; a counter shows that
    // answers really arrive from the second address.
    pair.b
        .ip(&["route", "add", "198.51.100.9/32", "dev", "veth-b"])
        .unwrap();
    for command in [
        "add table inet vpno_roam",
        "add chain inet vpno_roam output { type filter hook output priority 0; policy accept; }",
        "add rule inet vpno_roam output udp dport 51820 ip daddr != 198.51.100.1 counter drop",
        "add chain inet vpno_roam input { type filter hook input priority 0; policy accept; }",
        "add rule inet vpno_roam input ip saddr 198.51.100.9 udp sport 51820 counter accept",
    ] {
        let out = pair.b.exec("nft", &[command]).expect("run nft");
        assert!(out.status.success(), "nft {command}: {out:?}");
    }

    let Configs { server, client } = configs(None);
    let configured = client.peers[0].endpoint;
    let server = pair
        .rt_a
        .run(Tunnel::start(server))
        .await
        .expect("server tunnel");
    let client = pair
        .rt_b
        .run(Tunnel::start(client))
        .await
        .expect("client tunnel");
    let mut handshake = false;
    for _ in 0..50 {
        if client.stats().peers[0].last_handshake.is_some() {
            handshake = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(handshake, "no handshake: {:?}", client.stats());
    assert!(
        nft_counter(&pair.b, "input") > 0,
        "the server's answers must come from 198.51.100.9 for this test to mean anything"
    );
    assert_eq!(
        client.stats().peers[0].endpoint,
        configured,
        "the client must not roam away from its configured endpoint"
    );

    let probe = listen(&pair.rt_a, "10.200.0.1").await;
    let mut reached = false;
    for _ in 0..5 {
        if tcp_connects(&pair.rt_b, probe).await {
            reached = true;
            break;
        }
    }
    assert!(
        reached,
        "no TCP connection through the tunnel: {:?}",
        client.stats()
    );
    assert_eq!(client.stats().peers[0].endpoint, configured);
    assert_eq!(
        nft_counter(&pair.b, "output"),
        0,
        "nothing was sent to the answering address"
    );
    assert!(client.stats().peers[0].rx_packets > 0);
    assert_eq!(
        server.stats().peers[0].endpoint,
        Some(SocketAddr::from(([198, 51, 100, 2], client.listen_port()))),
        "the server still learns the client's address"
    );

    pair.rt_b.run(async move { drop(client) }).await;
    pair.rt_a.run(async move { drop(server) }).await;
}
