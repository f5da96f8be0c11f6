//! Real-kernel test of the gateway agent in a mini-topology of throwaway
//! network namespaces:
//!
//! client (10.77.0.100) ── lan0 gateway up0 (198.51.100.2) ── provider
//! (198.51.100.1, WireGuard server 10.64.0.1, NAT to 203.0.113.1) ──
//! internet (203.0.113.10, HTTP echo of the caller's IP, nft counters for
//! leaked sources).
//!
//! The provider forwards *un-NATed* anything that is not tunnel traffic, so
//! a leak from the gateway would reach `internet` with a gateway-network or
//! gateway-underlay source address and be counted there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vpno_gateway::{GatewayArgs, run_until};
use vpno_tunnel::netns::{NamedNetns, NetnsRuntime, require_root};
use vpno_tunnel::{GluetunWireguard, Keypair, PeerConfig, Tunnel, TunnelConfig};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Field order = drop order: runtimes (and their tasks) before namespaces.
struct Topology {
    client_rt: NetnsRuntime,
    gateway_rt: NetnsRuntime,
    provider_rt: NetnsRuntime,
    internet_rt: NetnsRuntime,
    #[allow(dead_code)] // held so that the namespace is deleted on drop
    client: NamedNetns,
    gateway: NamedNetns,
    provider: NamedNetns,
    internet: NamedNetns,
}

fn sh(ns: &NamedNetns, args: &[&str]) {
    ns.ip(args).unwrap_or_else(|e| panic!("{e}"));
}

fn veth(a: &NamedNetns, local: (&str, &str), b: &NamedNetns, remote: (&str, &str)) {
    a.link_veth(local, b, remote)
        .unwrap_or_else(|e| panic!("{e}"));
}

fn nft(ns: &NamedNetns, script: &str) -> String {
    let out = ns.exec("nft", &[script]).expect("nft runs");
    assert!(
        out.status.success(),
        "nft {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_args(ns: &NamedNetns, args: &[&str]) -> Result<String, String> {
    let out = ns.exec("nft", args).expect("nft runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn topology() -> Topology {
    let id = format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let client = NamedNetns::create(format!("vpno-gw-c-{id}")).unwrap();
    let gateway = NamedNetns::create(format!("vpno-gw-g-{id}")).unwrap();
    let provider = NamedNetns::create(format!("vpno-gw-p-{id}")).unwrap();
    let internet = NamedNetns::create(format!("vpno-gw-i-{id}")).unwrap();

    veth(
        &client,
        ("c0", "10.77.0.100/24"),
        &gateway,
        ("lan0", "10.77.0.11/24"),
    );
    sh(&client, &["route", "add", "default", "via", "10.77.0.11"]);

    veth(
        &gateway,
        ("up0", "198.51.100.2/30"),
        &provider,
        ("gw0", "198.51.100.1/30"),
    );
    // A main-table default route: without the kill switch, traffic could leak here.
    sh(
        &gateway,
        &["route", "add", "default", "via", "198.51.100.1"],
    );

    veth(
        &provider,
        ("wan0", "203.0.113.1/24"),
        &internet,
        ("eth0", "203.0.113.10/24"),
    );
    // Leaked packets need a way back too, so that a leak would "work".
    sh(
        &internet,
        &["route", "add", "198.51.100.0/30", "via", "203.0.113.1"],
    );
    sh(
        &internet,
        &["route", "add", "10.77.0.0/24", "via", "203.0.113.1"],
    );
    sh(
        &provider,
        &["route", "add", "10.77.0.0/24", "via", "198.51.100.2"],
    );

    let forward = provider
        .exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    assert!(forward.status.success());
    nft(
        &provider,
        "add table ip lab; add chain ip lab post { type nat hook postrouting priority 100; }; \
                    add rule ip lab post ip saddr 10.64.0.0/24 oifname wan0 masquerade",
    );
    nft(
        &internet,
        "add table inet watch; add chain inet watch pre { type filter hook prerouting priority -300; }; \
                    add rule inet watch pre ip saddr 10.77.0.0/24 counter comment \"gateway-network\"; \
                    add rule inet watch pre ip saddr 198.51.100.0/30 counter comment \"gateway-underlay\"",
    );

    Topology {
        client_rt: client.runtime().unwrap(),
        gateway_rt: gateway.runtime().unwrap(),
        provider_rt: provider.runtime().unwrap(),
        internet_rt: internet.runtime().unwrap(),
        client,
        gateway,
        provider,
        internet,
    }
}

/// Packets counted in `internet` from (gateway network, gateway underlay).
fn leaked_packets(internet: &NamedNetns) -> (u64, u64) {
    let out = internet
        .exec("nft", &["-j", "list", "table", "inet", "watch"])
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut counts = HashMap::new();
    for object in listed["nftables"].as_array().unwrap() {
        let rule = &object["rule"];
        if let (Some(comment), Some(exprs)) = (rule["comment"].as_str(), rule["expr"].as_array()) {
            let packets = exprs
                .iter()
                .find_map(|e| e["counter"]["packets"].as_u64())
                .unwrap();
            counts.insert(comment.to_string(), packets);
        }
    }
    (counts["gateway-network"], counts["gateway-underlay"])
}

/// A tiny HTTP echo: answers every request with the caller's IP.
async fn start_echo(rt: &NetnsRuntime) -> SocketAddr {
    let listener = rt
        .run(async { tokio::net::TcpListener::bind("203.0.113.10:0").await })
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let body = peer.ip().to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// `GET path` from inside `rt`'s namespace; (status, body).
async fn http_get(
    rt: &NetnsRuntime,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let path = path.to_string();
    rt.run(async move {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut response = Vec::new();
            stream
                .read_to_end(&mut response)
                .await
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&response).into_owned();
            let status = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or("no status")?;
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            Ok::<_, String>((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| "timed out".to_string())?
    })
    .await
}

async fn wait_for_health(
    client: &NetnsRuntime,
    want: u16,
    limit: Duration,
) -> Option<(Duration, String)> {
    let started = Instant::now();
    let healthz: SocketAddr = "10.77.0.11:9090".parse().unwrap();
    while started.elapsed() < limit {
        if let Ok((status, body)) =
            http_get(client, healthz, "/healthz", Duration::from_secs(1)).await
            && status == want
        {
            return Some((started.elapsed(), body));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Starts the provider's WireGuard server for one gateway (10.64.0.2) and
/// returns it with the gluetun variables of that gateway.
async fn provider_server(topo: &Topology) -> (Tunnel, HashMap<String, String>) {
    let server_keys = Keypair::generate();
    let gateway_keys = Keypair::generate();
    let mut server = TunnelConfig::new("wg0", server_keys.private.clone());
    server.listen_port = Some(51820);
    server.addresses = vec!["10.64.0.1/24".parse().unwrap()];
    let mut peer = PeerConfig::new(gateway_keys.public);
    peer.allowed_ips = vec!["10.64.0.2/32".parse().unwrap()];
    server.peers.push(peer);
    let server = topo
        .provider_rt
        .run(Tunnel::start(server))
        .await
        .expect("provider server");
    let env = GluetunWireguard {
        private_key: gateway_keys.private.clone(),
        addresses: vec!["10.64.0.2/32".parse().unwrap()],
        endpoint: "198.51.100.1:51820".parse().unwrap(),
        server_public_key: server_keys.public,
        preshared_key: None,
        mtu: 1420,
        allowed_ips: vec!["0.0.0.0/0".parse().unwrap()],
        persistent_keepalive: Some(25),
    }
    .to_env()
    .into_iter()
    .collect();
    (server, env)
}

fn gateway_args(echo: SocketAddr) -> GatewayArgs {
    gateway_args_with(echo, &[])
}

fn gateway_args_with(echo: SocketAddr, extra: &[&str]) -> GatewayArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: GatewayArgs,
    }
    let probe = format!("http://{echo}/");
    let mut argv = vec![
        "gateway",
        "--lan-interface",
        "lan0",
        "--gateway-network",
        "10.77.0.0/24",
        "--probe-url",
        &probe,
        "--probe-interval",
        "500ms",
        "--probe-timeout",
        "400ms",
        "--listen",
        "10.77.0.11:9090",
    ];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).unwrap().args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_forwards_through_tunnel_and_kill_switch_holds() {
    if !require_root("gateway_forwards_through_tunnel_and_kill_switch_holds") {
        return;
    }
    let topo = topology();
    let echo = start_echo(&topo.internet_rt).await;

    let (server, env) = provider_server(&topo).await;
    let (stop_gateway, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gateway_task = topo
        .gateway_rt
        .spawn(run_until(gateway_args(echo), env, async {
            let _ = stop_rx.await;
        }));

    // Healthy: handshake + probe through the tunnel.
    let (became_healthy, body) = wait_for_health(&topo.client_rt, 200, Duration::from_secs(20))
        .await
        .expect("gateway never became healthy");
    eprintln!("gateway healthy after {became_healthy:?}: {body}");
    assert!(body.contains("\"healthy\":true"), "{body}");

    // The client reaches the echo through the gateway; the echo sees the
    // provider's public address.
    for _ in 0..5 {
        let attempt = http_get(&topo.client_rt, echo, "/", Duration::from_secs(3)).await;
        if attempt.is_err() {
            // Diagnostics for a failing run.
            eprintln!(
                "{}",
                nft_args(&topo.provider, &["list", "ruleset"]).unwrap()
            );
            eprintln!(
                "{:?}",
                topo.gateway.exec("cat", &["/proc/net/nf_conntrack"])
            );
            eprintln!("{}", topo.gateway.ip(&["rule"]).unwrap());
            eprintln!(
                "{}",
                topo.gateway.ip(&["route", "show", "table", "all"]).unwrap()
            );
            eprintln!("{}", topo.gateway.ip(&["-s", "link"]).unwrap());
            eprintln!("{}", topo.provider.ip(&["-s", "link"]).unwrap());
        }
        let (status, seen) = attempt.expect("client → echo");
        assert_eq!(status, 200);
        assert_eq!(
            seen, "203.0.113.1",
            "the echo must see the provider's public address"
        );
    }
    let gw_http: SocketAddr = "10.77.0.11:9090".parse().unwrap();
    let (status, public_ip) = http_get(
        &topo.client_rt,
        gw_http,
        "/public-ip",
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!((status, public_ip.trim()), (200, "203.0.113.1"));
    let (status, metrics) = http_get(&topo.client_rt, gw_http, "/metrics", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("vpno_gateway_healthy 1"), "{metrics}");
    assert!(
        !metrics.contains("vpno_gateway_tunnel_bytes_total{direction=\"tx\"} 0\n"),
        "{metrics}"
    );
    // Healthy: up or idle (depending on whether the last tick forwarded
    // client packets), never down, no cause; a session was counted.
    assert!(
        metrics.contains("vpno_gateway_tunnel_state{state=\"down\"} 0"),
        "{metrics}"
    );
    for cause in [
        "no_handshake",
        "tunnel_failed",
        "interface_down",
        "probe_failed",
    ] {
        assert!(
            metrics.contains(&format!("vpno_gateway_down_causes{{cause=\"{cause}\"}} 0")),
            "{metrics}"
        );
    }
    assert!(
        !metrics.contains("vpno_gateway_handshakes_total 0\n"),
        "{metrics}"
    );

    // Idempotent: the agent re-checks the table every interval and must not
    // re-create it (re-creation would change the rule handles).
    let before = nft_args(
        &topo.gateway,
        &["-a", "list", "table", "inet", "vpno_gateway"],
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = nft_args(
        &topo.gateway,
        &["-a", "list", "table", "inet", "vpno_gateway"],
    )
    .unwrap();
    let handles = |s: &str| {
        s.lines()
            .filter_map(|l| l.split("# handle ").nth(1).map(str::to_string))
            .collect::<Vec<_>>()
    };
    assert!(handles(&before).len() >= 10, "{before}");
    assert_eq!(
        handles(&before),
        handles(&after),
        "table was re-applied without a change"
    );

    // Provider outage: stop the server's tunnel.
    topo.provider_rt.run(async move { drop(server) }).await;
    let (detected, body) = wait_for_health(&topo.client_rt, 503, Duration::from_secs(15))
        .await
        .expect("gateway never reported the outage");
    eprintln!("outage detected after {detected:?}: {body}");
    assert!(body.contains("probe through the tunnel failed"), "{body}");
    let (status, _) = http_get(
        &topo.client_rt,
        gw_http,
        "/public-ip",
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(status, 503);

    // Kill switch: clients reach nothing; the gateway itself reaches nothing
    // outside the tunnel; then the tunnel interface vanishes entirely.
    assert!(
        http_get(&topo.client_rt, echo, "/", Duration::from_secs(2))
            .await
            .is_err()
    );
    let own = topo
        .gateway_rt
        .run(async move {
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(echo)).await
        })
        .await;
    assert!(
        !matches!(own, Ok(Ok(_))),
        "the gateway's own traffic must not leave outside the tunnel"
    );
    sh(&topo.gateway, &["link", "del", "wg-vpno"]);
    for _ in 0..3 {
        assert!(
            http_get(&topo.client_rt, echo, "/", Duration::from_secs(1))
                .await
                .is_err()
        );
    }
    // The agent restarts its failed native tunnel (the server is still down,
    // so it stays unhealthy and forwards nothing).
    let restarted = Instant::now();
    while topo.gateway.ip(&["link", "show", "wg-vpno"]).is_err() {
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "native tunnel was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        http_get(&topo.client_rt, echo, "/", Duration::from_secs(1))
            .await
            .is_err()
    );
    let (status, _) = http_get(&topo.client_rt, gw_http, "/healthz", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(status, 503);
    let (_, metrics) = http_get(&topo.client_rt, gw_http, "/metrics", Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        metrics.contains("vpno_gateway_tunnel_state{state=\"down\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vpno_gateway_tunnel_state{state=\"up\"} 0"),
        "{metrics}"
    );
    let (from_network, from_underlay) = leaked_packets(&topo.internet);
    assert_eq!(
        from_network, 0,
        "packets from the gateway network reached the internet"
    );
    assert_eq!(
        from_underlay, 0,
        "packets from the gateway's underlay address reached the internet"
    );

    // Clean shutdown removes the table and the rules.
    let _ = stop_gateway.send(());
    let result = tokio::time::timeout(Duration::from_secs(10), gateway_task)
        .await
        .expect("gateway stops")
        .expect("gateway task");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        nft_args(&topo.gateway, &["list", "table", "inet", "vpno_gateway"]).is_err(),
        "table removed"
    );
    let rules = topo.gateway.ip(&["rule"]).unwrap();
    assert!(!rules.contains("7710"), "rules removed: {rules}");
    drop(topo.client_rt);
}

/// `--tunnel-interface`: the tunnel belongs to "another process" (here a
/// client tunnel the test runs in the gateway namespace). When it vanishes
/// the gateway is unhealthy and forwards nothing; when it comes back under
/// the same name the gateway repairs its route and is healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_tunnel_vanishes_and_returns() {
    if !require_root("external_tunnel_vanishes_and_returns") {
        return;
    }
    let topo = topology();
    let echo = start_echo(&topo.internet_rt).await;
    let (server, env) = provider_server(&topo).await;
    let client_config = GluetunWireguard::from_env(&env)
        .unwrap()
        .tunnel_config("tun0");
    let external = topo
        .gateway_rt
        .run(Tunnel::start(client_config.clone()))
        .await
        .expect("external tunnel");

    let (stop_gateway, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let args = gateway_args_with(
        echo,
        &[
            "--tunnel-interface",
            "tun0",
            "--vpn-endpoint",
            "198.51.100.1:51820",
        ],
    );
    let gateway_task = topo
        .gateway_rt
        .spawn(run_until(args, HashMap::new(), async {
            let _ = stop_rx.await;
        }));
    wait_for_health(&topo.client_rt, 200, Duration::from_secs(20))
        .await
        .expect("healthy with tun0");
    let (_, seen) = http_get(&topo.client_rt, echo, "/", Duration::from_secs(3))
        .await
        .expect("client → echo");
    assert_eq!(seen, "203.0.113.1");

    // The tunnel process dies: its interface disappears.
    topo.gateway_rt.run(async move { drop(external) }).await;
    let (_, body) = wait_for_health(&topo.client_rt, 503, Duration::from_secs(10))
        .await
        .expect("unhealthy");
    assert!(body.contains("interface is missing"), "{body}");
    assert!(
        http_get(&topo.client_rt, echo, "/", Duration::from_secs(2))
            .await
            .is_err()
    );
    let route = topo
        .gateway
        .ip(&["route", "show", "table", "7710"])
        .unwrap();
    assert!(
        route.contains("unreachable default") && !route.contains("dev tun0"),
        "{route}"
    );

    // It comes back under the same name: the route is repaired.
    let external = topo
        .gateway_rt
        .run(Tunnel::start(client_config))
        .await
        .expect("external tunnel again");
    wait_for_health(&topo.client_rt, 200, Duration::from_secs(10))
        .await
        .expect("healthy again");
    let (_, seen) = http_get(&topo.client_rt, echo, "/", Duration::from_secs(3))
        .await
        .expect("client → echo again");
    assert_eq!(seen, "203.0.113.1");

    assert_eq!(leaked_packets(&topo.internet), (0, 0), "nothing leaked");
    let _ = stop_gateway.send(());
    let result = tokio::time::timeout(Duration::from_secs(10), gateway_task)
        .await
        .expect("stops")
        .expect("task");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        nft_args(&topo.gateway, &["list", "table", "inet", "vpno_gateway"]).is_err(),
        "table removed"
    );
    topo.gateway_rt.run(async move { drop(external) }).await;
    topo.provider_rt.run(async move { drop(server) }).await;
}

/// Packets the gateway dropped because they did not come from a router MAC.
fn not_from_router_drops(gateway: &NamedNetns) -> u64 {
    let listed = nft_args(gateway, &["-j", "list", "table", "inet", "vpno_gateway"]).unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    listed["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["rule"])
        .filter(|r| r["comment"] == "vpno-gateway not from a router")
        .filter_map(|r| {
            r["expr"]
                .as_array()?
                .iter()
                .find_map(|e| e["counter"]["packets"].as_u64())
        })
        .sum()
}

/// `--router-mac`: client traffic is forwarded only when it arrives from a
/// router's MAC; a client sending straight to the gateway gets nothing
/// through (and nothing leaks), while the gateway's health endpoint stays
/// reachable. The "client" here becomes a router by taking the router MAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_forwards_only_traffic_from_router_macs() {
    if !require_root("gateway_forwards_only_traffic_from_router_macs") {
        return;
    }
    const ROUTER_MAC: &str = "02:56:50:52:00:02";
    let topo = topology();
    let echo = start_echo(&topo.internet_rt).await;
    let (server, env) = provider_server(&topo).await;
    let (stop_gateway, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let args = gateway_args_with(echo, &["--router-mac", ROUTER_MAC]);
    let gateway_task = topo.gateway_rt.spawn(run_until(args, env, async {
        let _ = stop_rx.await;
    }));
    wait_for_health(&topo.client_rt, 200, Duration::from_secs(20))
        .await
        .expect("gateway never became healthy (its health endpoint is not filtered)");

    // Not a router: nothing gets through, every attempt is dropped and counted.
    let client_mac = topo.client.ip(&["-br", "link", "show", "c0"]).unwrap();
    assert!(!client_mac.contains(ROUTER_MAC), "{client_mac}");
    for _ in 0..3 {
        assert!(
            http_get(&topo.client_rt, echo, "/", Duration::from_secs(1))
                .await
                .is_err(),
            "traffic from a non-router MAC was forwarded"
        );
    }
    let dropped = not_from_router_drops(&topo.gateway);
    assert!(dropped > 0, "the sender check counted no drop");
    assert_eq!(leaked_packets(&topo.internet), (0, 0), "nothing leaked");

    // The same sender with the router's MAC is forwarded.
    sh(&topo.client, &["link", "set", "c0", "address", ROUTER_MAC]);
    sh(&topo.gateway, &["neigh", "flush", "dev", "lan0"]);
    let (status, seen) = http_get(&topo.client_rt, echo, "/", Duration::from_secs(3))
        .await
        .expect("traffic from the router MAC is forwarded");
    assert_eq!((status, seen.as_str()), (200, "203.0.113.1"));
    assert_eq!(
        not_from_router_drops(&topo.gateway),
        dropped,
        "router traffic was counted as dropped"
    );

    let _ = stop_gateway.send(());
    let result = tokio::time::timeout(Duration::from_secs(10), gateway_task)
        .await
        .expect("gateway stops")
        .expect("gateway task");
    assert!(result.is_ok(), "{result:?}");
    topo.provider_rt.run(async move { drop(server) }).await;
    drop(topo.client_rt);
}
