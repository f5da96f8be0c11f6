//! The data plane in the lab, on the real kernel (root): flow spreading over
//! every gateway, gateway failover without disturbing other flows, the kill
//! switch, router failover, and a clean `down`. Each test runs its own lab
//! (own `--name`), removed by a drop guard even on failure.

mod lab_common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lab_common::{Capture, Lab, echo_once, sink};
use vpno_lab::plan::NodeName;
use vpno_lab::traffic::Flow;

/// One lab, several checks in order: spreading, gateway failover with flows
/// running, kill switch with every tunnel dead, recovery. A capture in
/// `internet` must never see the gateway network or a gateway's uplink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_spreads_over_gateways_survives_gateway_loss_and_never_leaks() {
    let test = "egress_spreads_over_gateways_survives_gateway_loss_and_never_leaks";
    let Some(lab) = Lab::up(
        test,
        "t-egress",
        &[
            "--gateways",
            "4",
            "--providers",
            "2",
            "--routers",
            "1",
            "--clients",
            "1",
        ],
    ) else {
        return;
    };
    let t = lab.topology();
    let capture = Capture::start(&lab);
    let client = lab.netns(NodeName::Client(1));
    let gateway_of = |ip: Ipv4Addr| t.gateway_by_public_ip(ip);
    let all_gateways: BTreeSet<u32> = t.gateways.iter().map(|g| g.index).collect();

    // 1. 40 requests, each on a fresh connection (fresh source port): every
    //    gateway's public IP shows up, and nothing else.
    let mut seen = BTreeMap::<Ipv4Addr, u32>::new();
    let mut ports = HashSet::new();
    for _ in 0..40 {
        let (ip, port) = echo_once(&client, Duration::from_secs(3))
            .await
            .expect("echo request through the lab");
        assert!(
            gateway_of(ip).is_some(),
            "echo saw {ip}, which is not a gateway's public IP (traffic went around the tunnels)"
        );
        assert!(ports.insert(port), "source port {port} reused");
        *seen.entry(ip).or_default() += 1;
    }
    eprintln!("[{test}] 40 requests by public IP: {seen:?}");
    assert_eq!(
        seen.len(),
        t.gateways.len(),
        "requests must use every gateway: {seen:?}"
    );

    // 1b. A client that sends straight to a gateway, around the routers, gets
    //     nothing through: gateways forward only what the routers' MACs send.
    let bypass = format!("{}/32", vpno_lab::plan::ECHO_ADDR);
    let gateway_1 = t.gateway(1).expect("gateway 1").lan_addr.to_string();
    let ip = |verb: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", &client, "route", verb, &bypass, "via", &gateway_1])
            .output()
            .expect("ip runs");
        assert!(
            out.status.success(),
            "ip route {verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip("add");
    let direct = echo_once(&client, Duration::from_secs(2)).await;
    ip("del");
    assert!(
        direct.is_err(),
        "a client reached the echo straight through a gateway: {direct:?}"
    );
    echo_once(&client, Duration::from_secs(3))
        .await
        .expect("egress through the routers again");

    // 2. Long-lived flows spread over the gateways; fail one gateway.
    let mut flows = Vec::new();
    for _ in 0..16 {
        flows.push(
            Flow::open(&client, sink(), 64 * 1024, Duration::from_secs(60))
                .await
                .expect("open flow to the sink"),
        );
    }
    let flows_on = |g: u32| {
        flows
            .iter()
            .filter(|f| gateway_of(f.exit_ip) == Some(g))
            .count()
    };
    let carrying: BTreeSet<u32> = flows.iter().filter_map(|f| gateway_of(f.exit_ip)).collect();
    assert!(
        carrying.len() >= 2,
        "16 flows should spread over several gateways, got {carrying:?}"
    );
    let victim = gateway_of(flows[0].exit_ip).expect("flow through a gateway");
    let victim_lan = t.gateway(victim).expect("victim").lan_addr;
    let (on_victim, survivors): (Vec<Flow>, Vec<Flow>) = flows
        .iter()
        .cloned()
        .partition(|f| gateway_of(f.exit_ip) == Some(victim));
    eprintln!(
        "[{test}] flows per gateway: {:?}; failing gateway-{victim}",
        all_gateways
            .iter()
            .map(|g| (g, flows_on(*g)))
            .collect::<Vec<_>>()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    lab.ok(&["kill", &format!("gateway-{victim}")]);
    let removal = vpno_lab::bench::measure_removal(
        &lab.name,
        victim,
        victim_lan,
        1,
        Instant::now(),
        Duration::from_secs(15),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let ms = |d: Option<Duration>| {
        d.map(|d| format!("{:.0} ms", d.as_secs_f64() * 1000.0))
            .unwrap_or("-".into())
    };
    eprintln!(
        "[{test}] gateway failover: gateway-{victim} cut off -> unhealthy after {}, removed from router-1's nexthop group after {} (router's share {}; interval 1 s + timeout 750 ms)",
        ms(removal.unhealthy_after),
        ms(Some(removal.removed_after)),
        ms(removal.router_share())
    );
    let before: Vec<_> = survivors.iter().map(Flow::snapshot).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (f, b) in survivors.iter().zip(&before) {
        let a = f.snapshot();
        assert_eq!(
            a.error, None,
            "flow {} via {} (not the failed gateway) broke",
            f.local_port, f.exit_ip
        );
        assert!(
            a.acked > b.acked,
            "flow {} via {} stopped moving after the failover ({} -> {})",
            f.local_port,
            f.exit_ip,
            b.acked,
            a.acked
        );
    }
    let broken = on_victim
        .iter()
        .filter(|f| f.snapshot().error.is_some())
        .count();
    eprintln!(
        "[{test}] {} flows on surviving gateways all kept flowing; {} of {} flows on gateway-{victim} were reset",
        survivors.len(),
        broken,
        on_victim.len()
    );
    for _ in 0..10 {
        let (ip, _) = echo_once(&client, Duration::from_secs(3))
            .await
            .expect("egress after a gateway failure");
        let g = gateway_of(ip);
        assert!(
            g.is_some() && g != Some(victim),
            "after the failover a request left via {ip}"
        );
    }

    // 3. Kill switch: every tunnel dead. Clients reach nothing; the capture
    //    sees nothing from the gateway network or the gateways' uplinks.
    for g in all_gateways.iter().filter(|g| **g != victim) {
        lab.ok(&["kill", &format!("gateway-{g}")]);
    }
    lab.wait_for(
        "router-1 to have no healthy gateway",
        Duration::from_secs(15),
        || lab.nexthops(1).is_empty(),
    );
    let exits_before = capture.packets("exits");
    for _ in 0..4 {
        let r = echo_once(&client, Duration::from_millis(800)).await;
        assert!(
            r.is_err(),
            "with every tunnel dead a request still reached the echo service: {r:?}"
        );
    }
    for _ in 0..2 {
        let r = Flow::open(&client, sink(), 1024, Duration::from_secs(1)).await;
        assert!(
            r.is_err(),
            "with every tunnel dead a flow still reached the sink"
        );
    }
    assert_eq!(
        capture.packets("exits"),
        exits_before,
        "packets reached internet while every tunnel was dead"
    );
    assert_eq!(
        capture.packets("lan"),
        0,
        "internet saw packets from the gateway network"
    );
    assert_eq!(
        capture.packets("uplinks"),
        0,
        "internet saw packets from a gateway's non-tunnel address"
    );

    // 4. After the outage: tunnels back, egress resumes, still no leak.
    for g in &all_gateways {
        lab.ok(&["revive", &format!("gateway-{g}")]);
    }
    let all_lan: Vec<Ipv4Addr> = t.gateways.iter().map(|g| g.lan_addr).collect();
    lab.wait_for(
        "router-1 to route over every gateway again",
        Duration::from_secs(30),
        || lab.nexthops(1) == all_lan,
    );
    for _ in 0..10 {
        let (ip, _) = echo_once(&client, Duration::from_secs(3))
            .await
            .expect("egress after the outage");
        assert!(
            gateway_of(ip).is_some(),
            "after the outage a request left via {ip}"
        );
    }
    for f in &flows {
        f.stop();
    }
    assert_eq!(
        capture.packets("lan"),
        0,
        "internet saw packets from the gateway network"
    );
    assert_eq!(
        capture.packets("uplinks"),
        0,
        "internet saw packets from a gateway's non-tunnel address"
    );
    let status = lab.status();
    assert_eq!(
        status["leaked_packets"], 0,
        "the lab's own leak counter: {status}"
    );
    assert_eq!(status["echo_url"], "http://192.0.2.80/");
}

/// Router failover: kill the active router while a client keeps asking the
/// echo service; the standby takes the VIP and egress resumes. Then `down`
/// leaves no namespace, process, link or state behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_router_takes_over_and_down_removes_everything() {
    let test = "standby_router_takes_over_and_down_removes_everything";
    if !lab_common::require_root(test) {
        return;
    }
    let host_links_before = host_link_names();
    let Some(lab) = Lab::up(
        test,
        "t-router",
        &[
            "--gateways",
            "2",
            "--providers",
            "1",
            "--routers",
            "2",
            "--clients",
            "1",
        ],
    ) else {
        return;
    };
    let t = lab.topology();
    let client = lab.netns(NodeName::Client(1));
    let status = lab.status();
    let active = status["active_router"]
        .as_str()
        .expect("an active router after up")
        .to_string();
    let standby = t
        .routers
        .iter()
        .map(|r| format!("router-{}", r.index))
        .find(|r| *r != active)
        .expect("two routers");

    // `exec` runs inside the node: the client's default route is the VIP.
    let route = lab.ok(&[
        "exec", "client-1", "--", "ip", "-4", "route", "show", "default",
    ]);
    assert!(
        route.contains(&format!("via {}", t.vip)),
        "client default route: {route}"
    );

    // Ask the echo service every 50 ms on a fresh connection.
    let mut results: Vec<(Instant, bool)> = Vec::new();
    probe(
        &client,
        Instant::now() + Duration::from_secs(1),
        &mut results,
    )
    .await;
    assert!(
        results.iter().all(|(_, ok)| *ok),
        "egress failed before the router was killed"
    );
    lab.ok(&["kill", &active]);
    let killed_at = Instant::now();
    // Probe until 10 consecutive successes after the kill (bounded).
    let bound = killed_at + Duration::from_secs(20);
    loop {
        probe(
            &client,
            Instant::now() + Duration::from_millis(200),
            &mut results,
        )
        .await;
        let after: Vec<bool> = results
            .iter()
            .filter(|(t, _)| *t > killed_at)
            .map(|(_, ok)| *ok)
            .collect();
        if after.len() >= 10 && after[after.len() - 10..].iter().all(|ok| *ok) {
            break;
        }
        assert!(
            Instant::now() < bound,
            "egress did not resume within 20 s after killing {active}\n{}",
            lab.logs()
        );
    }
    let last_ok_before = results
        .iter()
        .filter(|(t, ok)| *ok && *t <= killed_at)
        .map(|(t, _)| *t)
        .max()
        .expect("successes before");
    let first_ok_after = results
        .iter()
        .filter(|(t, ok)| *ok && *t > killed_at)
        .map(|(t, _)| *t)
        .min()
        .expect("successes after");
    eprintln!(
        "[{test}] router failover: {active} killed, {standby} took over; egress gap {:.0} ms (last success before kill -> first after)",
        (first_ok_after - last_ok_before).as_secs_f64() * 1000.0
    );
    let status = lab.status();
    assert_eq!(
        status["active_router"].as_str(),
        Some(standby.as_str()),
        "standby must hold the VIP: {status}"
    );

    // `down` removes everything: namespaces, processes, state; no link on the host.
    let pids: Vec<i32> = lab.state().pids.values().copied().collect();
    let prefix = format!("vpno-{}-", lab.name);
    lab.ok(&["down"]);
    let left: Vec<String> = vpno_sys::netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left after down: {left:?}");
    let alive: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|p| vpno_lab::kernel::alive(*p))
        .collect();
    assert!(alive.is_empty(), "processes left after down: {alive:?}");
    assert!(
        !vpno_lab::state::state_dir(&lab.name).exists(),
        "state dir left after down"
    );
    let new_links: Vec<String> = host_link_names()
        .difference(&host_links_before)
        .cloned()
        .collect();
    assert!(
        new_links.is_empty(),
        "links on the host after down: {new_links:?}"
    );
    // Idempotent.
    lab.ok(&["down"]);
}

/// `down` after `up` was killed half-way: nothing remains.
#[test]
fn down_cleans_up_after_a_killed_up() {
    let test = "down_cleans_up_after_a_killed_up";
    if !lab_common::require_root(test) {
        return;
    }
    let lab = Lab::handle("t-crash");
    let mut up = std::process::Command::new(lab_common::binary())
        .args([
            "lab",
            "up",
            "--name",
            "t-crash",
            "--gateways",
            "2",
            "--providers",
            "1",
            "--routers",
            "1",
            "--clients",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start lab up");
    // Kill `up` once it has started agents (namespaces, links and processes exist).
    let started = Instant::now();
    while !std::fs::read_to_string(vpno_lab::state::state_dir(&lab.name).join("state.json"))
        .is_ok_and(|s| s.contains("\"gateway-1\""))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "lab up never started gateway-1"
        );
        assert!(
            up.try_wait().expect("poll up").is_none(),
            "lab up ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    up.kill().expect("kill lab up");
    let _ = up.wait();
    let pids: Vec<i32> = lab.state().pids.values().copied().collect();
    assert!(!pids.is_empty());
    lab.ok(&["down"]);
    let prefix = format!("vpno-{}-", lab.name);
    assert!(
        vpno_sys::netns::list()
            .iter()
            .all(|n| !n.starts_with(&prefix)),
        "namespaces left"
    );
    assert!(
        pids.iter().all(|p| !vpno_lab::kernel::alive(*p)),
        "processes left"
    );
    assert!(
        !vpno_lab::state::state_dir(&lab.name).exists(),
        "state dir left"
    );
    lab.ok(&["down"]);
}

/// Requests the echo service every 50 ms until `until`, recording (time, success).
async fn probe(client: &str, until: Instant, results: &mut Vec<(Instant, bool)>) {
    while Instant::now() < until {
        let ok = echo_once(client, Duration::from_millis(400)).await.is_ok();
        results.push((Instant::now(), ok));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn host_link_names() -> BTreeSet<String> {
    let out = std::process::Command::new("ip")
        .args(["-j", "link", "show"])
        .output()
        .expect("ip link");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j link is JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}
