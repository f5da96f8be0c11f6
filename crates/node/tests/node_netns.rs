//! Real-kernel test of the node agent (root): two "node" namespaces joined by
//! a veth underlay (192.0.2.1/.2), each running the agent's reconcile for a
//! two-node list; a client namespace on each node's bridge (192.168.24.0/22)
//! pings the other over the VXLAN. Also the agent's CNI file work on a
//! temporary conf dir: entry written, idempotent, removed on uninstall; a
//! malformed conflist is an error and left as it was.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use vpno_node::plan::NodeInfo;
use vpno_node::{Agent, CniInstall, CniSettings, NetlinkKernel, gateway_spec};

fn skip_unless_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    let tools = ["ip", "bridge"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if root && tools {
        return false;
    }
    let why = if root {
        "needs ip and bridge"
    } else {
        "needs root"
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("node netns test {why} (CI=true)");
    }
    eprintln!("SKIPPED: node netns test {why}");
    true
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    fn ip(&self, args: &str) -> String {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend(args.split_whitespace());
        sh(&v)
    }
    fn run(&self, args: &str) -> std::process::Output {
        let mut v = vec!["netns", "exec", &self.0];
        v.extend(args.split_whitespace());
        Command::new("ip").args(v).output().expect("spawn")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Runs `f` on a current-thread runtime in a thread inside namespace `ns`.
fn in_ns<T: Send + 'static, F>(ns: &str, f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T>,
{
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join()
    .expect("thread in netns panicked")
}

fn nodes(names: &[(&str, &str)]) -> Vec<NodeInfo> {
    names
        .iter()
        .map(|(n, a)| NodeInfo {
            name: n.to_string(),
            address: Some(a.parse().unwrap()),
            slice: None,
        })
        .collect()
}

fn args(node: &str) -> vpno_node::NodeArgs {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        a: vpno_node::NodeArgs,
    }
    Cli::parse_from(["x", "--node-name", node, "--gateway", "vpn/egress"]).a
}

/// Reconciles `node` in `ns` for `list`; returns (slice, mtu).
fn reconcile(
    ns: &str,
    node: &'static str,
    list: Vec<NodeInfo>,
    cni: Option<CniSettings>,
) -> (String, u32) {
    in_ns(ns, move || async move {
        let mut agent = Agent::new(
            NetlinkKernel::connect().unwrap(),
            gateway_spec(&args(node)).unwrap(),
            cni,
        );
        let d = agent.reconcile(&list).await.expect("reconcile");
        (d.slice.to_string(), d.mtu)
    })
}

fn uninstall(ns: &str, node: &'static str, cni: Option<CniSettings>) {
    in_ns(ns, move || async move {
        let agent = Agent::new(
            NetlinkKernel::connect().unwrap(),
            gateway_spec(&args(node)).unwrap(),
            cni,
        );
        agent.uninstall().await.expect("uninstall");
    })
}

/// A client namespace on `node`'s bridge with `addr`.
fn client(node: &Netns, name: String, addr: &str) -> Netns {
    let c = Netns::new(name);
    node.ip(&format!(
        "link add cv type veth peer name eth0 netns {}",
        c.0
    ));
    node.ip("link set cv master vpno-gw0 up");
    node.ip("link set cv mtu 1420");
    c.ip("link set eth0 mtu 1420");
    c.ip(&format!("addr add {addr}/22 dev eth0"));
    c.ip("link set eth0 up");
    c
}

const ECHO: &str = "192.168.24.129:7000";

/// A UDP echo server in `ns` until it gets "stop" (or 30 quiet seconds).
fn echo_server(ns: &str) -> std::thread::JoinHandle<()> {
    let path = format!("/run/netns/{ns}");
    let sock = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        UdpSocket::bind(ECHO).expect("bind echo")
    })
    .join()
    .unwrap();
    std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if &buf[..n] == b"stop" {
                return;
            }
            let _ = sock.send_to(&buf[..n], from);
        }
    })
}

/// Sends `size` bytes from `ns` to the echo server up to `tries` times (1 s
/// each); the size echoed back, if any.
fn udp_roundtrip(ns: &str, size: usize, tries: u32) -> Option<usize> {
    in_ns(ns, move || async move {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..tries {
            sock.send_to(&vec![7u8; size], ECHO).expect("send");
            if let Ok(n) = sock.recv(&mut buf) {
                return Some(n);
            }
        }
        None
    })
}

/// Stops the echo server from inside its own namespace `ns`.
fn stop(ns: &str) {
    in_ns(ns, move || async move {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"stop", ECHO).expect("send stop");
    })
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cni_dir(tag: &str) -> (TempDir, CniSettings) {
    let dir = std::env::temp_dir().join(format!("vpno-node-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("net.d")).unwrap();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(dir.join("bin/src"), b"#!/bin/sh\n").unwrap();
    let settings = CniSettings {
        install: CniInstall {
            conf_dir: dir.join("net.d"),
            bin_dir: dir.join("bin"),
        },
        binary: Some(dir.join("bin/src")),
        gateway: ("vpn".into(), "egress".into()),
        vip: "192.168.24.1".parse().unwrap(),
        excludes: vec!["10.244.0.0/16".parse().unwrap()],
        kubeconfig: None,
    };
    (TempDir(dir), settings)
}

const CLUSTER: &str = r#"{"cniVersion":"1.0.0","name":"podnet","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

#[test]
fn two_nodes_share_the_gateway_network_over_vxlan() {
    if skip_unless_root() {
        return;
    }
    let tag = std::process::id() % 100000;
    let a = Netns::new(format!("vn{tag}-a"));
    let b = Netns::new(format!("vn{tag}-b"));
    a.ip(&format!("link add ul type veth peer name ul netns {}", b.0));
    a.ip("addr add 192.0.2.1/24 dev ul");
    b.ip("addr add 192.0.2.2/24 dev ul");
    a.ip("link set ul up");
    b.ip("link set ul up");
    let both = nodes(&[("node-a", "192.0.2.1"), ("node-b", "192.0.2.2")]);
    let (dir, cni) = cni_dir("a");
    let conflist = dir.0.join("net.d/10-podnet.conflist");
    std::fs::write(&conflist, CLUSTER).unwrap();

    let (slice_a, mtu) = reconcile(&a.0, "node-a", both.clone(), Some(cni.clone()));
    let (slice_b, _) = reconcile(&b.0, "node-b", both.clone(), None);
    assert_eq!(
        (slice_a.as_str(), slice_b.as_str(), mtu),
        ("192.168.24.64/26", "192.168.24.128/26", 1420)
    );
    // Idempotent: a second pass changes nothing it can see.
    let remotes = || {
        String::from_utf8_lossy(&a.run("bridge fdb show dev vpno-vx0").stdout)
            .lines()
            .filter(|l| l.starts_with("00:00:00:00:00:00"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let fdb_before = remotes();
    assert_eq!(fdb_before.len(), 1, "{fdb_before:?}");
    assert!(fdb_before[0].contains("dst 192.0.2.2"), "{fdb_before:?}");
    let conf_before = std::fs::read_to_string(&conflist).unwrap();
    reconcile(&a.0, "node-a", both.clone(), Some(cni.clone()));
    assert_eq!(std::fs::read_to_string(&conflist).unwrap(), conf_before);
    assert_eq!(remotes(), fdb_before);

    let list: serde_json::Value = serde_json::from_str(&conf_before).unwrap();
    let plugins = list["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 3);
    assert_eq!(
        (plugins[0]["type"].as_str(), plugins[1]["type"].as_str()),
        (Some("bridge"), Some("portmap"))
    );
    assert_eq!(plugins[2]["type"], "vpno-cni");
    assert_eq!(plugins[2]["slice"], "192.168.24.64/26");
    assert_eq!(plugins[2]["mtu"], 1420);
    assert_eq!(plugins[2]["bridge"], "vpno-gw0");
    assert_eq!(
        std::fs::read(dir.0.join("bin/vpno-cni")).unwrap(),
        b"#!/bin/sh\n"
    );

    let vx = a.ip("-d link show vpno-vx0");
    assert!(
        vx.contains("vxlan id 4242")
            && vx.contains("local 192.0.2.1")
            && vx.contains("dstport 4789"),
        "{vx}"
    );
    assert!(
        vx.contains("mtu 1420") && vx.contains("master vpno-gw0"),
        "{vx}"
    );

    let ca = client(&a, format!("vn{tag}-ca"), "192.168.24.65");
    let cb = client(&b, format!("vn{tag}-cb"), "192.168.24.129");
    let server = echo_server(&cb.0);
    // An IP packet of exactly the planned MTU (1420 = 1392 + UDP 8 + IP 20), DF set.
    assert_eq!(
        udp_roundtrip(&ca.0, 1392, 5),
        Some(1392),
        "no echo over the VXLAN"
    );
    // node-b leaves (its machine goes away: the underlay drops, so nothing
    // from it is learned again): every FDB entry towards it goes, learned ones
    // included. The static entry and at least one learned one exist before.
    let fdb = String::from_utf8_lossy(&a.run("bridge fdb show dev vpno-vx0").stdout).into_owned();
    assert!(
        fdb.lines().filter(|l| l.contains("dst 192.0.2.2")).count() >= 2,
        "{fdb}"
    );
    stop(&cb.0);
    server.join().unwrap();
    b.ip("link set ul down");
    reconcile(&a.0, "node-a", both[..1].to_vec(), Some(cni.clone()));
    let fdb = String::from_utf8_lossy(&a.run("bridge fdb show dev vpno-vx0").stdout).into_owned();
    assert!(!fdb.contains("192.0.2.2"), "{fdb}");
    drop((ca, cb));

    // Uninstall leaves exactly the cluster's conflist, no binary, no links.
    uninstall(&a.0, "node-a", Some(cni));
    uninstall(&b.0, "node-b", None);
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
    assert_eq!(
        after,
        serde_json::from_str::<serde_json::Value>(CLUSTER).unwrap()
    );
    assert!(!dir.0.join("bin/vpno-cni").exists());
    for ns in [&a, &b] {
        let links = ns.ip("-o link show");
        assert!(!links.contains("vpno-"), "{links}");
    }
}

#[test]
fn a_malformed_conflist_is_an_error_and_not_rewritten() {
    let (dir, cni) = cni_dir("bad");
    let path = dir.0.join("net.d/10-podnet.conflist");
    let bad = r#"{"cniVersion":"1.0.0","name":"podnet","plugins":[{"type":"bridge"},"#;
    std::fs::write(&path, bad).unwrap();
    let err = cni
        .install
        .install_entry(&serde_json::json!({"type": "vpno-cni"}))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("10-podnet.conflist is not a CNI config list"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), bad);
    // No temporary file left behind either.
    assert_eq!(std::fs::read_dir(dir.0.join("net.d")).unwrap().count(), 1);
    let none = cni_dir("none");
    assert!(matches!(
        none.1
            .install
            .install_entry(&serde_json::json!({"type": "vpno-cni"})),
        Err(vpno_node::ConflistError::NoConfig(_))
    ));
}
