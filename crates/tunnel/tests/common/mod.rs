//! Helpers shared by the kernel test files: two namespaces on a veth pair,
//! and traffic checks (ICMP, UDP echo, TCP echo) that verify every byte.
#![allow(dead_code)] // each test file uses its own part

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vpno_tunnel::netns::{NamedNetns, NetnsRuntime};
use vpno_tunnel::{Keypair, PeerConfig, PresharedKey, TunnelConfig};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `prefix` + a short id (fits the
/// 15 bytes of an interface name for prefixes of up to 5 bytes).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Two namespaces `a` (server, 198.51.100.1) and `b` (client, 198.51.100.2)
/// on a veth pair of MTU 1500. Field order matters: runtimes drop before
/// namespaces.
pub struct Pair {
    pub rt_a: NetnsRuntime,
    pub rt_b: NetnsRuntime,
    pub a: NamedNetns,
    pub b: NamedNetns,
}

pub fn pair() -> Pair {
    let a = NamedNetns::create(unique("vpno-tun-a-")).unwrap();
    let b = NamedNetns::create(unique("vpno-tun-b-")).unwrap();
    a.link_veth(
        ("veth-a", "198.51.100.1/30"),
        &b,
        ("veth-b", "198.51.100.2/30"),
    )
    .unwrap();
    Pair {
        rt_a: a.runtime().unwrap(),
        rt_b: b.runtime().unwrap(),
        a,
        b,
    }
}

/// Our tunnel at both ends: server `10.200.0.1` in `a` listening on
/// 51820, client `10.200.0.2` in `b` dialling it.
pub struct Configs {
    pub server: TunnelConfig,
    pub client: TunnelConfig,
}

pub fn configs(psk: Option<PresharedKey>) -> Configs {
    let server_keys = Keypair::generate();
    let client_keys = Keypair::generate();
    let mut server = TunnelConfig::new("wg0", server_keys.private.clone());
    server.listen_port = Some(51820);
    server.addresses = vec!["10.200.0.1/24".parse().unwrap()];
    let mut client_peer = PeerConfig::new(client_keys.public);
    client_peer.allowed_ips = vec!["10.200.0.2/32".parse().unwrap()];
    client_peer.preshared_key = psk.clone();
    server.peers.push(client_peer);

    let mut client = TunnelConfig::new("wg0", client_keys.private.clone());
    client.addresses = vec!["10.200.0.2/32".parse().unwrap()];
    client.routes = vec!["10.200.0.0/24".parse().unwrap()];
    let mut server_peer = PeerConfig::new(server_keys.public);
    server_peer.endpoint = Some("198.51.100.1:51820".parse().unwrap());
    server_peer.allowed_ips = vec!["10.200.0.0/24".parse().unwrap()];
    server_peer.preshared_key = psk;
    client.peers.push(server_peer);
    Configs { server, client }
}

/// `ping` from `ns` to `dst` with IPv4 packets of `ip_len` bytes,
/// fragmentation allowed (so packets above the path MTU are fragmented by
/// the sender's kernel); up to 3 tries of 2 s.
pub fn ping(ns: &NamedNetns, dst: &str, ip_len: usize) -> bool {
    let payload = (ip_len - 28).to_string();
    (0..3).any(|_| {
        ns.exec(
            "ping",
            &["-c", "1", "-W", "2", "-M", "dont", "-s", &payload, dst],
        )
        .is_ok_and(|o| o.status.success())
    })
}

/// Bytes that do not repeat at any MSS.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ seed)
        .collect()
}

/// Sends one UDP datagram of `ip_len` bytes (IPv4 packet) from `client`
/// to an echo server on `server_ip` in `server`; `Ok` when the same bytes
/// come back (up to 3 tries of 2 s).
pub async fn udp_echo(
    server: &NetnsRuntime,
    server_ip: &str,
    client: &NetnsRuntime,
    ip_len: usize,
) -> Result<(), String> {
    let ip = server_ip.to_string();
    let socket = server
        .run(async move { tokio::net::UdpSocket::bind((ip.as_str(), 0)).await })
        .await
        .map_err(|e| format!("bind echo: {e}"))?;
    let addr = socket.local_addr().unwrap();
    let echo = server.spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    let payload = pattern(ip_len - 28, ip_len as u8);
    let result = client
        .run(async move {
            let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
            let mut buf = vec![0u8; 65536];
            for _ in 0..3 {
                socket
                    .send_to(&payload, addr)
                    .await
                    .map_err(|e| e.to_string())?;
                let got = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await;
                if let Ok(Ok(n)) = got {
                    return if buf[..n] == payload[..] {
                        Ok(())
                    } else {
                        Err(format!(
                            "echo of {} bytes differs ({n} back)",
                            payload.len()
                        ))
                    };
                }
            }
            Err(format!("no echo of a {ip_len}-byte UDP packet"))
        })
        .await;
    echo.abort();
    result
}

/// Streams `len` patterned bytes from `client` to an echo server on
/// `server_ip` in `server`, in writes of varying size, while reading the
/// echo back; `Ok` when every byte came back in order (within 120 s).
pub async fn tcp_echo(
    server: &NetnsRuntime,
    server_ip: &str,
    client: &NetnsRuntime,
    len: usize,
) -> Result<(), String> {
    let ip = server_ip.to_string();
    let listener = server
        .run(async move { tokio::net::TcpListener::bind((ip.as_str(), 0)).await })
        .await
        .map_err(|e| format!("listen: {e}"))?;
    let addr = listener.local_addr().unwrap();
    let echo = server.spawn(async move {
        if let Ok((stream, _)) = listener.accept().await {
            let (mut r, mut w) = stream.into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }
    });
    let data = pattern(len, 0x5a);
    let result = client
        .run(async move {
            let run = async {
                let stream = connect(addr).await?;
                let (mut r, mut w) = stream.into_split();
                let expected = data.clone();
                let writer = tokio::spawn(async move {
                    let mut sizes = [1usize, 1399, 1400, 1401, 65536, 7, 250_000].iter().cycle();
                    let mut at = 0;
                    while at < data.len() {
                        let end = (at + sizes.next().unwrap()).min(data.len());
                        w.write_all(&data[at..end]).await?;
                        at = end;
                    }
                    w.shutdown().await
                });
                let mut got = Vec::with_capacity(expected.len());
                r.read_to_end(&mut got).await.map_err(|e| e.to_string())?;
                writer.await.unwrap().map_err(|e| e.to_string())?;
                if got == expected {
                    Ok(())
                } else {
                    let first = got.iter().zip(&expected).position(|(a, b)| a != b);
                    Err(format!(
                        "TCP echo: {} of {} bytes back, first difference at {first:?}",
                        got.len(),
                        expected.len()
                    ))
                }
            };
            tokio::time::timeout(Duration::from_secs(120), run)
                .await
                .unwrap_or_else(|_| Err("TCP echo timed out".into()))
        })
        .await;
    echo.abort();
    result
}

/// Connects, retrying for up to 5 s (the first handshake may still run).
async fn connect(addr: SocketAddr) -> Result<tokio::net::TcpStream, String> {
    let mut last = String::new();
    for _ in 0..10 {
        match tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timeout".into(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("connect {addr}: {last}"))
}
