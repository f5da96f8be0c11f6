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
        let mut c = json!({
            "cniVersion": "1.0.0", "name": "podnet", "type": "vpno-cni",
            "gateway": {"namespace": "vpn", "name": "egress"},
            "network": NETWORK, "slice": SLICE, "vip": VIP,
            "excludes": ["10.244.0.0/16", "10.96.0.0/12"],
            "mtu": 1400, "bridge": GW_BRIDGE, "dataDir": self.dir.join("vpno"),
            "capabilities": {"io.kubernetes.cri.pod-annotations": true},
            "runtimeConfig": {"io.kubernetes.cri.pod-annotations":
                annotation.map(|a| json!({"vpn.beebs.dev/gateway": a})).unwrap_or(json!({}))},
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

    /// Starts one plugin process in the node namespace, as a runtime does.
    fn spawn(
        &self,
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
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=apps;K8S_POD_NAME={container}"),
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
