//! Segmentation and coalescing in the real kernel: our tunnel at both ends
//! with TUN offloads (TSO, checksum offload, UDP GSO/GRO where the kernel
//! has them), tunnel MTU 1440 over a veth of MTU 1500, so that an inner
//! packet of MTU−1, MTU and MTU+1 bytes becomes an encrypted datagram of
//! 1499 and 1500 bytes, or (MTU+1) is fragmented before it enters the
//! tunnel. ICMP, UDP and TCP, both directions, TCP running while the
//! others are checked; every byte is verified.

use vpno_tunnel::Tunnel;
use vpno_tunnel::netns::require_root;

mod common;
use common::{Configs, configs, pair, ping, tcp_echo, udp_echo};

const MTU: usize = 1440;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtu_edges_mixed_traffic_both_directions() {
    if !require_root("mtu_edges_mixed_traffic_both_directions") {
        return;
    }
    let pair = pair();
    let Configs {
        mut server,
        mut client,
    } = configs(None);
    server.mtu = MTU as u16;
    client.mtu = MTU as u16;
    let server = pair.rt_a.run(Tunnel::start(server)).await.expect("server");
    let client = pair.rt_b.run(Tunnel::start(client)).await.expect("client");
    assert!(
        client.stats().offloads.tun_vnet_hdr && server.stats().offloads.tun_vnet_hdr,
        "TUN offloads in use: {:?}",
        client.stats().offloads
    );
    eprintln!("offloads: {:?}", client.stats().offloads);

    // Bulk TCP both ways (GSO out, GRO in at each end) while the rest runs.
    let bulk_up = tcp_echo(&pair.rt_a, "10.200.0.1", &pair.rt_b, 8 << 20);
    let bulk_down = tcp_echo(&pair.rt_b, "10.200.0.2", &pair.rt_a, 8 << 20);
    let others = async {
        for ip_len in [MTU - 1, MTU, MTU + 1] {
            assert!(
                ping(&pair.b, "10.200.0.1", ip_len),
                "ping b→a, {ip_len} bytes"
            );
            assert!(
                ping(&pair.a, "10.200.0.2", ip_len),
                "ping a→b, {ip_len} bytes"
            );
            udp_echo(&pair.rt_a, "10.200.0.1", &pair.rt_b, ip_len)
                .await
                .unwrap_or_else(|e| panic!("UDP b→a: {e}"));
            udp_echo(&pair.rt_b, "10.200.0.2", &pair.rt_a, ip_len)
                .await
                .unwrap_or_else(|e| panic!("UDP a→b: {e}"));
        }
    };
    let (up, down, ()) = tokio::join!(bulk_up, bulk_down, others);
    up.expect("TCP b→a");
    down.expect("TCP a→b");
    // Small TCP transfers around one segment too (no coalescing partner).
    for len in [MTU - 41, MTU - 40, MTU - 39] {
        tcp_echo(&pair.rt_a, "10.200.0.1", &pair.rt_b, len)
            .await
            .unwrap_or_else(|e| panic!("TCP {len} bytes: {e}"));
    }

    let stats = server.stats();
    assert_eq!(stats.source_drops, 0, "{stats:?}");
    // (no_route_drops is not checked: the kernel's own IPv6 multicast on
    // the interface has no peer.)
    pair.rt_a.run(async move { drop(server) }).await;
    pair.rt_b.run(async move { drop(client) }).await;
}

/// Datagrams larger than the underlay's MTU (tunnel MTU 1420 over a veth of
/// 1400): the kernel refuses UDP GSO for them, the socket falls back to
/// `sendmmsg` and IP fragmentation, and every byte still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_above_the_underlay_mtu_fall_back_cleanly() {
    if !require_root("datagrams_above_the_underlay_mtu_fall_back_cleanly") {
        return;
    }
    let pair = pair();
    pair.a
        .ip(&["link", "set", "veth-a", "mtu", "1400"])
        .unwrap();
    pair.b
        .ip(&["link", "set", "veth-b", "mtu", "1400"])
        .unwrap();
    let Configs { server, client } = configs(None);
    let server = pair.rt_a.run(Tunnel::start(server)).await.expect("server");
    let client = pair.rt_b.run(Tunnel::start(client)).await.expect("client");
    let (up, down) = tokio::join!(
        tcp_echo(&pair.rt_a, "10.200.0.1", &pair.rt_b, 2 << 20),
        tcp_echo(&pair.rt_b, "10.200.0.2", &pair.rt_a, 2 << 20),
    );
    up.expect("TCP b→a");
    down.expect("TCP a→b");
    assert!(ping(&pair.b, "10.200.0.1", 1420), "ping at the tunnel MTU");
    assert!(
        !client.stats().offloads.udp_gso && !server.stats().offloads.udp_gso,
        "GSO switched off after the kernel refused it: {:?}",
        client.stats().offloads
    );
    pair.rt_a.run(async move { drop(server) }).await;
    pair.rt_b.run(async move { drop(client) }).await;
}

/// IPv6 inside the tunnel: TSO6 super-packets split on the way out, TCP/IPv6
/// segments coalesced on the way in, both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_tcp_inside_the_tunnel_both_directions() {
    if !require_root("ipv6_tcp_inside_the_tunnel_both_directions") {
        return;
    }
    let pair = pair();
    for ns in [&pair.a, &pair.b] {
        // No duplicate address detection: the addresses are usable at once.
        let out = ns
            .exec(
                "sysctl",
                &[
                    "-qw",
                    "net.ipv6.conf.default.accept_dad=0",
                    "net.ipv6.conf.all.accept_dad=0",
                ],
            )
            .expect("sysctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let Configs {
        mut server,
        mut client,
    } = configs(None);
    server.addresses.push("fd00:200::1/64".parse().unwrap());
    server.peers[0]
        .allowed_ips
        .push("fd00:200::2/128".parse().unwrap());
    client.addresses.push("fd00:200::2/128".parse().unwrap());
    client.routes.push("fd00:200::/64".parse().unwrap());
    client.peers[0]
        .allowed_ips
        .push("fd00:200::/64".parse().unwrap());
    let server = pair.rt_a.run(Tunnel::start(server)).await.expect("server");
    let client = pair.rt_b.run(Tunnel::start(client)).await.expect("client");
    let (up, down) = tokio::join!(
        tcp_echo(&pair.rt_a, "fd00:200::1", &pair.rt_b, 8 << 20),
        tcp_echo(&pair.rt_b, "fd00:200::2", &pair.rt_a, 8 << 20),
    );
    up.expect("TCP/IPv6 b→a");
    down.expect("TCP/IPv6 a→b");
    assert_eq!(server.stats().source_drops, 0);
    pair.rt_a.run(async move { drop(server) }).await;
    pair.rt_b.run(async move { drop(client) }).await;
}
