//! The resolver against real DNS servers on loopback: dnsmasq as the cluster DNS and a
//! second dnsmasq as the upstream. Each server holds a decoy answer for the other's
//! names, and logs every query it sees, so a name sent the wrong way shows both as a
//! wrong answer and as a line in the wrong log.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

const UNBOUND: &str = "/usr/sbin/unbound";

/// Returns false after `SKIPPED:` when dnsmasq is missing; panics under CI=true.
fn have_dnsmasq() -> bool {
    have(DNSMASQ, "dnsmasq-base")
}

/// Returns false after `SKIPPED:` when `bin` is missing; panics under CI=true.
fn have(bin: &str, package: &str) -> bool {
    if Path::new(bin).exists() {
        return true;
    }
    let why = format!("{bin} not installed (scripts/setup installs {package})");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// A dnsmasq process answering only from its own records, killed on drop.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port(ip: IpAddr) -> u16 {
    // Both UDP and TCP must be free; bind UDP, then check TCP on the same port.
    loop {
        let udp = std::net::UdpSocket::bind((ip, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

impl Dnsmasq {
    fn start(name: &str, ip: &str, records: &[&str]) -> Dnsmasq {
        let ip: IpAddr = ip.parse().unwrap();
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vpno-dns-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("queries.log");
        let port = free_port(ip);
        let mut cmd = Command::new(DNSMASQ);
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--user=root",
            "--pid-file=",
            "--log-queries",
            "--local-ttl=60",
        ])
        .arg(format!("--listen-address={ip}"))
        .arg(format!("--port={port}"))
        .arg(format!("--log-facility={}", log.display()))
        .args(records)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd.spawn().expect("start dnsmasq");
        let d = Dnsmasq {
            child,
            addr: SocketAddr::new(ip, port),
            log,
            _dir: TempDir(dir),
        };
        d.wait_listening();
        d
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "dnsmasq on {} did not start",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many queries for `name` this server has logged.
    fn queries_for(&self, name: &str) -> usize {
        let needle = format!("] {name} from");
        self.log()
            .lines()
            .filter(|l| l.contains("query[") && l.contains(&needle))
            .count()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn query_message(name: &str, rtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m.to_vec().unwrap()
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        & 0xffff) as u16
}

async fn ask_udp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let sock = tokio::net::UdpSocket::bind((server.ip(), 0)).await.unwrap();
    sock.send_to(&query_message(name, rtype), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
        .await
        .expect("UDP answer in time")
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

async fn ask_tcp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let mut s = tokio::net::TcpStream::connect(server).await.unwrap();
    let q = query_message(name, rtype);
    s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(&q).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut len))
        .await
        .expect("TCP answer in time")
        .unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn addresses(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::PTR(p) => Some(p.0.to_string()),
            _ => None,
        })
        .collect()
}

async fn scrape(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

/// The value of one sample line of `text` (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

struct Lab {
    cluster: Dnsmasq,
    upstream: Dnsmasq,
}

fn lab() -> Lab {
    let cluster = Dnsmasq::start(
        "cluster",
        "127.0.0.2",
        &[
            "--local=/cluster.local/",
            "--local=/96.10.in-addr.arpa/",
            "--host-record=kubernetes.default.svc.cluster.local,10.96.0.1",
            "--host-record=kube-dns.kube-system.svc.cluster.local,10.96.0.10",
            "--ptr-record=1.0.96.10.in-addr.arpa,kubernetes.default.svc.cluster.local",
            // Decoy: only a leak to the wrong server would return this.
            "--host-record=www.example.test,198.51.100.99",
            "--host-record=tcp.example.test,198.51.100.98",
        ],
    );
    let upstream = Dnsmasq::start(
        "upstream",
        "127.0.0.3",
        &[
            "--local=/example.test/",
            "--host-record=www.example.test,192.0.2.80",
            "--host-record=tcp.example.test,192.0.2.81",
            // Decoys.
            "--host-record=kubernetes.default.svc.cluster.local,203.0.113.66",
            "--host-record=kube-dns.kube-system.svc.cluster.local,203.0.113.67",
        ],
    );
    Lab { cluster, upstream }
}

fn args(lab: &Lab, cluster_spec: &str, extra: &[&str]) -> vpno_dns::DnsArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        dns: vpno_dns::DnsArgs,
    }
    let mut argv = vec![
        "dns".to_owned(),
        "--listen=127.0.0.1:0".to_owned(),
        "--metrics-listen=127.0.0.1:0".to_owned(),
        format!("--cluster-dns={cluster_spec}"),
        format!("--upstream={}", lab.upstream.addr),
        "--cluster-cidr=10.96.0.0/12,10.244.0.0/16".to_owned(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    Cli::parse_from(argv).dns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_names_go_to_the_cluster_dns_and_the_rest_upstream_only() {
    if !have_dnsmasq() {
        return;
    }
    let lab = lab();
    // The cluster DNS over TCP only, the upstream over UDP (TCP on truncation).
    let resolver =
        vpno_dns::Resolver::bind(&args(&lab, &format!("tcp://{}", lab.cluster.addr), &[]))
            .await
            .unwrap();
    let dns = resolver.dns_addr();
    let http = resolver.http_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(resolver.run_until(async {
        let _ = stopped.await;
    }));

    // UDP from the client.
    let m = ask_udp(dns, "kubernetes.default.svc.cluster.local", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&m), ["10.96.0.1"]);
    let m = ask_udp(dns, "www.example.test", RecordType::A).await;
    assert_eq!(addresses(&m), ["192.0.2.80"]);
    // TCP from the client.
    let m = ask_tcp(dns, "kube-dns.kube-system.svc.cluster.local", RecordType::A).await;
    assert_eq!(addresses(&m), ["10.96.0.10"]);
    let m = ask_tcp(dns, "tcp.example.test", RecordType::A).await;
    assert_eq!(addresses(&m), ["192.0.2.81"]);
    // Reverse look-ups of the service range stay in the cluster.
    let m = ask_udp(dns, "1.0.96.10.in-addr.arpa", RecordType::PTR).await;
    assert_eq!(addresses(&m), ["kubernetes.default.svc.cluster.local."]);
    // Negative answers are passed through.
    let m = ask_udp(dns, "missing.default.svc.cluster.local", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask_udp(dns, "missing.example.test", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // A repeated name is answered from the cache: the upstream sees it once.
    let m = ask_udp(dns, "www.example.test", RecordType::A).await;
    assert_eq!(addresses(&m), ["192.0.2.80"]);

    let cluster_log = lab.cluster.log();
    let upstream_log = lab.upstream.log();
    for name in [
        "kubernetes.default.svc.cluster.local",
        "kube-dns.kube-system.svc.cluster.local",
        "1.0.96.10.in-addr.arpa",
        "missing.default.svc.cluster.local",
    ] {
        assert_eq!(
            lab.cluster.queries_for(name),
            1,
            "{name} at the cluster DNS:\n{cluster_log}"
        );
        assert_eq!(
            lab.upstream.queries_for(name),
            0,
            "{name} leaked upstream:\n{upstream_log}"
        );
    }
    for name in [
        "www.example.test",
        "tcp.example.test",
        "missing.example.test",
    ] {
        assert_eq!(
            lab.upstream.queries_for(name),
            1,
            "{name} upstream:\n{upstream_log}"
        );
        assert_eq!(
            lab.cluster.queries_for(name),
            0,
            "{name} at the cluster DNS:\n{cluster_log}"
        );
    }
    assert!(!cluster_log.contains("example.test"), "{cluster_log}");
    assert!(!upstream_log.contains("cluster.local"), "{upstream_log}");

    let metrics = scrape(http).await;
    assert!(
        metrics.starts_with("HTTP/1.0 200") || metrics.starts_with("HTTP/1.1 200"),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"vpno_dns_queries_total{zone="cluster",result="noerror"}"#
        ),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"vpno_dns_queries_total{zone="cluster",result="nxdomain"}"#
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"vpno_dns_queries_total{zone="upstream",result="noerror"}"#
        ),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"vpno_dns_queries_total{zone="upstream",result="nxdomain"}"#
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, r#"vpno_dns_cache_hits_total{zone="upstream"}"#),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"vpno_dns_query_duration_seconds_count{zone="cluster"}"#
        ),
        4.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains("example.test"),
        "query names must never be labels:\n{metrics}"
    );

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Latency figures for the note (printed with --nocapture; no thresholds): sequential
/// UDP queries straight to the upstream dnsmasq, through the resolver with the cache
/// off, and through the resolver answering from its cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_latency_through_the_resolver_vs_direct() {
    if !have_dnsmasq() {
        return;
    }
    const N: usize = 300;
    let lab = lab();
    let mut figures = Vec::new();
    for (label, cache) in [("resolver, cache off", "0"), ("resolver, cached", "1000")] {
        let resolver = vpno_dns::Resolver::bind(&args(
            &lab,
            &lab.cluster.addr.to_string(),
            &[&format!("--cache-size={cache}")],
        ))
        .await
        .unwrap();
        let dns = resolver.dns_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(resolver.run_until(async {
            let _ = stopped.await;
        }));
        figures.push((label, measure(dns, N).await));
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }
    figures.insert(
        0,
        ("direct to upstream", measure(lab.upstream.addr, N).await),
    );
    for (label, mut us) in figures {
        us.sort_unstable();
        eprintln!(
            "dns latency {label:<22} n={N} median={}us p90={}us p99={}us",
            us[N / 2],
            us[N * 9 / 10],
            us[N * 99 / 100]
        );
    }
}

/// Microseconds per query for `n` sequential queries of one upstream name.
async fn measure(server: SocketAddr, n: usize) -> Vec<u128> {
    let mut us = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let m = ask_udp(server, "www.example.test", RecordType::A).await;
        us.push(started.elapsed().as_micros());
        assert_eq!(addresses(&m), ["192.0.2.80"]);
    }
    us
}

/// Runs `openssl` with `args` in `dir`, panicking with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throw-away CA (`ca.pem`) and a server certificate for `dot.test` signed by it
/// (`cert.pem`, `key.pem`) in `dir`.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca = [
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=vpno-test-ca",
            "-days",
            "1",
        ],
    ]
    .concat();
    openssl(dir, &ca);
    let csr = [
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=dot.test",
        ],
    ]
    .concat();
    openssl(dir, &csr);
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:dot.test\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-extfile",
            "ext",
        ],
    );
}

/// unbound serving DNS over TLS from local data only (`local-zone: "." static`: it
/// never recurses, so nothing leaves the machine), killed on drop.
struct Unbound {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Unbound {
    fn start(dir: &Path) -> Unbound {
        let ip: IpAddr = "127.0.0.4".parse().unwrap();
        let port = free_port(ip);
        let d = dir.display();
        let conf = format!(
            "server:\n  interface: {ip}@{port}\n  tls-port: {port}\n  tls-service-key: \"{d}/key.pem\"\n  tls-service-pem: \"{d}/cert.pem\"\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  pidfile: \"\"\n  directory: \"{d}\"\n  use-syslog: no\n  logfile: \"{d}/unbound.log\"\n  log-queries: yes\n  access-control: 127.0.0.0/8 allow\n  module-config: \"iterator\"\n  do-ip6: no\n  local-zone: \".\" static\n  local-data: \"dot.example.test. 60 IN A 192.0.2.53\"\nremote-control:\n  control-enable: no\n"
        );
        std::fs::write(dir.join("unbound.conf"), conf).unwrap();
        let child = Command::new(UNBOUND)
            .args(["-d", "-c"])
            .arg(dir.join("unbound.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start unbound");
        let u = Unbound {
            child,
            addr: SocketAddr::new(ip, port),
            log: dir.join("unbound.log"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(u.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "unbound on {} did not start",
                u.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        u
    }

    fn queries_for(&self, name: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains(&format!(" {name}. A IN")))
            .count()
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resolves `name` through a resolver whose only upstream is `upstream`.
async fn resolve_via(upstream: &str, extra: &[&str], name: &str) -> Message {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        dns: vpno_dns::DnsArgs,
    }
    let mut argv = vec![
        "dns".to_owned(),
        "--listen=127.0.0.1:0".to_owned(),
        "--metrics-listen=127.0.0.1:0".to_owned(),
        // Never asked in this test (no cluster names).
        "--cluster-dns=127.0.0.5:53".to_owned(),
        format!("--upstream={upstream}"),
        "--timeout=1".to_owned(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let resolver = vpno_dns::Resolver::bind(&Cli::parse_from(argv).dns)
        .await
        .unwrap();
    let dns = resolver.dns_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(resolver.run_until(async {
        let _ = stopped.await;
    }));
    let m = ask_udp(dns, name, RecordType::A).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_over_tls_upstream_is_verified_against_the_trusted_ca() {
    if !have(UNBOUND, "unbound") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vpno-dns-dot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = TempDir(dir.clone());
    make_certs(&dir);
    let unbound = Unbound::start(&dir);
    let ca = format!("--tls-ca-file={}", dir.join("ca.pem").display());
    let upstream = format!("tls://{}@dot.test", unbound.addr);

    let m = resolve_via(&upstream, &[&ca], "dot.example.test").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&m), ["192.0.2.53"]);
    assert_eq!(
        unbound.queries_for("dot.example.test"),
        1,
        "unbound saw the query over TLS"
    );

    // Not trusted: the certificate is refused and nothing is asked.
    let m = resolve_via(&upstream, &[], "dot.example.test").await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    // Trusted CA, wrong name: refused too.
    let wrong = format!("tls://{}@other.test", unbound.addr);
    let m = resolve_via(&wrong, &[&ca], "dot.example.test").await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(
        unbound.queries_for("dot.example.test"),
        1,
        "no query over an unverified connection"
    );
}
