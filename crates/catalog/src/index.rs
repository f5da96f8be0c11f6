//! Inverted indexes over the catalog: for every filterable text field a map
//! from lower-cased value to the sorted list of server positions, and for
//! every flag the sorted list of servers that have it. A query intersects the
//! lists it needs, smallest first.

use std::collections::{BTreeMap, HashMap};

use crate::model::Server;

/// A text field servers can be filtered on (case-insensitive exact match).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TextField {
    /// gluetun provider name.
    Provider,
    /// Country.
    Country,
    /// Region.
    Region,
    /// City.
    City,
    /// Hostname.
    Hostname,
    /// `openvpn` or `wireguard`.
    Vpn,
}

impl TextField {
    /// Every text field, in query-parameter order.
    pub const ALL: [TextField; 6] = [
        TextField::Provider,
        TextField::Country,
        TextField::Region,
        TextField::City,
        TextField::Hostname,
        TextField::Vpn,
    ];

    /// The field's name as used in gluetun's files and in query parameters.
    pub fn name(self) -> &'static str {
        match self {
            TextField::Provider => "provider",
            TextField::Country => "country",
            TextField::Region => "region",
            TextField::City => "city",
            TextField::Hostname => "hostname",
            TextField::Vpn => "vpn",
        }
    }

    /// Parses a query-parameter name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    fn value(self, server: &Server) -> Option<&str> {
        match self {
            TextField::Provider => Some(&server.provider),
            TextField::Country => server.country.as_deref(),
            TextField::Region => server.region.as_deref(),
            TextField::City => server.city.as_deref(),
            TextField::Hostname => server.hostname.as_deref(),
            TextField::Vpn => Some(&server.vpn),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for TextField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A boolean property servers can be filtered on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flag {
    /// Port forwarding offered.
    PortForward,
    /// Provider-owned hardware.
    Owned,
    /// Free-account server.
    Free,
    /// Premium-only server.
    Premium,
    /// Streaming server.
    Stream,
    /// Secure Core server.
    SecureCore,
    /// Tor server.
    Tor,
}

impl Flag {
    /// Every flag, in query-parameter order.
    pub const ALL: [Flag; 7] = [
        Flag::PortForward,
        Flag::Owned,
        Flag::Free,
        Flag::Premium,
        Flag::Stream,
        Flag::SecureCore,
        Flag::Tor,
    ];

    /// The flag's name as used in gluetun's files and in query parameters.
    pub fn name(self) -> &'static str {
        match self {
            Flag::PortForward => "port_forward",
            Flag::Owned => "owned",
            Flag::Free => "free",
            Flag::Premium => "premium",
            Flag::Stream => "stream",
            Flag::SecureCore => "secure_core",
            Flag::Tor => "tor",
        }
    }

    /// Parses a query-parameter name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether `server` has this flag.
    pub fn of(self, server: &Server) -> bool {
        match self {
            Flag::PortForward => server.port_forward,
            Flag::Owned => server.owned,
            Flag::Free => server.free,
            Flag::Premium => server.premium,
            Flag::Stream => server.stream,
            Flag::SecureCore => server.secure_core,
            Flag::Tor => server.tor,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which servers a query wants. Within one text field the values are
/// alternatives (any matches); different fields and flags must all match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFilter {
    /// Accepted values per text field; a field absent here is not filtered.
    pub text: BTreeMap<TextField, Vec<String>>,
    /// Required value per flag; a flag absent here is not filtered.
    pub flags: BTreeMap<Flag, bool>,
}

impl ServerFilter {
    /// Adds an accepted value for `field`.
    pub fn with(mut self, field: TextField, value: impl Into<String>) -> Self {
        self.text.entry(field).or_default().push(value.into());
        self
    }

    /// Requires `flag` to be `value`.
    pub fn with_flag(mut self, flag: Flag, value: bool) -> Self {
        self.flags.insert(flag, value);
        self
    }

    /// Whether the filter matches every server.
    pub fn is_empty(&self) -> bool {
        self.text.values().all(Vec::is_empty) && self.flags.is_empty()
    }

    /// Whether `server` passes the filter (the slow reference path, used to
    /// check the index).
    pub fn matches(&self, server: &Server) -> bool {
        let text_ok = self.text.iter().all(|(field, values)| {
            values.is_empty()
                || field
                    .value(server)
                    .is_some_and(|v| values.iter().any(|want| eq_ignore_case(v, want)))
        });
        text_ok
            && self
                .flags
                .iter()
                .all(|(flag, want)| flag.of(server) == *want)
    }
}

/// A filter named a value no server has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {field} {value:?}")]
pub struct UnknownValue {
    /// The text field.
    pub field: TextField,
    /// The value as given.
    pub value: String,
    /// Every value the field has in the catalog, sorted (original spelling).
    pub valid: Vec<String>,
}

/// Postings of one text field.
#[derive(Debug, Clone, Default)]
struct FieldPostings {
    /// Lower-cased value → sorted server positions.
    by_key: HashMap<String, Vec<u32>>,
    /// Lower-cased value → spelling as first seen; sorted by key.
    display: BTreeMap<String, String>,
}

/// The indexes of one catalog.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerIndex {
    fields: Vec<FieldPostings>,
    flags: Vec<Vec<u32>>,
    len: u32,
}

/// Case-insensitive equality of trimmed values, without allocating.
fn eq_ignore_case(a: &str, b: &str) -> bool {
    a.trim()
        .chars()
        .flat_map(char::to_lowercase)
        .eq(b.trim().chars().flat_map(char::to_lowercase))
}

pub(crate) fn key_of(value: &str) -> String {
    value.trim().to_lowercase()
}

impl ServerIndex {
    pub(crate) fn build(servers: &[Server]) -> Self {
        let mut fields = vec![FieldPostings::default(); TextField::ALL.len()];
        let mut flags = vec![Vec::new(); Flag::ALL.len()];
        for (pos, server) in servers.iter().enumerate() {
            let pos = pos as u32;
            for field in TextField::ALL {
                if let Some(value) = field.value(server) {
                    let key = key_of(value);
                    let postings = &mut fields[field.index()];
                    postings
                        .display
                        .entry(key.clone())
                        .or_insert_with(|| value.trim().to_owned());
                    postings.by_key.entry(key).or_default().push(pos);
                }
            }
            for flag in Flag::ALL {
                if flag.of(server) {
                    flags[flag.index()].push(pos);
                }
            }
        }
        ServerIndex {
            fields,
            flags,
            len: servers.len() as u32,
        }
    }

    /// Every distinct value of `field`, sorted case-insensitively.
    pub(crate) fn values(&self, field: TextField) -> Vec<String> {
        self.fields[field.index()]
            .display
            .values()
            .cloned()
            .collect()
    }

    /// Whether some server has `value` in `field`.
    pub(crate) fn has_value(&self, field: TextField, value: &str) -> bool {
        self.fields[field.index()]
            .by_key
            .contains_key(&key_of(value))
    }

    /// Positions of the servers matching `filter`, ascending.
    pub(crate) fn query(&self, filter: &ServerFilter) -> Result<Vec<u32>, UnknownValue> {
        let mut include: Vec<std::borrow::Cow<'_, [u32]>> = Vec::new();
        for (field, values) in &filter.text {
            if values.is_empty() {
                continue;
            }
            let postings = &self.fields[field.index()];
            let mut lists = Vec::with_capacity(values.len());
            for value in values {
                match postings.by_key.get(&key_of(value)) {
                    Some(list) => lists.push(list.as_slice()),
                    None => {
                        return Err(UnknownValue {
                            field: *field,
                            value: value.clone(),
                            valid: postings.display.values().cloned().collect(),
                        });
                    }
                }
            }
            include.push(if lists.len() == 1 {
                lists[0].into()
            } else {
                union(&lists).into()
            });
        }
        let mut exclude: Vec<&[u32]> = Vec::new();
        for (flag, want) in &filter.flags {
            let list = self.flags[flag.index()].as_slice();
            if *want {
                include.push(list.into());
            } else {
                exclude.push(list);
            }
        }
        include.sort_by_key(|l| l.len());
        let mut result: Vec<u32> = match include.split_first() {
            None => (0..self.len).collect(),
            Some((first, rest)) => {
                let mut acc = first.to_vec();
                for list in rest {
                    acc = intersect(&acc, list);
                    if acc.is_empty() {
                        break;
                    }
                }
                acc
            }
        };
        for list in exclude {
            if !list.is_empty() {
                result.retain(|pos| list.binary_search(pos).is_err());
            }
        }
        Ok(result)
    }
}

/// Sorted union of sorted lists.
fn union(lists: &[&[u32]]) -> Vec<u32> {
    let mut out: Vec<u32> = lists.iter().flat_map(|l| l.iter().copied()).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Intersection of two sorted lists; gallops through the longer one.
fn intersect(small: &[u32], large: &[u32]) -> Vec<u32> {
    let (small, large) = if small.len() <= large.len() {
        (small, large)
    } else {
        (large, small)
    };
    let mut out = Vec::with_capacity(small.len());
    let mut rest = large;
    for &x in small {
        match rest.binary_search(&x) {
            Ok(i) => {
                out.push(x);
                rest = &rest[i + 1..];
            }
            Err(i) => rest = &rest[i..],
        }
        if rest.is_empty() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersect_and_union_of_sorted_lists() {
        assert_eq!(intersect(&[1, 3, 5, 7], &[0, 3, 4, 7, 9]), vec![3, 7]);
        assert_eq!(intersect(&[], &[1, 2]), Vec::<u32>::new());
        assert_eq!(intersect(&[2, 4, 6, 8, 10, 12], &[12]), vec![12]);
        assert_eq!(union(&[&[1, 4], &[2, 4, 9], &[]]), vec![1, 2, 4, 9]);
        assert!(eq_ignore_case(" São Paulo", "SÃO PAULO "));
        assert!(!eq_ignore_case("Oslo", "Osl"));
    }
}
