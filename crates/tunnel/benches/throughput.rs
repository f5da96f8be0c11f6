//! Throughput of the userspace tunnel vs. the plain veth it runs over, and
//! handshake time, measured in one run (root; `cargo bench -p vpno-tunnel`).
//!
//! Two namespaces joined by a veth pair; iperf3 (TCP, 5 s) once over the
//! veth addresses and once over the tunnel addresses. Prints both rates and
//! their ratio. No assertions: figures only.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vpno_tunnel::netns::{NamedNetns, have_root};
use vpno_tunnel::{Keypair, PeerConfig, Tunnel, TunnelConfig};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf3(server_ns: &NamedNetns, client_ns: &NamedNetns, address: &str, seconds: u32) -> f64 {
    let port = "5299";
    let _server = Server(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                server_ns.name(),
                "iperf3",
                "-s",
                "-1",
                "-B",
                address,
                "-p",
                port,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let output = client_ns
        .exec(
            "iperf3",
            &["-c", address, "-p", port, "-t", &seconds.to_string(), "-J"],
        )
        .expect("iperf3 client");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
}

fn main() {
    if !have_root() || Command::new("iperf3").arg("-v").output().is_err() {
        eprintln!("SKIPPED: throughput bench needs root and iperf3");
        return;
    }
    let id = std::process::id();
    let a = NamedNetns::create(format!("vpno-bench-a-{id}")).unwrap();
    let b = NamedNetns::create(format!("vpno-bench-b-{id}")).unwrap();
    a.link_veth(
        ("veth-a", "198.51.100.1/30"),
        &b,
        ("veth-b", "198.51.100.2/30"),
    )
    .unwrap();
    let rt_a = a.runtime().unwrap();
    let rt_b = b.runtime().unwrap();

    let server_keys = Keypair::generate();
    let client_keys = Keypair::generate();
    let mut server = TunnelConfig::new("wg0", server_keys.private.clone());
    server.listen_port = Some(51820);
    server.addresses = vec!["10.200.0.1/24".parse().unwrap()];
    let mut peer = PeerConfig::new(client_keys.public);
    peer.allowed_ips = vec!["10.200.0.2/32".parse().unwrap()];
    server.peers.push(peer);
    let mut client = TunnelConfig::new("wg0", client_keys.private.clone());
    client.addresses = vec!["10.200.0.2/24".parse().unwrap()];
    let mut peer = PeerConfig::new(server_keys.public);
    peer.endpoint = Some("198.51.100.1:51820".parse().unwrap());
    peer.allowed_ips = vec!["10.200.0.0/24".parse().unwrap()];
    client.peers.push(peer);

    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    control.block_on(async {
        let server = rt_a.run(Tunnel::start(server)).await.unwrap();
        let started = Instant::now();
        let client = rt_b.run(Tunnel::start(client)).await.unwrap();
        while client.stats().peers[0].last_handshake.is_none()
            && started.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let handshake = started.elapsed();

        let direct = iperf3(&a, &b, "198.51.100.1", 5);
        let tunnel = iperf3(&a, &b, "10.200.0.1", 5);
        println!(
            "handshake (start of client tunnel -> session): {:.1} ms",
            handshake.as_secs_f64() * 1e3
        );
        println!("TCP over veth:             {:>8.0} Mbit/s", direct / 1e6);
        println!("TCP over userspace WG:     {:>8.0} Mbit/s", tunnel / 1e6);
        if direct > 0.0 {
            println!("tunnel / veth ratio:       {:>8.3}", tunnel / direct);
        }
        rt_a.run(async move { drop(server) }).await;
        rt_b.run(async move { drop(client) }).await;
    });
}
