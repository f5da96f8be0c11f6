//! Throughput of WireGuard implementations over one path, measured in one run
//! (root; `cargo bench -p vpno-tunnel --bench throughput`).
//!
//! Two namespaces joined by one veth pair. On that same path, one after the
//! other: the bare veth, our tunnel (`vpno-tunnel`, in a child process of
//! this benchmark), Debian's `wireguard-go` and `boringtun-cli` (crates.io),
//! each at both ends. For each, iperf3 TCP with 1 and 4 streams: Mbit/s, the
//! CPU seconds both tunnel processes used per GB delivered, and the idle RSS
//! of the client end once the handshake is done. Then the ratios
//! ours/wireguard-go and ours/veth. An implementation that is not installed
//! is skipped loudly (`scripts/setup` installs them). Figures only, no
//! assertions; every load is bounded by iperf3's `-t` and a `timeout`.
//!
//! Environment: `VPNO_BENCH_SECONDS` (per iperf3 run, default 5),
//! `VPNO_BENCH_ONLY` (comma-separated rows to run, e.g. `veth,ours`),
//! `VPNO_BORINGTUN_CLI` (path of `boringtun-cli`).

mod implementations;
mod measure;
mod ours;

use std::process::Command;

use vpno_tunnel::netns::{NamedNetns, have_root};

use implementations::{Endpoints, Implementation};
use measure::{Row, Run};

const STREAMS: [u32; 2] = [1, 4];

fn main() {
    if ours::is_child() {
        ours::child_main();
        return;
    }
    if !have_root() || Command::new("iperf3").arg("-v").output().is_err() {
        eprintln!("SKIPPED: the tunnel benchmark needs root and iperf3 (scripts/setup)");
        return;
    }
    let seconds: u32 = std::env::var("VPNO_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let id = std::process::id();
    let a = NamedNetns::create(format!("vpno-bench-a-{id}")).expect("namespace a");
    let b = NamedNetns::create(format!("vpno-bench-b-{id}")).expect("namespace b");
    a.link_veth(
        ("veth-a", "198.51.100.1/30"),
        &b,
        ("veth-b", "198.51.100.2/30"),
    )
    .expect("veth pair");
    let ends = Endpoints {
        server: &a,
        client: &b,
    };
    println!("load average at start: {}", measure::load_average());
    let only = std::env::var("VPNO_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    let mut rows = Vec::new();
    if wanted("veth") {
        for streams in STREAMS {
            let run = measure::iperf3(&a, &b, "198.51.100.1", streams, seconds);
            rows.push(Row::new("veth", streams, run, None, None));
        }
    }
    for implementation in implementations::all() {
        if wanted(implementation.name()) {
            bench_one(&*implementation, &ends, seconds, &mut rows);
        }
    }
    println!("load average at end:   {}", measure::load_average());
    measure::print(&rows);
}

/// Starts one implementation at both ends, measures it, stops it.
fn bench_one(
    implementation: &dyn Implementation,
    ends: &Endpoints<'_>,
    seconds: u32,
    rows: &mut Vec<Row>,
) {
    let name = implementation.name();
    if let Err(why) = implementation.available() {
        println!("SKIPPED {name}: {why}");
        return;
    }
    let running = match implementation.start(ends) {
        Ok(running) => running,
        Err(e) => {
            println!("SKIPPED {name}: cannot start: {e}");
            return;
        }
    };
    if !running.wait_for_path(ends.client) {
        println!("SKIPPED {name}: no ping through the tunnel after start");
        return;
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let idle_rss = running.client_rss_kib();
    for streams in STREAMS {
        let before = running.cpu_seconds();
        let run: Run = measure::iperf3(
            ends.server,
            ends.client,
            &running.server_address,
            streams,
            seconds,
        );
        let cpu = running.cpu_seconds() - before;
        rows.push(Row::new(name, streams, run, Some(cpu), idle_rss));
    }
    drop(running);
}
