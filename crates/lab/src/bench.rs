//! `vpn-operator bench dataplane`: builds its own labs and prints, measured
//! in one run: throughput over a direct veth path vs. via router + gateway
//! without a tunnel; via 1 vs. N WireGuard gateways with N parallel streams;
//! gateway failover detection time; the fraction of surviving flows kept.
//! Every load is bounded in time (iperf3 `-t`, flows with a deadline).
//! The veth comparison uses iperf3; the WireGuard runs use the lab's own
//! sink (N bulk TCP streams, bytes confirmed by the sink).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::LabError;
use crate::kernel;
use crate::lab::{self, UpOptions};
use crate::plan::{ECHO_ADDR, IPERF_PORT, LabName, LabSpec, NodeName, SINK_PORT};
use crate::render::{LAN_MTU, Op};
use crate::traffic::Flow;

/// Arguments of `vpn-operator bench dataplane`.
#[derive(Debug, Clone, clap::Args)]
pub struct DataplaneArgs {
    /// Lab name for the benchmark's labs (`<name>` and `<name>-raw`).
    #[arg(long, default_value = "bench")]
    pub name: String,
    /// Number of WireGuard gateways (N).
    #[arg(long, default_value_t = 4)]
    pub gateways: u32,
    /// Number of providers.
    #[arg(long, default_value_t = 2)]
    pub providers: u32,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Long-lived flows during the failover.
    #[arg(long, default_value_t = 16)]
    pub flows: usize,
    /// The `vpn-operator` binary the agents run (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
}

/// Address of the direct path's far end in `internet` (the routed path uses [`ECHO_ADDR`]).
pub const DIRECT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 81);

fn op_addr(node: NodeName, iface: &str, addr: &str) -> Op {
    Op::Addr {
        node,
        iface: iface.into(),
        addr: addr.parse().expect("static address"),
    }
}

fn op_route(node: NodeName, dest: &str, via: &str) -> Op {
    Op::Route {
        node,
        dest: dest.parse().expect("static net"),
        via: via.parse().expect("static address"),
    }
}

/// The comparison topology without agents or tunnels: `client-1` reaches
/// `internet` directly over a veth (to [`DIRECT_ADDR`]), or (to
/// [`ECHO_ADDR`]) over the same hops as the lab — bridge, router forwarding,
/// gateway forwarding with masquerade — with every MTU at the lab's.
pub fn raw_path_ops() -> Vec<Op> {
    use NodeName::{Client, Gateway, Internet, Lan, Router};
    let (c, r, g, i) = (Client(1), Router(1), Gateway(1), Internet);
    let mut ops: Vec<Op> = [i, Lan, r, g, c]
        .into_iter()
        .map(|node| Op::AddNetns { node })
        .collect();
    for node in [i, Lan, r, g, c] {
        ops.push(Op::Up {
            node,
            iface: "lo".into(),
        });
        if matches!(node, Internet | Router(_) | Gateway(_)) {
            ops.push(Op::Sysctl {
                node,
                key: "net.ipv4.ip_forward".into(),
                value: "1".into(),
            });
        }
    }
    ops.push(Op::Sysctl {
        node: r,
        key: "net.ipv4.conf.all.send_redirects".into(),
        value: "0".into(),
    });
    ops.push(Op::Bridge {
        node: Lan,
        iface: "br0".into(),
    });
    ops.push(Op::Mtu {
        node: Lan,
        iface: "br0".into(),
        mtu: LAN_MTU,
    });
    ops.push(Op::Up {
        node: Lan,
        iface: "br0".into(),
    });
    let links = [
        (c, "direct", i, "direct"),
        (g, "wan", i, "gateway-1"),
        (Lan, "client-1", c, "lan"),
        (Lan, "router-1", r, "lan"),
        (Lan, "gateway-1", g, "lan"),
    ];
    for (a, ai, b, bi) in links {
        ops.push(Op::Veth {
            a,
            a_iface: ai.into(),
            b,
            b_iface: bi.into(),
        });
        ops.push(Op::Mtu {
            node: a,
            iface: ai.into(),
            mtu: LAN_MTU,
        });
        ops.push(Op::Mtu {
            node: b,
            iface: bi.into(),
            mtu: LAN_MTU,
        });
        if a == Lan {
            ops.push(Op::Enslave {
                node: a,
                iface: ai.into(),
                bridge: "br0".into(),
            });
        }
        ops.push(Op::Up {
            node: a,
            iface: ai.into(),
        });
        ops.push(Op::Up {
            node: b,
            iface: bi.into(),
        });
    }
    ops.push(op_addr(i, "lo", &format!("{ECHO_ADDR}/32")));
    ops.push(op_addr(i, "lo", &format!("{DIRECT_ADDR}/32")));
    ops.push(op_addr(i, "direct", "10.98.0.1/30"));
    ops.push(op_addr(c, "direct", "10.98.0.2/30"));
    ops.push(op_addr(i, "gateway-1", "100.64.0.1/30"));
    ops.push(op_addr(g, "wan", "100.64.0.2/30"));
    ops.push(op_addr(c, "lan", "10.99.0.101/24"));
    ops.push(op_addr(r, "lan", "10.99.0.2/24"));
    ops.push(op_addr(g, "lan", "10.99.0.11/24"));
    ops.push(op_route(c, &format!("{DIRECT_ADDR}/32"), "10.98.0.1"));
    ops.push(op_route(c, "0.0.0.0/0", "10.99.0.2"));
    ops.push(op_route(r, "0.0.0.0/0", "10.99.0.11"));
    ops.push(op_route(g, "0.0.0.0/0", "100.64.0.1"));
    ops.push(Op::Nft {
        node: g,
        script: "table ip vpno_bench {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  ip saddr 10.99.0.0/24 oifname \"wan\" masquerade\n }\n}\n".into(),
    });
    ops
}

/// Removes a lab when dropped (the benchmark's labs never outlive it).
struct LabGuard(LabName);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = lab::down(&self.0) {
            eprintln!("cleaning up lab {}: {e}", self.0);
        }
    }
}

/// An iperf3 server inside a namespace, stopped when dropped.
struct IperfServer(Child);

impl IperfServer {
    fn start(netns: &str) -> Result<IperfServer, LabError> {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "iperf3",
                "-s",
                "-p",
                &IPERF_PORT.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                LabError::Bench(format!(
                    "cannot start iperf3 (install the iperf3 package): {e}"
                ))
            })?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(IperfServer(child))
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs an iperf3 client in `netns` against `dst` for `seconds` with
/// `streams` parallel streams; returns received bits per second.
fn iperf(netns: &str, dst: Ipv4Addr, seconds: u64, streams: u32) -> Result<f64, LabError> {
    let out = kernel::run_cmd(
        "timeout",
        &[
            &(seconds + 15).to_string(),
            "ip",
            "netns",
            "exec",
            netns,
            "iperf3",
            "-c",
            &dst.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ],
        None,
    )
    .map_err(|e| LabError::Bench(format!("iperf3 to {dst}: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| LabError::Bench(format!("iperf3 output: {e}")))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| LabError::Bench(format!("iperf3 reported no throughput: {}", v["error"])))
}

/// How long after a gateway's outage began it reported unhealthy and the
/// router dropped it from its nexthop group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    /// Until the gateway's `/readyz` stopped answering 200 (if seen before removal).
    pub unhealthy_after: Option<Duration>,
    /// Until the router's nexthop group no longer held the gateway.
    pub removed_after: Duration,
}

impl Removal {
    /// The router's share: from the gateway reporting unhealthy to its removal.
    pub fn router_share(&self) -> Option<Duration> {
        self.unhealthy_after
            .map(|u| self.removed_after.saturating_sub(u))
    }
}

/// Watches (every 20 ms, up to `bound`) gateway `gateway` of lab `name`,
/// whose outage began at `since`, until router `router` drops it.
pub async fn measure_removal(
    name: &LabName,
    gateway: u32,
    gateway_lan: Ipv4Addr,
    router: u32,
    since: Instant,
    bound: Duration,
) -> Result<Removal, LabError> {
    let gateway_ns = name.netns(&NodeName::Gateway(gateway));
    let router_ns = name.netns(&NodeName::Router(router));
    let health = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, crate::plan::GATEWAY_HTTP_PORT));
    let mut unhealthy_after = None;
    loop {
        if unhealthy_after.is_none() {
            let ok = crate::traffic::http_get(
                &gateway_ns,
                health,
                "/readyz",
                Duration::from_millis(300),
            )
            .await
            .map(|r| r.status == 200)
            .unwrap_or(false);
            if !ok {
                unhealthy_after = Some(since.elapsed());
            }
        }
        if !kernel::router_nexthops(&router_ns).contains(&gateway_lan) {
            return Ok(Removal {
                unhealthy_after,
                removed_after: since.elapsed(),
            });
        }
        if since.elapsed() > bound {
            return Err(LabError::Bench(format!(
                "router-{router} did not drop gateway-{gateway} within {bound:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.0} ms", d.as_secs_f64() * 1000.0))
        .unwrap_or_else(|| "-".into())
}

/// Sends as fast as possible over `streams` fresh connections from `netns`
/// to the sink for `seconds` (after a 0.5 s warm-up); returns the rate the
/// sink confirmed, in bits per second, and how many streams broke.
pub async fn bulk_throughput(
    netns: &str,
    streams: u32,
    seconds: u64,
) -> Result<(f64, usize), LabError> {
    let sink = SocketAddrV4::new(ECHO_ADDR, SINK_PORT);
    let mut flows = Vec::new();
    for _ in 0..streams {
        flows.push(Flow::open_bulk(netns, sink, Duration::from_secs(seconds + 2)).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = |flows: &[Flow]| flows.iter().map(|f| f.snapshot().acked).sum::<u64>();
    let (t0, a0) = (Instant::now(), acked(&flows));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (t1, a1) = (Instant::now(), acked(&flows));
    let broken = flows
        .iter()
        .filter(|f| f.snapshot().error.is_some())
        .count();
    for f in &flows {
        f.stop();
    }
    Ok(((a1 - a0) as f64 * 8.0 / (t1 - t0).as_secs_f64(), broken))
}

fn broken_note(broken: usize) -> String {
    if broken == 0 {
        String::new()
    } else {
        format!("   ({broken} streams broke during the run)")
    }
}

fn gbit(bps: f64) -> String {
    if bps >= 1e9 {
        format!("{:.2} Gbit/s", bps / 1e9)
    } else {
        format!("{:.0} Mbit/s", bps / 1e6)
    }
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: DataplaneArgs) -> Result<(), LabError> {
    lab::preflight()?;
    let name: LabName = args.name.parse()?;
    let raw_name: LabName = format!("{}-raw", args.name).parse()?;
    let binary = match args.binary.clone() {
        Some(b) => b,
        None => std::env::current_exe()
            .map_err(|e| LabError::Bench(format!("cannot find own binary: {e}")))?,
    };
    let n = args.gateways;
    println!(
        "bench dataplane: {n} gateways over {} providers, iperf3 {} s per run, {} flows in the failover",
        args.providers, args.seconds, args.flows
    );

    // 1. Direct veth vs router + gateway hops without a tunnel.
    let _ = lab::down(&raw_name);
    let raw_guard = LabGuard(raw_name.clone());
    for op in raw_path_ops() {
        kernel::apply(&raw_name, &op).map_err(|e| LabError::Bench(format!("{op:?}: {e}")))?;
    }
    let (direct, routed) = {
        let _server = IperfServer::start(&raw_name.netns(&NodeName::Internet))?;
        let client = raw_name.netns(&NodeName::Client(1));
        (
            iperf(&client, DIRECT_ADDR, args.seconds, 1)?,
            iperf(&client, ECHO_ADDR, args.seconds, 1)?,
        )
    };
    drop(raw_guard);
    println!(
        "throughput, 1 stream, direct veth client -> internet:         {}",
        gbit(direct)
    );
    println!(
        "throughput, 1 stream, via router + gateway, no tunnel:        {}   ratio {:.2}",
        gbit(routed),
        routed / direct
    );

    // 2. The WireGuard lab.
    let _ = lab::down(&name);
    let guard = LabGuard(name.clone());
    let spec = LabSpec {
        name: name.clone(),
        providers: args.providers,
        gateways: n,
        routers: 1,
        clients: 1,
    };
    let started = Instant::now();
    lab::up(&UpOptions {
        spec,
        binary,
        timeout: Duration::from_secs(90),
    })
    .await?;
    println!(
        "lab up (healthy) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let state = crate::state::LabState::load(&crate::state::state_dir(&name))?;
    let t = state.topology;
    let client = name.netns(&NodeName::Client(1));
    let router = name.netns(&NodeName::Router(1));
    let (via_n, broken_n) = bulk_throughput(&client, n, args.seconds).await?;

    // 3. Failover with long-lived flows.
    let mut flows = Vec::new();
    for _ in 0..args.flows {
        flows.push(
            Flow::open(
                &client,
                SocketAddrV4::new(ECHO_ADDR, SINK_PORT),
                128 * 1024,
                Duration::from_secs(60),
            )
            .await?,
        );
    }
    let gateway_of = |f: &Flow| t.gateway_by_public_ip(f.exit_ip);
    let mut per_gateway = BTreeMap::<u32, usize>::new();
    for f in &flows {
        *per_gateway.entry(gateway_of(f).unwrap_or(0)).or_default() += 1;
    }
    let victim = gateway_of(&flows[0])
        .ok_or_else(|| LabError::Bench("a flow did not leave via a gateway".into()))?;
    let victim_lan = t
        .gateway(victim)
        .map(|g| g.lan_addr)
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    tokio::time::sleep(Duration::from_millis(500)).await;
    lab::kill(&name, NodeName::Gateway(victim))?;
    let removal = measure_removal(
        &name,
        victim,
        victim_lan,
        1,
        Instant::now(),
        Duration::from_secs(20),
    )
    .await?;
    let survivors: Vec<&Flow> = flows
        .iter()
        .filter(|f| gateway_of(f) != Some(victim))
        .collect();
    let before: Vec<_> = survivors.iter().map(|f| f.snapshot()).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = survivors
        .iter()
        .zip(&before)
        .filter(|(f, b)| {
            let a = f.snapshot();
            a.error.is_none() && a.acked > b.acked
        })
        .count();
    let victims = flows.len() - survivors.len();
    let victims_reset = flows
        .iter()
        .filter(|f| gateway_of(f) == Some(victim) && f.snapshot().error.is_some())
        .count();
    for f in &flows {
        f.stop();
    }

    // 4. One gateway left: kill all but the last one.
    let keep = t
        .gateways
        .iter()
        .map(|g| g.index)
        .filter(|i| *i != victim)
        .max()
        .unwrap_or(victim);
    for g in t
        .gateways
        .iter()
        .filter(|g| g.index != victim && g.index != keep)
    {
        lab::kill(&name, NodeName::Gateway(g.index))?;
    }
    let keep_lan = t
        .gateway(keep)
        .map(|g| g.lan_addr)
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let wait = Instant::now();
    while kernel::router_nexthops(&router) != vec![keep_lan] {
        if wait.elapsed() > Duration::from_secs(20) {
            return Err(LabError::Bench(
                "router never converged on one gateway".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (via_1, broken_1) = bulk_throughput(&client, n, args.seconds).await?;
    drop(guard);

    println!(
        "throughput, {n} streams, via 1 WireGuard gateway:              {}{}",
        gbit(via_1),
        broken_note(broken_1)
    );
    println!(
        "throughput, {n} streams, via {n} WireGuard gateways:             {}   ratio {:.2}{}",
        gbit(via_n),
        via_n / via_1,
        broken_note(broken_n)
    );
    println!(
        "failover detection: gateway-{victim} cut off by its provider -> reported unhealthy after {}, out of the router's nexthop group after {} (router's share {}; router interval 1 s + timeout 750 ms)",
        ms(removal.unhealthy_after),
        ms(Some(removal.removed_after)),
        ms(removal.router_share())
    );
    println!(
        "surviving flows kept: {kept}/{} ({:.0}%); flows per gateway before {per_gateway:?}; on the failed gateway {victims_reset}/{victims} reset",
        survivors.len(),
        if survivors.is_empty() {
            0.0
        } else {
            100.0 * kept as f64 / survivors.len() as f64
        }
    );
    Ok(())
}

/// The subnets the raw comparison path uses (for documentation and tests).
pub fn raw_subnets() -> [Ipv4Net; 3] {
    [
        "10.98.0.0/30".parse().expect("static"),
        "10.99.0.0/24".parse().expect("static"),
        "100.64.0.0/30".parse().expect("static"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_paths_differ_only_in_the_hops() {
        let ops = raw_path_ops();
        let c = NodeName::Client(1);
        // Direct: a host route over the veth; routed: default via the router, which goes via the gateway.
        assert!(ops.contains(&op_route(c, &format!("{DIRECT_ADDR}/32"), "10.98.0.1")));
        assert!(ops.contains(&op_route(c, "0.0.0.0/0", "10.99.0.2")));
        assert!(ops.contains(&op_route(NodeName::Router(1), "0.0.0.0/0", "10.99.0.11")));
        // Same MTU on every link of both paths.
        for op in &ops {
            if let Op::Mtu { mtu, .. } = op {
                assert_eq!(*mtu, LAN_MTU);
            }
        }
        for op in &ops {
            if let Op::Addr { addr, .. } = op {
                let inside = raw_subnets().iter().any(|n| n.contains(addr))
                    || addr.addr() == ECHO_ADDR
                    || addr.addr() == DIRECT_ADDR;
                assert!(inside, "{addr}");
            }
        }
    }
}
