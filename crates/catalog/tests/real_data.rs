//! gluetun's real 2023 server list (`../shared/data`, present in CI): loads
//! completely and answers queries exactly like a scan of the raw JSON.

use std::path::PathBuf;

use vpno_catalog::{Catalog, Flag, ServerFilter, TextField};

const FILE: &str = "gluetun-servers-2023-04-20.json.xz";

fn shared_data() -> Option<PathBuf> {
    let dir = match std::env::var_os("VPNO_SHARED_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    };
    if dir.join(FILE).is_file() {
        return Some(dir);
    }
    let why = format!(
        "SKIPPED: {} not found (set VPNO_SHARED_DATA)",
        dir.join(FILE).display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; the shared data is part of CI");
    }
    eprintln!("{why}");
    None
}

/// Counts servers in the raw JSON matching `pred(provider, server)`.
fn scan(raw: &serde_json::Value, pred: impl Fn(&str, &serde_json::Value) -> bool) -> usize {
    raw.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "version")
        .map(|(name, block)| {
            block["servers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| pred(name, s))
                .count()
        })
        .sum()
}

fn str_eq(s: &serde_json::Value, field: &str, want: &str) -> bool {
    s[field]
        .as_str()
        .is_some_and(|v| v.to_lowercase() == want.to_lowercase())
}

#[test]
fn real_catalog_loads_and_answers_like_a_raw_scan() {
    let Some(dir) = shared_data() else { return };
    // The directory itself is a valid --catalog (its only *.json.xz file).
    let catalog = Catalog::load(&dir).unwrap();
    let text = vpno_catalog::read_to_string(&dir.join(FILE)).unwrap();
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();

    let total = scan(&raw, |_, _| true);
    let providers = raw.as_object().unwrap().len() - 1;
    assert_eq!(catalog.servers().len(), total);
    assert_eq!(catalog.providers().len(), providers);
    // What the data's README promises.
    assert_eq!(total, 13_056);
    assert_eq!(providers, 23);
    for p in catalog.providers() {
        assert_eq!(
            p.servers,
            raw[&p.name]["servers"].as_array().unwrap().len(),
            "{}",
            p.name
        );
    }

    type Pred = Box<dyn Fn(&str, &serde_json::Value) -> bool>;
    let cases: Vec<(ServerFilter, Pred)> = vec![
        (
            ServerFilter::default().with(TextField::Country, "sweden"),
            Box::new(|_, s| str_eq(s, "country", "Sweden")),
        ),
        (
            ServerFilter::default()
                .with(TextField::Provider, "mullvad")
                .with(TextField::Vpn, "wireguard"),
            Box::new(|p, s| p == "mullvad" && s["vpn"] == "wireguard"),
        ),
        (
            ServerFilter::default()
                .with(TextField::Provider, "private internet access")
                .with_flag(Flag::PortForward, true),
            Box::new(|p, s| p == "private internet access" && s["port_forward"] == true),
        ),
        (
            ServerFilter::default()
                .with(TextField::Provider, "mullvad")
                .with_flag(Flag::Owned, false),
            Box::new(|p, s| p == "mullvad" && s["owned"] != true),
        ),
        (
            ServerFilter::default()
                .with(TextField::City, "new york")
                .with(TextField::City, "Amsterdam"),
            Box::new(|_, s| str_eq(s, "city", "new york") || str_eq(s, "city", "amsterdam")),
        ),
        (
            ServerFilter::default()
                .with(TextField::Country, "germany")
                .with(TextField::Vpn, "openvpn")
                .with_flag(Flag::Free, false),
            Box::new(|_, s| {
                str_eq(s, "country", "germany")
                    && s["vpn"].as_str().unwrap_or("openvpn") == "openvpn"
                    && s["free"] != true
            }),
        ),
        (
            ServerFilter::default().with_flag(Flag::Premium, true),
            Box::new(|_, s| s["premium"] == true),
        ),
        (
            ServerFilter::default().with_flag(Flag::Stream, true),
            Box::new(|_, s| s["stream"] == true),
        ),
        (
            ServerFilter::default().with(TextField::Region, "europe"),
            Box::new(|_, s| str_eq(s, "region", "europe")),
        ),
        (
            ServerFilter::default().with(TextField::Hostname, "AT.VPN.AIRDNS.ORG"),
            Box::new(|_, s| str_eq(s, "hostname", "at.vpn.airdns.org")),
        ),
    ];
    for (filter, pred) in &cases {
        let want = scan(&raw, pred);
        assert!(
            want > 0,
            "{filter:?} should select something in the real data"
        );
        assert_eq!(catalog.count(filter).unwrap(), want, "{filter:?}");
        let page = catalog.query(filter, 0, 5).unwrap();
        assert_eq!(page.total, want);
        assert!(page.servers.iter().all(|s| filter.matches(s)));
    }

    // The location tree adds up to the whole catalog.
    let tree = catalog.locations(&ServerFilter::default()).unwrap();
    let sum: usize = tree
        .values()
        .flat_map(|c| c.values())
        .flat_map(|c| c.values())
        .sum();
    assert_eq!(sum, total);
    assert_eq!(tree.len(), providers);
}
