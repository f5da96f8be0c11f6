//! Real-kernel test of the node agent (root): two "node" namespaces joined by
//! a veth underlay (192.0.2.1/.2), each running the agent's reconcile for
//! the same cluster picture — two Node objects and two MaskGateway objects
//! (status written as the controller would), read through the agent's own
//! conversion. Each MaskGateway gets its own bridge and VXLAN device (names
//! and VNI from its uid); a client namespace on one node's bridge reaches
//! one on the other node over its gateway network's VXLAN, and not over the
//! other gateway network. A MaskGateway that goes takes its links, CNI entry
//! and address store with it; uninstall leaves the cluster's conflist, no
//! links and no anti-spoofing table. Also the agent's CNI file work on a
//! malformed conflist.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use vpno_api::gateway::{MaskGateway, MaskGatewayStatus, NetworkStatus, NodeSlice};
use vpno_node::cluster::picture;
use vpno_node::{
    Agent, Cluster, CniInstall, CniSettings, NetlinkKernel, PluginKubeconfig, gateways,
};

fn skip_unless_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    let tools = ["ip", "bridge", "nft"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if root && tools {
        return false;
    }
    let why = if root {
        "needs ip, bridge and nft"
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

fn node_object(name: &str, ip: &str) -> k8s_openapi::api::core::v1::Node {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
    }))
    .unwrap()
}

/// A MaskGateway as the API server holds it after the controller planned it.
fn gateway(name: &str, uid: &str, created: &str) -> MaskGateway {
    let mut gw = MaskGateway::new(name, Default::default());
    gw.metadata.namespace = Some("vpn".into());
    gw.metadata.uid = Some(uid.into());
    gw.metadata.creation_timestamp =
        Some(serde_json::from_value(serde_json::json!(created)).unwrap());
    gw.status = Some(MaskGatewayStatus {
        network: Some(NetworkStatus {
            cidr: "192.168.24.0/22".into(),
            vip: "192.168.24.1".into(),
            mtu: Some(1420),
            excludes: vec!["10.244.0.0/16".into()],
        }),
        nodes: vec![
            NodeSlice {
                node: "node-a".into(),
                slice: "192.168.24.64/26".into(),
            },
            NodeSlice {
                node: "node-b".into(),
                slice: "192.168.24.128/26".into(),
            },
        ],
        ..Default::default()
    });
    gw
}

fn cluster(gws: &[MaskGateway]) -> Cluster {
    let nodes = [
        node_object("node-a", "192.0.2.1"),
        node_object("node-b", "192.0.2.2"),
    ];
    let nodes: Vec<_> = nodes.into_iter().map(std::sync::Arc::new).collect();
    let gws: Vec<_> = gws.iter().cloned().map(std::sync::Arc::new).collect();
    picture(&nodes, &gws)
}

/// Reconciles `node` in `ns` for `cluster`; returns (namespace/name → (slice, mtu, vni)) served.
fn reconcile(
    ns: &str,
    node: &'static str,
    cluster: Cluster,
    cni: Option<CniSettings>,
) -> Vec<(String, String, u32, u32)> {
    in_ns(ns, move || async move {
        let mut agent = Agent::new(NetlinkKernel::connect().unwrap(), node, 4789, cni);
        let s = agent.reconcile(&cluster).await.expect("reconcile");
        assert!(s.failed.is_empty() && s.waiting.is_empty(), "{s:?}");
        s.served
            .iter()
            .map(|(id, d)| (id.clone(), d.slice.to_string(), d.mtu, d.params.vni))
            .collect()
    })
}

fn uninstall(ns: &str, node: &'static str, cni: Option<CniSettings>) {
    in_ns(ns, move || async move {
        let agent = Agent::new(NetlinkKernel::connect().unwrap(), node, 4789, cni);
        agent.uninstall().await.expect("uninstall");
    })
}

/// A client namespace on `node`'s bridge `bridge` with `addr` (host side `port`).
fn client(node: &Netns, bridge: &str, port: &str, name: String, addr: &str) -> Netns {
    let c = Netns::new(name);
    node.ip(&format!(
        "link add {port} type veth peer name eth0 netns {}",
        c.0
    ));
    node.ip(&format!("link set {port} master {bridge} up"));
    node.ip(&format!("link set {port} mtu 1420"));
    c.ip("link set eth0 mtu 1420");
    c.ip(&format!("addr add {addr}/22 dev eth0"));
    c.ip("link set eth0 up");
    c
}

const ECHO: &str = "192.168.24.129:7000";

/// A UDP echo server in `ns` until it gets "stop" (or 30 quiet seconds).
fn echo_server(ns: &str) -> std::thread::JoinHandle<()> {
    echo_server_at(ns, ECHO)
}

/// [`echo_server`] on `addr`.
fn echo_server_at(ns: &str, addr: &'static str) -> std::thread::JoinHandle<()> {
    let path = format!("/run/netns/{ns}");
    let sock = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        UdpSocket::bind(addr).expect("bind echo")
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
    udp_roundtrip_to(ns, ECHO, size, tries)
}

/// [`udp_roundtrip`] to `addr`.
fn udp_roundtrip_to(ns: &str, addr: &'static str, size: usize, tries: u32) -> Option<usize> {
    in_ns(ns, move || async move {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..tries {
            sock.send_to(&vec![7u8; size], addr).expect("send");
            if let Ok(n) = sock.recv(&mut buf) {
                return Some(n);
            }
        }
        None
    })
}

/// Stops the echo server from inside its own namespace `ns`.
fn stop(ns: &str) {
    stop_at(ns, ECHO)
}

/// [`stop`] for the server on `addr`.
fn stop_at(ns: &str, addr: &'static str) {
    in_ns(ns, move || async move {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"stop", addr).expect("send stop");
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
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let settings = CniSettings {
        install: CniInstall {
            conf_dir: dir.join("net.d"),
            bin_dir: dir.join("bin"),
        },
        binary: Some(dir.join("bin/src")),
        kubeconfig: PluginKubeconfig::Given("/etc/vpno/kubeconfig".into()),
        data_dir: dir.join("data"),
    };
    (TempDir(dir), settings)
}

const CLUSTER: &str = r#"{"cniVersion":"1.0.0","name":"podnet","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

#[test]
fn two_nodes_share_each_gateway_network_over_its_own_vxlan() {
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
    let one = gateway("egress", "uid-one", "2026-01-01T00:00:00Z");
    let two = gateway("other", "uid-two", "2026-01-02T00:00:00Z");
    let both = cluster(&[one.clone(), two.clone()]);
    let (dir, cni) = cni_dir("a");
    let conflist = dir.0.join("net.d/10-podnet.conflist");
    std::fs::write(&conflist, CLUSTER).unwrap();
    // A store the plugin made for each gateway network.
    for uid in ["uid-one", "uid-two"] {
        std::fs::create_dir_all(dir.0.join(format!("data/gw-{uid}/podnet"))).unwrap();
    }

    let served_a = reconcile(&a.0, "node-a", both.clone(), Some(cni.clone()));
    let served_b = reconcile(&b.0, "node-b", both.clone(), None);
    assert_eq!(served_a.len(), 2);
    assert_eq!(served_a[0].0, "vpn/egress");
    assert_eq!(
        (served_a[0].1.as_str(), served_a[0].2),
        ("192.168.24.64/26", 1420)
    );
    assert_eq!(served_b[0].1, "192.168.24.128/26");
    assert_ne!(served_a[0].3, served_a[1].3, "one VNI per gateway network");
    assert_eq!(
        served_a[0].3, served_b[0].3,
        "both nodes derive the same VNI"
    );
    let (br1, vx1) = (
        gateways::bridge_name("uid-one"),
        gateways::vxlan_name("uid-one"),
    );
    let (br2, vx2) = (
        gateways::bridge_name("uid-two"),
        gateways::vxlan_name("uid-two"),
    );

    // Idempotent: a second pass changes nothing it can see.
    let remotes = || {
        String::from_utf8_lossy(&a.run(&format!("bridge fdb show dev {vx1}")).stdout)
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

    // One chained entry per gateway network, after the cluster's plugins.
    let list: serde_json::Value = serde_json::from_str(&conf_before).unwrap();
    let plugins = list["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 4);
    assert_eq!(
        (plugins[0]["type"].as_str(), plugins[1]["type"].as_str()),
        (Some("bridge"), Some("portmap"))
    );
    for (p, (name, br, uid)) in plugins[2..]
        .iter()
        .zip([("egress", &br1, "uid-one"), ("other", &br2, "uid-two")])
    {
        assert_eq!(p["type"], "vpno-cni");
        assert_eq!(p["gateway"]["name"], name);
        assert_eq!(p["slice"], "192.168.24.64/26");
        assert_eq!(p["vip"], "192.168.24.1");
        assert_eq!(p["excludes"], serde_json::json!(["10.244.0.0/16"]));
        assert_eq!(p["mtu"], 1420);
        assert_eq!(p["bridge"], br.as_str());
        assert_eq!(p["kubeconfig"], "/etc/vpno/kubeconfig");
        assert!(
            p["dataDir"]
                .as_str()
                .unwrap()
                .ends_with(&format!("data/gw-{uid}"))
        );
    }
    assert_eq!(
        std::fs::read(dir.0.join("bin/vpno-cni")).unwrap(),
        b"#!/bin/sh\n"
    );

    let vx = a.ip(&format!("-d link show {vx1}"));
    assert!(
        vx.contains(&format!("vxlan id {} ", served_a[0].3))
            && vx.contains("local 192.0.2.1")
            && vx.contains("dstport 4789"),
        "{vx}"
    );
    assert!(
        vx.contains("mtu 1420") && vx.contains(&format!("master {br1}")),
        "{vx}"
    );
    // The anti-spoofing chain is in place.
    let guard = a.run("nft list chain bridge vpno_guard prerouting");
    assert!(
        guard.status.success(),
        "{}",
        String::from_utf8_lossy(&guard.stderr)
    );

    // Gateway network one carries traffic between the nodes; network two,
    // with the same addresses, does not see it.
    let ca = client(&a, &br1, "cv1", format!("vn{tag}-ca"), "192.168.24.65");
    let cb = client(&b, &br1, "cv1", format!("vn{tag}-cb"), "192.168.24.129");
    let other = client(&a, &br2, "cv2", format!("vn{tag}-co"), "192.168.24.66");
    let server = echo_server(&cb.0);
    // An IP packet of exactly the planned MTU (1420 = 1392 + UDP 8 + IP 20), DF set.
    assert_eq!(
        udp_roundtrip(&ca.0, 1392, 5),
        Some(1392),
        "no echo over the VXLAN"
    );
    assert_eq!(
        udp_roundtrip(&other.0, 100, 2),
        None,
        "the other gateway network reached it"
    );
    // node-b leaves (its machine goes away: the underlay drops, so nothing
    // from it is learned again): every FDB entry towards it goes, learned ones
    // included. The static entry and at least one learned one exist before.
    let fdb =
        String::from_utf8_lossy(&a.run(&format!("bridge fdb show dev {vx1}")).stdout).into_owned();
    assert!(
        fdb.lines().filter(|l| l.contains("dst 192.0.2.2")).count() >= 2,
        "{fdb}"
    );
    stop(&cb.0);
    server.join().unwrap();
    b.ip("link set ul down");
    let mut a_alone = both.clone();
    a_alone.nodes.retain(|n| n.name == "node-a");
    reconcile(&a.0, "node-a", a_alone, Some(cni.clone()));
    let fdb =
        String::from_utf8_lossy(&a.run(&format!("bridge fdb show dev {vx1}")).stdout).into_owned();
    assert!(!fdb.contains("192.0.2.2"), "{fdb}");
    drop((ca, cb, other));

    // MaskGateway "other" is deleted: its links, entry and store go; "egress" stays.
    let served = reconcile(
        &a.0,
        "node-a",
        cluster(std::slice::from_ref(&one)),
        Some(cni.clone()),
    );
    assert_eq!(served.len(), 1);
    let links = a.ip("-o link show");
    assert!(!links.contains(&br2) && !links.contains(&vx2), "{links}");
    assert!(links.contains(&br1) && links.contains(&vx1), "{links}");
    let list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
    assert_eq!(list["plugins"].as_array().unwrap().len(), 3);
    assert_eq!(list["plugins"][2]["gateway"]["name"], "egress");
    assert!(!dir.0.join("data/gw-uid-two").exists());
    assert!(dir.0.join("data/gw-uid-one").exists());

    // Uninstall leaves exactly the cluster's conflist, no binary, no links, no table.
    uninstall(&a.0, "node-a", Some(cni));
    uninstall(&b.0, "node-b", None);
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
    assert_eq!(
        after,
        serde_json::from_str::<serde_json::Value>(CLUSTER).unwrap()
    );
    assert!(!dir.0.join("bin/vpno-cni").exists());
    assert!(!dir.0.join("data/gw-uid-one").exists());
    for ns in [&a, &b] {
        let links = ns.ip("-o link show");
        assert!(!links.contains("vpno-"), "{links}");
        assert!(!ns.run("nft list table bridge vpno_guard").status.success());
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

/// Our entry in the conflist of `dir`, as the runtime hands it to the
/// plugin (the list's `name` and `cniVersion` injected), with the pod's
/// annotations passed in `runtimeConfig` and no kubeconfig.
fn plugin_conf(dir: &TempDir, annotations: serde_json::Value) -> serde_json::Value {
    let list: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.0.join("net.d/10-podnet.conflist")).unwrap(),
    )
    .unwrap();
    let mut conf = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "vpno-cni")
        .expect("our entry")
        .clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["kubeconfig"] = serde_json::Value::Null;
    conf["runtimeConfig"] = serde_json::json!({"io.kubernetes.cri.pod-annotations": annotations});
    conf
}

/// One plugin invocation in node namespace `ns`, in process.
fn plugin(
    ns: &str,
    command: &str,
    container: &str,
    pod: &Netns,
    pod_ns: &str,
    conf: serde_json::Value,
) -> serde_json::Value {
    let env: std::collections::HashMap<String, String> = [
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", container.to_string()),
        ("CNI_NETNS", format!("/run/netns/{}", pod.0)),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", "/opt/cni/bin".to_string()),
        (
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE={pod_ns};K8S_POD_NAME={container}"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    in_ns(ns, move || async move {
        let env = vpno_cni::spec::CniEnv::from_env(|k| env.get(k).cloned()).unwrap();
        let out = vpno_cni::invoke(
            &env,
            conf.to_string().as_bytes(),
            &vpno_cni::kernel::Netlink,
        )
        .await
        .unwrap_or_else(|e| panic!("plugin {}: {e}", env.container_id));
        out.map(|o| serde_json::from_str(&o).unwrap())
            .unwrap_or(serde_json::Value::Null)
    })
}

#[test]
fn the_plugin_attaches_pods_with_the_agents_entries_across_nodes() {
    if skip_unless_root() {
        return;
    }
    let tag = std::process::id() % 100000;
    let a = Netns::new(format!("vp{tag}-a"));
    let b = Netns::new(format!("vp{tag}-b"));
    a.ip(&format!("link add ul type veth peer name ul netns {}", b.0));
    a.ip("addr add 192.0.2.1/24 dev ul");
    b.ip("addr add 192.0.2.2/24 dev ul");
    a.ip("link set ul up");
    b.ip("link set ul up");
    let egress = gateway("egress", "uid-one", "2026-01-01T00:00:00Z");
    let (dir_a, cni_a) = cni_dir("pa");
    let (dir_b, cni_b) = cni_dir("pb");
    for d in [&dir_a, &dir_b] {
        std::fs::write(d.0.join("net.d/10-podnet.conflist"), CLUSTER).unwrap();
    }
    reconcile(
        &a.0,
        "node-a",
        cluster(std::slice::from_ref(&egress)),
        Some(cni_a.clone()),
    );
    reconcile(
        &b.0,
        "node-b",
        cluster(std::slice::from_ref(&egress)),
        Some(cni_b.clone()),
    );

    // The router Pod on node-b, with the routers' shared VIP MAC on a macvlan as the router agent has it.
    let router = Netns::new(format!("vp{tag}-r"));
    let member = serde_json::json!({"vpn.beebs.dev/role": "router", "vpn.beebs.dev/mask-gateway": "egress",
        "vpn.beebs.dev/network-address": "192.168.24.3/22"});
    let r = plugin(
        &b.0,
        "ADD",
        "router",
        &router,
        "vpn",
        plugin_conf(&dir_b, member),
    );
    assert_eq!(r["ips"][0]["address"], "192.168.24.3/22");
    router.ip("link add vip link vpn0 address 02:56:50:4e:4f:01 type macvlan mode bridge");
    router.ip("addr add 192.168.24.1/32 dev vip");
    router.ip("link set vip up");
    let s =
        router.run("sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2");
    assert!(s.status.success());
    let server = echo_server_at(&router.0, "192.168.24.1:7000");
    let direct = echo_server_at(&router.0, "192.168.24.3:7000");

    // A client on node-a, attached by the plugin from node-a's entry.
    let client = Netns::new(format!("vp{tag}-c"));
    let conf = plugin_conf(
        &dir_a,
        serde_json::json!({"vpn.beebs.dev/gateway": "vpn/egress"}),
    );
    let c = plugin(&a.0, "ADD", "client", &client, "apps", conf.clone());
    let address = c["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(
        address.starts_with("192.168.24.") && address.ends_with("/22"),
        "{c}"
    );
    let slice: ipnet::Ipv4Net = "192.168.24.64/26".parse().unwrap();
    assert!(
        slice.contains(&address.parse::<ipnet::Ipv4Net>().unwrap().addr()),
        "from node-a's slice: {address}"
    );
    assert!(
        client
            .ip("route get 198.51.100.1")
            .contains("via 192.168.24.1 dev vpn0")
    );

    // Client → VIP (router on the other node) and back, through both nodes' guards and the VXLAN.
    assert_eq!(
        udp_roundtrip_to(&client.0, "192.168.24.1:7000", 1000, 5),
        Some(1000)
    );
    let neigh = client.ip("neigh show 192.168.24.1");
    assert!(neigh.contains("02:56:50:4e:4f:01"), "{neigh}");
    // The client's port is registered on node-a, in the table the agent's chain reads.
    let addrs =
        String::from_utf8_lossy(&a.run("nft list set bridge vpno_guard client_addrs").stdout)
            .into_owned();
    assert!(
        addrs.contains(address.split('/').next().unwrap()),
        "{addrs}"
    );
    // And the router itself, at its own MAC (router 1's pinned MAC, which node-a's chain knows).
    assert_eq!(
        udp_roundtrip_to(&client.0, "192.168.24.3:7000", 100, 5),
        Some(100)
    );
    let neigh = client.ip("neigh show 192.168.24.3");
    assert!(neigh.contains("02:56:50:52:00:01"), "{neigh}");
    stop_at(&router.0, "192.168.24.3:7000");
    direct.join().unwrap();
    stop_at(&router.0, "192.168.24.1:7000");
    server.join().unwrap();

    // DEL as the runtime does; then the MaskGateway goes and uninstall leaves nothing.
    let mut del = conf;
    del["prevResult"] = c;
    plugin(&a.0, "DEL", "client", &client, "apps", del);
    let addrs =
        String::from_utf8_lossy(&a.run("nft list set bridge vpno_guard client_addrs").stdout)
            .into_owned();
    assert!(!addrs.contains("192.168.24."), "{addrs}");
    assert!(client.run("ip link show vpn0").status.code() != Some(0));
    assert!(
        !dir_a
            .0
            .join("data/gw-uid-one/podnet")
            .read_dir()
            .unwrap()
            .any(|e| { e.unwrap().file_name().to_string_lossy().starts_with("192.") })
    );
    reconcile(&a.0, "node-a", cluster(&[]), Some(cni_a.clone()));
    assert!(!a.ip("-o link show").contains("vpno-"));
    uninstall(&a.0, "node-a", Some(cni_a));
    uninstall(&b.0, "node-b", Some(cni_b));
    for ns in [&a, &b] {
        assert!(!ns.ip("-o link show").contains("vpno-"));
    }
}
