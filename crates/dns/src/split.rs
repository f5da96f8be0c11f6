//! The split decision: which names go to the cluster DNS and which to the upstreams.
//!
//! A name belongs to the cluster when it is one of the cluster zones or below one:
//! the cluster domain (`cluster.local`) and the reverse zones of the pod and service
//! ranges, so `PTR` look-ups of cluster addresses never leave the cluster either.

use hickory_proto::rr::Name;
use ipnet::IpNet;

/// Where a query is forwarded; also the `zone` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// The cluster DNS (CoreDNS/kube-dns).
    Cluster,
    /// The configured upstream resolvers (through the VPN).
    Upstream,
}

impl Route {
    /// The metrics label value.
    pub fn label(self) -> &'static str {
        match self {
            Route::Cluster => "cluster",
            Route::Upstream => "upstream",
        }
    }
}

/// The zones answered by the cluster DNS.
#[derive(Debug, Clone, Default)]
pub struct ClusterZones(Vec<Name>);

/// More reverse zones than this for one range is a configuration mistake (a /1).
const MAX_REVERSE_ZONES_PER_RANGE: u32 = 256;

/// A cluster zone that cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ZoneError {
    /// The cluster domain is not a DNS name.
    #[error("invalid cluster domain {0:?}")]
    Domain(String),
    /// The range would need too many reverse zones.
    #[error(
        "range {0} is too wide for reverse zones (at most {MAX_REVERSE_ZONES_PER_RANGE} per range)"
    )]
    TooWide(IpNet),
}

impl ClusterZones {
    /// The cluster domain plus the reverse zones covering `ranges`.
    pub fn new(domain: &str, ranges: &[IpNet]) -> Result<Self, ZoneError> {
        let mut domain_name =
            Name::from_ascii(domain).map_err(|_| ZoneError::Domain(domain.to_owned()))?;
        if domain.is_empty() || domain_name.is_root() {
            return Err(ZoneError::Domain(domain.to_owned()));
        }
        domain_name.set_fqdn(true);
        let mut zones = vec![domain_name];
        for range in ranges {
            zones.extend(reverse_zones(*range)?);
        }
        Ok(ClusterZones(zones))
    }

    /// The zones, cluster domain first.
    pub fn zones(&self) -> &[Name] {
        &self.0
    }

    /// Where a query for `name` goes.
    pub fn route(&self, name: &Name) -> Route {
        if self.0.iter().any(|zone| zone.zone_of(name)) {
            Route::Cluster
        } else {
            Route::Upstream
        }
    }
}

/// The reverse zones (`in-addr.arpa` per octet, `ip6.arpa` per nibble) that together
/// cover `range` exactly or slightly more: the prefix is rounded up to the label boundary
/// and every zone in between listed (`10.96.0.0/12` gives `96.10.in-addr.arpa.` ..
/// `111.10.in-addr.arpa.`).
pub fn reverse_zones(range: IpNet) -> Result<Vec<Name>, ZoneError> {
    let range = range.trunc();
    let (label_bits, total_bits) = match range {
        IpNet::V4(_) => (8, 32),
        IpNet::V6(_) => (4, 128),
    };
    let prefix = u32::from(range.prefix_len());
    let rounded = prefix.div_ceil(label_bits) * label_bits;
    let extra = rounded - prefix;
    if 1u32 << extra > MAX_REVERSE_ZONES_PER_RANGE || rounded == 0 {
        return Err(ZoneError::TooWide(range));
    }
    let base = addr_bits(range);
    let shift = total_bits - rounded;
    let count = 1u128 << extra;
    Ok((0..count)
        .map(|i| reverse_name(base | (i << shift), rounded / label_bits, range))
        .collect())
}

fn addr_bits(range: IpNet) -> u128 {
    match range {
        IpNet::V4(n) => u128::from(u32::from(n.network())),
        IpNet::V6(n) => u128::from(n.network()),
    }
}

/// The reverse name of the first `labels` octets (IPv4) or nibbles (IPv6) of `bits`.
fn reverse_name(bits: u128, labels: u32, range: IpNet) -> Name {
    let (label_bits, total_bits, suffix) = match range {
        IpNet::V4(_) => (8, 32, "in-addr.arpa."),
        IpNet::V6(_) => (4, 128, "ip6.arpa."),
    };
    let mask = (1u128 << label_bits) - 1;
    let mut text = String::new();
    for i in (0..labels).rev() {
        let value = (bits >> (total_bits - label_bits * (i + 1))) & mask;
        match range {
            IpNet::V4(_) => text.push_str(&format!("{value}.")),
            IpNet::V6(_) => text.push_str(&format!("{value:x}.")),
        }
    }
    text.push_str(suffix);
    Name::from_ascii(&text).expect("reverse zone labels are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn zones(ranges: &[&str]) -> ClusterZones {
        let ranges: Vec<IpNet> = ranges.iter().map(|r| r.parse().unwrap()).collect();
        ClusterZones::new("cluster.local", &ranges).unwrap()
    }

    #[test]
    fn cluster_domain_and_below_go_to_the_cluster() {
        let z = zones(&[]);
        for n in [
            "cluster.local.",
            "kubernetes.default.svc.cluster.local.",
            "KUBE-DNS.kube-system.SVC.Cluster.Local",
            "a.b.c.cluster.local",
        ] {
            assert_eq!(z.route(&name(n)), Route::Cluster, "{n}");
        }
    }

    #[test]
    fn everything_else_goes_upstream() {
        let z = zones(&["10.96.0.0/12"]);
        for n in [
            "example.com.",
            "local.",
            "cluster.local.example.com.",
            "notcluster.local.",
            "svc.",
            ".",
            "1.1.1.1.in-addr.arpa.",
        ] {
            assert_eq!(z.route(&name(n)), Route::Upstream, "{n}");
        }
    }

    #[test]
    fn octet_aligned_ranges_give_one_reverse_zone() {
        let got = reverse_zones("10.244.0.0/16".parse().unwrap()).unwrap();
        assert_eq!(got, vec![name("244.10.in-addr.arpa.")]);
        let got = reverse_zones("192.0.2.0/24".parse().unwrap()).unwrap();
        assert_eq!(got, vec![name("2.0.192.in-addr.arpa.")]);
    }

    #[test]
    fn unaligned_ranges_list_every_zone_in_between() {
        let got = reverse_zones("10.96.0.0/12".parse().unwrap()).unwrap();
        assert_eq!(got.len(), 16);
        assert_eq!(got[0], name("96.10.in-addr.arpa."));
        assert_eq!(got[15], name("111.10.in-addr.arpa."));
        // Host bits in the range are ignored.
        assert_eq!(reverse_zones("10.97.1.1/12".parse().unwrap()).unwrap(), got);
    }

    #[test]
    fn ipv6_ranges_use_nibbles() {
        let got = reverse_zones("fd00:10:96::/64".parse().unwrap()).unwrap();
        assert_eq!(got, vec![name("0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.")]);
        assert_eq!(
            reverse_zones("fd00::/62".parse().unwrap()).unwrap().len(),
            4
        );
    }

    #[test]
    fn reverse_names_of_the_ranges_go_to_the_cluster_others_upstream() {
        let z = zones(&["10.96.0.0/12", "10.244.0.0/16"]);
        assert_eq!(z.route(&name("10.0.96.10.in-addr.arpa.")), Route::Cluster);
        assert_eq!(z.route(&name("5.3.244.10.in-addr.arpa.")), Route::Cluster);
        assert_eq!(z.route(&name("1.0.112.10.in-addr.arpa.")), Route::Upstream);
        assert_eq!(z.route(&name("8.8.8.8.in-addr.arpa.")), Route::Upstream);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(
            reverse_zones("0.0.0.0/0".parse().unwrap()),
            Err(ZoneError::TooWide("0.0.0.0/0".parse().unwrap()))
        );
        assert_eq!(
            reverse_zones("10.0.0.0/1".parse().unwrap()).unwrap().len(),
            128
        );
        assert!(ClusterZones::new("", &[]).is_err());
        assert!(ClusterZones::new(".", &[]).is_err());
        assert!(ClusterZones::new("bad..name", &[]).is_err());
    }
}
