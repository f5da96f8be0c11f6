//! Anti-spoofing on the gateway bridges: one bridge-family nftables table,
//! `bridge vpno_guard`, built by pure functions and changed only in atomic
//! `nft -j` batches.
//!
//! Client pods are untrusted neighbours of the routers and gateways. A
//! frame entering a bridge from a *client port* (a host veth the plugin
//! registered in `client_ports`) passes only when
//! - it is IPv4 sent to the VIP MAC or a router's MAC (router `i` pins
//!   [`vpno_net::layout::router_mac`]`(i)`, which the plugin also gives it,
//!   so every node knows them all), or ARP, and
//! - its source MAC and IPv4 source (for ARP: the Ethernet source, the ARP
//!   sender MAC and the ARP sender IP) are exactly the port's registered
//!   pair (`client_addrs`).
//!
//! So a client cannot use another MAC or address, cannot answer or announce
//! ARP for the VIP, a router or a gateway, and cannot reach a gateway
//! except through the routers. Ports not registered as clients (routers,
//! gateways, the VXLAN device) are not filtered here: routers and gateways
//! are the MaskGateway's own Pods, and frames from the VXLAN device were
//! filtered by the node where they entered.
//!
//! Two writers share the table without stepping on each other: the node
//! agent owns the chain (it flushes and refills it in one transaction,
//! which keeps the sets' elements; the routers' MACs are constants in its
//! rules), the plugin owns the elements (one
//! batch per ADD, one per DEL). Both batches start with idempotent `add table` /
//! `add set` commands, so either may come first.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// nftables family of the table.
pub const FAMILY: &str = "bridge";
/// The table's name.
pub const TABLE: &str = "vpno_guard";
/// The filtering chain.
pub const CHAIN: &str = "prerouting";
/// Set of client port names.
pub const CLIENT_PORTS: &str = "client_ports";
/// Set of `port . MAC . IPv4` a client port may send from.
pub const CLIENT_ADDRS: &str = "client_addrs";
/// The VIP's MAC (the routers' `--vip-mac` default), as nft writes it.
pub fn vip_mac() -> String {
    vpno_sys::format_mac(&vpno_net::layout::VIP_MAC)
}
/// Comment prefix of the last rule, carrying the ruleset's fingerprint.
const FINGERPRINT_PREFIX: &str = "vpno-guard client drop ";

/// A bridge port as the plugin registers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    /// A client pod's host veth, with the pod side's MAC and address.
    Client {
        /// Host-side link name.
        link: String,
        /// The pod interface's MAC (`aa:bb:..`).
        mac: String,
        /// The pod's address.
        ip: Ipv4Addr,
    },
    /// A member pod's (router's, gateway's) host veth: nothing to register.
    Member {
        /// Host-side link name.
        link: String,
    },
}

fn table() -> Value {
    json!({"family": FAMILY, "name": TABLE})
}

fn set(name: &str, kind: Value) -> Value {
    json!({"add": {"set": {"family": FAMILY, "table": TABLE, "name": name, "type": kind}}})
}

/// `add table` and `add set` for every set: idempotent, so every batch starts with them.
fn skeleton() -> Vec<Value> {
    vec![
        json!({"add": {"table": table()}}),
        set(CLIENT_PORTS, json!("ifname")),
        set(CLIENT_ADDRS, json!(["ifname", "ether_addr", "ipv4_addr"])),
    ]
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn field(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn is(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn at(set: &str) -> Value {
    json!(format!("@{set}"))
}

fn rule(expr: Vec<Value>, comment: Option<String>) -> Value {
    let mut r = json!({"family": FAMILY, "table": TABLE, "chain": CHAIN, "expr": expr});
    if let Some(c) = comment {
        r["comment"] = json!(c);
    }
    json!({"add": {"rule": r}})
}

/// The MACs clients may send IPv4 to: the VIP's and those of every router
/// a gateway network has room for (sorted).
pub fn allowed_macs() -> Vec<String> {
    let mut macs: Vec<String> = (0..vpno_net::layout::MAX_ROUTERS)
        .map(|i| vpno_sys::format_mac(&vpno_net::layout::router_mac(i)))
        .chain([vip_mac()])
        .collect();
    macs.sort();
    macs
}

/// The chain's rules (the last one's comment is filled in by [`ruleset`]).
fn rules(allowed: &[String]) -> Vec<Value> {
    let counter = json!({"counter": null});
    let drop = json!({"drop": null});
    let accept = json!({"accept": null});
    let ether_type = |t: &str| is("==", field("ether", "type"), json!(t));
    // ARP may go anywhere (a client answers whoever asks): only its sender is checked.
    vec![
        rule(
            vec![is("!=", meta("iifname"), at(CLIENT_PORTS)), accept.clone()],
            None,
        ),
        // IPv4 only to the VIP or a router.
        rule(
            vec![
                ether_type("ip"),
                is("!=", field("ether", "daddr"), json!({"set": allowed})),
                counter.clone(),
                drop.clone(),
            ],
            None,
        ),
        rule(
            vec![
                ether_type("ip"),
                is(
                    "==",
                    json!({"concat": [meta("iifname"), field("ether", "saddr"), field("ip", "saddr")]}),
                    at(CLIENT_ADDRS),
                ),
                accept.clone(),
            ],
            None,
        ),
        rule(
            vec![
                ether_type("arp"),
                is(
                    "==",
                    json!({"concat": [meta("iifname"), field("ether", "saddr"), field("arp", "saddr ip")]}),
                    at(CLIENT_ADDRS),
                ),
                is(
                    "==",
                    json!({"concat": [meta("iifname"), field("arp", "saddr ether"), field("arp", "saddr ip")]}),
                    at(CLIENT_ADDRS),
                ),
                accept,
            ],
            None,
        ),
        rule(vec![counter, drop], Some(String::new())),
    ]
}

/// 64-bit FNV-1a, stable across builds (std's hashers are not).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The node agent's batch: the table and sets if missing, the chain, and
/// its rules replaced in the same transaction (the sets' elements stay);
/// `allowed` from [`allowed_macs`] (a parameter so tests can vary it).
pub fn ruleset(allowed: &[String]) -> Value {
    let mut rules = rules(allowed);
    let fingerprint = format!("{:016x}", fnv1a(&Value::Array(rules.clone()).to_string()));
    for r in &mut rules {
        if r["add"]["rule"]["comment"] == json!("") {
            r["add"]["rule"]["comment"] = json!(format!("{FINGERPRINT_PREFIX}{fingerprint}"));
        }
    }
    let mut commands = skeleton();
    commands.push(json!({"add": {"chain": {
        "family": FAMILY, "table": TABLE, "name": CHAIN,
        "type": "filter", "hook": "prerouting", "prio": -200, "policy": "accept"
    }}}));
    commands.push(json!({"flush": {"chain": {"family": FAMILY, "table": TABLE, "name": CHAIN}}}));
    commands.extend(rules);
    json!({"nftables": commands})
}

/// Whether a listing of the table (`nft -j list table bridge vpno_guard`)
/// already holds [`ruleset`]`(allowed)`'s chain: its fingerprint and rule count.
pub fn is_current(listed: &Value, allowed: &[String]) -> bool {
    let desired = ruleset(allowed);
    let fingerprint = desired["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|c| c["add"]["rule"]["comment"].as_str().map(str::to_string));
    let objects = listed["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let listed_rules: Vec<&Value> = objects
        .iter()
        .map(|o| &o["rule"])
        .filter(|r| r.is_object())
        .collect();
    listed_rules.len() == rules(allowed).len()
        && listed_rules
            .iter()
            .any(|r| r["comment"].as_str().map(str::to_string) == fingerprint)
}

/// The batch removing the table (create-if-missing first, so it never fails on absence).
pub fn teardown() -> Value {
    json!({"nftables": [
        {"add": {"table": table()}},
        {"delete": {"table": table()}},
    ]})
}

fn element(op: &str, set: &str, elem: Vec<Value>) -> Value {
    json!({op: {"element": {"family": FAMILY, "table": TABLE, "name": set, "elem": elem}}})
}

fn client_addr(link: &str, mac: &str, ip: Ipv4Addr) -> Value {
    json!({"concat": [link, mac, ip.to_string()]})
}

/// The plugin's batch registering `port` (before its link joins the bridge).
pub fn admit(port: &Port) -> Value {
    let mut commands = skeleton();
    match port {
        Port::Client { link, mac, ip } => {
            commands.push(element(
                "add",
                CLIENT_ADDRS,
                vec![client_addr(link, mac, *ip)],
            ));
            commands.push(element("add", CLIENT_PORTS, vec![json!(link)]));
        }
        Port::Member { .. } => {}
    }
    json!({"nftables": commands})
}

/// The elements of set `name` in a table listing.
fn elements<'a>(listed: &'a Value, name: &str) -> Vec<&'a Value> {
    listed["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["set"]["name"] == name)
        .flat_map(|o| o["set"]["elem"].as_array().into_iter().flatten())
        .collect()
}

/// The batch removing what was registered for host link `link`, from a
/// listing of the table; `None` when nothing is registered for it.
pub fn forget(listed: &Value, link: &str) -> Option<Value> {
    let mut commands = Vec::new();
    let addrs: Vec<Value> = elements(listed, CLIENT_ADDRS)
        .into_iter()
        .filter(|e| e["concat"][0] == link)
        .cloned()
        .collect();
    if !addrs.is_empty() {
        commands.push(element("delete", CLIENT_ADDRS, addrs));
    }
    if elements(listed, CLIENT_PORTS)
        .iter()
        .any(|e| e.as_str() == Some(link))
    {
        commands.push(element("delete", CLIENT_PORTS, vec![json!(link)]));
    }
    (!commands.is_empty()).then(|| json!({"nftables": commands}))
}

/// Kernel side: the batches through Debian's `nft` (in the network namespace
/// of the calling thread, which the child inherits).
pub mod kernel {
    use super::*;

    /// Why nftables refused.
    #[derive(Debug, thiserror::Error)]
    pub enum GuardError {
        /// A batch does not fit the nftables schema (a bug).
        #[error("anti-spoofing ruleset does not match the nftables schema: {0}")]
        Schema(String),
        /// `nft` failed (or is missing).
        #[error("nft (anti-spoofing table bridge vpno_guard): {0}")]
        Nft(String),
    }

    /// Applies one batch atomically.
    pub fn apply(batch: &Value) -> Result<(), GuardError> {
        let parsed: nftables::schema::Nftables<'_> =
            serde_json::from_value(batch.clone()).map_err(|e| GuardError::Schema(e.to_string()))?;
        nftables::helper::apply_ruleset(&parsed).map_err(|e| GuardError::Nft(e.to_string()))
    }

    /// The table as `nft -j` JSON, or `None` when it does not exist.
    pub fn listed() -> Option<Value> {
        let raw = nftables::helper::get_current_ruleset_raw(
            nftables::helper::DEFAULT_NFT,
            ["list", "table", FAMILY, TABLE],
        )
        .ok()?;
        serde_json::from_str(&raw).ok()
    }

    /// Makes the chain [`ruleset`]`(allowed)`'s; `false` when it already was.
    pub fn install(allowed: &[String]) -> Result<bool, GuardError> {
        if listed().is_some_and(|l| is_current(&l, allowed)) {
            return Ok(false);
        }
        apply(&ruleset(allowed))?;
        Ok(true)
    }

    /// Removes the table.
    pub fn remove() -> Result<(), GuardError> {
        apply(&teardown())
    }

    /// Registers `port`.
    pub fn admit(port: &Port) -> Result<(), GuardError> {
        apply(&super::admit(port))
    }

    /// Unregisters host link `link`; nothing registered is fine.
    pub fn forget(link: &str) -> Result<(), GuardError> {
        match listed().and_then(|l| super::forget(&l, link)) {
            Some(batch) => apply(&batch),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_ok(batch: &Value) {
        serde_json::from_value::<nftables::schema::Nftables<'_>>(batch.clone())
            .unwrap_or_else(|e| panic!("{e}: {batch}"));
    }

    fn client() -> Port {
        Port::Client {
            link: "vpno0123456789".into(),
            mac: "02:00:00:00:00:01".into(),
            ip: "192.168.24.70".parse().unwrap(),
        }
    }

    fn allowed() -> Vec<String> {
        allowed_macs()
    }

    #[test]
    fn clients_may_send_to_the_vip_and_every_router() {
        let a = allowed_macs();
        assert_eq!(a.len(), 1 + vpno_net::layout::MAX_ROUTERS as usize);
        assert!(a.contains(&"02:56:50:4e:4f:01".to_string()), "the VIP");
        assert!(a.contains(&"02:56:50:52:00:00".to_string()), "router 0");
        assert!(a.contains(&"02:56:50:52:00:07".to_string()), "router 7");
    }

    #[test]
    fn every_batch_fits_the_schema() {
        schema_ok(&ruleset(&allowed()));
        schema_ok(&teardown());
        schema_ok(&admit(&client()));
        schema_ok(&admit(&Port::Member { link: "r".into() }));
    }

    #[test]
    fn the_chain_is_replaced_in_place_and_ends_in_a_drop() {
        let batch = ruleset(&allowed());
        let cmds = batch["nftables"].as_array().unwrap();
        assert!(
            cmds.iter().all(|c| c.get("delete").is_none()),
            "the table (and with it the plugin's elements) is never deleted"
        );
        let flush = cmds.iter().position(|c| c.get("flush").is_some()).unwrap();
        let first_rule = cmds
            .iter()
            .position(|c| c["add"].get("rule").is_some())
            .unwrap();
        assert!(flush < first_rule);
        let rules: Vec<&Value> = cmds
            .iter()
            .filter(|c| c["add"].get("rule").is_some())
            .collect();
        assert_eq!(rules.len(), 5);
        // Only client ports are filtered.
        assert_eq!(
            rules[0]["add"]["rule"]["expr"][0]["match"]["right"],
            "@client_ports"
        );
        let last = &rules[4]["add"]["rule"];
        assert_eq!(last["expr"][1], json!({"drop": null}));
        assert!(
            last["comment"]
                .as_str()
                .unwrap()
                .starts_with(FINGERPRINT_PREFIX)
        );
        // IPv4 from a client goes only to the VIP MAC or a router.
        let ip_dst = &rules[1]["add"]["rule"]["expr"];
        assert_eq!(ip_dst[1]["match"]["op"], "!=");
        assert_eq!(ip_dst[1]["match"]["right"]["set"], json!(allowed()));
        // ARP: Ethernet source and ARP sender both checked against the port's pair.
        let arp = &rules[3]["add"]["rule"]["expr"];
        assert_eq!(
            arp[1]["match"]["left"]["concat"][2]["payload"]["field"],
            "saddr ip"
        );
        assert_eq!(
            arp[2]["match"]["left"]["concat"][1]["payload"]["field"],
            "saddr ether"
        );
    }

    #[test]
    fn a_listing_with_the_fingerprint_and_all_rules_is_current() {
        let listed = |rules: Vec<Value>| json!({"nftables": rules.into_iter().map(|r| json!({"rule": r["add"]["rule"]})).collect::<Vec<_>>()});
        let desired: Vec<Value> = ruleset(&allowed())["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["add"].get("rule").is_some())
            .cloned()
            .collect();
        assert!(is_current(&listed(desired.clone()), &allowed()));
        assert!(
            !is_current(&listed(desired[1..].to_vec()), &allowed()),
            "a rule missing"
        );
        assert!(
            !is_current(&listed(desired.clone()), &allowed()[1..]),
            "other allowed MACs: another chain"
        );
        let mut old = desired.clone();
        old[4]["add"]["rule"]["comment"] = json!("vpno-guard client drop 0000");
        assert!(!is_current(&listed(old), &allowed()));
        assert!(!is_current(&json!({}), &allowed()));
    }

    #[test]
    fn admit_registers_a_client_pair_and_nothing_for_members() {
        let batch = admit(&client());
        let cmds = batch["nftables"].as_array().unwrap();
        assert_eq!(
            cmds[0],
            json!({"add": {"table": {"family": "bridge", "name": "vpno_guard"}}})
        );
        assert_eq!(
            cmds[3]["add"]["element"]["elem"],
            json!([{"concat": ["vpno0123456789", "02:00:00:00:00:01", "192.168.24.70"]}])
        );
        assert_eq!(cmds[4]["add"]["element"]["name"], CLIENT_PORTS);
        let member = admit(&Port::Member { link: "g".into() });
        assert_eq!(member["nftables"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn forget_deletes_exactly_the_ports_elements() {
        let listed = json!({"nftables": [
            {"set": {"name": CLIENT_PORTS, "elem": ["vpnoa", "vpnob"]}},
            {"set": {"name": CLIENT_ADDRS, "elem": [
                {"concat": ["vpnoa", "02:00:00:00:00:0a", "192.168.24.70"]},
                {"concat": ["vpnob", "02:00:00:00:00:0b", "192.168.24.71"]}]}},
        ]});
        let batch = forget(&listed, "vpnoa").unwrap();
        schema_ok(&batch);
        let cmds = batch["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(
            cmds[0]["delete"]["element"]["elem"],
            json!([{"concat": ["vpnoa", "02:00:00:00:00:0a", "192.168.24.70"]}])
        );
        assert_eq!(cmds[1]["delete"]["element"]["elem"], json!(["vpnoa"]));
        assert_eq!(forget(&listed, "vpnoz"), None);
    }
}
