//! IPv4 prefix sets: the minimal list of prefixes covering exactly "the
//! universe minus some excludes", and small helpers over prefixes.
//!
//! `ipnet` aggregates prefixes but has no set difference; the difference is
//! done here on address ranges (a gap between merged excludes becomes the
//! fewest aligned blocks that tile it).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Inclusive address range `[start, end]` as integers (u64 so that `end + 1` never overflows).
type Range = (u64, u64);

fn range_of(net: &Ipv4Net) -> Range {
    (
        u64::from(u32::from(net.network())),
        u64::from(u32::from(net.broadcast())),
    )
}

/// Whether `outer` contains every address of `inner`.
pub fn covers(outer: &Ipv4Net, inner: &Ipv4Net) -> bool {
    outer.contains(inner)
}

/// Whether the two prefixes share at least one address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(b) || b.contains(a)
}

/// The fewest prefixes that tile `[start, end]` exactly (greedy: at each
/// point the largest aligned block that still fits; optimal for one range).
fn tile(mut start: u64, end: u64, out: &mut Vec<Ipv4Net>) {
    while start <= end {
        let align = if start == 0 {
            32
        } else {
            start.trailing_zeros().min(32)
        };
        let mut size_log = align;
        while start + (1u64 << size_log) - 1 > end {
            size_log -= 1;
        }
        let prefix = 32 - size_log as u8;
        // start < 2^32 here, and prefix is in 0..=32: both conversions hold.
        let net = Ipv4Net::new(Ipv4Addr::from(start as u32), prefix).expect("prefix <= 32");
        out.push(net);
        start += 1u64 << size_log;
    }
}

/// The minimal list of prefixes covering exactly the addresses of
/// `universe` that are in none of `excludes`, in ascending address order.
///
/// Minimal: the result has no two prefixes that could merge, and no
/// prefix spans an excluded address, so no shorter list covers the same set.
pub fn difference(universe: &Ipv4Net, excludes: &[Ipv4Net]) -> Vec<Ipv4Net> {
    let (lo, hi) = range_of(universe);
    let mut merged: Vec<Range> = Ipv4Net::aggregate(&excludes.to_vec())
        .iter()
        .map(range_of)
        .filter(|(s, e)| *e >= lo && *s <= hi)
        .map(|(s, e)| (s.max(lo), e.min(hi)))
        .collect();
    merged.sort_unstable();
    let mut out = Vec::new();
    let mut next = lo;
    for (s, e) in merged {
        if s > next {
            tile(next, s - 1, &mut out);
        }
        next = next.max(e + 1);
    }
    if next <= hi {
        tile(next, hi, &mut out);
    }
    out
}

/// `0.0.0.0/0` minus `excludes`.
pub fn complement(excludes: &[Ipv4Net]) -> Vec<Ipv4Net> {
    difference(&Ipv4Net::default(), excludes)
}

/// Number of addresses in a prefix (2^32 for `/0`).
pub fn size(net: &Ipv4Net) -> u64 {
    1u64 << (32 - net.prefix_len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn contains_addr(nets: &[Ipv4Net], a: Ipv4Addr) -> bool {
        nets.iter().any(|n| n.contains(&a))
    }

    /// Deterministic xorshift so the "random" cases are the same on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn net(&mut self) -> Ipv4Net {
            let prefix = (self.next() % 33) as u8;
            Ipv4Net::new(Ipv4Addr::from(self.next() as u32), prefix)
                .unwrap()
                .trunc()
        }
    }

    /// Checks the result covers exactly the complement and is minimal.
    fn check_exact(universe: &Ipv4Net, excludes: &[Ipv4Net], result: &[Ipv4Net], rng: &mut Rng) {
        for r in result {
            assert!(covers(universe, r), "{r} outside {universe}");
            for e in excludes {
                assert!(!overlaps(r, e), "{r} overlaps exclude {e}");
            }
        }
        for w in result.windows(2) {
            assert!(
                w[0].broadcast() < w[1].network(),
                "not sorted/disjoint: {w:?}"
            );
        }
        // Sizes add up: result ∪ (excludes ∩ universe) is all of the universe.
        let inside: Vec<Ipv4Net> = excludes
            .iter()
            .flat_map(|e| {
                if covers(universe, e) {
                    vec![*e]
                } else if covers(e, universe) {
                    vec![*universe]
                } else {
                    vec![]
                }
            })
            .collect();
        let excluded: u64 = Ipv4Net::aggregate(&inside).iter().map(size).sum();
        let covered: u64 = result.iter().map(size).sum();
        assert_eq!(
            covered + excluded,
            size(universe),
            "{excludes:?} -> {result:?}"
        );
        // No two results could be merged into one prefix.
        assert_eq!(Ipv4Net::aggregate(&result.to_vec()).len(), result.len());
        // Sampled addresses: in the result iff in no exclude.
        for _ in 0..200 {
            let span = size(universe);
            let a = Ipv4Addr::from(
                (u64::from(u32::from(universe.network())) + rng.next() % span) as u32,
            );
            assert_eq!(contains_addr(result, a), !contains_addr(excludes, a), "{a}");
        }
        for e in excludes {
            for a in [e.network(), e.broadcast()] {
                assert!(!contains_addr(result, a));
            }
        }
    }

    #[test]
    fn nothing_excluded_is_the_universe() {
        assert_eq!(complement(&[]), vec![n("0.0.0.0/0")]);
    }

    #[test]
    fn everything_excluded_is_empty() {
        assert!(complement(&[n("0.0.0.0/0")]).is_empty());
        assert!(complement(&[n("0.0.0.0/1"), n("128.0.0.0/1")]).is_empty());
    }

    #[test]
    fn rfc1918_complement_is_the_known_list() {
        let got = complement(&[n("10.0.0.0/8"), n("172.16.0.0/12"), n("192.168.0.0/16")]);
        let expected: Vec<Ipv4Net> = [
            "0.0.0.0/5",
            "8.0.0.0/7",
            "11.0.0.0/8",
            "12.0.0.0/6",
            "16.0.0.0/4",
            "32.0.0.0/3",
            "64.0.0.0/2",
            "128.0.0.0/3",
            "160.0.0.0/5",
            "168.0.0.0/6",
            "172.0.0.0/12",
            "172.32.0.0/11",
            "172.64.0.0/10",
            "172.128.0.0/9",
            "173.0.0.0/8",
            "174.0.0.0/7",
            "176.0.0.0/4",
            "192.0.0.0/9",
            "192.128.0.0/11",
            "192.160.0.0/13",
            "192.169.0.0/16",
            "192.170.0.0/15",
            "192.172.0.0/14",
            "192.176.0.0/12",
            "192.192.0.0/10",
            "193.0.0.0/8",
            "194.0.0.0/7",
            "196.0.0.0/6",
            "200.0.0.0/5",
            "208.0.0.0/4",
            "224.0.0.0/3",
        ]
        .iter()
        .map(|s| n(s))
        .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn one_host_excluded_takes_32_prefixes() {
        let got = complement(&[n("198.51.100.1/32")]);
        assert_eq!(got.len(), 32);
        check_exact(
            &Ipv4Net::default(),
            &[n("198.51.100.1/32")],
            &got,
            &mut Rng(7),
        );
    }

    #[test]
    fn edges_of_the_address_space() {
        let ex = [n("0.0.0.0/32"), n("255.255.255.255/32")];
        let got = complement(&ex);
        check_exact(&Ipv4Net::default(), &ex, &got, &mut Rng(3));
        assert_eq!(got.first().unwrap().network(), Ipv4Addr::new(0, 0, 0, 1));
        assert_eq!(
            got.last().unwrap().broadcast(),
            Ipv4Addr::new(255, 255, 255, 254)
        );
    }

    #[test]
    fn overlapping_and_nested_excludes_merge() {
        let ex = [
            n("10.0.0.0/8"),
            n("10.1.0.0/16"),
            n("10.0.0.0/9"),
            n("11.0.0.0/8"),
        ];
        let got = complement(&ex);
        check_exact(&Ipv4Net::default(), &ex, &got, &mut Rng(11));
        assert!(got.contains(&n("12.0.0.0/6")));
    }

    #[test]
    fn difference_inside_a_smaller_universe() {
        let u = n("192.168.24.0/22");
        let ex = [
            n("192.168.25.0/24"),
            n("10.0.0.0/8"),
            n("0.0.0.0/0").trunc(),
        ];
        assert!(
            difference(&u, &ex).is_empty(),
            "a /0 exclude swallows the universe"
        );
        let ex = [n("192.168.25.0/24"), n("10.0.0.0/8")];
        let got = difference(&u, &ex);
        assert_eq!(got, vec![n("192.168.24.0/24"), n("192.168.26.0/23")]);
        check_exact(&u, &ex, &got, &mut Rng(5));
    }

    /// Property-like: 500 random exclude sets of 0..12 prefixes each.
    #[test]
    fn random_exclude_sets_are_covered_exactly_and_minimally() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..500 {
            let count = (rng.next() % 12) as usize;
            let mut ex: Vec<Ipv4Net> = (0..count).map(|_| rng.net()).collect();
            // Mostly realistic sizes: re-draw /0../3 most of the time.
            for e in &mut ex {
                if e.prefix_len() < 4 && !rng.next().is_multiple_of(4) {
                    *e = Ipv4Net::new(e.network(), 8 + (rng.next() % 25) as u8)
                        .unwrap()
                        .trunc();
                }
            }
            let got = complement(&ex);
            check_exact(&Ipv4Net::default(), &ex, &got, &mut rng);
        }
    }

    #[test]
    fn random_sets_inside_random_universes() {
        let mut rng = Rng(42);
        for _ in 0..300 {
            let u = Ipv4Net::new(
                Ipv4Addr::from(rng.next() as u32),
                8 + (rng.next() % 17) as u8,
            )
            .unwrap()
            .trunc();
            let ex: Vec<Ipv4Net> = (0..(rng.next() % 6))
                .map(|_| {
                    let inside = u64::from(u32::from(u.network())) + rng.next() % size(&u);
                    Ipv4Net::new(
                        Ipv4Addr::from(inside as u32),
                        u.prefix_len() + (rng.next() % 8) as u8,
                    )
                    .unwrap()
                    .trunc()
                })
                .collect();
            check_exact(&u, &ex, &difference(&u, &ex), &mut rng);
        }
    }
}
