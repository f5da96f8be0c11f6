//! The CNI plugin as a runtime runs it: `vpn-operator` reached through a
//! `vpno-cni` link in a CNI_PATH directory, chained after Debian's real
//! `bridge` + `host-local` plugins, with CNI_* variables and the config on
//! stdin, in network namespaces these tests create (one "node" namespace
//! holding the bridges, one namespace per pod). Needs root and
//! containernetworking-plugins (scripts/setup); prints SKIPPED otherwise, or
//! fails under CI=true.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vpno_tunnel::netns::{NamedNetns, have_root};

const PLUGINS: &str = "/usr/lib/cni";
const NETWORK: &str = "192.168.24.0/22";
const SLICE: &str = "192.168.24.64/26";
const VIP: &str = "192.168.24.1";
const GW_BRIDGE: &str = "vpnogw";
const EXTERNAL: &str = "198.51.100.1";
const SERVICE_IP: &str = "10.96.0.10";

fn require(test: &str) -> bool {
    let missing = if !have_root() {
        Some("root".to_string())
    } else {
        ["bridge", "host-local"]
            .iter()
            .find(|p| !Path::new(PLUGINS).join(p).exists())
            .map(|p| format!("{PLUGINS}/{p} (containernetworking-plugins, scripts/setup)"))
    };
    let Some(what) = missing else { return true };
    let why = format!("SKIPPED: {test} needs {what}");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why} (CI=true)");
    }
    // Straight to fd 2: the test harness captures `eprintln!`.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{why}");
    false
}

/// A test's world: the node namespace with the gateway bridge, a scratch
/// directory with the CNI bin dir and both plugins' stores. Removed on drop.
struct Node {
    ns: NamedNetns,
    dir: PathBuf,
    tag: String,
}

impl Node {
    fn new(tag: &str) -> Node {
        let tag = format!("{tag}{}", std::process::id() % 10000);
        let dir = std::env::temp_dir().join(format!("vpno-cni-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vpn-operator"), dir.join("bin/vpno-cni"))
            .unwrap();
        let ns = NamedNetns::create(format!("vpnot-{tag}-node")).unwrap();
        ns.ip(&["link", "add", GW_BRIDGE, "type", "bridge"])
            .unwrap();
        ns.ip(&["addr", "add", "192.168.24.2/22", "dev", GW_BRIDGE])
            .unwrap();
        ns.ip(&["link", "set", GW_BRIDGE, "up"]).unwrap();
        Node { ns, dir, tag }
    }

    fn pod(&self, n: usize) -> NamedNetns {
        NamedNetns::create(format!("vpnot-{}-p{n}", self.tag)).unwrap()
    }

    fn primary_conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0", "name": "podnet", "type": "bridge", "bridge": "cni0",
            "isGateway": true,
            "ipam": {"type": "host-local", "subnet": "10.244.1.0/24", "routes": [{"dst": "0.0.0.0/0"}],
                     "dataDir": self.dir.join("host-local")}
        })
    }

    fn our_conf(&self, annotation: Option<&str>, prev: Option<&Value>) -> Value {
        let annotations = annotation
            .map(|a| json!({"vpn.beebs.dev/gateway": a}))
            .unwrap_or(json!({}));
        self.our_conf_with(annotations, prev)
    }

    /// Our config with these runtime-passed pod annotations.
    fn our_conf_with(&self, annotations: Value, prev: Option<&Value>) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0", "name": "podnet", "type": "vpno-cni",
            "gateway": {"namespace": "vpn", "name": "egress"},
            "network": NETWORK, "slice": SLICE, "vip": VIP,
            "excludes": ["10.244.0.0/16", "10.96.0.0/12"],
            "mtu": 1400, "bridge": GW_BRIDGE, "dataDir": self.dir.join("vpno"),
            "capabilities": {"io.kubernetes.cri.pod-annotations": true},
            "runtimeConfig": {"io.kubernetes.cri.pod-annotations": annotations},
        });
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    }

    fn plugin_path(&self, plugin: &str) -> PathBuf {
        if plugin == "vpno-cni" {
            self.dir.join("bin/vpno-cni")
        } else {
            Path::new(PLUGINS).join(plugin)
        }
    }

    /// Starts one plugin process in the node namespace, as a runtime does,
    /// for a pod in namespace `apps`.
    fn spawn(
        &self,
        plugin: &str,
        command: &str,
        container: &str,
        netns: &str,
        conf: &Value,
    ) -> std::process::Child {
        self.spawn_in("apps", plugin, command, container, netns, conf)
    }

    /// [`Node::spawn`] for a pod in namespace `pod_ns`.
    fn spawn_in(
        &self,
        pod_ns: &str,
        plugin: &str,
        command: &str,
        container: &str,
        netns: &str,
        conf: &Value,
    ) -> std::process::Child {
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .arg(self.plugin_path(plugin))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_PATH",
                format!("{}:{PLUGINS}", self.dir.join("bin").display()),
            )
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={pod_ns};K8S_POD_NAME={container}"),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(conf.to_string().as_bytes());
        child
    }

    fn run(
        &self,
        plugin: &str,
        command: &str,
        container: &str,
        netns: &str,
        conf: &Value,
    ) -> Output {
        self.spawn(plugin, command, container, netns, conf)
            .wait_with_output()
            .unwrap()
    }

    /// Primary ADD then ours, like a runtime walking a conflist; returns
    /// (primary result, final result).
    fn add(&self, container: &str, pod: &NamedNetns, annotation: Option<&str>) -> (Value, Value) {
        let netns = netns_path(pod);
        let primary = ok_json(self.run("bridge", "ADD", container, &netns, &self.primary_conf()));
        let ours = ok_json(self.run(
            "vpno-cni",
            "ADD",
            container,
            &netns,
            &self.our_conf(annotation, Some(&primary)),
        ));
        (primary, ours)
    }

    /// DEL in reverse order with the final result as prevResult.
    fn del(&self, container: &str, netns: &str, result: Option<&Value>) {
        let out = self.run(
            "vpno-cni",
            "DEL",
            container,
            netns,
            &self.our_conf(None, result),
        );
        assert_empty_success(&out, "our DEL");
        let mut primary = self.primary_conf();
        if let Some(r) = result {
            primary["prevResult"] = r.clone();
        }
        let out = self.run("bridge", "DEL", container, netns, &primary);
        assert!(
            out.status.success(),
            "bridge DEL: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    fn check(&self, container: &str, pod: &NamedNetns, result: &Value) -> Output {
        self.run(
            "vpno-cni",
            "CHECK",
            container,
            &netns_path(pod),
            &self.our_conf(None, Some(result)),
        )
    }

    fn leases(&self) -> Vec<String> {
        let dir = self.dir.join("vpno/podnet");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
            .collect()
    }

    fn our_links(&self) -> Vec<String> {
        self.ns
            .ip(&["-o", "link", "show"])
            .unwrap()
            .lines()
            .filter_map(|l| {
                l.split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap_or(n).to_string())
            })
            .filter(|n| n.starts_with("vpno") && n != GW_BRIDGE)
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn netns_path(ns: &NamedNetns) -> String {
    format!("/run/netns/{}", ns.name())
}

fn ok_json(out: Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "plugin failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn err_json(out: Output) -> Value {
    assert!(
        !out.status.success(),
        "expected failure, got {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_empty_success(out: &Output, what: &str) {
    assert!(
        out.status.success() && out.stdout.iter().all(u8::is_ascii_whitespace),
        "{what}: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn routes(pod: &NamedNetns) -> String {
    pod.ip(&["route", "show"]).unwrap()
}

#[test]
fn version_and_protocol_errors() {
    // Needs no root: nothing here touches the kernel.
    let bin = env!("CARGO_BIN_EXE_vpn-operator");
    let run = |envs: &[(&str, &str)], stdin: &str| {
        let mut child = Command::new(bin)
            .arg("cni")
            .env_clear()
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        )
    };
    let (ok, v) = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
    assert!(ok);
    assert_eq!(
        v,
        json!({"cniVersion": "0.4.0", "supportedVersions": ["0.4.0", "1.0.0"]})
    );
    let (ok, v) = run(&[("CNI_COMMAND", "ADD")], "{}");
    assert!(!ok);
    assert_eq!(v["code"], 4, "{v}");
    let full = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "x"),
        ("CNI_NETNS", "/nonexistent"),
        ("CNI_IFNAME", "eth0"),
    ];
    let conf = json!({"cniVersion": "0.3.1", "name": "n", "type": "vpno-cni", "gateway": {"namespace": "a", "name": "b"},
        "network": NETWORK, "slice": SLICE, "vip": VIP, "mtu": 1400, "bridge": "b"});
    let (ok, v) = run(&full, &conf.to_string());
    assert!(!ok);
    assert_eq!(v["code"], 1, "{v}");
    let (_, v) = run(&full, "{broken");
    assert_eq!(v["code"], 6, "{v}");
    let mut bad = conf.clone();
    bad["cniVersion"] = json!("1.0.0");
    bad["vip"] = json!("10.0.0.1");
    let (_, v) = run(&full, &bad.to_string());
    assert_eq!(v["code"], 7, "{v}");
    // The symlink name alone selects the subcommand.
    let dir = std::env::temp_dir().join(format!("vpno-cni-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("vpno-cni");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(bin, &link).unwrap();
    let out = Command::new(&link)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["supportedVersions"],
        json!(["0.4.0", "1.0.0"])
    );
}

#[test]
fn a_pod_that_does_not_opt_in_passes_through_untouched() {
    if !require("a_pod_that_does_not_opt_in_passes_through_untouched") {
        return;
    }
    let node = Node::new("pass");
    let pod = node.pod(0);
    for (i, annotation) in [None, Some("other-gateway"), Some("egress")]
        .into_iter()
        .enumerate()
    {
        // "egress" alone means apps/egress: the pod is in apps, the gateway in vpn.
        let id = format!("pass{i}");
        let (primary, ours) = node.add(&id, &pod, annotation);
        assert_eq!(ours, primary, "{annotation:?}");
        assert!(
            pod.ip(&["link", "show", "vpn0"]).is_err(),
            "no interface for {annotation:?}"
        );
        assert!(!routes(&pod).contains("proto 78"));
        assert!(node.leases().is_empty());
        node.del(&id, &netns_path(&pod), Some(&ours));
    }
}

#[test]
fn add_check_del_by_the_spec() {
    if !require("add_check_del_by_the_spec") {
        return;
    }
    let node = Node::new("spec");
    let pod = node.pod(0);
    let (primary, result) = node.add("c1", &pod, Some("vpn/egress"));

    // The result is the primary's with our interface, address and routes appended.
    let n = primary["interfaces"].as_array().unwrap().len();
    assert_eq!(
        result["interfaces"].as_array().unwrap()[..n],
        primary["interfaces"].as_array().unwrap()[..]
    );
    assert_eq!(result["ips"][0], primary["ips"][0]);
    let ours = &result["interfaces"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(ours["name"], "vpn0");
    assert_eq!(ours["sandbox"], netns_path(&pod));
    assert_eq!(result["ips"][1]["interface"], n);
    let address = result["ips"][1]["address"].as_str().unwrap().to_string();
    let addr: ipnet::Ipv4Net = address.parse().unwrap();
    assert!(
        SLICE
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&addr.addr())
    );
    assert_eq!(addr.prefix_len(), 22);
    assert!(
        pod.ip(&["addr", "show", "vpn0"])
            .unwrap()
            .contains(&address)
    );
    assert!(
        pod.ip(&["link", "show", "vpn0"])
            .unwrap()
            .contains("mtu 1400")
    );
    let get = pod.ip(&["route", "get", EXTERNAL]).unwrap();
    assert!(get.contains(&format!("via {VIP} dev vpn0")), "{get}");
    let get = pod.ip(&["route", "get", SERVICE_IP]).unwrap();
    assert!(
        get.contains("dev eth0"),
        "excluded range stays primary: {get}"
    );
    assert_eq!(node.leases(), vec![addr.addr().to_string()]);
    assert_eq!(node.our_links().len(), 1);

    // CHECK passes, then detects a removed route and a removed address.
    assert_empty_success(&node.check("c1", &pod, &result), "CHECK");
    pod.ip(&[
        "route",
        "del",
        "0.0.0.0/5",
        "via",
        VIP,
        "dev",
        "vpn0",
        "metric",
        "100",
    ])
    .unwrap();
    let e = err_json(node.check("c1", &pod, &result));
    assert_eq!(e["code"], 100);
    assert!(e["details"].as_str().unwrap().contains("0.0.0.0/5"), "{e}");
    // ADD again (same container) repairs it and keeps the address.
    let again = ok_json(node.run(
        "vpno-cni",
        "ADD",
        "c1",
        &netns_path(&pod),
        &node.our_conf(Some("vpn/egress"), Some(&primary)),
    ));
    assert_eq!(again["ips"][1]["address"], address.as_str());
    assert_empty_success(&node.check("c1", &pod, &result), "CHECK after re-ADD");
    pod.ip(&["addr", "del", &address, "dev", "vpn0"]).unwrap();
    let e = err_json(node.check("c1", &pod, &result));
    assert!(
        e["details"].as_str().unwrap().contains("lacks address"),
        "{e}"
    );

    // DEL removes link and lease, is idempotent, and accepts unknown containers and no netns.
    node.del("c1", &netns_path(&pod), Some(&result));
    assert!(pod.ip(&["link", "show", "vpn0"]).is_err());
    assert!(node.leases().is_empty());
    assert!(node.our_links().is_empty());
    node.del("c1", &netns_path(&pod), Some(&result));
    assert_empty_success(
        &node.run(
            "vpno-cni",
            "DEL",
            "never-added",
            &netns_path(&pod),
            &node.our_conf(None, None),
        ),
        "DEL unknown",
    );
    assert_empty_success(
        &node.run(
            "vpno-cni",
            "DEL",
            "never-added",
            "",
            &node.our_conf(None, None),
        ),
        "DEL without netns",
    );
}

#[test]
fn config_at_version_0_4_0_gets_a_0_4_0_result() {
    if !require("config_at_version_0_4_0_gets_a_0_4_0_result") {
        return;
    }
    let node = Node::new("v04");
    let pod = node.pod(0);
    let netns = netns_path(&pod);
    let mut primary_conf = node.primary_conf();
    primary_conf["cniVersion"] = json!("0.4.0");
    let primary = ok_json(node.run("bridge", "ADD", "c04", &netns, &primary_conf));
    let mut conf = node.our_conf(Some("vpn/egress"), Some(&primary));
    conf["cniVersion"] = json!("0.4.0");
    let result = ok_json(node.run("vpno-cni", "ADD", "c04", &netns, &conf));
    assert_eq!(result["cniVersion"], "0.4.0");
    assert_eq!(result["ips"][1]["version"], "4");
    conf["prevResult"] = result;
    assert_empty_success(
        &node.run("vpno-cni", "CHECK", "c04", &netns, &conf),
        "CHECK 0.4.0",
    );
    assert_empty_success(
        &node.run("vpno-cni", "DEL", "c04", &netns, &conf),
        "DEL 0.4.0",
    );
    assert!(node.leases().is_empty());
}

#[test]
fn a_missing_bridge_is_try_again_later_and_leaves_nothing() {
    if !require("a_missing_bridge_is_try_again_later_and_leaves_nothing") {
        return;
    }
    let node = Node::new("nobr");
    let pod = node.pod(0);
    node.ns.ip(&["link", "del", GW_BRIDGE]).unwrap();
    let netns = netns_path(&pod);
    let primary = ok_json(node.run("bridge", "ADD", "c1", &netns, &node.primary_conf()));
    let e = err_json(node.run(
        "vpno-cni",
        "ADD",
        "c1",
        &netns,
        &node.our_conf(Some("vpn/egress"), Some(&primary)),
    ));
    assert_eq!(e["code"], 11, "{e}");
    assert!(e["msg"].as_str().unwrap().contains(GW_BRIDGE));
    assert!(node.leases().is_empty() && node.our_links().is_empty());
    assert!(pod.ip(&["link", "show", "vpn0"]).is_err());
}

#[test]
fn leases_of_vanished_pods_are_reclaimed() {
    if !require("leases_of_vanished_pods_are_reclaimed") {
        return;
    }
    let node = Node::new("gc");
    let gone = node.pod(0);
    node.add("gone", &gone, Some("vpn/egress"));
    assert_eq!(node.leases().len(), 1);
    drop(gone); // the sandbox disappears without DEL
    let pod = node.pod(1);
    let (_, result) = node.add("next", &pod, Some("vpn/egress"));
    let address = result["ips"][1]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        node.leases(),
        vec![address],
        "only the live pod's lease is left"
    );
    assert_eq!(node.our_links().len(), 1);
    node.del("next", &netns_path(&pod), Some(&result));
}

/// Packets to 198.51.100.1 leaving through each pod interface, counted in
/// the pod's own namespace (postrouting sees a packet before neighbour
/// resolution, so one sent towards an absent router still counts).
struct Counters<'a>(&'a NamedNetns);

impl<'a> Counters<'a> {
    fn install(pod: &'a NamedNetns) -> Self {
        let rules = format!(
            "table ip vpnot {{\n counter eth0_external {{}}\n counter vpn0_external {{}}\n counter eth0_service {{}}\n \
             chain post {{ type filter hook postrouting priority 0; policy accept;\n  \
             oifname \"eth0\" ip daddr {EXTERNAL} counter name eth0_external\n  \
             oifname \"vpn0\" ip daddr {EXTERNAL} counter name vpn0_external\n  \
             oifname \"eth0\" ip daddr {SERVICE_IP} counter name eth0_service\n }}\n}}\n"
        );
        let path = std::env::temp_dir().join(format!("{}.nft", pod.name()));
        std::fs::write(&path, rules).unwrap();
        let out = pod.exec("nft", &["-f", path.to_str().unwrap()]).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Counters(pod)
    }

    fn packets(&self, name: &str) -> u64 {
        let out = self
            .0
            .exec("nft", &["list", "counter", "ip", "vpnot", name])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter {name}: {text}"))
    }
}

/// Sends `count` UDP datagrams from inside `pod` to `dst`; returns how many
/// the kernel accepted and the last error.
fn send_udp(pod: &NamedNetns, dst: &str, count: usize) -> (usize, Option<std::io::ErrorKind>) {
    let runtime = pod.runtime().unwrap();
    let dst = format!("{dst}:9");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(runtime.run(async move {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut sent = 0;
        let mut last = None;
        for _ in 0..count {
            match socket.send_to(b"leak?", &dst) {
                Ok(_) => sent += 1,
                Err(e) => last = Some(e.kind()),
            }
        }
        (sent, last)
    }))
}

#[test]
fn traffic_never_takes_the_primary_interface_when_the_gateway_side_goes() {
    if !require("traffic_never_takes_the_primary_interface_when_the_gateway_side_goes") {
        return;
    }
    let node = Node::new("leak");
    let pod = node.pod(0);
    let (_, result) = node.add("c1", &pod, Some("vpn/egress"));
    let counters = Counters::install(&pod);

    // Control: the excluded service address does leave through eth0 (the counters count).
    send_udp(&pod, SERVICE_IP, 3);
    assert_eq!(counters.packets("eth0_service"), 3);

    // 1. Attached: external traffic goes to vpn0.
    assert_eq!(send_udp(&pod, EXTERNAL, 3).0, 3);
    assert_eq!(
        (
            counters.packets("eth0_external"),
            counters.packets("vpn0_external")
        ),
        (0, 3)
    );

    // 2. The gateway bridge is removed: routes stay pinned, traffic still only towards vpn0.
    node.ns.ip(&["link", "del", GW_BRIDGE]).unwrap();
    let get = pod.ip(&["route", "get", EXTERNAL]).unwrap();
    assert!(get.contains("dev vpn0"), "{get}");
    send_udp(&pod, EXTERNAL, 3);
    assert_eq!(counters.packets("eth0_external"), 0);
    assert_eq!(counters.packets("vpn0_external"), 6);

    // 3. The node side of the veth goes down: vpn0 loses carrier, its routes
    //    are skipped and the unreachable twins answer.
    let host = node.our_links().pop().unwrap();
    node.ns.ip(&["link", "set", &host, "down"]).unwrap();
    let (sent, err) = send_udp(&pod, EXTERNAL, 3);
    assert_eq!(
        counters.packets("eth0_external"),
        0,
        "sent {sent}, last error {err:?}"
    );

    // 4. The node side is deleted: vpn0 and its routes are gone, the unreachable twins remain.
    node.ns.ip(&["link", "del", &host]).unwrap();
    assert!(pod.ip(&["link", "show", "vpn0"]).is_err());
    let table = routes(&pod);
    assert!(
        table.contains("unreachable 192.0.0.0/9") || table.contains("unreachable "),
        "{table}"
    );
    assert!(!table.contains("dev vpn0"));
    let get = pod.ip(&["route", "get", EXTERNAL]);
    assert!(
        get.is_err(),
        "route get must fail (unreachable), got {get:?}"
    );
    let (sent, err) = send_udp(&pod, EXTERNAL, 3);
    assert_eq!(sent, 0);
    assert_eq!(err, Some(std::io::ErrorKind::HostUnreachable));
    assert_eq!(counters.packets("eth0_external"), 0);
    // The primary still works for what is excluded.
    send_udp(&pod, SERVICE_IP, 1);
    assert_eq!(counters.packets("eth0_service"), 4);
    node.del("c1", &netns_path(&pod), Some(&result));
    assert!(node.leases().is_empty());
}

#[test]
fn add_del_cycles_with_killed_adds_leak_nothing() {
    if !require("add_del_cycles_with_killed_adds_leak_nothing") {
        return;
    }
    let target: usize = std::env::var("VPNO_CNI_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let budget = Duration::from_secs(240);
    let node = Node::new("cyc");
    let pods: Vec<NamedNetns> = (0..4).map(|i| node.pod(i)).collect();
    let started = Instant::now();
    let (mut cycles, mut killed, mut half_done) = (0usize, 0usize, 0usize);
    let mut containers = Vec::new();
    let (mut primary_add, mut our_add, mut timed) = (Duration::ZERO, Duration::ZERO, 0u32);
    while cycles < target && started.elapsed() < budget {
        let pod = &pods[cycles % pods.len()];
        let netns = netns_path(pod);
        let id = format!("cyc{cycles}");
        containers.push((id.clone(), netns.clone()));
        let t = Instant::now();
        let primary = ok_json(node.run("bridge", "ADD", &id, &netns, &node.primary_conf()));
        let primary_took = t.elapsed();
        let conf = node.our_conf(Some("vpn/egress"), Some(&primary));
        let mut result = None;
        if cycles % 10 == 3 {
            // Kill this ADD part-way (the delay walks through the plugin's steps).
            let mut child = node.spawn("vpno-cni", "ADD", &id, &netns, &conf);
            std::thread::sleep(Duration::from_millis(4 * ((cycles as u64 / 10) % 25)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                killed += 1;
            }
            let _ = child.wait();
            // Evidence the kill landed part-way: a lease or link left for DEL to clean.
            if !node.leases().is_empty() || !node.our_links().is_empty() {
                half_done += 1;
            }
        } else {
            let t = Instant::now();
            result = Some(ok_json(node.run("vpno-cni", "ADD", &id, &netns, &conf)));
            our_add += t.elapsed();
            primary_add += primary_took;
            timed += 1;
        }
        // A runtime deletes after every ADD it gave up on, as after every sandbox.
        node.del(&id, &netns, result.as_ref().or(Some(&primary)));
        cycles += 1;
    }
    // Final cleanup pass: DEL everything once more, as a runtime retrying would.
    for (id, netns) in &containers {
        node.del(id, netns, None);
    }
    let elapsed = started.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(timed.max(1));
    println!(
        "cni ADD: bridge+host-local {:.1} ms, vpno-cni after it {:.1} ms (mean of {timed}, each run through `ip netns exec`)",
        per(primary_add),
        per(our_add)
    );
    println!(
        "cni cycles: {cycles} ADD/DEL cycles ({killed} ADDs killed, {half_done} of them left state for DEL) in {:.1} s, {:.1} ms per cycle (4 plugin runs)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / cycles.max(1) as f64
    );
    assert!(cycles > 0);
    assert!(
        node.leases().is_empty(),
        "leaked leases: {:?}",
        node.leases()
    );
    assert!(
        node.our_links().is_empty(),
        "leaked links: {:?}",
        node.our_links()
    );
    for pod in &pods {
        assert!(
            pod.ip(&["link", "show", "vpn0"]).is_err(),
            "vpn0 left in {}",
            pod.name()
        );
        let links = pod.ip(&["-o", "link", "show"]).unwrap();
        assert!(!links.contains("vpno"), "{links}");
        assert!(
            !pod.ip(&["-o", "addr", "show"])
                .unwrap()
                .contains("192.168.2"),
            "address left"
        );
    }
}

/// The annotation lookup through the API server (no runtime-passed
/// annotations): the real control plane from vpno-testenv holds the Pods.
/// The plugin runs in the test's own namespace here (the API server listens
/// on its loopback), so every case stops before touching a link: the
/// opted-in pod fails on the missing bridge, which proves the lookup said yes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_come_from_the_api_server_when_the_runtime_does_not_pass_them() {
    use k8s_openapi::api::core::v1::Pod;
    if !require("annotations_come_from_the_api_server_when_the_runtime_does_not_pass_them") {
        return;
    }
    let Some(env) = vpno_testenv::TestEnv::shared() else {
        return;
    };
    let client = env.client().await;
    let ns = env.new_namespace("cni").await;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, &ns);
    for (name, annotation) in [("opted", Some("vpn/egress")), ("plain", None)] {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        });
        if let Some(a) = annotation {
            pod["metadata"]["annotations"] = json!({"vpn.beebs.dev/gateway": a});
        }
        pods.create(&Default::default(), &serde_json::from_value(pod).unwrap())
            .await
            .unwrap();
    }
    let dir = std::env::temp_dir().join(format!("vpno-cni-kube-{}", std::process::id()));
    let sandbox = NamedNetns::create(format!("vpnot-kube{}", std::process::id() % 10000)).unwrap();
    let conf = |pod: &str| {
        let prev = json!({"cniVersion": "1.0.0", "interfaces": [], "ips": [], "marker": pod});
        json!({
            "cniVersion": "1.0.0", "name": "podnet", "type": "vpno-cni",
            "gateway": {"namespace": "vpn", "name": "egress"},
            "network": NETWORK, "slice": SLICE, "vip": VIP, "mtu": 1400,
            "bridge": "vpnot-absent", "dataDir": dir, "kubeconfig": env.kubeconfig_path(),
            "prevResult": prev,
        })
    };
    let run = |pod: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vpn-operator"))
            .arg("cni")
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("kube-{pod}"))
            .env("CNI_NETNS", netns_path(&sandbox))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", PLUGINS)
            .env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf(pod).to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let passed = ok_json(run("plain"));
    assert_eq!(passed, conf("plain")["prevResult"]);
    let e = err_json(run("opted"));
    assert_eq!(e["code"], 11, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("vpnot-absent"), "{e}");
    let e = err_json(run("missing"));
    assert_eq!(e["code"], 11, "fails closed: {e}");
    assert!(e["msg"].as_str().unwrap().contains("annotations"), "{e}");
    let leases: Vec<_> = std::fs::read_dir(dir.join("podnet"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
        })
        .collect();
    assert!(
        leases.is_empty(),
        "the failed ADD released its address: {leases:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Primary ADD then ours for a pod in `pod_ns` with these runtime annotations;
/// returns our plugin's output (success or not) and the primary result.
fn add_in(
    node: &Node,
    pod_ns: &str,
    container: &str,
    pod: &NamedNetns,
    annotations: Value,
) -> (Output, Value) {
    let netns = netns_path(pod);
    let primary = ok_json(node.run("bridge", "ADD", container, &netns, &node.primary_conf()));
    let conf = node.our_conf_with(annotations, Some(&primary));
    let out = node
        .spawn_in(pod_ns, "vpno-cni", "ADD", container, &netns, &conf)
        .wait_with_output()
        .unwrap();
    (out, primary)
}

fn member(role: &str, gateway: &str, address: &str) -> Value {
    json!({"vpn.beebs.dev/role": role, "vpn.beebs.dev/mask-gateway": gateway,
           "vpn.beebs.dev/network-address": address})
}

fn sysctl(pod: &NamedNetns, key: &str) -> String {
    let out = pod.exec("sysctl", &["-n", key]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn members_get_exactly_their_address_no_routes_and_forwarding() {
    if !require("members_get_exactly_their_address_no_routes_and_forwarding") {
        return;
    }
    let node = Node::new("memb");
    let router = node.pod(0);
    let gateway = node.pod(1);
    let (out, _) = add_in(
        &node,
        "vpn",
        "r0",
        &router,
        member("router", "egress", "192.168.24.3/22"),
    );
    let r = ok_json(out);
    assert_eq!(r["ips"][1]["address"], "192.168.24.3/22");
    assert!(
        r["routes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["gw"] != VIP),
        "{r}"
    );
    assert!(
        !routes(&router).contains("proto 78"),
        "no client routes: {}",
        routes(&router)
    );
    assert_eq!(sysctl(&router, "net.ipv4.ip_forward"), "1");
    assert!(
        node.leases().is_empty(),
        "members take no address from the slice"
    );
    // The pod-side MAC is the one reported: router i's pinned MAC, which every
    // node's anti-spoofing chain knows.
    let mac = r["interfaces"].as_array().unwrap().last().unwrap()["mac"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        mac, "02:56:50:52:00:01",
        "router 1 (192.168.24.3) gets the MAC it pins"
    );
    assert!(router.ip(&["link", "show", "vpn0"]).unwrap().contains(&mac));
    assert!(
        vpno_cni::guard::allowed_macs().contains(&mac),
        "clients may send to it"
    );

    let (out, _) = add_in(
        &node,
        "vpn",
        "g0",
        &gateway,
        member("gateway", "egress", "192.168.24.16"),
    );
    let g = ok_json(out);
    assert_eq!(g["ips"][1]["address"], "192.168.24.16/22");
    assert_eq!(sysctl(&gateway, "net.ipv4.ip_forward"), "1");
    // Members reach each other on the bridge.
    let ping = router
        .exec("ping", &["-c", "1", "-W", "2", "192.168.24.16"])
        .unwrap();
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert_empty_success(
        &node.run(
            "vpno-cni",
            "CHECK",
            "r0",
            &netns_path(&router),
            &node.our_conf(None, Some(&r)),
        ),
        "CHECK of a member",
    );

    // A member of another MaskGateway, or in another namespace, is passed through.
    let (other, elsewhere, bad) = (node.pod(2), node.pod(3), node.pod(4));
    let (out, primary) = add_in(
        &node,
        "vpn",
        "o0",
        &other,
        member("router", "other", "192.168.24.4/22"),
    );
    assert_eq!(ok_json(out), primary);
    let (out, primary) = add_in(
        &node,
        "apps",
        "o1",
        &elsewhere,
        member("router", "egress", "192.168.24.4/22"),
    );
    assert_eq!(ok_json(out), primary);
    // A member without a usable address is refused with the reason.
    let (out, _) = add_in(
        &node,
        "vpn",
        "bad",
        &bad,
        member("gateway", "egress", "10.0.0.1/8"),
    );
    let e = err_json(out);
    assert_eq!(e["code"], 7, "{e}");
    assert!(
        e["details"]
            .as_str()
            .unwrap()
            .contains("not a host address"),
        "{e}"
    );
    assert!(bad.ip(&["link", "show", "vpn0"]).is_err());
    for (id, pod) in [("o0", &other), ("o1", &elsewhere), ("bad", &bad)] {
        node.del(id, &netns_path(pod), None);
    }

    node.del("r0", &netns_path(&router), Some(&r));
    node.del("g0", &netns_path(&gateway), Some(&g));
    assert!(node.our_links().is_empty());
}

fn mac_bytes(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

fn ip_bytes(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

/// An Ethernet frame carrying IPv4/UDP `src` → `dst` port 9.
fn udp_frame(dst_mac: &str, src_mac: &str, src: &str, dst: &str) -> Vec<u8> {
    let payload = b"spoof?";
    let mut f = Vec::new();
    f.extend(mac_bytes(dst_mac));
    f.extend(mac_bytes(src_mac));
    f.extend([0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    ip.extend(ip_bytes(src));
    ip.extend(ip_bytes(dst));
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend(ip);
    let len = (8 + payload.len()) as u16;
    f.extend([0x30, 0x39, 0, 9]);
    f.extend(len.to_be_bytes());
    f.extend([0, 0]);
    f.extend(payload);
    f
}

/// An ARP frame (`op` 1 request, 2 reply).
fn arp_frame(
    dst_mac: &str,
    eth_src: &str,
    op: u8,
    sender_mac: &str,
    sender_ip: &str,
    target_ip: &str,
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(mac_bytes(dst_mac));
    f.extend(mac_bytes(eth_src));
    f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, op]);
    f.extend(mac_bytes(sender_mac));
    f.extend(ip_bytes(sender_ip));
    f.extend([0; 6]);
    f.extend(ip_bytes(target_ip));
    f
}

/// Sends raw frames out of `vpn0` inside `pod` (python3's AF_PACKET socket:
/// a client pod that forges whatever it likes).
fn send_frames(pod: &NamedNetns, frames: &[Vec<u8>]) {
    const SEND: &str = "import socket,sys\ns=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\ns.bind(('vpn0',0))\nfor h in sys.argv[1:]:\n    s.send(bytes.fromhex(h))\n";
    let hex: Vec<String> = frames
        .iter()
        .map(|f| f.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let mut args = vec!["-c", SEND];
    args.extend(hex.iter().map(String::as_str));
    let out = pod.exec("python3", &args).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Frames arriving on `vpn0` of a member pod, counted by Ethernet source
/// (netdev ingress: before any address filtering).
struct Arrivals<'a>(&'a NamedNetns);

impl<'a> Arrivals<'a> {
    fn install(pod: &'a NamedNetns, sources: &[(&str, &str)]) -> Self {
        let mut rules = String::from("table netdev vpnot {\n");
        for (name, _) in sources {
            rules.push_str(&format!(" counter {name} {{}}\n counter {name}_ip {{}}\n"));
        }
        rules.push_str(
            " chain in { type filter hook ingress device \"vpn0\" priority 0; policy accept;\n",
        );
        for (name, mac) in sources {
            rules.push_str(&format!("  ether saddr {mac} counter name {name}\n"));
            rules.push_str(&format!(
                "  ether saddr {mac} ether type ip counter name {name}_ip\n"
            ));
        }
        rules.push_str(" }\n}\n");
        let path = std::env::temp_dir().join(format!("{}-in.nft", pod.name()));
        std::fs::write(&path, rules).unwrap();
        let out = pod.exec("nft", &["-f", path.to_str().unwrap()]).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Arrivals(pod)
    }

    fn packets(&self, name: &str) -> u64 {
        let out = self
            .0
            .exec("nft", &["list", "counter", "netdev", "vpnot", name])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter {name}: {text}"))
    }

    fn all(&self, names: &[&str]) -> Vec<u64> {
        names.iter().map(|n| self.packets(n)).collect()
    }
}

#[test]
fn a_spoofing_client_gets_nothing_through_while_an_honest_one_does() {
    if !require("a_spoofing_client_gets_nothing_through_while_an_honest_one_does") {
        return;
    }
    if Command::new("python3").arg("-V").output().is_err() {
        let why = "SKIPPED: a_spoofing_client_gets_nothing_through_while_an_honest_one_does needs python3";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why} (CI=true)"
        );
        eprintln!("{why}");
        return;
    }
    let node = Node::new("spoof");
    let pods: Vec<NamedNetns> = (0..4).map(|i| node.pod(i)).collect();
    for p in &pods {
        p.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )
        .unwrap();
    }
    let (router, gateway, honest, spoofer) = (&pods[0], &pods[1], &pods[2], &pods[3]);
    let ours = |r: &Value| {
        let i = r["interfaces"].as_array().unwrap().last().unwrap();
        let ip = r["ips"].as_array().unwrap().last().unwrap()["address"]
            .as_str()
            .unwrap();
        (
            i["mac"].as_str().unwrap().to_string(),
            ip.split('/').next().unwrap().to_string(),
        )
    };
    let (out, _) = add_in(
        &node,
        "vpn",
        "router",
        router,
        member("router", "egress", "192.168.24.3/22"),
    );
    let (router_mac, _) = ours(&ok_json(out));
    // The router holds the VIP (on its own MAC here; the routers' shared VIP MAC is also allowed).
    router
        .ip(&["addr", "add", "192.168.24.1/22", "dev", "vpn0"])
        .unwrap();
    let (out, _) = add_in(
        &node,
        "vpn",
        "gateway",
        gateway,
        member("gateway", "egress", "192.168.24.16/22"),
    );
    let (gateway_mac, gateway_ip) = ours(&ok_json(out));
    let (_, honest_result) = node.add("honest", honest, Some("vpn/egress"));
    let (honest_mac, honest_ip) = ours(&honest_result);
    let (_, spoofer_result) = node.add("spoofer", spoofer, Some("vpn/egress"));
    let (spoofer_mac, spoofer_ip) = ours(&spoofer_result);
    let fake_mac = "02:66:66:66:66:66";

    let sources = [
        ("spoofer", spoofer_mac.as_str()),
        ("fake", fake_mac),
        ("honest", honest_mac.as_str()),
    ];
    let at_router = Arrivals::install(router, &sources);
    let at_gateway = Arrivals::install(gateway, &sources);
    let spoofing = vec![
        // Another source address.
        udp_frame(&router_mac, &spoofer_mac, "192.168.24.99", EXTERNAL),
        // Another source MAC.
        udp_frame(&router_mac, fake_mac, &spoofer_ip, EXTERNAL),
        // Gratuitous ARP claiming the VIP.
        arp_frame("ff:ff:ff:ff:ff:ff", &spoofer_mac, 2, &spoofer_mac, VIP, VIP),
        // An ARP reply claiming the gateway's address, to the router.
        arp_frame(
            &router_mac,
            &spoofer_mac,
            2,
            &spoofer_mac,
            &gateway_ip,
            "192.168.24.3",
        ),
        // ARP whose sender MAC is not the port's.
        arp_frame(
            "ff:ff:ff:ff:ff:ff",
            &spoofer_mac,
            1,
            fake_mac,
            &spoofer_ip,
            "192.168.24.3",
        ),
        // Straight to a gateway, past the routers, with its own true addresses.
        udp_frame(&gateway_mac, &spoofer_mac, &spoofer_ip, EXTERNAL),
    ];
    let names = ["spoofer", "fake"];

    // Control: without the agent's chain the bridge delivers every forgery.
    send_frames(spoofer, &spoofing);
    let (r0, g0) = (at_router.all(&names), at_gateway.all(&names));
    assert!(
        r0.iter().all(|n| *n > 0) && g0[0] > 0,
        "the forgeries must arrive unguarded: router {r0:?} gateway {g0:?}"
    );

    // The node agent's chain (the same batch it applies).
    let batch = std::env::temp_dir().join(format!("{}-guard.json", node.ns.name()));
    std::fs::write(
        &batch,
        vpno_cni::guard::ruleset(&vpno_cni::guard::allowed_macs()).to_string(),
    )
    .unwrap();
    let out = node
        .ns
        .exec("nft", &["-j", "-f", batch.to_str().unwrap()])
        .unwrap();
    let _ = std::fs::remove_file(&batch);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    send_frames(spoofer, &spoofing);
    assert_eq!(at_router.all(&names), r0, "a forgery reached the router");
    assert_eq!(at_gateway.all(&names), g0, "a forgery reached the gateway");

    // The honest client: its kernel's ARP for the VIP and UDP via the router pass...
    let honest_before = (
        at_router.packets("honest_ip"),
        at_gateway.packets("honest_ip"),
    );
    assert_eq!(send_udp(honest, EXTERNAL, 3).0, 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    while at_router.packets("honest_ip") < honest_before.0 + 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        at_router.packets("honest_ip") >= honest_before.0 + 3,
        "the honest client's traffic reached the router"
    );
    let neigh = honest.ip(&["neigh", "show", VIP]).unwrap();
    assert!(
        neigh.contains(&router_mac),
        "ARP for the VIP answered: {neigh}"
    );
    // ...but even the honest client cannot skip the routers.
    send_frames(
        honest,
        &[udp_frame(&gateway_mac, &honest_mac, &honest_ip, EXTERNAL)],
    );
    assert_eq!(
        at_gateway.packets("honest_ip"),
        honest_before.1,
        "a client reached a gateway directly"
    );
    let drops = String::from_utf8_lossy(
        &node
            .ns
            .exec(
                "nft",
                &["list", "chain", "bridge", "vpno_guard", "prerouting"],
            )
            .unwrap()
            .stdout,
    )
    .into_owned();
    println!("anti-spoofing chain after the test:\n{drops}");

    // DEL forgets the client's pair.
    node.del("spoofer", &netns_path(spoofer), Some(&spoofer_result));
    let addrs = String::from_utf8_lossy(
        &node
            .ns
            .exec(
                "nft",
                &["list", "set", "bridge", "vpno_guard", "client_addrs"],
            )
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !addrs.contains(&spoofer_ip) && addrs.contains(&honest_ip),
        "{addrs}"
    );
    node.del("honest", &netns_path(honest), Some(&honest_result));
}

/// Clients chosen by the MaskGateway's selectors, and members by their
/// labels, read from the real API server (vpno-testenv) through the
/// config's kubeconfig. As in the annotation test above, the plugin runs in
/// the test's own namespace, so every chosen pod stops at the missing
/// bridge (code 11), which proves the decision; the others pass through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_choose_clients_by_pod_and_namespace_labels() {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use kube::api::{Patch, PatchParams};
    if !require("selectors_choose_clients_by_pod_and_namespace_labels") {
        return;
    }
    let Some(env) = vpno_testenv::TestEnv::shared() else {
        return;
    };
    let client = env.client().await;
    let (team_a, team_b) = (
        env.new_namespace("cni-a").await,
        env.new_namespace("cni-b").await,
    );
    let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
    for (ns, team) in [(&team_a, "a"), (&team_b, "b")] {
        let labels = json!({"metadata": {"labels": {"team": team}}});
        namespaces
            .patch(ns, &PatchParams::default(), &Patch::Merge(&labels))
            .await
            .unwrap();
    }
    let pod = |name: &str, labels: Value, annotations: Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap()
    };
    let member_labels = |gw: &str| json!({"vpn.beebs.dev/role": "router", "vpn.beebs.dev/mask-gateway": gw, "app": "web"});
    let address = json!({"vpn.beebs.dev/network-address": "192.168.24.3/22"});
    for ns in [&team_a, &team_b] {
        let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), ns);
        for p in [
            pod("web", json!({"app": "web"}), json!({})),
            pod("db", json!({"app": "db"}), json!({})),
            pod("router", member_labels("egress"), address.clone()),
            pod("other-router", member_labels("other"), address.clone()),
        ] {
            pods.create(&Default::default(), &p).await.unwrap();
        }
    }
    let dir = std::env::temp_dir().join(format!("vpno-cni-sel-{}", std::process::id()));
    let sandbox = NamedNetns::create(format!("vpnot-sel{}", std::process::id() % 10000)).unwrap();
    let gateway_ns = team_a.clone();
    let conf = |marker: &str| {
        json!({
            "cniVersion": "1.0.0", "name": "podnet", "type": "vpno-cni",
            "gateway": {"namespace": gateway_ns, "name": "egress"},
            "network": NETWORK, "slice": SLICE, "vip": VIP, "mtu": 1400,
            "bridge": "vpnot-absent", "dataDir": dir, "kubeconfig": env.kubeconfig_path(),
            "clients": {"namespaceSelector": {"matchLabels": {"team": "a"}},
                        "podSelector": {"matchLabels": {"app": "web"}}},
            "prevResult": {"cniVersion": "1.0.0", "interfaces": [], "ips": [], "marker": marker},
        })
    };
    let run = |ns: &str, pod: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vpn-operator"))
            .arg("cni")
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("sel-{ns}-{pod}"))
            .env("CNI_NETNS", netns_path(&sandbox))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", PLUGINS)
            .env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        let marker = format!("{ns}/{pod}");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf(&marker).to_string().as_bytes())
            .unwrap();
        (child.wait_with_output().unwrap(), marker)
    };
    let chosen = |ns: &str, pod: &str| {
        let (out, marker) = run(ns, pod);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if out.status.success() {
            assert_eq!(v["marker"], marker.as_str(), "passed through untouched");
            false
        } else {
            assert_eq!(v["code"], 11, "{marker}: {v}");
            assert!(
                v["msg"].as_str().unwrap().contains("vpnot-absent"),
                "{marker}: {v}"
            );
            true
        }
    };
    assert!(chosen(&team_a, "web"), "matching namespace and pod labels");
    assert!(!chosen(&team_a, "db"), "pod labels do not match");
    assert!(!chosen(&team_b, "web"), "namespace labels do not match");
    assert!(chosen(&team_a, "router"), "a member by its labels");
    assert!(
        !chosen(&team_a, "other-router"),
        "another gateway's member is never a client"
    );
    assert!(
        !chosen(&team_b, "router"),
        "a member outside the MaskGateway's namespace"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
