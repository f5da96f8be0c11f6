//! The RFC 2136 updater against Debian's Knot DNS on loopback, with a TSIG
//! key: set exactly a set of A records (grow, shrink, replace), remove them,
//! and a wrong key refused. Records are read back with a plain DNS query
//! built here, not through the updater under test.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use vpno_ddns::plan::PlanConfig;
use vpno_ddns::rfc2136::{Rfc2136Config, Rfc2136Updater, TsigAlg};
use vpno_ddns::writer::{self, WriterStatus};
use vpno_ddns::{DdnsError, DnsUpdater, Secret};

const KNOTD: &str = "/usr/sbin/knotd";
const ZONE: &str = "vpn.example";
const NAME: &str = "gw.vpn.example";
// A fixed test key (32 random bytes, base64); the wrong one differs.
const SECRET: &str = "q1hzW6pAuvJ0W3fU5vJ1b4QeZ0s7h8lZr0K3cM2x9Yk=";
const WRONG: &str = "AAAAW6pAuvJ0W3fU5vJ1b4QeZ0s7h8lZr0K3cM2x9Yk=";

struct Knot {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_tcp_udp_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Knot {
    fn start() -> Knot {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vpno-ddns-knot-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_tcp_udp_port();
        let d = dir.display();
        std::fs::write(
            dir.join("knot.conf"),
            format!(
                "server:\n  listen: 127.0.0.1@{port}\n  rundir: {d}\n\
                 log:\n  - target: stderr\n    any: info\n\
                 database:\n  storage: {d}\n\
                 key:\n  - id: vpno-ddns\n    algorithm: hmac-sha256\n    secret: {SECRET}\n\
                 acl:\n  - id: update\n    key: vpno-ddns\n    action: update\n\
                 template:\n  - id: default\n    storage: {d}\n    file: \"%s.zone\"\n\
                 zone:\n  - domain: {ZONE}\n    acl: update\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{ZONE}.zone")),
            format!(
                "$ORIGIN {ZONE}.\n$TTL 60\n@ SOA ns hostmaster 1 3600 600 86400 60\n@ NS ns\nns A 127.0.0.1\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("knot.log")).unwrap();
        let child = Command::new(KNOTD)
            .arg("-c")
            .arg(dir.join("knot.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start knotd");
        let knot = Knot {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        knot.wait_ready();
        knot
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("knot.log")).unwrap_or_default()
    }

    /// Until the zone answers (its SOA), bounded.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if query(self.addr, ZONE, RecordType::SOA).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("knotd did not serve {ZONE}:\n{}", self.log());
    }
}

/// A plain UDP query; None when no answer came.
fn query(server: SocketAddr, name: &str, rtype: RecordType) -> Option<Message> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_str(&format!("{name}.")).unwrap(),
        rtype,
    ));
    sock.send_to(&m.to_vec().unwrap(), server).ok()?;
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Message::from_vec(&buf[..n]).ok()
}

fn a_records(server: SocketAddr) -> BTreeSet<Ipv4Addr> {
    let m = query(server, NAME, RecordType::A).expect("knotd answers");
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn addrs(list: &[&str]) -> BTreeSet<Ipv4Addr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

fn updater(server: SocketAddr, secret: &str) -> Rfc2136Updater {
    Rfc2136Updater::new(Rfc2136Config {
        server,
        zone: ZONE.into(),
        key_name: "vpno-ddns".into(),
        algorithm: TsigAlg::HmacSha256,
        secret: Secret::new(secret),
        ttl: 30,
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

#[tokio::test]
async fn sets_exactly_the_given_records_and_removes_them_with_tsig() {
    if !vpno_sys::require(
        Path::new(KNOTD).exists(),
        "knotd not installed (scripts/setup installs knot)",
    ) {
        return;
    }
    let knot = Knot::start();
    let u = updater(knot.addr, SECRET);
    assert_eq!(u.current(NAME).await.unwrap(), BTreeSet::new());

    for step in [
        addrs(&["192.0.2.1", "198.51.100.7"]),
        addrs(&["192.0.2.1", "198.51.100.7", "203.0.113.9"]),
        addrs(&["203.0.113.9"]),
        addrs(&["192.0.2.44"]),
    ] {
        u.set(NAME, &step)
            .await
            .unwrap_or_else(|e| panic!("set {step:?}: {e}\n{}", knot.log()));
        assert_eq!(
            a_records(knot.addr),
            step,
            "the server holds exactly the set"
        );
        assert_eq!(u.current(NAME).await.unwrap(), step);
    }
    u.remove(NAME).await.unwrap();
    assert_eq!(a_records(knot.addr), BTreeSet::new());

    // A wrong key is refused, with the server and the RCODE in the message
    // and no secret in it; the records stay as they were.
    u.set(NAME, &addrs(&["192.0.2.1"])).await.unwrap();
    let wrong = updater(knot.addr, WRONG);
    let err = wrong.set(NAME, &addrs(&["192.0.2.99"])).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DdnsError::Refused { .. }), "{text}");
    assert!(text.contains("TSIG key vpno-ddns"), "{text}");
    assert!(text.contains(&knot.addr.to_string()), "{text}");
    assert!(!text.contains(WRONG) && !text.contains(SECRET), "{text}");
    assert_eq!(a_records(knot.addr), addrs(&["192.0.2.1"]));
    eprintln!("wrong key: {text}");
}

/// Waits (bounded) until the server holds `want`.
async fn until_server_has(server: SocketAddr, want: &BTreeSet<Ipv4Addr>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if a_records(server) == *want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server holds {:?}, not {want:?}", a_records(server));
}

/// The writer loop keeps the records equal to the desired set as it changes
/// (gateways dying and reviving), down to none, and counts its writes.
#[tokio::test]
async fn writer_follows_the_healthy_set() {
    if !vpno_sys::require(
        Path::new(KNOTD).exists(),
        "knotd not installed (scripts/setup installs knot)",
    ) {
        return;
    }
    let knot = Knot::start();
    let u = updater(knot.addr, SECRET);
    // Someone left a stale record: the writer reads it and replaces it.
    u.set(NAME, &addrs(&["192.0.2.250"])).await.unwrap();
    let config = PlanConfig {
        min_interval: Duration::from_millis(100),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_secs(1),
    };
    let (want_tx, want_rx) =
        tokio::sync::watch::channel(addrs(&["192.0.2.1", "192.0.2.2", "192.0.2.3"]));
    let (status_tx, status) = tokio::sync::watch::channel(WriterStatus::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        writer::run(&u, NAME, config, want_rx, status_tx, async {
            let _ = stop_rx.await;
        })
        .await
    });
    for step in [
        addrs(&["192.0.2.1", "192.0.2.2", "192.0.2.3"]),
        addrs(&["192.0.2.1", "192.0.2.3"]), // gateway 2 died
        addrs(&["192.0.2.3"]),              // and 1
        addrs(&["192.0.2.1", "192.0.2.3"]), // 1 revived
        addrs(&[]),                         // all dead
        addrs(&["198.51.100.9"]),           // a new public IP
    ] {
        want_tx.send_replace(step.clone());
        until_server_has(knot.addr, &step).await;
    }
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("writer stops")
        .unwrap();
    let s = status.borrow().clone();
    assert_eq!(s.known, Some(addrs(&["198.51.100.9"])));
    assert_eq!((s.failures, s.last_error), (0, None));
    assert_eq!(s.writes, 6, "one write per change");
}
