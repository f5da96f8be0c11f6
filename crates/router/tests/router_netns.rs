//! Real-kernel tests of the router in throwaway network namespaces (root).
//!
//! Topology: a bridge (`-sw`) joins routers (`-r1`, `-r2`), fake gateways
//! (`-g1`..) and a client (`-c`) on 10.77.0.0/24. Each fake gateway runs a
//! `/healthz` the test switches on and off, forwards and masquerades toward a
//! sink namespace (`-sink`, 203.0.113.1) through its own /30, so the sink sees
//! which gateway a connection came through. The router runs in-process, in a
//! thread that entered its namespace.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use vpno_net::egress::Gateway;
use vpno_router::RouterArgs;

const SINK: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SINK_PORT: u16 = 5000;
const VIP: &str = "10.77.0.1";

fn skip_unless_root() -> bool {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    let tools = ["ip", "nft"]
        .iter()
        .all(|t| Command::new(t).arg("-V").output().is_ok());
    if root && tools {
        return false;
    }
    let why = if root {
        "needs the ip and nft binaries"
    } else {
        "needs root"
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("router netns test {why} (CI=true)");
    }
    eprintln!("SKIPPED: router netns test {why}");
    true
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh_out(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }
    fn ip(&self, args: &str) {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend(args.split_whitespace());
        sh(&v);
    }
    fn ip_out(&self, args: &str) -> String {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend(args.split_whitespace());
        sh_out(&v)
    }
    /// Reads `/proc/sys/<path>` inside the namespace.
    fn sysctl(&self, path: &'static str) -> String {
        run_in(&self.0, move || {
            std::fs::read_to_string(format!("/proc/sys/{path}"))
                .unwrap()
                .trim()
                .to_string()
        })
    }
    /// Writes `/proc/sys/<path>` inside the namespace.
    fn set_sysctl(&self, path: &'static str, value: &'static str) {
        run_in(&self.0, move || {
            std::fs::write(format!("/proc/sys/{path}"), value).unwrap()
        });
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Runs `f` on a new thread inside namespace `ns`.
fn spawn_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        vpno_sys::netns::enter(&ns).expect("setns");
        f()
    })
}

fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in(ns, f).join().expect("thread in netns panicked")
}

/// An async server in a namespace, stopped and joined on drop.
struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start<F, Fut>(ns: &str, make: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = spawn_in(ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let fut = make();
                ready_tx.send(()).unwrap();
                tokio::select! {
                    _ = fut => {}
                    _ = rx => {}
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server started");
        Server {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a fake gateway's `/healthz` does.
const HEALTHY: u8 = 0;
/// Answers 503 (the agent knows its tunnel is down).
const FAILING: u8 = 1;
/// Accepts but never answers (a hung or dead agent): the probe times out.
const SILENT: u8 = 2;

/// `/healthz` on port 9090 behaving as `mode` says.
fn health_server(ns: &str, mode: Arc<AtomicU8>) -> Server {
    Server::start(ns, move || async move {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:9090").await.unwrap();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let mode = mode.load(Ordering::SeqCst);
            tokio::task::spawn_local(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                if mode == SILENT {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    return;
                }
                let (status, body) = if mode == HEALTHY {
                    ("200 OK", "ok\n")
                } else {
                    ("503 Service Unavailable", "down\n")
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    })
}

/// TCP sink: tells each connection the address it came from, then echoes lines.
fn sink_server(ns: &str, accepted: Arc<AtomicUsize>) -> Server {
    Server::start(ns, move || async move {
        let listener = tokio::net::TcpListener::bind((SINK, SINK_PORT))
            .await
            .unwrap();
        loop {
            let Ok((sock, peer)) = listener.accept().await else {
                continue;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::task::spawn_local(async move {
                use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                let (r, mut w) = sock.into_split();
                if w.write_all(format!("{}\n", peer.ip()).as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// A router running in-process in its namespace.
struct RouterTask {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    crash: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl RouterTask {
    fn start(ns: &str, args: RouterArgs) -> Self {
        Self::start_with(ns, args, None)
    }

    /// A router whose gateways come from the returned channel (each message is the whole set).
    fn start_with_channel(
        ns: &str,
        args: RouterArgs,
    ) -> (Self, tokio::sync::mpsc::Sender<Vec<Gateway>>) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (Self::start_with(ns, args, Some(rx)), tx)
    }

    fn start_with(
        ns: &str,
        args: RouterArgs,
        channel: Option<tokio::sync::mpsc::Receiver<Vec<Gateway>>>,
    ) -> Self {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (crash_tx, crash_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = spawn_in(ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let stop = async {
                    let _ = stop_rx.await;
                };
                let run = async move {
                    match channel {
                        Some(rx) => {
                            let source = vpno_router::gateways::ChannelGateways(rx);
                            vpno_router::run_with_source(args, source, "channel", stop).await
                        }
                        None => vpno_router::run_until(args, stop).await,
                    }
                };
                tokio::select! {
                    r = run => r.map_err(|e| e.to_string()),
                    _ = crash_rx => Ok(()), // dropped mid-flight: no teardown, like SIGKILL
                }
            })
        });
        RouterTask {
            shutdown: Some(stop_tx),
            crash: Some(crash_tx),
            thread: Some(thread),
        }
    }

    /// Clean shutdown; returns run's result.
    fn stop(mut self) -> Result<(), String> {
        let _ = self.shutdown.take().unwrap().send(());
        self.thread.take().unwrap().join().expect("router thread")
    }

    /// Drops the router without teardown.
    fn crash(mut self) {
        let _ = self.crash.take().unwrap().send(());
        let _ = self.thread.take().unwrap().join();
    }
}

impl Drop for RouterTask {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The test topology. Field order = drop order: servers before namespaces.
struct Lab {
    health: Vec<Arc<AtomicU8>>,
    sink_accepted: Arc<AtomicUsize>,
    _servers: Vec<Server>,
    routers: Vec<Netns>,
    client: Netns,
    _gateways: Vec<Netns>,
    _sink: Netns,
    _switch: Netns,
}

impl Lab {
    fn new(tag: &str, gateways: usize, routers: usize) -> Self {
        let prefix = format!("vr{}{tag}", std::process::id() % 100000);
        let switch = Netns::new(format!("{prefix}-sw"));
        switch.ip("link add br0 type bridge");
        switch.ip("link set br0 up");
        let mut port = 0;
        let mut attach = |ns: &Netns, addr: &str| {
            port += 1;
            sh(&[
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                &ns.0,
                "type",
                "veth",
                "peer",
                "name",
                &format!("p{port}"),
                "netns",
                &switch.0,
            ]);
            switch.ip(&format!("link set p{port} master br0 up"));
            ns.ip(&format!("addr add {addr}/24 dev eth0"));
            ns.ip("link set eth0 up");
        };
        let sink = Netns::new(format!("{prefix}-sink"));
        sink.ip(&format!("addr add {SINK}/32 dev lo"));
        let mut gws = Vec::new();
        for k in 1..=gateways {
            let g = Netns::new(format!("{prefix}-g{k}"));
            attach(&g, &format!("10.77.0.{}", 10 + k));
            sh(&[
                "ip",
                "link",
                "add",
                "up0",
                "netns",
                &g.0,
                "type",
                "veth",
                "peer",
                "name",
                &format!("g{k}"),
                "netns",
                &sink.0,
            ]);
            g.ip(&format!("addr add 198.51.100.{}/30 dev up0", 4 * k + 1));
            g.ip("link set up0 up");
            sink.ip(&format!("addr add 198.51.100.{}/30 dev g{k}", 4 * k + 2));
            sink.ip(&format!("link set g{k} up"));
            g.ip(&format!(
                "route add 203.0.113.0/24 via 198.51.100.{}",
                4 * k + 2
            ));
            g.set_sysctl("net/ipv4/ip_forward", "1");
            sh(&[
                "ip",
                "netns",
                "exec",
                &g.0,
                "nft",
                "add table ip vpnotest; add chain ip vpnotest post { type nat hook postrouting priority 100; }; add rule ip vpnotest post oifname \"up0\" masquerade",
            ]);
            gws.push(g);
        }
        let mut rts = Vec::new();
        for j in 1..=routers {
            let r = Netns::new(format!("{prefix}-r{j}"));
            attach(&r, &format!("10.77.0.{}", 1 + j));
            // A new namespace copies the host's ip_forward (devconf_inherit_init_net=0), and
            // the host forwards while a test cluster runs: start from a known "off".
            r.set_sysctl("net/ipv4/ip_forward", "0");
            rts.push(r);
        }
        let client = Netns::new(format!("{prefix}-c"));
        attach(&client, "10.77.0.100");
        client.ip(&format!("route add default via {VIP}"));

        let sink_accepted = Arc::new(AtomicUsize::new(0));
        let mut servers = vec![sink_server(&sink.0, sink_accepted.clone())];
        let mut health = Vec::new();
        for g in &gws {
            let flag = Arc::new(AtomicU8::new(HEALTHY));
            servers.push(health_server(&g.0, flag.clone()));
            health.push(flag);
        }
        Lab {
            health,
            sink_accepted,
            _servers: servers,
            routers: rts,
            client,
            _gateways: gws,
            _sink: sink,
            _switch: switch,
        }
    }

    fn router_args(&self, router: usize, peer: Option<&str>, priority: u8) -> RouterArgs {
        self.router_args_with(router, peer.as_slice(), priority, &[])
    }

    fn router_args_with(
        &self,
        router: usize,
        peers: &[&str],
        priority: u8,
        extra: &[String],
    ) -> RouterArgs {
        let mut argv = vec![
            "router".to_string(),
            "--interface=eth0".into(),
            "--client-subnet=10.77.0.0/24".into(),
            format!("--vip={VIP}/24"),
            format!("--priority={priority}"),
        ];
        for k in 1..=self.health.len() {
            argv.push(format!("--gateway=gw{k}=10.77.0.{}", 10 + k));
        }
        for p in peers {
            argv.push(format!("--peer={p}"));
        }
        argv.extend_from_slice(extra);
        let _ = router;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: RouterArgs,
        }
        Cli::parse_from(argv).args
    }

    /// Member nexthop ids of group 7700 in a router's kernel (empty if absent).
    fn group_members(&self, router: usize) -> Vec<u32> {
        let out = self.routers[router].ip_out("-j nexthop show id 7700");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
        v.get(0)
            .and_then(|nh| nh.get("group"))
            .and_then(|g| g.as_array())
            .map(|g| {
                g.iter()
                    .filter_map(|m| m.get("id").and_then(|i| i.as_u64()))
                    .map(|i| i as u32)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn has_vip(&self, router: usize) -> bool {
        self.routers[router]
            .ip_out("-br addr show dev vpno-vip")
            .contains(VIP)
    }

    /// Polls `cond` every 10 ms up to `limit`; returns the time it took.
    fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        start.elapsed()
    }
}

/// Fresh connections from the client; returns the gateway address each came through.
fn fresh_connections(client: &str, n: usize) -> Vec<Result<String, std::io::ErrorKind>> {
    run_in(client, move || {
        (0..n)
            .map(|_| {
                let mut s = TcpStream::connect_timeout(
                    &SocketAddr::from((SINK, SINK_PORT)),
                    Duration::from_secs(2),
                )
                .map_err(|e| e.kind())?;
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut line = String::new();
                BufReader::new(&mut s)
                    .read_line(&mut line)
                    .map_err(|e| e.kind())?;
                Ok(line.trim().to_string())
            })
            .collect()
    })
}

fn gateway_of_snat(addr: &str) -> Option<usize> {
    let last: u8 = addr.strip_prefix("198.51.100.")?.parse().ok()?;
    let n = last.checked_sub(1)?;
    n.is_multiple_of(4).then_some((n / 4) as usize)
}

/// Long-lived TCP connections from the client, checked on demand.
struct LongLived {
    check_tx: mpsc::Sender<()>,
    result_rx: mpsc::Receiver<Vec<bool>>,
    thread: Option<JoinHandle<()>>,
    /// The gateway (1-based) each connection goes through.
    via: Vec<usize>,
}

impl LongLived {
    fn open(client: &str, n: usize) -> Self {
        let (check_tx, check_rx) = mpsc::channel::<()>();
        let (via_tx, via_rx) = mpsc::channel::<Vec<usize>>();
        let (result_tx, result_rx) = mpsc::channel::<Vec<bool>>();
        let thread = spawn_in(client, move || {
            let mut conns = Vec::new();
            for _ in 0..n {
                let s = TcpStream::connect_timeout(
                    &SocketAddr::from((SINK, SINK_PORT)),
                    Duration::from_secs(2),
                )
                .unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                conns.push((gateway_of_snat(line.trim()).unwrap(), s, r));
            }
            via_tx.send(conns.iter().map(|c| c.0).collect()).unwrap();
            while check_rx.recv().is_ok() {
                let kept = conns
                    .iter_mut()
                    .map(|(_, s, r)| {
                        let mut echo = String::new();
                        s.write_all(b"ping\n").is_ok()
                            && r.read_line(&mut echo).is_ok()
                            && echo == "ping\n"
                    })
                    .collect();
                if result_tx.send(kept).is_err() {
                    break;
                }
            }
            for (_, s, _) in &mut conns {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        });
        let via = via_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("long-lived connections open");
        LongLived {
            check_tx,
            result_rx,
            thread: Some(thread),
            via,
        }
    }

    /// Sends a line on every connection; whether its echo came back.
    fn check(&self) -> Vec<bool> {
        self.check_tx.send(()).unwrap();
        self.result_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("check finished")
    }
}

impl Drop for LongLived {
    fn drop(&mut self) {
        let (tx, _) = mpsc::channel();
        self.check_tx = tx; // closes the command channel: the thread exits
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn spreads_flows_fails_over_goes_unreachable_and_cleans_up() {
    if skip_unless_root() {
        return;
    }
    let lab = Lab::new("a", 3, 1);
    let router = RouterTask::start(&lab.routers[0].0, lab.router_args(0, None, 100));
    let took = Lab::wait("3 gateways in the group", Duration::from_secs(10), || {
        lab.group_members(0).len() == 3
    });
    eprintln!("router up, group of 3 installed after {took:?}");
    assert!(lab.has_vip(0), "standalone router holds the VIP");
    let group = lab.routers[0].ip_out("-j nexthop show id 7700");
    assert!(
        group.contains("\"type\":\"resilient\""),
        "resilient group: {group}"
    );
    assert!(group.contains("\"buckets\":128"), "128 buckets: {group}");
    // Policy 3 over the packet's 5-tuple (0x37), not the socket hash policy 1 would reuse.
    assert_eq!(
        lab.routers[0].sysctl("net/ipv4/fib_multipath_hash_policy"),
        "3",
        "custom hash policy"
    );
    assert_eq!(
        lab.routers[0].sysctl("net/ipv4/fib_multipath_hash_fields"),
        "55",
        "5-tuple hash fields (0x37)"
    );
    assert_eq!(
        lab.routers[0].sysctl("net/ipv4/conf/eth0/send_redirects"),
        "0",
        "no ICMP redirects"
    );
    let rules = lab.routers[0].ip_out("rule show");
    assert!(
        rules.contains("7700:\tfrom 10.77.0.0/24 iif vpno-vip lookup 7700"),
        "lookup rule: {rules}"
    );
    assert!(
        rules.contains("7701:\tfrom 10.77.0.0/24 iif vpno-vip unreachable"),
        "kill-switch rule: {rules}"
    );

    // /status and /metrics, from inside the router's namespace.
    let (status, metrics) = run_in(&lab.routers[0].0, || {
        let get = |path: &str| {
            let mut s = TcpStream::connect("127.0.0.1:9095").expect("router HTTP");
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            body.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default()
        };
        // the status snapshot follows the reconcile that installed the group
        std::thread::sleep(Duration::from_millis(200));
        (get("/status"), get("/metrics"))
    });
    let status: serde_json::Value = serde_json::from_str(&status).expect("status is JSON");
    assert_eq!(status["role"], "active");
    assert_eq!(status["default_route"], "nexthop-group");
    assert_eq!(
        status["nexthop_group"]["members"],
        serde_json::json!(["gw1", "gw2", "gw3"])
    );
    assert_eq!(status["gateways"][1]["state"], "healthy");
    assert_eq!(status["gateways"][1]["last_probe"]["ok"], true);
    assert!(
        metrics.contains("vpno_router_gateways_healthy 3"),
        "metrics: {metrics}"
    );
    assert!(
        metrics.contains("vpno_router_role_active 1"),
        "metrics: {metrics}"
    );

    // 1. Many fresh connections spread over every gateway, never elsewhere.
    let results = fresh_connections(&lab.client.0, 60);
    let mut per_gateway = [0usize; 4];
    for r in &results {
        let addr = r.as_ref().expect("fresh connection through the router");
        let k = gateway_of_snat(addr)
            .unwrap_or_else(|| panic!("connection came from {addr}, not a gateway"));
        per_gateway[k] += 1;
    }
    eprintln!("60 fresh connections per gateway: {:?}", &per_gateway[1..]);
    assert!(
        per_gateway[1..].iter().all(|&n| n > 0),
        "every gateway carries flows: {per_gateway:?}"
    );

    // 2. Long-lived connections, then gateway 3 turns unhealthy.
    let streams = LongLived::open(&lab.client.0, 30);
    assert!(
        streams.check().iter().all(|k| *k),
        "long-lived connections work before the failure"
    );
    let via = streams.via.clone();

    // Gateway 3's agent hangs (worst case: the probe has to time out).
    let killed = Instant::now();
    lab.health[2].store(SILENT, Ordering::SeqCst);
    Lab::wait(
        "gateway 3 out of the group",
        Duration::from_secs(10),
        || !lab.group_members(0).contains(&7714),
    );
    let detection = killed.elapsed();
    assert_eq!(lab.group_members(0), vec![7712, 7713]);
    eprintln!(
        "FIGURE failover detection (gateway agent hangs -> out of group): {detection:?} (interval 1s + timeout 750ms = 1.75s bound)"
    );

    let kept = streams.check();
    drop(streams);
    let survivors: Vec<bool> = via
        .iter()
        .zip(&kept)
        .filter(|(g, _)| **g != 3)
        .map(|(_, k)| *k)
        .collect();
    let kept_n = survivors.iter().filter(|k| **k).count();
    eprintln!(
        "FIGURE flows on surviving gateways kept: {kept_n}/{} ({:.0}%); flows that were on gateway 3: {}",
        survivors.len(),
        100.0 * kept_n as f64 / survivors.len().max(1) as f64,
        via.iter().filter(|g| **g == 3).count()
    );
    assert_eq!(
        kept_n,
        survivors.len(),
        "a flow on a surviving gateway broke"
    );

    // New connections now avoid gateway 3.
    for r in fresh_connections(&lab.client.0, 20) {
        let k = gateway_of_snat(&r.expect("connection after failover")).unwrap();
        assert_ne!(k, 3, "new flow went through the unhealthy gateway");
    }

    // 3. Every gateway unhealthy: unreachable, nothing reaches the sink.
    // The others report failure (503): detection within one interval.
    let failed = Instant::now();
    lab.health[0].store(FAILING, Ordering::SeqCst);
    lab.health[1].store(FAILING, Ordering::SeqCst);
    Lab::wait("unreachable default", Duration::from_secs(10), || {
        lab.routers[0]
            .ip_out("route show table 7700")
            .contains("unreachable default")
    });
    eprintln!(
        "FIGURE failover detection (gateway agents answer 503 -> unreachable): {:?}",
        failed.elapsed()
    );
    assert!(lab.group_members(0).is_empty());
    let before = lab.sink_accepted.load(Ordering::SeqCst);
    for r in fresh_connections(&lab.client.0, 5) {
        let err = r.expect_err("no gateway healthy, yet a connection succeeded");
        eprintln!("client with no healthy gateway gets: {err:?}");
        assert_ne!(err, std::io::ErrorKind::WouldBlock);
    }
    assert_eq!(
        lab.sink_accepted.load(Ordering::SeqCst),
        before,
        "traffic reached the sink another way"
    );

    // 4. Recovery: rise 2 successes.
    lab.health
        .iter()
        .for_each(|h| h.store(HEALTHY, Ordering::SeqCst));
    let back = Lab::wait("all gateways back", Duration::from_secs(10), || {
        lab.group_members(0).len() == 3
    });
    eprintln!("all gateways back in the group after {back:?} (rise 2)");

    // 5. Clean shutdown removes everything and restores sysctls.
    router.stop().expect("clean shutdown");
    let r = &lab.routers[0];
    assert_eq!(r.ip_out("nexthop show").trim(), "", "nexthops left behind");
    assert_eq!(
        r.ip_out("route show table 7700").trim(),
        "",
        "routes left behind"
    );
    assert!(
        !r.ip_out("rule show").contains("lookup 7700"),
        "rule left behind"
    );
    assert!(
        !r.ip_out("link show").contains("vpno-vip"),
        "VIP interface left behind"
    );
    assert_eq!(r.sysctl("net/ipv4/ip_forward"), "0", "ip_forward restored");
    assert_eq!(
        r.sysctl("net/ipv4/conf/eth0/send_redirects"),
        "1",
        "send_redirects restored"
    );
}

#[test]
fn standby_takes_the_vip_when_the_active_router_dies() {
    if skip_unless_root() {
        return;
    }
    let lab = Lab::new("b", 2, 2);
    let r1 = RouterTask::start(
        &lab.routers[0].0,
        lab.router_args(0, Some("10.77.0.3"), 200),
    );
    let r2 = RouterTask::start(
        &lab.routers[1].0,
        lab.router_args(1, Some("10.77.0.2"), 100),
    );
    Lab::wait("one router holds the VIP", Duration::from_secs(15), || {
        lab.has_vip(0) || lab.has_vip(1)
    });
    // Let the election settle, then check there is exactly one holder.
    std::thread::sleep(Duration::from_secs(2));
    let (a, b) = (lab.has_vip(0), lab.has_vip(1));
    assert!(a ^ b, "exactly one router holds the VIP (r1 {a}, r2 {b})");
    let (active, standby, active_task, standby_task) =
        if a { (0, 1, r1, r2) } else { (1, 0, r2, r1) };
    eprintln!(
        "router {} active, router {} standby",
        active + 1,
        standby + 1
    );
    Lab::wait(
        "standby has the group ready",
        Duration::from_secs(10),
        || lab.group_members(standby).len() == 2,
    );
    assert!(
        fresh_connections(&lab.client.0, 5)
            .iter()
            .all(|r| r.is_ok()),
        "egress through the active router"
    );

    // Client probes egress continuously.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let prober = spawn_in(&lab.client.0, move || {
        let mut ok_times = Vec::new();
        let start = Instant::now();
        while !stop2.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(30) {
            let attempt = Instant::now();
            let ok = TcpStream::connect_timeout(
                &SocketAddr::from((SINK, SINK_PORT)),
                Duration::from_millis(200),
            )
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_millis(300)))?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)
            })
            .is_ok();
            if ok {
                ok_times.push(attempt);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        ok_times
    });
    let streams = LongLived::open(&lab.client.0, 12);
    std::thread::sleep(Duration::from_millis(500));

    // Kill the active router like a node dying: no teardown, its link goes down.
    active_task.crash();
    lab.routers[active].ip("link set eth0 down");
    // Only now is the old router's kernel state out of the path.
    let killed = Instant::now();
    let takeover = Lab::wait("standby takes the VIP", Duration::from_secs(15), || {
        lab.has_vip(standby)
    });
    // The gratuitous ARP from the new VIP interface teaches the bridge where the
    // virtual MAC lives now (bridge ports: p1..p2 gateways, p3 r1, p4 r2).
    let port = format!("dev p{}", 3 + standby);
    Lab::wait(
        "bridge learned the VIP MAC on the new active's port",
        Duration::from_secs(5),
        || {
            sh_out(&["bridge", "-n", &lab._switch.0, "fdb", "show", "br", "br0"])
                .lines()
                .any(|l| l.starts_with("02:56:50:4e:4f:01") && l.contains(&port))
        },
    );
    Lab::wait("egress resumes", Duration::from_secs(15), || {
        fresh_connections(&lab.client.0, 1)[0].is_ok()
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let ok_times = prober.join().unwrap();
    let last_before = ok_times.iter().filter(|t| **t < killed).max().copied();
    let first_after = ok_times.iter().filter(|t| **t >= killed).min().copied();
    let gap = match (last_before, first_after) {
        (Some(b), Some(a)) => a.duration_since(b),
        _ => panic!("client egress did not work both before and after the takeover"),
    };
    eprintln!(
        "FIGURE VIP takeover after active router death: VIP on standby after {takeover:?}; client egress gap {gap:?} (interval 1s, dead interval 3s)"
    );
    // Same seed, same hash policy, same group history: the new active maps
    // flows to the same gateways, so established flows can survive (printed,
    // not asserted: it depends on both routers having seen the same history).
    let kept = streams.check();
    drop(streams);
    eprintln!(
        "FIGURE established flows surviving the router takeover: {}/{}",
        kept.iter().filter(|k| **k).count(),
        kept.len()
    );

    // The old active comes back (stale VIP interface gone with its "node"):
    // it must stay standby, no split brain, egress keeps working.
    lab.routers[active].ip("link del vpno-vip");
    lab.routers[active].ip("link set eth0 up");
    let returned = RouterTask::start(
        &lab.routers[active].0,
        lab.router_args(
            active,
            Some(if active == 0 {
                "10.77.0.3"
            } else {
                "10.77.0.2"
            }),
            if active == 0 { 200 } else { 100 },
        ),
    );
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(5) {
        assert!(
            !lab.has_vip(active),
            "returning router took the VIP (split brain / preemption)"
        );
        assert!(lab.has_vip(standby), "new active router lost the VIP");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        fresh_connections(&lab.client.0, 5)
            .iter()
            .all(|r| r.is_ok()),
        "egress after the old active returned"
    );
    Lab::wait(
        "returned router has the group ready",
        Duration::from_secs(10),
        || lab.group_members(active).len() == 2,
    );

    // Clean stop of the active: it resigns, the other takes over without
    // waiting for the dead interval.
    let stopping = Instant::now();
    standby_task
        .stop()
        .expect("clean shutdown of the new active router");
    let handover = Lab::wait(
        "returned router takes over after the resign",
        Duration::from_secs(10),
        || lab.has_vip(active),
    );
    eprintln!(
        "FIGURE clean handover (SIGTERM of the active -> VIP on the other): {:?}",
        stopping.elapsed()
    );
    let _ = handover;
    assert!(
        fresh_connections(&lab.client.0, 3)
            .iter()
            .all(|r| r.is_ok()),
        "egress after the clean handover"
    );
    returned
        .stop()
        .expect("clean shutdown of the returned router");

    for r in &lab.routers {
        assert!(
            !r.ip_out("link show").contains("vpno-vip"),
            "VIP interface left behind in {}",
            r.0
        );
        assert_eq!(
            r.ip_out("nexthop show").trim(),
            "",
            "nexthops left behind in {}",
            r.0
        );
        assert!(
            !r.ip_out("rule show").contains("proto 77"),
            "rules left behind in {}",
            r.0
        );
        assert_eq!(
            r.ip_out("route show table 7700").trim(),
            "",
            "routes left behind in {}",
            r.0
        );
    }
}

/// GET `path` from a router's HTTP server, inside its namespace; the body.
fn router_http(ns: &str, path: &'static str) -> String {
    run_in(ns, move || {
        let mut s = TcpStream::connect("127.0.0.1:9095").expect("router HTTP");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    })
}

/// The value of a counter line `name` in a Prometheus text exposition (0 when absent).
fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Fake gateway `k` of the lab (1-based) as a router sees it.
fn gw(k: usize) -> Gateway {
    Gateway {
        name: format!("gw{k}"),
        address: Ipv4Addr::new(10, 77, 0, 10 + k as u8),
    }
}

/// Its nexthop id: from its address, whatever the order or number of gateways.
fn nexthop_id(k: usize) -> u32 {
    7700 + 1 + 10 + k as u32
}

#[test]
fn a_changing_gateway_set_keeps_flows_on_surviving_gateways() {
    if skip_unless_root() {
        return;
    }
    let lab = Lab::new("d", 3, 1);
    let ns = lab.routers[0].0.clone();
    let mut args = lab.router_args(0, None, 100);
    args.gateways.clear(); // the channel says which gateways there are
    args.interface_mac = Some([0x02, 0x56, 0x50, 0x52, 0x00, 0x07]);
    let original_mac = lab.routers[0].ip_out("-br link show eth0");
    assert!(!original_mac.contains("02:56:50:52:00:07"));
    let (router, set) = RouterTask::start_with_channel(&ns, args);
    set.blocking_send(vec![gw(1), gw(2)]).unwrap();
    Lab::wait(
        "gateways 1 and 2 in the group",
        Duration::from_secs(10),
        || lab.group_members(0) == vec![nexthop_id(1), nexthop_id(2)],
    );
    let streams = LongLived::open(&lab.client.0, 30);
    assert!(
        streams.check().iter().all(|k| *k),
        "flows work before any change"
    );
    let via = streams.via.clone();
    assert!(
        via.contains(&1) && via.contains(&2),
        "flows spread over both gateways: {via:?}"
    );

    // Gateway 3 joins at run time: no established flow moves.
    let joined = Instant::now();
    set.blocking_send(vec![gw(3), gw(1), gw(2)]).unwrap();
    Lab::wait("gateway 3 in the group", Duration::from_secs(10), || {
        lab.group_members(0) == vec![nexthop_id(1), nexthop_id(2), nexthop_id(3)]
    });
    eprintln!(
        "FIGURE gateway added -> in the group after {:?} (probe, first result decides)",
        joined.elapsed()
    );
    let kept = streams.check();
    assert!(
        kept.iter().all(|k| *k),
        "a gateway joining broke established flows: {kept:?}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&router_http(&ns, "/status")).expect("status is JSON");
    assert_eq!(status["gateway_source"], "channel");
    assert_eq!(
        status["nexthop_group"]["members"],
        serde_json::json!(["gw1", "gw2", "gw3"])
    );
    let metrics = router_http(&ns, "/metrics");
    assert_eq!(
        metric(&metrics, "vpno_router_gateway_set_changes_total "),
        2
    );
    assert_eq!(metric(&metrics, "vpno_router_gateways_configured "), 3);

    // Gateway 1 leaves: only its flows move; its nexthop object goes.
    let left = Instant::now();
    set.blocking_send(vec![gw(2), gw(3)]).unwrap();
    Lab::wait(
        "gateway 1 out of the group",
        Duration::from_secs(10),
        || lab.group_members(0) == vec![nexthop_id(2), nexthop_id(3)],
    );
    eprintln!(
        "FIGURE gateway removed -> out of the group after {:?}",
        left.elapsed()
    );
    Lab::wait(
        "gateway 1's nexthop deleted",
        Duration::from_secs(5),
        || {
            !lab.routers[0]
                .ip_out("nexthop show")
                .contains("10.77.0.11 ")
        },
    );
    let kept = streams.check();
    drop(streams);
    let survivors: Vec<bool> = via
        .iter()
        .zip(&kept)
        .filter(|(g, _)| **g != 1)
        .map(|(_, k)| *k)
        .collect();
    let kept_n = survivors.iter().filter(|k| **k).count();
    eprintln!(
        "FIGURE flows on surviving gateways kept across add+remove: {kept_n}/{}; flows that were on the removed gateway: {}",
        survivors.len(),
        via.iter().filter(|g| **g == 1).count()
    );
    assert_eq!(
        kept_n,
        survivors.len(),
        "a flow on a surviving gateway broke"
    );
    for r in fresh_connections(&lab.client.0, 20) {
        let k = gateway_of_snat(&r.expect("connection after the removal")).unwrap();
        assert_ne!(k, 1, "a new flow went through the removed gateway");
    }

    // Every gateway removed: unreachable, not the main table.
    set.blocking_send(vec![]).unwrap();
    Lab::wait("unreachable default", Duration::from_secs(10), || {
        lab.routers[0]
            .ip_out("route show table 7700")
            .contains("unreachable default")
    });
    assert!(lab.routers[0].ip_out("nexthop show").trim().is_empty());
    assert!(
        lab.routers[0]
            .ip_out("-br link show eth0")
            .contains("02:56:50:52:00:07"),
        "--interface-mac pinned"
    );
    router.stop().expect("clean shutdown");
    assert_eq!(
        lab.routers[0].ip_out("-br link show eth0"),
        original_mac,
        "the original MAC restored"
    );
}

/// The heartbeat key shared by the routers of a test, removed on drop.
struct KeyFile(std::path::PathBuf);

impl KeyFile {
    fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("vpno-router-key-{}-{tag}", std::process::id()));
        let key: Vec<u8> = (0..32u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect();
        std::fs::write(&path, key).unwrap();
        KeyFile(path)
    }
    fn arg(&self) -> String {
        format!("--heartbeat-key-file={}", self.0.display())
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sends `datagrams` to the routers' heartbeat port from a spoofed source
/// address, from the client's namespace (an untrusted neighbour).
fn spoof(client: &str, from: &'static str, to: &[&'static str], datagrams: Vec<Vec<u8>>) {
    let to: Vec<&'static str> = to.to_vec();
    run_in(client, move || {
        let sock =
            std::net::UdpSocket::bind((from, 0)).expect("bind a spoofed source (ip_nonlocal_bind)");
        // Sending from an address the host does not own needs IP_TRANSPARENT.
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::IpTransparent, &true)
            .expect("IP_TRANSPARENT");
        for d in &datagrams {
            for t in &to {
                sock.send_to(d, (*t, 9096))
                    .expect("sending a spoofed heartbeat");
            }
        }
    });
}

fn holders(lab: &Lab) -> Vec<usize> {
    (0..lab.routers.len()).filter(|r| lab.has_vip(*r)).collect()
}

#[test]
fn authenticated_routers_elect_one_and_ignore_forged_and_replayed_heartbeats() {
    if skip_unless_root() {
        return;
    }
    use vpno_net::egress::Role;
    use vpno_net::election::Heartbeat;
    use vpno_router::heartbeat::{HeartbeatKey, Sealer};
    let lab = Lab::new("k", 1, 3);
    let key = KeyFile::new("k");
    let vip: Ipv4Addr = VIP.parse().unwrap();
    let (r1, r2, r3) = ("10.77.0.2", "10.77.0.3", "10.77.0.4");
    // r1 also sends its heartbeats to the client's address: the attacker
    // gets genuine datagrams to replay, as an eavesdropper would.
    let r1_task = RouterTask::start(
        &lab.routers[0].0,
        lab.router_args_with(0, &[r2, r3, "10.77.0.100"], 200, &[key.arg()]),
    );
    let _r2_task = RouterTask::start(
        &lab.routers[1].0,
        lab.router_args_with(1, &[r1, r3], 150, &[key.arg()]),
    );
    let _r3_task = RouterTask::start(
        &lab.routers[2].0,
        lab.router_args_with(2, &[r1, r2], 100, &[key.arg()]),
    );
    let capture = run_in(&lab.client.0, || {
        let s = std::net::UdpSocket::bind("10.77.0.100:9096").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s
    });
    Lab::wait("one router holds the VIP", Duration::from_secs(15), || {
        !holders(&lab).is_empty()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        holders(&lab),
        vec![0],
        "exactly the highest priority router holds the VIP"
    );
    let status: serde_json::Value =
        serde_json::from_str(&router_http(&lab.routers[1].0, "/status")).unwrap();
    assert_eq!(status["role"], "standby");
    assert_eq!(status["heartbeat_authenticated"], true);
    assert_eq!(status["peers"].as_array().unwrap().len(), 2);
    assert_eq!(
        status["peers"][0]["role"], "active",
        "r2 hears r1 active: {status}"
    );

    // 1. Forged heartbeats (no key, or the wrong key) from spoofed router
    // addresses: "r1 resigns" to the standbys, "r2 is active with priority
    // 255" to the active. Accepted, either would move the VIP.
    lab.client.set_sysctl("net/ipv4/ip_nonlocal_bind", "1");
    let resign = resign_heartbeat(vip);
    let usurp = Heartbeat {
        priority: 255,
        role: Role::Active,
        vip,
    };
    let wrong = HeartbeatKey::new(&[0x55; 32]).unwrap();
    let now_us = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64
    };
    let attack = Instant::now();
    while attack.elapsed() < Duration::from_secs(3) {
        let forged_resign = vec![
            resign.encode().to_vec(),
            Sealer::new(Some(wrong.clone()), r1.parse().unwrap()).seal(&resign, now_us()),
        ];
        spoof(&lab.client.0, r1, &[r2, r3], forged_resign);
        let forged_usurp = vec![
            usurp.encode().to_vec(),
            Sealer::new(Some(wrong.clone()), r2.parse().unwrap()).seal(&usurp, now_us()),
        ];
        spoof(&lab.client.0, r2, &[r1], forged_usurp);
        assert_eq!(holders(&lab), vec![0], "a forged heartbeat moved the VIP");
        std::thread::sleep(Duration::from_millis(50));
    }
    let unauthenticated = |r: usize| {
        metric(
            &router_http(&lab.routers[r].0, "/metrics"),
            "vpno_router_heartbeats_rejected_total{reason=\"unauthenticated\"} ",
        )
    };
    let (u1, u2) = (unauthenticated(0), unauthenticated(1));
    eprintln!("forged heartbeats rejected: r1 {u1}, r2 {u2}");
    assert!(u1 > 0 && u2 > 0, "forgeries counted (r1 {u1}, r2 {u2})");

    // 2. Replay: genuine heartbeats of r1 captured, r1 dies, the captures
    // are re-sent from r1's address to keep it "alive". The standby with the
    // highest priority must take the VIP anyway.
    let mut captured = Vec::new();
    let start = Instant::now();
    while captured.len() < 3 && start.elapsed() < Duration::from_secs(10) {
        let mut buf = [0u8; 128];
        if let Ok((n, _)) = capture.recv_from(&mut buf) {
            captured.push(buf[..n].to_vec());
        }
    }
    assert_eq!(captured.len(), 3, "captured r1's heartbeats");
    assert!(
        captured
            .iter()
            .all(|d| d.len() == vpno_router::heartbeat::AUTHENTICATED_LEN)
    );
    r1_task.crash();
    lab.routers[0].ip("link set eth0 down");
    let killed = Instant::now();
    let mut took = None;
    while killed.elapsed() < Duration::from_secs(15) {
        spoof(&lab.client.0, r1, &[r2, r3], captured.clone());
        // The dead r1 keeps its stale VIP interface (no teardown): survivors only.
        let h: Vec<usize> = holders(&lab).into_iter().filter(|r| *r != 0).collect();
        assert!(h.len() <= 1, "two surviving routers hold the VIP: {h:?}");
        if h.contains(&1) {
            took = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took =
        took.expect("the standby took the VIP despite replayed heartbeats of the dead active");
    eprintln!(
        "FIGURE takeover with replayed heartbeats of the dead active: {took:?} (dead interval 3s)"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        holders(&lab)
            .into_iter()
            .filter(|r| *r != 0)
            .collect::<Vec<_>>(),
        vec![1],
        "r2 alone holds the VIP among the survivors"
    );
    let replayed = metric(
        &router_http(&lab.routers[1].0, "/metrics"),
        "vpno_router_heartbeats_rejected_total{reason=\"replayed\"} ",
    );
    assert!(replayed > 0, "replays counted");
}

/// The control for the test above: without a key, the same forgery moves
/// the VIP — which is what the key is for.
#[test]
fn without_a_key_a_forged_resign_moves_the_vip() {
    if skip_unless_root() {
        return;
    }
    let lab = Lab::new("f", 1, 2);
    let _r1 = RouterTask::start(
        &lab.routers[0].0,
        lab.router_args(0, Some("10.77.0.3"), 200),
    );
    let _r2 = RouterTask::start(
        &lab.routers[1].0,
        lab.router_args(1, Some("10.77.0.2"), 100),
    );
    Lab::wait("one router holds the VIP", Duration::from_secs(15), || {
        !holders(&lab).is_empty()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(holders(&lab), vec![0]);
    lab.client.set_sysctl("net/ipv4/ip_nonlocal_bind", "1");
    let resign = resign_heartbeat(VIP.parse().unwrap()).encode().to_vec();
    let start = Instant::now();
    let mut moved = false;
    while start.elapsed() < Duration::from_secs(5) && !moved {
        spoof(
            &lab.client.0,
            "10.77.0.2",
            &["10.77.0.3"],
            vec![resign.clone()],
        );
        moved = lab.has_vip(1);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        moved,
        "an unauthenticated forged resign did not move the VIP"
    );
}

fn resign_heartbeat(vip: Ipv4Addr) -> vpno_net::election::Heartbeat {
    vpno_net::election::VipElection::resign_heartbeat(vip)
}

/// A gateway Pod of MaskGateway `egress` as the controller would create it.
fn gateway_pod(name: &str, address: &str) -> k8s_openapi::api::core::v1::Pod {
    use vpno_api::names::{GATEWAY_LABEL, GATEWAY_ROLE_LABEL, NETWORK_ADDRESS_ANNOTATION};
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "labels": {GATEWAY_LABEL: "egress", GATEWAY_ROLE_LABEL: "gateway"},
            "annotations": {NETWORK_ADDRESS_ANNOTATION: address},
        },
        "spec": {"containers": [{"name": "agent", "image": "vpn-operator:test"}]},
    }))
    .unwrap()
}

/// `--discover` end to end but for where the watch runs: gateway Pods
/// created and deleted in a real API server drive the router's nexthop
/// group. The router runs in its namespace, which cannot reach the API
/// server on the host's loopback, so the Kubernetes source runs on the host
/// and hands its sets over a channel.
#[test]
fn gateway_pods_in_the_api_drive_the_routers_group() {
    if skip_unless_root() {
        return;
    }
    let Some(env) = vpno_testenv::TestEnv::shared() else {
        return;
    };
    use kube::api::{Api, DeleteParams, PostParams};
    let host = tokio::runtime::Runtime::new().unwrap();
    let (client, ns) = host.block_on(async {
        let client = env.client().await;
        let ns = env.new_namespace("vpno-router-pods").await;
        (client, ns)
    });
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);

    let lab = Lab::new("p", 2, 1);
    let mut args = lab.router_args(0, None, 100);
    args.gateways.clear();
    let (router, set) = RouterTask::start_with_channel(&lab.routers[0].0, args);
    let source = {
        let (client, ns) = (client.clone(), ns.clone());
        host.spawn(async move {
            use vpno_router::gateways::GatewaySource;
            let mut source = vpno_router::gateways::KubernetesGateways::new(client, &ns, "egress");
            loop {
                match source.next().await {
                    Ok(gateways) => {
                        if set.send(gateways).await.is_err() {
                            return;
                        }
                    }
                    // Transient: the watch retries with backoff.
                    Err(vpno_router::gateways::GatewaySourceError::Watch(_)) => {}
                    Err(_) => return,
                }
            }
        })
    };

    let create = |name: &str, address: &str| {
        host.block_on(pods.create(&PostParams::default(), &gateway_pod(name, address)))
            .unwrap();
    };
    let created = Instant::now();
    create("egress-0", "10.77.0.11/24");
    Lab::wait(
        "the Pod's gateway in the group",
        Duration::from_secs(20),
        || lab.group_members(0) == vec![nexthop_id(1)],
    );
    eprintln!(
        "FIGURE gateway Pod created -> nexthop in the router's group: {:?}",
        created.elapsed()
    );
    create("egress-1", "10.77.0.12/24");
    Lab::wait(
        "both Pods' gateways in the group",
        Duration::from_secs(20),
        || lab.group_members(0) == vec![nexthop_id(1), nexthop_id(2)],
    );
    let streams = LongLived::open(&lab.client.0, 20);
    let via = streams.via.clone();

    let deleted = Instant::now();
    host.block_on(pods.delete("egress-0", &DeleteParams::default()))
        .unwrap();
    Lab::wait(
        "the deleted Pod's gateway out of the group",
        Duration::from_secs(20),
        || lab.group_members(0) == vec![nexthop_id(2)],
    );
    eprintln!(
        "FIGURE gateway Pod deleted -> out of the router's group: {:?}",
        deleted.elapsed()
    );
    let kept = streams.check();
    drop(streams);
    let survivors: Vec<bool> = via
        .iter()
        .zip(&kept)
        .filter(|(g, _)| **g == 2)
        .map(|(_, k)| *k)
        .collect();
    eprintln!(
        "FIGURE flows on the remaining gateway kept after a Pod deletion: {}/{}",
        survivors.iter().filter(|k| **k).count(),
        survivors.len()
    );
    assert!(
        survivors.iter().all(|k| *k),
        "a flow on the remaining gateway broke"
    );
    source.abort();
    router.stop().expect("clean shutdown");
}
