//! The NAT-PMP client against Debian's miniupnpd (nftables build) in three
//! network namespaces the test creates:
//!
//!     cli (10.77.0.2, .3) ── lan ── nat: miniupnpd (10.77.0.1 | 203.0.113.2) ── wan ── inet (203.0.113.1)
//!
//! miniupnpd refuses to map ports while its external address is a
//! reserved one (and every documentation range is), unless STUN says the
//! address is public: `inet` runs a minimal STUN responder that answers with
//! the requester's own address, as a provider's unfiltered 1:1 side would.
//!
//! Checked: the mapping is granted and published, a connection from `inet`
//! to the public endpoint reaches the client and shows the remote's real
//! address; when another client takes the port, the renewal follows the new
//! port without a restart; a restarted miniupnpd (epoch reset) is noticed
//! and the mapping re-made; stop deletes the mapping.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use vpno_gateway::natpmp::{
    self, MapperConfig, MappingStatus, Protocol, Request, Response, ResultCode,
};
use vpno_tunnel::netns::{NamedNetns, NetnsRuntime};

const MINIUPNPD: &str = "/usr/sbin/miniupnpd";
const NAT_LAN: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const CLIENT_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const CLIENT_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
const NAT_WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const STUN_PORT: u16 = 3478;
const PORT: u16 = 5000;

/// The tables and chains Debian's nft_init.sh would create, in the nat namespace only.
const NFT_SKELETON: &str = "table inet filter {
  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
";

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// miniupnpd in the foreground (`-d`) inside `ns`; ended by its pid on drop.
struct Miniupnpd {
    child: Child,
    log: PathBuf,
}

impl Miniupnpd {
    fn start(ns: &str, dir: &Path, generation: u32) -> Miniupnpd {
        let conf = dir.join("miniupnpd.conf");
        std::fs::write(
            &conf,
            format!(
                "ext_ifname=wan0\nlistening_ip=lan0\nenable_natpmp=yes\nenable_upnp=no\n\
                 secure_mode=yes\nsystem_uptime=no\next_perform_stun=yes\next_stun_host={REMOTE}\n\
                 ext_stun_port={STUN_PORT}\nclean_ruleset_interval=600\n\
                 allow 1024-65535 10.77.0.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n"
            ),
        )
        .unwrap();
        let log = dir.join(format!("miniupnpd-{generation}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, MINIUPNPD, "-d", "-f"])
            .arg(&conf)
            .arg("-P")
            .arg(dir.join("miniupnpd.pid"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start miniupnpd");
        let m = Miniupnpd { child, log };
        m.wait_for_log("Listening for NAT-PMP");
        m
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("miniupnpd did not log {needle:?}:\n{}", self.log());
    }

    /// SIGTERM by pid (miniupnpd removes its rules on the way out), then wait.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Drop kills it.
    }
}

impl Drop for Miniupnpd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Answers every STUN binding request with the requester's address as
/// MAPPED-ADDRESS, from the address it was asked on (RFC 5389 layout).
async fn stun_responder(socket: tokio::net::UdpSocket) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        if n < 20 || buf[0..2] != [0x00, 0x01] {
            continue;
        }
        let SocketAddr::V4(from4) = from else {
            continue;
        };
        let mut resp = vec![0x01, 0x01, 0x00, 12];
        resp.extend_from_slice(&buf[4..20]); // magic cookie and transaction id
        resp.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0x00, 0x01]);
        resp.extend_from_slice(&from4.port().to_be_bytes());
        resp.extend_from_slice(&from4.ip().octets());
        let _ = socket.send_to(&resp, from).await;
    }
}

/// One NAT-PMP exchange from `source` (not through the client under test).
async fn raw_map(source: Ipv4Addr, suggested: u16, lifetime: u32) -> Response {
    let s = tokio::net::UdpSocket::bind((source, 0)).await.unwrap();
    let req = Request::Map {
        protocol: Protocol::Tcp,
        internal_port: PORT,
        suggested_external_port: suggested,
        lifetime,
    };
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        s.send_to(&req.encode(), (NAT_LAN, natpmp::SERVER_PORT))
            .await
            .unwrap();
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.recv(&mut buf)).await
        {
            return Response::decode(&buf[..n]).unwrap();
        }
    }
    panic!("miniupnpd did not answer a raw request from {source}");
}

fn mapped_port(r: Response) -> u16 {
    match r {
        Response::Map {
            result: ResultCode::Success,
            external_port,
            ..
        } => external_port,
        other => panic!("mapping refused: {other:?}"),
    }
}

/// Waits (bounded) until `status` satisfies `done`.
async fn wait_status(
    rx: &mut watch::Receiver<MappingStatus>,
    what: &str,
    done: impl Fn(&MappingStatus) -> bool,
) -> MappingStatus {
    let r = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| done(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match r {
        Ok(Ok(s)) => s,
        _ => panic!("timed out waiting for {what}; status {:?}", *rx.borrow()),
    }
}

/// Connects from `inet` to the public endpoint, sends a line, and returns
/// what the client read and the peer address it saw.
async fn through_mapping(
    inet: &NetnsRuntime,
    cli: &NetnsRuntime,
    port: u16,
) -> (String, SocketAddr) {
    let listener = cli
        .run(async {
            tokio::net::TcpListener::bind((CLIENT_A, PORT))
                .await
                .unwrap()
        })
        .await;
    let accept = cli.spawn(async move {
        let (mut conn, peer) = listener.accept().await.unwrap();
        let mut line = String::new();
        conn.read_to_string(&mut line).await.unwrap();
        (line, peer)
    });
    inet.run(async move {
        // miniupnpd renews a mapping by deleting and re-adding its rule (two
        // nft transactions): a SYN between them is refused. A few tries, bounded.
        let mut tries = 0;
        let mut c = loop {
            tries += 1;
            match tokio::net::TcpStream::connect((NAT_WAN, port)).await {
                Ok(c) => break c,
                Err(e) if tries < 5 => {
                    eprintln!("connect to {NAT_WAN}:{port}: {e}; again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("connect through the mapping: {e}"),
            }
        };
        c.write_all(b"hello through the mapping").await.unwrap();
    })
    .await;
    tokio::time::timeout(Duration::from_secs(10), accept)
        .await
        .expect("accept")
        .unwrap()
}

/// Maps UDP port 5353 with a second client, sends a datagram from `inet`
/// to the published endpoint, checks the client got it from the remote's
/// address, stops the client and returns the external port.
async fn udp_mapping_carries_a_datagram(inet: &NetnsRuntime, cli: &NetnsRuntime) -> u16 {
    const UDP_PORT: u16 = 5353;
    let (tx, mut rx) = watch::channel(MappingStatus::default());
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = MapperConfig {
        lifetime: 30,
        ..MapperConfig::new(Protocol::Udp, UDP_PORT)
    };
    let server = SocketAddr::from((NAT_LAN, natpmp::SERVER_PORT));
    let client = cli.spawn(natpmp::run(server, config, tx, async {
        let _ = stop_rx.await;
    }));
    let ep = wait_status(&mut rx, "the UDP mapping", |s| s.endpoint.is_some())
        .await
        .endpoint
        .unwrap();
    assert_eq!((ep.address, ep.protocol), (NAT_WAN, Protocol::Udp));
    let sock = cli
        .run(async {
            tokio::net::UdpSocket::bind((CLIENT_A, UDP_PORT))
                .await
                .unwrap()
        })
        .await;
    let received = cli.spawn(async move {
        let mut buf = [0u8; 64];
        let (n, from) = sock.recv_from(&mut buf).await.unwrap();
        (buf[..n].to_vec(), from)
    });
    let port = ep.port;
    inet.run(async move {
        let s = tokio::net::UdpSocket::bind((REMOTE, 0)).await.unwrap();
        // UDP may be lost: a few sends, bounded.
        for _ in 0..5 {
            s.send_to(b"udp through the mapping", (NAT_WAN, port))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let (data, from) = tokio::time::timeout(Duration::from_secs(5), received)
        .await
        .expect("datagram")
        .unwrap();
    assert_eq!(
        (data.as_slice(), from.ip()),
        (
            &b"udp through the mapping"[..],
            std::net::IpAddr::V4(REMOTE)
        )
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .expect("UDP client stops")
        .unwrap()
        .unwrap();
    assert_eq!(rx.borrow().endpoint, None);
    port
}

fn nft_nat_rules(nat: &NamedNetns) -> String {
    let out = nat
        .exec(
            "nft",
            &["list", "chain", "inet", "filter", "prerouting_miniupnpd"],
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_renews_follows_a_changed_port_and_deletes_against_miniupnpd() {
    if !vpno_sys::require_root("natpmp_miniupnpd")
        || !vpno_sys::require(
            Path::new(MINIUPNPD).exists(),
            "miniupnpd not installed (scripts/setup installs miniupnpd-nftables)",
        )
    {
        return;
    }
    let id = std::process::id();
    let cli = NamedNetns::create(format!("vpno-pmp-{id}-cli")).unwrap();
    let nat = NamedNetns::create(format!("vpno-pmp-{id}-nat")).unwrap();
    let inet = NamedNetns::create(format!("vpno-pmp-{id}-inet")).unwrap();
    cli.link_veth(("lan1", "10.77.0.2/24"), &nat, ("lan0", "10.77.0.1/24"))
        .unwrap();
    cli.ip(&["addr", "add", "10.77.0.3/24", "dev", "lan1"])
        .unwrap();
    cli.ip(&["route", "add", "default", "via", "10.77.0.1"])
        .unwrap();
    nat.link_veth(
        ("wan0", "203.0.113.2/24"),
        &inet,
        ("wan1", "203.0.113.1/24"),
    )
    .unwrap();
    let sysctl = nat
        .exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    assert!(sysctl.status.success());
    let dir = TempDir(std::env::temp_dir().join(format!("vpno-natpmp-{id}")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let skeleton = dir.0.join("skeleton.nft");
    std::fs::write(&skeleton, NFT_SKELETON).unwrap();
    let out = nat
        .exec("nft", &["-f", skeleton.to_str().unwrap()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let inet_rt = inet.runtime().unwrap();
    let cli_rt = cli.runtime().unwrap();
    inet_rt
        .run(async {
            let s = tokio::net::UdpSocket::bind((REMOTE, STUN_PORT))
                .await
                .unwrap();
            tokio::spawn(stun_responder(s));
        })
        .await;
    let server = Miniupnpd::start(nat.name(), &dir.0, 1);

    // The client under test: TCP, internal port 5000, 4 s lifetime (renewal every 2 s).
    let config = MapperConfig {
        suggested_external_port: PORT,
        lifetime: 4,
        retry_after: Duration::from_secs(1),
        ..MapperConfig::new(Protocol::Tcp, PORT)
    };
    let (status_tx, mut status) = watch::channel(MappingStatus::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let client = cli_rt.spawn(natpmp::run(
        SocketAddr::from((NAT_LAN, natpmp::SERVER_PORT)),
        config,
        status_tx,
        async {
            let _ = stop_rx.await;
        },
    ));

    let first = wait_status(&mut status, "the first mapping", |s| s.endpoint.is_some()).await;
    let ep = first.endpoint.unwrap();
    assert_eq!(
        (ep.address, ep.port, ep.protocol),
        (NAT_WAN, PORT, Protocol::Tcp),
        "{}",
        server.log()
    );
    let (line, peer) = through_mapping(&inet_rt, &cli_rt, ep.port).await;
    assert_eq!(line, "hello through the mapping");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(REMOTE),
        "the client sees the remote's real address"
    );
    let grants = wait_status(&mut status, "a renewal", |s| s.grants > first.grants)
        .await
        .grants;
    assert!(grants > first.grants);

    // Another client takes port 5000 behind the first one's back: delete its
    // mapping (secure mode: same source address) and map 5000 for client B.
    // Retried if the first client's renewal slips in between.
    let changed_at;
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(tries <= 5, "could not hand port {PORT} to client B");
        let (delete, take) = cli_rt
            .run(async {
                let d = raw_map(CLIENT_A, 0, 0).await;
                let t = raw_map(CLIENT_B, PORT, 60).await;
                (d, t)
            })
            .await;
        assert!(
            matches!(
                delete,
                Response::Map {
                    result: ResultCode::Success,
                    ..
                }
            ),
            "{delete:?}"
        );
        if mapped_port(take) == PORT {
            changed_at = Instant::now();
            break;
        }
        cli_rt.run(async { raw_map(CLIENT_B, 0, 0).await }).await;
    }
    let followed = wait_status(&mut status, "a changed port", |s| {
        s.endpoint.is_some_and(|e| e.port != PORT)
    })
    .await;
    let new_port = followed.endpoint.unwrap().port;
    eprintln!(
        "natpmp: followed a port change {PORT} -> {new_port} in {:?} (lifetime 4 s)",
        changed_at.elapsed()
    );
    assert!(followed.port_changes >= 1);
    let (line, peer) = through_mapping(&inet_rt, &cli_rt, new_port).await;
    assert_eq!(
        (line.as_str(), peer.ip()),
        ("hello through the mapping", std::net::IpAddr::V4(REMOTE))
    );

    // The server restarts: its epoch starts again and its mappings are gone.
    let resets = status.borrow().epoch_resets;
    server.stop();
    let server = Miniupnpd::start(nat.name(), &dir.0, 2);
    let after = wait_status(&mut status, "an epoch reset", |s| {
        s.epoch_resets > resets && s.endpoint.is_some()
    })
    .await;
    let port = after.endpoint.unwrap().port;
    let (line, _) = through_mapping(&inet_rt, &cli_rt, port).await;
    assert_eq!(
        line, "hello through the mapping",
        "re-mapped after the restart"
    );
    // (Not also checked in the nft chain: a renewal deletes and re-adds the
    // rule in two transactions, so a listing may fall between them.)

    // A UDP mapping beside it: a datagram from the internet side reaches the client.
    let udp_port = udp_mapping_carries_a_datagram(&inet_rt, &cli_rt).await;
    assert!(
        !nft_nat_rules(&nat).contains(&format!("udp dport {udp_port} ")),
        "UDP mapping deleted"
    );

    // Stop deletes the mapping.
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .expect("client stops")
        .unwrap()
        .unwrap();
    assert_eq!(status.borrow().endpoint, None);
    let rules = nft_nat_rules(&nat);
    assert!(
        !rules.contains(&format!("dport {port} ")),
        "{rules}\n{}",
        server.log()
    );
    assert!(server.log().contains("mapping removed"), "{}", server.log());
    drop(server);
    drop((cli_rt, inet_rt));
}
