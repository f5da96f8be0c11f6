//! The synthetic catalog shipped in `testdata/` reads the same in every layout,
//! and the index answers like a brute-force scan of the raw JSON.

use std::path::{Path, PathBuf};

use vpno_catalog::{Catalog, CatalogError, Flag, Layout, ServerFilter, TextField};

fn testdata(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(dir)
}

#[test]
fn every_layout_loads_the_same_servers() {
    let single = Catalog::load(&testdata("single-file")).unwrap();
    let xz = Catalog::load(&testdata("single-file-xz")).unwrap();
    let manifest = Catalog::load(&testdata("manifest")).unwrap();
    assert_eq!(single.layout(), Layout::SingleFile);
    assert_eq!(xz.layout(), Layout::SingleFile);
    assert_eq!(manifest.layout(), Layout::Manifest);
    assert_eq!(single.servers(), xz.servers());
    assert_eq!(single.servers(), manifest.servers());
    assert_eq!(single.providers(), manifest.providers());
    // The file itself works as well as its directory.
    let file = Catalog::load(&testdata("manifest").join("manifest.json")).unwrap();
    assert_eq!(file.servers(), manifest.servers());

    // Cross-check against the raw JSON: every provider, every server, in order.
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(testdata("single-file").join("servers.json")).unwrap(),
    )
    .unwrap();
    let mut expected_total = 0;
    for summary in single.providers() {
        let servers = raw[&summary.name]["servers"].as_array().unwrap();
        assert_eq!(summary.servers, servers.len(), "{}", summary.name);
        assert_eq!(
            summary.version as u64,
            raw[&summary.name]["version"].as_u64().unwrap()
        );
        expected_total += servers.len();
    }
    assert_eq!(single.servers().len(), expected_total);
    assert_eq!(single.providers().len(), raw.as_object().unwrap().len() - 1);
}

#[test]
fn absent_fields_take_gluetun_defaults() {
    let c = Catalog::load(&testdata("single-file")).unwrap();
    let no_vpn = c
        .servers()
        .iter()
        .find(|s| s.provider == "privatevpn" && s.hostname.is_none())
        .unwrap();
    assert_eq!(no_vpn.vpn, "openvpn");
    assert!(!no_vpn.port_forward && !no_vpn.owned);
    let pia = c
        .matching(&ServerFilter::default().with(TextField::Provider, "Private Internet Access"))
        .unwrap();
    assert_eq!(pia.len(), 4);
    assert!(
        pia.iter()
            .all(|s| s.country.is_none() && s.region.is_some())
    );
}

fn brute_force(raw: &serde_json::Value, filter: &ServerFilter) -> Vec<String> {
    let mut out = Vec::new();
    let providers = raw.as_object().unwrap();
    let mut names: Vec<&String> = providers.keys().filter(|k| *k != "version").collect();
    names.sort();
    for name in names {
        for s in providers[name]["servers"].as_array().unwrap() {
            let text = |field: TextField| -> Option<String> {
                match field {
                    TextField::Provider => Some(name.clone()),
                    TextField::Vpn => Some(s["vpn"].as_str().unwrap_or("openvpn").to_owned()),
                    other => s[other.name()].as_str().map(str::to_owned),
                }
            };
            let ok_text = filter.text.iter().all(|(field, wanted)| {
                text(*field)
                    .is_some_and(|v| wanted.iter().any(|w| w.to_lowercase() == v.to_lowercase()))
            });
            let ok_flags = filter
                .flags
                .iter()
                .all(|(flag, want)| s[flag.name()].as_bool().unwrap_or(false) == *want);
            if ok_text && ok_flags {
                out.push(format!("{name}/{}", s["ips"][0].as_str().unwrap()));
            }
        }
    }
    out
}

#[test]
fn filters_match_a_brute_force_scan() {
    let c = Catalog::load(&testdata("manifest")).unwrap();
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(testdata("single-file").join("servers.json")).unwrap(),
    )
    .unwrap();
    let filters = vec![
        ServerFilter::default(),
        ServerFilter::default().with(TextField::Country, "sweden"),
        ServerFilter::default()
            .with(TextField::Country, "SWEDEN")
            .with(TextField::Vpn, "wireguard"),
        ServerFilter::default()
            .with(TextField::City, "Stockholm")
            .with(TextField::City, "washington, dc"),
        ServerFilter::default()
            .with(TextField::Region, "se stockholm")
            .with_flag(Flag::PortForward, true),
        ServerFilter::default().with(TextField::Hostname, "SE-STOCKHOLM.privacy.network"),
        ServerFilter::default()
            .with_flag(Flag::PortForward, false)
            .with(TextField::Provider, "private internet access"),
        ServerFilter::default().with_flag(Flag::Owned, true),
        ServerFilter::default().with_flag(Flag::Free, true),
        ServerFilter::default()
            .with_flag(Flag::Premium, true)
            .with_flag(Flag::Stream, false),
        ServerFilter::default().with_flag(Flag::SecureCore, true),
        ServerFilter::default().with_flag(Flag::Tor, true),
        ServerFilter::default()
            .with(TextField::Provider, "mullvad")
            .with(TextField::Country, "Switzerland"),
    ];
    let mut non_empty = 0;
    for filter in &filters {
        let got: Vec<String> = c
            .matching(filter)
            .unwrap()
            .into_iter()
            .map(|s| format!("{}/{}", s.provider, s.ips[0]))
            .collect();
        let want = brute_force(&raw, filter);
        assert_eq!(got, want, "{filter:?}");
        assert_eq!(c.count(filter).unwrap(), want.len());
        non_empty += usize::from(!want.is_empty());
    }
    assert!(
        non_empty >= filters.len() - 1,
        "the filters should mostly select something"
    );
}

#[test]
fn bad_inputs_are_typed_errors() {
    let c = Catalog::load(&testdata("single-file")).unwrap();
    let err = c
        .matching(&ServerFilter::default().with(TextField::Vpn, "ipsec"))
        .unwrap_err();
    assert_eq!(err.field, TextField::Vpn);
    assert_eq!(err.valid, ["openvpn", "wireguard"]);
    let err = c
        .matching(&ServerFilter::default().with(TextField::Provider, "nope"))
        .unwrap_err();
    assert_eq!(err.valid.len(), 4);

    let dir = std::env::temp_dir().join(format!("vpno-catalog-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let guard = RemoveDir(dir.clone());
    assert!(matches!(
        Catalog::load(&dir),
        Err(CatalogError::NotFound { .. })
    ));
    std::fs::write(dir.join("servers.json"), b"{not json").unwrap();
    assert!(matches!(
        Catalog::load(&dir),
        Err(CatalogError::Json { .. })
    ));
    std::fs::write(
        dir.join("servers.json"),
        br#"{"version":1,"x":{"version":1}}"#,
    )
    .unwrap();
    assert!(matches!(
        Catalog::load(&dir),
        Err(CatalogError::Format { .. })
    ));
    std::fs::write(
        dir.join("servers.json"),
        br#"{"version":1,"x":{"filepath":"/gluetun/servers/x.json"}}"#,
    )
    .unwrap();
    assert!(matches!(Catalog::load(&dir), Err(CatalogError::Io { .. })));
    std::fs::write(dir.join("servers.json.xz"), b"not xz").unwrap();
    std::fs::remove_file(dir.join("servers.json")).unwrap();
    assert!(matches!(Catalog::load(&dir), Err(CatalogError::Xz { .. })));
    drop(guard);
}

struct RemoveDir(PathBuf);
impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
