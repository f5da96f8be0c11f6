//! The pod network and its containment: the bridge `cni0` (the node IP
//! lives on it), the CNI configuration, the forward guard, and the clean-up
//! of everything kube-proxy, the kubelet and the bridge plugin add.

use std::path::Path;

use super::host;

/// The pod bridge; holds the node/gateway address.
pub(crate) const BRIDGE: &str = "cni0";
/// A second pod bridge some tests may add; cleaned up like `cni0`.
pub(crate) const SECOND_BRIDGE: &str = "cni1";
/// The node IP, the pods' gateway and the API server's address.
pub(crate) const GATEWAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 244, 0, 1);
/// The pods' subnet.
pub(crate) const POD_CIDR: &str = "10.244.0.0/24";
/// The Service ClusterIP range (the API server's `--service-cluster-ip-range`).
pub(crate) const SERVICE_CIDR: &str = "10.96.0.0/12";
/// Everything the cluster's pods and bridges may use.
const CLUSTER_RANGE: &str = "10.244.0.0/16";

/// The guard chain (filter table, both IP families) that drops anything
/// forwarded between a pod bridge and any other interface.
pub(crate) const GUARD_CHAIN: &str = "VPNO-TESTENV-GUARD";

/// Sysctls the kubelet, kube-proxy and the bridge plugin change; recorded
/// before start and restored by tear-down.
pub(crate) const TOUCHED_SYSCTLS: &[&str] = &[
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
];

/// The CNI network: one bridge, host-local addresses, a route only to the
/// Service range (no default route: a pod cannot address anything off this
/// machine), no masquerading.
pub(crate) fn cni_config(ipam_dir: &Path) -> String {
    let doc = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "pods",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": ipam_dir,
                "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY.to_string()}]],
                "routes": [{"dst": SERVICE_CIDR}],
            },
        }],
    });
    serde_json::to_string_pretty(&doc).expect("JSON value serializes")
}

/// Creates `cni0` with the gateway address, up (before anything starts:
/// the API server and the kubelet bind to that address).
pub(crate) fn create_bridge() -> Result<(), crate::TestEnvError> {
    host::run("ip", ["link", "add", BRIDGE, "type", "bridge"])?;
    host::run(
        "ip",
        ["addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE],
    )?;
    host::run("ip", ["link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// The guard's rules (arguments after `iptables -t filter`), in order:
/// create the chain, fill it, jump to it from the top of FORWARD.
///
/// kube-proxy also inserts at the top of FORWARD (its `KUBE-FORWARD` accepts
/// marked and established traffic), so the jump is re-inserted once
/// kube-proxy runs ([`guard_is_first`] checks it).
pub(crate) fn guard_rules() -> Vec<Vec<String>> {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        v(&["-N", GUARD_CHAIN]),
        v(&[
            "-A",
            GUARD_CHAIN,
            "-i",
            "cni+",
            "!",
            "-o",
            "cni+",
            "-j",
            "DROP",
        ]),
        v(&[
            "-A",
            GUARD_CHAIN,
            "!",
            "-i",
            "cni+",
            "-o",
            "cni+",
            "-j",
            "DROP",
        ]),
        v(&["-I", "FORWARD", "1", "-j", GUARD_CHAIN]),
    ]
}

/// The IP-family tools the guard and the clean-up run with.
pub(crate) const IPTABLES: [&str; 2] = ["iptables", "ip6tables"];

/// Installs the guard in both families.
pub(crate) fn install_guard() -> Result<(), crate::TestEnvError> {
    for tool in IPTABLES {
        for rule in guard_rules() {
            host::run(
                tool,
                ["-t", "filter"].into_iter().map(String::from).chain(rule),
            )?;
        }
    }
    Ok(())
}

/// Whether FORWARD's first rule jumps to the guard, given `iptables -S FORWARD`.
pub(crate) fn guard_is_first(forward_rules: &str) -> bool {
    forward_rules
        .lines()
        .find(|l| l.starts_with("-A FORWARD"))
        .is_some_and(|l| l == format!("-A FORWARD -j {GUARD_CHAIN}"))
}

/// Moves the guard's jump back to the top of FORWARD if something was
/// inserted above it.
pub(crate) fn keep_guard_first() -> Result<(), crate::TestEnvError> {
    for tool in IPTABLES {
        let rules = host::run(tool, ["-t", "filter", "-S", "FORWARD"])?;
        if !guard_is_first(&rules) {
            host::run(
                tool,
                ["-t", "filter", "-I", "FORWARD", "1", "-j", GUARD_CHAIN],
            )?;
            // Drop the older copies further down.
            let count = rules
                .lines()
                .filter(|l| *l == format!("-A FORWARD -j {GUARD_CHAIN}"))
                .count();
            for _ in 0..count {
                let _ = host::run(
                    tool,
                    ["-t", "filter", "-D", "FORWARD", "2", "-j", GUARD_CHAIN],
                );
            }
        }
    }
    Ok(())
}

/// Whether a chain is one the cluster created (kube-proxy's and the
/// kubelet's `KUBE-*`, and the guard).
fn is_ours(chain: &str) -> bool {
    chain.starts_with("KUBE-") || chain == GUARD_CHAIN
}

/// The commands (arguments after `iptables -t TABLE`) that remove our chains
/// from a table, given its `iptables -t TABLE -S`: first every rule of a
/// foreign chain that jumps to ours, then flush and delete ours.
pub(crate) fn chain_cleanup(listing: &str) -> Vec<Vec<String>> {
    let mut jumps = Vec::new();
    let mut chains = Vec::new();
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["-N", chain] if is_ours(chain) => chains.push(chain.to_string()),
            ["-A", chain, rest @ ..] if !is_ours(chain) => {
                let target = rest.windows(2).find(|w| w[0] == "-j" || w[0] == "-g");
                if target.is_some_and(|w| is_ours(w[1])) {
                    // "-A CHAIN spec" → "-D CHAIN spec"; quoting of comments is
                    // re-parsed by splitting on whitespace, so keep it simple:
                    // delete by the exact words of the rule.
                    let mut cmd = vec!["-D".to_string(), chain.to_string()];
                    cmd.extend(unquote(rest));
                    jumps.push(cmd);
                }
            }
            _ => {}
        }
    }
    let flush = chains.iter().map(|c| vec!["-F".to_string(), c.clone()]);
    let delete = chains.iter().map(|c| vec!["-X".to_string(), c.clone()]);
    jumps.into_iter().chain(flush).chain(delete).collect()
}

/// Joins the words of `iptables -S` output back into arguments, undoing the
/// double quotes around comments with spaces (`--comment "a b"`).
fn unquote(words: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut quoted: Option<String> = None;
    for w in words {
        match quoted.as_mut() {
            Some(q) => {
                q.push(' ');
                q.push_str(w.trim_end_matches('"'));
                if w.ends_with('"') {
                    out.push(quoted.take().unwrap_or_default());
                }
            }
            None if w.starts_with('"') && !(w.len() > 1 && w.ends_with('"')) => {
                quoted = Some(w.trim_start_matches('"').to_string());
            }
            None => out.push(w.trim_matches('"').to_string()),
        }
    }
    out.extend(quoted);
    out
}

/// Removes our chains from every table of both families.
pub(crate) fn remove_chains(errors: &mut Vec<String>) {
    for tool in IPTABLES {
        for table in ["filter", "nat", "mangle", "raw"] {
            let Some(listing) = host::run_quiet(errors, tool, ["-t", table, "-S"]) else {
                continue;
            };
            for cmd in chain_cleanup(&listing) {
                let args = ["-t", table].into_iter().map(String::from).chain(cmd);
                host::run_quiet(errors, tool, args);
            }
        }
    }
}

/// The iptables-nft tables (`family name`) that exist now.
pub(crate) fn iptables_nft_tables() -> Vec<String> {
    let listing = host::run("nft", ["list", "tables"]).unwrap_or_default();
    listing
        .lines()
        .filter_map(|l| l.strip_prefix("table "))
        .map(str::to_string)
        .collect()
}

/// The tables iptables-nft creates on first use.
const IPTABLES_NFT_TABLES: [&str; 8] = [
    "ip filter",
    "ip nat",
    "ip mangle",
    "ip raw",
    "ip6 filter",
    "ip6 nat",
    "ip6 mangle",
    "ip6 raw",
];

/// Whether an `nft list table` listing holds no rule (only chain headers).
pub(crate) fn table_is_empty(listing: &str) -> bool {
    listing.lines().map(str::trim).all(|l| {
        l.is_empty()
            || l == "}"
            || l.starts_with("table ")
            || l.starts_with("chain ")
            || l.starts_with("type ")
            || l.starts_with("policy ")
    })
}

/// Deletes the iptables-nft tables that did not exist before start
/// (`before`) and hold no rule any more (our chains are gone by then).
pub(crate) fn remove_new_empty_tables(before: &[String], errors: &mut Vec<String>) {
    for table in IPTABLES_NFT_TABLES {
        if before.iter().any(|b| b == table) {
            continue;
        }
        let words: Vec<&str> = table.split(' ').collect();
        let Ok(listing) = host::run("nft", ["list", "table", words[0], words[1]]) else {
            continue; // not there
        };
        if table_is_empty(&listing) {
            host::run_quiet(errors, "nft", ["delete", "table", words[0], words[1]]);
        }
    }
}

/// Forgets conntrack entries of pod and Service addresses.
pub(crate) fn flush_conntrack() {
    for range in [CLUSTER_RANGE, SERVICE_CIDR] {
        for dir in ["--orig-src", "--orig-dst", "--reply-src", "--reply-dst"] {
            // Exit status 1 means "nothing matched": not an error.
            let _ = host::run("conntrack", ["-D", dir, range]);
        }
    }
}

/// Removes the pod bridges and any veth still enslaved to them.
pub(crate) fn remove_links(errors: &mut Vec<String>) {
    for bridge in [BRIDGE, SECOND_BRIDGE] {
        if !Path::new("/sys/class/net").join(bridge).exists() {
            continue;
        }
        if let Ok(out) = host::run("ip", ["-o", "link", "show", "master", bridge]) {
            for port in link_names(&out) {
                host::run_quiet(errors, "ip", ["link", "del", &port]);
            }
        }
        host::run_quiet(errors, "ip", ["link", "del", bridge]);
    }
}

/// Interface names from `ip -o link show` (`3: veth1234@if2: <…>`).
pub(crate) fn link_names(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_config_has_no_default_route_and_no_masquerade() {
        let text = cni_config(Path::new("/d/ipam"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let plugin = &v["plugins"][0];
        assert_eq!(plugin["ipMasq"], false);
        assert_eq!(plugin["bridge"], BRIDGE);
        let routes = plugin["ipam"]["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0]["dst"], SERVICE_CIDR);
        assert!(!text.contains("0.0.0.0/0"));
        assert_eq!(plugin["ipam"]["dataDir"], "/d/ipam");
    }

    #[test]
    fn guard_drops_both_directions_and_is_jumped_to_first() {
        let rules = guard_rules();
        assert_eq!(rules[0], ["-N", GUARD_CHAIN]);
        assert!(rules.iter().filter(|r| r.last().unwrap() == "DROP").count() == 2);
        assert_eq!(
            rules.last().unwrap(),
            &["-I", "FORWARD", "1", "-j", GUARD_CHAIN]
        );
    }

    #[test]
    fn guard_first_is_read_from_the_forward_listing() {
        let first =
            format!("-P FORWARD DROP\n-A FORWARD -j {GUARD_CHAIN}\n-A FORWARD -j KUBE-FORWARD\n");
        let second =
            format!("-P FORWARD DROP\n-A FORWARD -j KUBE-FORWARD\n-A FORWARD -j {GUARD_CHAIN}\n");
        assert!(guard_is_first(&first));
        assert!(!guard_is_first(&second));
        assert!(!guard_is_first("-P FORWARD ACCEPT\n"));
    }

    #[test]
    fn chain_cleanup_removes_jumps_then_flushes_then_deletes() {
        let listing = "\
-P INPUT ACCEPT
-P FORWARD ACCEPT
-N DOCKER
-N KUBE-FORWARD
-N KUBE-SERVICES
-N VPNO-TESTENV-GUARD
-A INPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -j VPNO-TESTENV-GUARD
-A FORWARD -j DOCKER
-A KUBE-FORWARD -j ACCEPT
-A VPNO-TESTENV-GUARD -i cni+ ! -o cni+ -j DROP
";
        let cmds = chain_cleanup(listing);
        assert_eq!(
            cmds,
            vec![
                vec![
                    "-D",
                    "INPUT",
                    "-m",
                    "comment",
                    "--comment",
                    "kubernetes service portals",
                    "-j",
                    "KUBE-SERVICES"
                ],
                vec!["-D", "FORWARD", "-j", "VPNO-TESTENV-GUARD"],
                vec!["-F", "KUBE-FORWARD"],
                vec!["-F", "KUBE-SERVICES"],
                vec!["-F", "VPNO-TESTENV-GUARD"],
                vec!["-X", "KUBE-FORWARD"],
                vec!["-X", "KUBE-SERVICES"],
                vec!["-X", "VPNO-TESTENV-GUARD"],
            ]
        );
    }

    #[test]
    fn a_table_with_only_base_chains_is_empty() {
        let empty = "table ip filter {\n\tchain FORWARD {\n\t\ttype filter hook forward priority filter; policy accept;\n\t}\n}\n";
        let used = "table ip filter {\n\tchain FORWARD {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tcounter jump DOCKER\n\t}\n}\n";
        assert!(table_is_empty(empty));
        assert!(!table_is_empty(used));
    }

    #[test]
    fn link_names_strip_the_peer_suffix() {
        let out = "7: veth1a2b3c@if3: <BROADCAST> mtu 1500\n9: vethx: <UP> mtu 1500\n";
        assert_eq!(link_names(out), ["veth1a2b3c", "vethx"]);
    }
}
