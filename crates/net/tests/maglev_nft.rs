//! The Maglev table rendered by `vpno_net::maglev::render_nft` loaded into a
//! real nft (Debian's) in a throwaway network namespace: the kernel accepts
//! it, and every UDP flow reaches the backend `nft_jhash_slot` predicts.
//! Then one backend is removed: new flows follow the new table, flows that
//! were on surviving backends stay there (counted), and flows already in
//! conntrack keep their backend.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use vpno_net::maglev::{self, FlowKey, MaglevTable, NatHook, NftForward, Protocol, TableSize};
use vpno_tunnel::netns::NamedNetns;

const NFT: &str = "/usr/sbin/nft";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 8, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const SEED: u32 = 0x5eed_0001;

fn backends() -> Vec<Ipv4Addr> {
    (1..=4).map(|i| Ipv4Addr::new(10, 9, 0, i)).collect()
}

fn forward() -> NftForward {
    NftForward {
        table: "vpno-maglev-test".into(),
        protocol: Protocol::Udp,
        address: VIP,
        port: 80,
        target_port: 8080,
        key: FlowKey::SourceAddressAndPort,
        seed: SEED,
        hook: NatHook::Output,
    }
}

fn load(ns: &NamedNetns, script: &str) {
    let path = std::env::temp_dir().join(format!("{}.nft", ns.name()));
    std::fs::write(&path, script).unwrap();
    let out = ns.exec(NFT, &["-f", path.to_str().unwrap()]).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "nft refused the table: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends one datagram from CLIENT:`port` to VIP:80 and returns the backend that received it.
fn backend_of_flow(port: u16, listeners: &[(Ipv4Addr, UdpSocket)]) -> Option<Ipv4Addr> {
    let client = UdpSocket::bind((CLIENT, port)).unwrap();
    client.send_to(b"flow", (VIP, 80)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 16];
    while Instant::now() < deadline {
        for (addr, sock) in listeners {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                assert_eq!(&buf[..n], b"flow");
                assert_eq!(
                    from,
                    SocketAddr::from((CLIENT, port)),
                    "the backend sees the remote's address"
                );
                return Some(*addr);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn expected(table: &MaglevTable, port: u16) -> Ipv4Addr {
    let data = FlowKey::SourceAddressAndPort.bytes(CLIENT, port);
    let slot = maglev::nft_jhash_slot(&data, SEED, table.size());
    table.backend(slot).unwrap().parse().unwrap()
}

#[test]
fn kernel_sends_each_flow_to_the_backend_the_table_names() {
    if !vpno_sys::require_root("maglev_nft")
        || !vpno_sys::require(
            std::path::Path::new(NFT).exists(),
            "nft not installed (scripts/setup installs nftables)",
        )
    {
        return;
    }
    let ns = NamedNetns::create(format!("vpno-mglv-{}", std::process::id())).unwrap();
    for a in backends().iter().chain([&VIP, &CLIENT]) {
        ns.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"])
            .unwrap();
    }
    let size = TableSize::new(251).unwrap();
    let all: BTreeSet<Ipv4Addr> = backends().into_iter().collect();
    let before = maglev::nft_backends(&all, size).unwrap();
    load(&ns, &maglev::render_nft(&forward(), &before).unwrap());

    let removed = Ipv4Addr::new(10, 9, 0, 2);
    let rest: BTreeSet<Ipv4Addr> = all.iter().copied().filter(|a| *a != removed).collect();
    let after = maglev::nft_backends(&rest, size).unwrap();
    let after_script = maglev::render_nft(&forward(), &after).unwrap();

    let check = {
        let (before, after) = (before.clone(), after.clone());
        move |reload: &dyn Fn()| {
            let listeners: Vec<(Ipv4Addr, UdpSocket)> = backends()
                .into_iter()
                .map(|a| {
                    let s = UdpSocket::bind((a, 8080)).unwrap();
                    s.set_nonblocking(true).unwrap();
                    (a, s)
                })
                .collect();
            let old_ports: Vec<u16> = (40000..40100).collect();
            let mut seen = BTreeSet::new();
            for &p in &old_ports {
                let got = backend_of_flow(p, &listeners);
                assert_eq!(got, Some(expected(&before, p)), "flow from port {p}");
                seen.insert(got.unwrap());
            }
            assert_eq!(seen.len(), 4, "100 flows spread over all four backends");
            reload();
            // Flows in conntrack keep their backend, even the removed one's
            // (draining is the health checker's job, not the table's).
            for &p in &old_ports {
                assert_eq!(
                    backend_of_flow(p, &listeners),
                    Some(expected(&before, p)),
                    "existing flow {p}"
                );
            }
            let (mut moved, mut had_to_move) = (0, 0);
            for p in 41000..41100u16 {
                let got = backend_of_flow(p, &listeners).unwrap();
                assert_eq!(got, expected(&after, p), "new flow from port {p}");
                assert_ne!(got, removed);
                let old = expected(&before, p);
                moved += usize::from(old != got);
                had_to_move += usize::from(old == removed);
            }
            (moved, had_to_move)
        }
    };
    let reload = move || load_here(&after_script, "after");
    let (moved, had_to_move) = vpno_sys::netns::run_in(ns.name(), move || check(&reload)).unwrap();
    eprintln!(
        "maglev in nft: backend 10.9.0.2 of 4 removed: {moved} of 100 new flows moved, {had_to_move} had to"
    );
    assert!(moved >= had_to_move);
    assert!(
        moved <= had_to_move + 2,
        "{moved} flows moved, only {had_to_move} had to"
    );
}

/// The production form (TCP, prerouting, the large table) is accepted too;
/// prints how long nft takes to load each size (a figure, not a check).
#[test]
fn nft_accepts_the_prerouting_form_at_every_size() {
    if !vpno_sys::require_root("maglev_nft")
        || !vpno_sys::require(
            std::path::Path::new(NFT).exists(),
            "nft not installed (scripts/setup installs nftables)",
        )
    {
        return;
    }
    let ns = NamedNetns::create(format!("vpno-mglv-{}-pre", std::process::id())).unwrap();
    let backends: BTreeSet<Ipv4Addr> = (1..=50).map(|i| Ipv4Addr::new(10, 9, 1, i)).collect();
    for size in [TableSize::DEFAULT, TableSize::LARGE] {
        let table = maglev::nft_backends(&backends, size).unwrap();
        let f = NftForward {
            protocol: Protocol::Tcp,
            hook: NatHook::Prerouting,
            ..forward()
        };
        let script = maglev::render_nft(&f, &table).unwrap();
        let started = Instant::now();
        load(&ns, &script);
        let took = started.elapsed();
        // Loaded twice: the add/delete preamble must replace, not fail on, an existing table.
        load(&ns, &script);
        let out = ns
            .exec(NFT, &["list", "chain", "ip", "vpno-maglev-test", "balance"])
            .unwrap();
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(
            listed.contains("hook prerouting") && listed.contains("tcp dport 80"),
            "{listed}"
        );
        assert!(
            listed.contains(&format!("mod {} seed 0x5eed0001", size.get())),
            "{listed}"
        );
        eprintln!(
            "maglev in nft: M={} with 50 backends loads in {took:?} ({} bytes of script)",
            size.get(),
            script.len()
        );
    }
}

/// Loads a script with `nft` spawned from the calling thread: a child
/// process starts in its parent thread's network namespace, so inside
/// `run_in` this loads into the test's namespace.
fn load_here(script: &str, tag: &str) {
    let path = std::env::temp_dir().join(format!("vpno-maglev-{}-{tag}.nft", std::process::id()));
    std::fs::write(&path, script).unwrap();
    let out = std::process::Command::new(NFT)
        .args(["-f", path.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "nft refused the new table: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
