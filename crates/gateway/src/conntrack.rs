//! Active forwarded flows, read from the kernel's connection tracking table
//! (`/proc/thread-self/net/nf_conntrack`: the calling thread's namespace).

use std::collections::BTreeMap;

use ipnet::IpNet;

/// Number of tracked flows whose original source is in the gateway
/// network, by protocol (`tcp`, `udp`, `icmp`, `other`). TCP flows in
/// closing states (`TIME_WAIT`, `CLOSE`) are not counted as active.
pub fn count_flows(table: &str, gateway_network: &IpNet) -> BTreeMap<&'static str, u64> {
    let mut counts = BTreeMap::from([("tcp", 0), ("udp", 0), ("icmp", 0), ("other", 0)]);
    for line in table.lines() {
        let mut fields = line.split_whitespace();
        let _l3 = fields.next();
        let _l3num = fields.next();
        let protocol = match fields.next() {
            Some("tcp") => "tcp",
            Some("udp") => "udp",
            Some("icmp") | Some("icmpv6") => "icmp",
            Some(_) => "other",
            None => continue,
        };
        if protocol == "tcp" && (line.contains(" TIME_WAIT ") || line.contains(" CLOSE ")) {
            continue;
        }
        let source = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("src="))
            .and_then(|s| s.parse::<std::net::IpAddr>().ok());
        if source.is_some_and(|ip| gateway_network.contains(&ip)) {
            *counts.entry(protocol).or_default() += 1;
        }
    }
    counts
}

/// Reads the calling thread's conntrack table; empty when unavailable.
pub fn read_table() -> String {
    std::fs::read_to_string("/proc/thread-self/net/nf_conntrack").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_gateway_network_flows_by_protocol() {
        let table = "\
ipv4     2 tcp      6 431999 ESTABLISHED src=10.77.0.100 dst=203.0.113.10 sport=40000 dport=80 src=203.0.113.10 dst=10.64.0.2 sport=80 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 100 TIME_WAIT src=10.77.0.100 dst=203.0.113.10 sport=40001 dport=80 src=203.0.113.10 dst=10.64.0.2 sport=80 dport=40001 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 29 src=10.77.0.101 dst=203.0.113.10 sport=5000 dport=53 [UNREPLIED] src=203.0.113.10 dst=10.64.0.2 sport=53 dport=5000 mark=0 zone=0 use=2
ipv4     2 icmp     1 29 src=10.77.0.100 dst=203.0.113.10 type=8 code=0 id=1 src=203.0.113.10 dst=10.64.0.2 type=0 code=0 id=1 mark=0 zone=0 use=2
ipv4     2 udp      17 170 src=198.51.100.2 dst=198.51.100.1 sport=41000 dport=51820 src=198.51.100.1 dst=198.51.100.2 sport=51820 dport=41000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 gre      47 170 src=10.77.0.9 dst=203.0.113.10 srckey=0x0 dstkey=0x0 src=203.0.113.10 dst=10.77.0.9 mark=0 use=2
";
        let counts = count_flows(table, &"10.77.0.0/24".parse().unwrap());
        assert_eq!(counts["tcp"], 1);
        assert_eq!(counts["udp"], 1);
        assert_eq!(counts["icmp"], 1);
        assert_eq!(counts["other"], 1);
        assert_eq!(count_flows("", &"10.77.0.0/24".parse().unwrap())["tcp"], 0);
    }
}
