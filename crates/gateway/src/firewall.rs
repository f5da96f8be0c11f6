//! The gateway's nftables state: one table `inet vpno_gateway`, built by a
//! pure function and applied as one atomic `nft -j` batch.
//!
//! What the table enforces (the kill switch):
//! - `forward` (policy drop): only `LAN → tunnel` packets from the gateway
//!   network and their `tunnel → LAN` replies are forwarded. With router
//!   MACs given, `LAN → tunnel` packets must also come from one of them (the
//!   routers forward client traffic; a client that sends straight to a
//!   gateway is dropped and counted with the kill switch's drops). Everything else
//!   — in particular gateway-network traffic towards any other interface,
//!   or towards a tunnel interface that vanished and came back as something
//!   else — is dropped and counted.
//! - `postrouting_guard`: no packet with a gateway-network source leaves
//!   through any interface but the tunnel and the LAN (also covers locally
//!   generated packets).
//! - `postrouting_nat`: masquerade gateway-network traffic out of the tunnel.
//! - `output` (only when the VPN endpoint is known): the gateway's own new
//!   connections leave only through loopback, the LAN, the tunnel, or as UDP
//!   to the VPN endpoint (plus `--allow-output` CIDRs and IPv6 link-local
//!   neighbour discovery, which cannot leave the link). Replies to
//!   connections made to the gateway (health probes) pass.
//!   The native tunnel never roams away from that endpoint (its peer is
//!   pinned, see `vpno_tunnel::PeerConfig::roaming`), so this single
//!   address stays the right one even when the server answers from another.
//!
//! Interfaces are matched by name (`iifname`/`oifname`), so the rules keep
//! working when the tunnel interface is deleted and recreated.

use std::net::SocketAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

/// nftables family of the table.
pub const TABLE_FAMILY: &str = "inet";
/// Name of the gateway's table.
pub const TABLE_NAME: &str = "vpno_gateway";
/// Comment prefix of the rule that carries the ruleset fingerprint.
const FINGERPRINT_PREFIX: &str = "vpno-gateway kill switch ";

/// Errors talking to nftables.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The desired ruleset does not fit the nftables schema (a bug).
    #[error("ruleset does not match the nftables schema: {0}")]
    Schema(String),
    /// `nft` failed.
    #[error("nft failed: {0}")]
    Nft(String),
}

/// What the firewall must enforce; the input of [`ruleset`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallPlan {
    /// Interface facing the gateway network.
    pub lan_interface: String,
    /// The tunnel interface (native or external).
    pub tunnel_interface: String,
    /// Source network whose traffic is forwarded into the tunnel.
    pub gateway_network: IpNet,
    /// The VPN server's UDP endpoint, if known. When `None` the `output`
    /// chain is left out (an external tunnel whose endpoint we do not know
    /// must keep working).
    pub vpn_endpoint: Option<SocketAddr>,
    /// Extra destinations the gateway itself may reach outside the tunnel.
    pub allow_output: Vec<IpNet>,
    /// MAC addresses of the routers; when not empty, traffic arriving on the
    /// LAN is forwarded only from these.
    pub router_macs: Vec<[u8; 6]>,
}

fn family_of(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "ip",
        IpNet::V6(_) => "ip6",
    }
}

fn addr_match(field: &str, net: &IpNet) -> Value {
    let right = if net.prefix_len() == net.max_prefix_len() {
        json!(net.addr().to_string())
    } else {
        json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
    };
    json!({"match": {"op": "==", "left": {"payload": {"protocol": family_of(net), "field": field}}, "right": right}})
}

fn meta_match(key: &str, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": {"meta": {"key": key}}, "right": right}})
}

fn ct_established() -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}})
}

fn counter() -> Value {
    json!({"counter": null})
}

fn table() -> Value {
    json!({"family": TABLE_FAMILY, "name": TABLE_NAME})
}

fn chain(name: &str, kind: &str, hook: &str, prio: i32, policy: &str) -> Value {
    json!({"add": {"chain": {
        "family": TABLE_FAMILY, "table": TABLE_NAME, "name": name,
        "type": kind, "hook": hook, "prio": prio, "policy": policy
    }}})
}

fn rule(chain: &str, expr: Vec<Value>, comment: Option<String>) -> Value {
    let mut rule =
        json!({"family": TABLE_FAMILY, "table": TABLE_NAME, "chain": chain, "expr": expr});
    if let Some(comment) = comment {
        rule["comment"] = json!(comment);
    }
    json!({"add": {"rule": rule}})
}

/// Rules of the desired table, without the table/chain commands.
fn rules(plan: &FirewallPlan) -> Vec<Value> {
    let lan = plan.lan_interface.as_str();
    let tun = plan.tunnel_interface.as_str();
    let net = &plan.gateway_network;
    let mut rules = Vec::new();
    if !plan.router_macs.is_empty() {
        let macs: Vec<String> = plan.router_macs.iter().map(vpno_sys::format_mac).collect();
        rules.push(rule(
            "forward",
            vec![
                meta_match("iifname", "==", json!(lan)),
                json!({"match": {"op": "!=", "left": {"payload": {"protocol": "ether", "field": "saddr"}}, "right": {"set": macs}}}),
                counter(),
                json!({"drop": null}),
            ],
            Some("vpno-gateway not from a router".into()),
        ));
    }
    rules.extend([
        rule(
            "forward",
            vec![
                meta_match("iifname", "==", json!(lan)),
                meta_match("oifname", "==", json!(tun)),
                addr_match("saddr", net),
                counter(),
                json!({"accept": null}),
            ],
            None,
        ),
        rule(
            "forward",
            vec![
                meta_match("iifname", "==", json!(tun)),
                meta_match("oifname", "==", json!(lan)),
                addr_match("daddr", net),
                ct_established(),
                counter(),
                json!({"accept": null}),
            ],
            None,
        ),
        // The fingerprint comment is filled in by `ruleset`.
        rule(
            "forward",
            vec![counter(), json!({"drop": null})],
            Some(String::new()),
        ),
        rule(
            "postrouting_guard",
            vec![
                addr_match("saddr", net),
                meta_match("oifname", "!=", json!({"set": [lan, tun]})),
                counter(),
                json!({"drop": null}),
            ],
            None,
        ),
        rule(
            "postrouting_nat",
            vec![
                meta_match("oifname", "==", json!(tun)),
                addr_match("saddr", net),
                counter(),
                json!({"masquerade": null}),
            ],
            None,
        ),
    ]);
    if let Some(endpoint) = plan.vpn_endpoint {
        rules.push(rule(
            "output",
            vec![
                meta_match("oifname", "==", json!({"set": ["lo", lan, tun]})),
                json!({"accept": null}),
            ],
            None,
        ));
        rules.push(rule(
            "output",
            vec![ct_established(), json!({"accept": null})],
            None,
        ));
        // IPv6 link-local and link-scope multicast (neighbour discovery,
        // MLD) never leave the link.
        rules.push(rule(
            "output",
            vec![
                json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": {"set": [
                    {"prefix": {"addr": "fe80::", "len": 10}},
                    {"prefix": {"addr": "ff02::", "len": 16}}
                ]}}}),
                json!({"accept": null}),
            ],
            None,
        ));
        let endpoint_net = IpNet::from(endpoint.ip());
        rules.push(rule(
            "output",
            vec![
                addr_match("daddr", &endpoint_net),
                json!({"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": endpoint.port()}}),
                json!({"accept": null}),
            ],
            None,
        ));
        for allowed in &plan.allow_output {
            rules.push(rule(
                "output",
                vec![addr_match("daddr", allowed), json!({"accept": null})],
                None,
            ));
        }
        rules.push(rule(
            "output",
            vec![counter(), json!({"drop": null})],
            Some("vpno-gateway own traffic outside the tunnel".into()),
        ));
    }
    rules
}

/// 64-bit FNV-1a: a fingerprint that is stable across builds.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The complete desired state as one `nft -j` batch: create-if-missing,
/// delete and re-create the table (atomically, in one transaction), then its
/// chains and rules. The kill-switch rule carries a fingerprint of the whole
/// ruleset in its comment, which [`is_current`] uses to make re-applying an
/// unchanged plan a no-op.
pub fn ruleset(plan: &FirewallPlan) -> Value {
    let mut rules = rules(plan);
    let fingerprint = format!("{:016x}", fnv1a(&Value::Array(rules.clone()).to_string()));
    for rule in &mut rules {
        if rule["add"]["rule"]["comment"] == json!("") {
            rule["add"]["rule"]["comment"] = json!(format!("{FINGERPRINT_PREFIX}{fingerprint}"));
        }
    }
    let mut commands = vec![
        json!({"add": {"table": table()}}),
        json!({"delete": {"table": table()}}),
        json!({"add": {"table": table()}}),
        chain("forward", "filter", "forward", 0, "drop"),
        chain("postrouting_guard", "filter", "postrouting", 0, "accept"),
        chain("postrouting_nat", "nat", "postrouting", 100, "accept"),
    ];
    if plan.vpn_endpoint.is_some() {
        commands.push(chain("output", "filter", "output", 0, "accept"));
    }
    commands.extend(rules);
    json!({"nftables": commands})
}

/// The batch that removes the table (create-if-missing first, so removing
/// an absent table is not an error).
pub fn teardown() -> Value {
    json!({"nftables": [
        {"add": {"table": table()}},
        {"delete": {"table": table()}},
    ]})
}

/// The fingerprint comment of a desired ruleset.
fn fingerprint_of(desired: &Value) -> Option<String> {
    desired["nftables"].as_array()?.iter().find_map(|cmd| {
        cmd["add"]["rule"]["comment"]
            .as_str()
            .filter(|c| c.starts_with(FINGERPRINT_PREFIX))
            .map(str::to_string)
    })
}

fn count_rules(commands: &[Value], key: &str) -> usize {
    commands
        .iter()
        .filter(|c| {
            let rule = if key.is_empty() {
                &c["rule"]
            } else {
                &c[key]["rule"]
            };
            rule.is_object()
        })
        .count()
}

/// Whether the table listed by `nft -j list table inet vpno_gateway`
/// (`current`) already holds the `desired` ruleset: same fingerprint and the
/// same number of rules (so extra or missing rules are noticed).
pub fn is_current(current: &Value, desired: &Value) -> bool {
    let (Some(current), Some(desired_cmds)) = (
        current["nftables"].as_array(),
        desired["nftables"].as_array(),
    ) else {
        return false;
    };
    let Some(fingerprint) = fingerprint_of(desired) else {
        return false;
    };
    let has_fingerprint = current
        .iter()
        .any(|o| o["rule"]["comment"].as_str() == Some(fingerprint.as_str()));
    has_fingerprint && count_rules(current, "") == count_rules(desired_cmds, "add")
}

/// Validates a batch against the nftables crate's schema.
pub fn to_nftables(batch: &Value) -> Result<nftables::schema::Nftables<'static>, FirewallError> {
    serde_json::from_value(batch.clone()).map_err(|e| FirewallError::Schema(e.to_string()))
}

/// Counters of the table's rules, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FirewallCounters {
    /// Packets dropped by the forward kill switch.
    pub killswitch_dropped_packets: u64,
    /// Packets dropped by the postrouting guard.
    pub guard_dropped_packets: u64,
    /// Gateway's own packets dropped in `output`.
    pub output_dropped_packets: u64,
    /// Packets forwarded into the tunnel.
    pub forwarded_packets: u64,
}

/// Extracts [`FirewallCounters`] from `nft -j list table` output.
pub fn counters(current: &Value) -> FirewallCounters {
    let mut out = FirewallCounters::default();
    let Some(objects) = current["nftables"].as_array() else {
        return out;
    };
    for rule in objects.iter().map(|o| &o["rule"]).filter(|r| r.is_object()) {
        let Some(exprs) = rule["expr"].as_array() else {
            continue;
        };
        let packets = exprs
            .iter()
            .find_map(|e| e["counter"]["packets"].as_u64())
            .unwrap_or(0);
        let is_drop = exprs.iter().any(|e| e.get("drop").is_some());
        let is_accept = exprs.iter().any(|e| e.get("accept").is_some());
        match (rule["chain"].as_str(), is_drop, is_accept) {
            (Some("forward"), true, _) => out.killswitch_dropped_packets += packets,
            (Some("forward"), _, true)
                if exprs
                    .iter()
                    .any(|e| e["match"]["left"]["payload"]["field"] == json!("saddr")) =>
            {
                out.forwarded_packets += packets
            }
            (Some("postrouting_guard"), true, _) => out.guard_dropped_packets += packets,
            (Some("output"), true, _) => out.output_dropped_packets += packets,
            _ => {}
        }
    }
    out
}

/// Kernel side: applies and removes the table with the `nft` binary (in the
/// network namespace of the calling thread — the child inherits it).
pub mod kernel {
    use super::*;

    fn list_args() -> [&'static str; 4] {
        ["list", "table", TABLE_FAMILY, TABLE_NAME]
    }

    /// The current table as `nft -j` JSON, or `None` when it does not exist.
    pub fn current() -> Option<Value> {
        let raw = nftables::helper::get_current_ruleset_raw(
            nftables::helper::DEFAULT_NFT,
            list_args().iter().copied(),
        )
        .ok()?;
        serde_json::from_str(&raw).ok()
    }

    /// Applies `plan` atomically; returns `false` when the table already
    /// matched and nothing was changed.
    pub fn apply(plan: &FirewallPlan) -> Result<bool, FirewallError> {
        let desired = ruleset(plan);
        if current().is_some_and(|c| is_current(&c, &desired)) {
            return Ok(false);
        }
        let batch = to_nftables(&desired)?;
        nftables::helper::apply_ruleset(&batch).map_err(|e| FirewallError::Nft(e.to_string()))?;
        Ok(true)
    }

    /// Removes the table (no error if it is absent).
    pub fn remove() -> Result<(), FirewallError> {
        let batch = to_nftables(&teardown())?;
        nftables::helper::apply_ruleset(&batch).map_err(|e| FirewallError::Nft(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> FirewallPlan {
        FirewallPlan {
            lan_interface: "lan0".into(),
            tunnel_interface: "wg-vpno".into(),
            gateway_network: "10.77.0.0/24".parse().unwrap(),
            vpn_endpoint: Some("198.51.100.1:51820".parse().unwrap()),
            allow_output: vec!["10.96.0.10/32".parse().unwrap()],
            router_macs: vec![],
        }
    }

    #[test]
    fn router_macs_put_a_sender_check_first() {
        let mut with = plan();
        with.router_macs = vec![[2, 0x56, 0x50, 0x52, 0, 2], [2, 0x56, 0x50, 0x52, 0, 3]];
        let batch = ruleset(&with);
        let cmds = batch["nftables"].as_array().unwrap();
        let first_rule = cmds.iter().find(|c| c["add"]["rule"].is_object()).unwrap();
        assert_eq!(
            first_rule["add"]["rule"],
            json!({"family": "inet", "table": "vpno_gateway", "chain": "forward",
                "comment": "vpno-gateway not from a router",
                "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lan0"}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ether", "field": "saddr"}},
                    "right": {"set": ["02:56:50:52:00:02", "02:56:50:52:00:03"]}}},
                {"counter": null}, {"drop": null}]})
        );
        // The rest is the plan without router MACs; the fingerprint tells them apart.
        assert_eq!(
            count_rules(cmds, "add"),
            count_rules(ruleset(&plan())["nftables"].as_array().unwrap(), "add") + 1
        );
        assert_ne!(fingerprint_of(&batch), fingerprint_of(&ruleset(&plan())));
        to_nftables(&batch).expect("fits the nftables schema");
        // Its drops count with the kill switch's.
        let listed = json!({"nftables": [{"rule": {"chain": "forward", "expr": [
            {"counter": {"packets": 4, "bytes": 1}}, {"drop": null}]}}]});
        assert_eq!(counters(&listed).killswitch_dropped_packets, 4);
    }

    #[test]
    fn exact_ruleset_for_a_native_gateway() {
        let batch = ruleset(&plan());
        let fp = fingerprint_of(&batch).unwrap();
        let t = json!({"family": "inet", "name": "vpno_gateway"});
        let net = json!({"prefix": {"addr": "10.77.0.0", "len": 24}});
        let r = |chain: &str, expr: Value| json!({"add": {"rule": {"family": "inet", "table": "vpno_gateway", "chain": chain, "expr": expr}}});
        let mut killswitch = r("forward", json!([{"counter": null}, {"drop": null}]));
        killswitch["add"]["rule"]["comment"] = json!(fp);
        let mut own = r("output", json!([{"counter": null}, {"drop": null}]));
        own["add"]["rule"]["comment"] = json!("vpno-gateway own traffic outside the tunnel");
        let expected = json!({"nftables": [
            {"add": {"table": t}},
            {"delete": {"table": t}},
            {"add": {"table": t}},
            {"add": {"chain": {"family": "inet", "table": "vpno_gateway", "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}},
            {"add": {"chain": {"family": "inet", "table": "vpno_gateway", "name": "postrouting_guard", "type": "filter", "hook": "postrouting", "prio": 0, "policy": "accept"}}},
            {"add": {"chain": {"family": "inet", "table": "vpno_gateway", "name": "postrouting_nat", "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
            {"add": {"chain": {"family": "inet", "table": "vpno_gateway", "name": "output", "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}}},
            r("forward", json!([
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lan0"}},
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wg-vpno"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": net}},
                {"counter": null}, {"accept": null}])),
            r("forward", json!([
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "wg-vpno"}},
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "lan0"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": net}},
                {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
                {"counter": null}, {"accept": null}])),
            killswitch,
            r("postrouting_guard", json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": net}},
                {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": {"set": ["lan0", "wg-vpno"]}}},
                {"counter": null}, {"drop": null}])),
            r("postrouting_nat", json!([
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wg-vpno"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": net}},
                {"counter": null}, {"masquerade": null}])),
            r("output", json!([
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": {"set": ["lo", "lan0", "wg-vpno"]}}},
                {"accept": null}])),
            r("output", json!([
                {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
                {"accept": null}])),
            r("output", json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": {"set": [
                    {"prefix": {"addr": "fe80::", "len": 10}}, {"prefix": {"addr": "ff02::", "len": 16}}]}}},
                {"accept": null}])),
            r("output", json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "198.51.100.1"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 51820}},
                {"accept": null}])),
            r("output", json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.96.0.10"}},
                {"accept": null}])),
            own,
        ]});
        assert_eq!(batch, expected);
        to_nftables(&batch).expect("fits the nftables schema");
    }

    #[test]
    fn external_tunnel_without_endpoint_has_no_output_chain() {
        let mut plan = plan();
        plan.vpn_endpoint = None;
        plan.gateway_network = "fd00:77::/64".parse().unwrap();
        let batch = ruleset(&plan);
        let text = batch.to_string();
        assert!(!text.contains("\"output\""), "{text}");
        assert!(
            text.contains("\"ip6\""),
            "IPv6 network matched with ip6 payloads"
        );
        to_nftables(&batch).unwrap();
    }

    #[test]
    fn fingerprint_changes_with_the_plan_and_detects_current_state() {
        let a = ruleset(&plan());
        let mut other = plan();
        other.lan_interface = "lan1".into();
        let b = ruleset(&other);
        assert_ne!(fingerprint_of(&a), fingerprint_of(&b));
        // Simulate `nft -j list table` output of `a`.
        let listed = |batch: &Value| {
            let objects: Vec<Value> = batch["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|c| c["add"].as_object().cloned())
                .map(Value::Object)
                .collect();
            json!({"nftables": objects})
        };
        assert!(is_current(&listed(&a), &a));
        assert!(!is_current(&listed(&a), &b));
        let mut missing_rule = listed(&a);
        missing_rule["nftables"].as_array_mut().unwrap().pop();
        assert!(!is_current(&missing_rule, &a));
        assert!(!is_current(&json!({}), &a));
    }

    #[test]
    fn counters_are_read_per_purpose() {
        let listed = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"rule": {"chain": "forward", "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lan0"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "x"}},
                {"counter": {"packets": 7, "bytes": 700}}, {"accept": null}]}},
            {"rule": {"chain": "forward", "expr": [{"counter": {"packets": 3, "bytes": 300}}, {"drop": null}]}},
            {"rule": {"chain": "postrouting_guard", "expr": [{"counter": {"packets": 2, "bytes": 1}}, {"drop": null}]}},
            {"rule": {"chain": "output", "expr": [{"counter": {"packets": 5, "bytes": 1}}, {"drop": null}]}},
        ]});
        assert_eq!(
            counters(&listed),
            FirewallCounters {
                killswitch_dropped_packets: 3,
                guard_dropped_packets: 2,
                output_dropped_packets: 5,
                forwarded_packets: 7,
            }
        );
    }
}
