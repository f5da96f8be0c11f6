//! Lab lifecycle: up, kill, revive, exec, down.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::kernel::{self, Daemon};
use crate::plan::{
    self, ECHO_ADDR, ECHO_PORT, KeyPair, LAN_IFACE, LabName, LabSpec, NodeName,
    PROVIDER_TUNNEL_IFACE,
};
use crate::render::{self, LAB_TABLE};
use crate::state::{self, LabState};
use crate::status::{self, StatusReport};
use crate::{LabError, agents, daemons};

/// Options of `lab up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Name and counts.
    pub spec: LabSpec,
    /// The `vpn-operator` binary the agents run.
    pub binary: PathBuf,
    /// How long to wait for everything to become healthy.
    pub timeout: Duration,
}

/// Refuses to run without root or the tools the lab drives.
pub fn preflight() -> Result<(), LabError> {
    if !vpno_sys::is_root() {
        return Err(LabError::NotRoot);
    }
    for tool in ["ip", "nft", "setsid"] {
        if kernel::run_cmd("sh", &["-c", &format!("command -v {tool}")], None).is_err() {
            return Err(LabError::MissingTool(tool.into()));
        }
    }
    Ok(())
}

fn generate_keys(n: usize) -> Vec<KeyPair> {
    (0..n)
        .map(|_| {
            let k = vpno_tunnel::Keypair::generate();
            KeyPair {
                private: k.private.to_base64(),
                public: k.public.to_base64(),
            }
        })
        .collect()
}

/// Names of this lab's namespaces that exist now.
pub fn existing_netns(name: &LabName) -> Vec<String> {
    vpno_sys::netns::list()
        .into_iter()
        .filter(|ns| name.node_of_netns(ns).is_some())
        .collect()
}

/// Builds the lab and waits until it is healthy. On a build failure
/// everything is removed again; on a health timeout the lab is left up for
/// inspection and the error says what is unhealthy.
pub async fn up(opts: &UpOptions) -> Result<StatusReport, LabError> {
    preflight()?;
    opts.spec.validate()?;
    let name = &opts.spec.name;
    let dir = state::state_dir(name);
    if dir.exists() || !existing_netns(name).is_empty() {
        return Err(LabError::AlreadyExists(name.to_string()));
    }
    let topology = plan::plan(&opts.spec, &generate_keys(plan::keys_needed(&opts.spec)))?;
    let mut state = LabState {
        topology,
        pids: Default::default(),
        binary: opts.binary.clone(),
    };
    state.save(&dir)?;
    if let Err(e) = build(&mut state, &dir) {
        let _ = down(name);
        return Err(e);
    }
    let deadline = Instant::now() + opts.timeout;
    wait_healthy(&state, &dir, deadline).await?;
    status::collect(name).await
}

fn build(state: &mut LabState, dir: &Path) -> Result<(), LabError> {
    let t = state.topology.clone();
    let name = &t.spec.name;
    for op in render::build_ops(&t) {
        kernel::apply(name, &op).map_err(|e| LabError::Build(format!("{op:?}: {e}")))?;
    }
    let start = |state: &mut LabState, node: NodeName, d: Daemon| -> Result<(), LabError> {
        let pid = kernel::spawn_daemon(&d, &daemons::log_path(dir, &node.to_string()))?;
        state.pids.insert(node.to_string(), pid);
        state.save(dir)
    };
    start(
        state,
        NodeName::Internet,
        agents::internet_daemon(&t, &state.binary.clone(), dir),
    )?;
    for p in &t.providers {
        start(
            state,
            NodeName::Provider(p.index),
            agents::provider_daemon(&t, p.index, &state.binary.clone(), dir),
        )?;
    }
    // Gateways need their provider's server; wait for the WireGuard interfaces.
    let deadline = Instant::now() + Duration::from_secs(15);
    for p in &t.providers {
        let node = NodeName::Provider(p.index);
        let ns = name.netns(&node);
        while kernel::run_cmd(
            "ip",
            &["-n", &ns, "link", "show", PROVIDER_TUNNEL_IFACE],
            None,
        )
        .is_err()
        {
            let pid = state.pids.get(&node.to_string()).copied().unwrap_or(0);
            if !kernel::alive(pid) || Instant::now() > deadline {
                return Err(LabError::Build(format!(
                    "{node}'s WireGuard server did not start; see {}",
                    daemons::log_path(dir, &node.to_string()).display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for g in &t.gateways {
        let env_file = dir.join(format!("gateway-{}.env", g.index));
        let vars = agents::gateway_env_file(&t, g.index)
            .ok_or_else(|| LabError::Build("gateway".into()))?;
        write_private(&env_file, &vars)?;
        let d = agents::gateway_daemon(&t, g.index, &state.binary.clone(), &env_file)
            .ok_or_else(|| LabError::Build("gateway".into()))?;
        start(state, NodeName::Gateway(g.index), d)?;
    }
    let key_file = dir.join("router-heartbeat.key");
    write_private(&key_file, &random_hex(32)?)?;
    for r in &t.routers {
        let d = agents::router_daemon(&t, r.index, &state.binary.clone(), &key_file)
            .ok_or_else(|| LabError::Build("router".into()))?;
        start(state, NodeName::Router(r.index), d)?;
    }
    Ok(())
}

/// `bytes` random bytes from the kernel, hex-encoded (the routers' shared heartbeat key).
fn random_hex(bytes: usize) -> Result<String, LabError> {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| LabError::State(format!("reading /dev/urandom: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private(path: &Path, text: &str) -> Result<(), LabError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LabError::State(format!("write {}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(|e| LabError::State(format!("write {}: {e}", path.display())))
}

async fn wait_healthy(state: &LabState, dir: &Path, deadline: Instant) -> Result<(), LabError> {
    let t = &state.topology;
    let echo = SocketAddrV4::new(ECHO_ADDR, ECHO_PORT);
    let client = t.spec.name.netns(&NodeName::Client(1));
    let mut last_problem;
    loop {
        let report = status::collect(&t.spec.name).await?;
        last_problem = report.problems();
        if last_problem.is_empty() {
            match crate::traffic::echo_ip(&client, echo, Duration::from_secs(2)).await {
                Ok(ip) if t.gateway_by_public_ip(ip).is_some() => return Ok(()),
                Ok(ip) => {
                    last_problem = vec![format!(
                        "client-1 reached the echo service from {ip}, not via a gateway"
                    )]
                }
                Err(e) => {
                    last_problem = vec![format!("client-1 cannot reach the echo service: {e}")]
                }
            }
        }
        if Instant::now() > deadline {
            return Err(LabError::Unhealthy {
                problems: last_problem.join("; "),
                logs: dir.to_path_buf(),
                name: t.spec.name.to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Simulates a failure of one node: `gateway-I` loses its provider (the
/// provider drops its WireGuard packets; the agent keeps running and must
/// notice), `router-J` dies (process killed, its link goes down as when its
/// pod goes away).
pub fn kill(name: &LabName, node: NodeName) -> Result<(), LabError> {
    let dir = state::state_dir(name);
    let state = LabState::load(&dir)?;
    let t = &state.topology;
    if !t.has_node(&node) {
        return Err(LabError::NoSuchNode {
            node: node.to_string(),
            lab: name.to_string(),
        });
    }
    match node {
        NodeName::Gateway(i) => {
            let g = t.gateway(i).ok_or_else(|| LabError::NoSuchNode {
                node: node.to_string(),
                lab: name.to_string(),
            })?;
            let rule = render::outage_rule(t, i).unwrap_or_default();
            let provider_ns = name.netns(&NodeName::Provider(g.provider));
            if outages(name, g.provider).contains(&g.uplink_addr.to_string()) {
                return Ok(());
            }
            kernel::nft(&provider_ns, &rule)?;
            Ok(())
        }
        NodeName::Router(_) => {
            let ns = name.netns(&node);
            if let Some(&pid) = state.pids.get(&node.to_string())
                && kernel::netns_of_pid(pid).as_deref() == Some(ns.as_str())
            {
                kernel::signal(pid, Signal::SIGKILL);
            }
            kernel::link_down(&ns, LAN_IFACE)?;
            Ok(())
        }
        other => Err(LabError::CannotKill(other.to_string())),
    }
}

/// Undoes [`kill`] for a gateway: its provider serves it again.
pub fn revive(name: &LabName, node: NodeName) -> Result<(), LabError> {
    let state = LabState::load(&state::state_dir(name))?;
    let t = &state.topology;
    let NodeName::Gateway(i) = node else {
        return Err(LabError::CannotRevive(node.to_string()));
    };
    let g = t.gateway(i).ok_or_else(|| LabError::NoSuchNode {
        node: node.to_string(),
        lab: name.to_string(),
    })?;
    let provider_ns = name.netns(&NodeName::Provider(g.provider));
    let keep: Vec<String> = outages(name, g.provider)
        .into_iter()
        .filter(|a| *a != g.uplink_addr.to_string())
        .collect();
    let mut script = format!("flush chain ip {LAB_TABLE} outage\n");
    for other in t
        .gateways
        .iter()
        .filter(|o| keep.contains(&o.uplink_addr.to_string()))
    {
        script.push_str(&render::outage_rule(t, other.index).unwrap_or_default());
    }
    kernel::nft(&provider_ns, &script)?;
    Ok(())
}

/// Uplink addresses a provider currently drops (gateways in outage).
pub fn outages(name: &LabName, provider: u32) -> BTreeSet<String> {
    let ns = name.netns(&NodeName::Provider(provider));
    let Ok(out) = kernel::run_cmd(
        "ip",
        &[
            "netns", "exec", &ns, "nft", "-j", "list", "chain", "ip", LAB_TABLE, "outage",
        ],
        None,
    ) else {
        return BTreeSet::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
        return BTreeSet::new();
    };
    let mut set = BTreeSet::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        for expr in item["rule"]["expr"].as_array().into_iter().flatten() {
            let m = &expr["match"];
            if m["left"]["payload"]["field"].as_str() == Some("saddr")
                && let Some(a) = m["right"].as_str()
            {
                set.insert(a.to_string());
            }
        }
    }
    set
}

/// Runs a command inside a node's namespace with the caller's terminal;
/// returns its exit code.
pub fn exec(name: &LabName, node: NodeName, command: &[String]) -> Result<i32, LabError> {
    let ns = name.netns(&node);
    if !vpno_sys::netns::exists(&ns) {
        return Err(LabError::NoSuchNode {
            node: node.to_string(),
            lab: name.to_string(),
        });
    }
    let (program, args) = command.split_first().ok_or(LabError::EmptyCommand)?;
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, program])
        .args(args)
        .status()
        .map_err(|e| LabError::Build(format!("cannot run ip netns exec: {e}")))?;
    Ok(status.code().unwrap_or(128 + 9))
}

/// What `down` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DownReport {
    /// Processes stopped.
    pub processes: usize,
    /// Namespaces deleted.
    pub namespaces: usize,
    /// Whether a state dir was removed.
    pub state_dir: bool,
}

/// Removes everything of lab `name`: processes (recorded pids, then anything
/// still inside its namespaces), namespaces (and with them every link), the
/// state dir. Works after a crash and when nothing is left; keeps going after
/// a failure and reports every error at the end.
pub fn down(name: &LabName) -> Result<DownReport, LabError> {
    let dir = state::state_dir(name);
    let mut report = DownReport::default();
    let mut errors = Vec::new();
    let namespaces = existing_netns(name);
    let mut pids: Vec<i32> = Vec::new();
    if let Ok(state) = LabState::load(&dir) {
        for (node, &pid) in &state.pids {
            let Ok(node) = node.parse::<NodeName>() else {
                continue;
            };
            // Only a pid that is still inside this lab's namespace is ours.
            if kernel::netns_of_pid(pid).as_deref() == Some(name.netns(&node).as_str()) {
                pids.push(pid);
            }
        }
    }
    for ns in &namespaces {
        pids.extend(kernel::netns_pids(ns));
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|&p| p != std::process::id() as i32);
    kernel::stop_pids(&pids, Duration::from_secs(3));
    report.processes = pids.len();
    for ns in &namespaces {
        // A process that escaped the first sweep (started meanwhile) still pins the namespace.
        let late = kernel::netns_pids(ns);
        kernel::stop_pids(&late, Duration::from_secs(1));
        match kernel::delete_netns(ns) {
            Ok(()) => report.namespaces += 1,
            Err(e) => errors.push(e.to_string()),
        }
    }
    if dir.exists() {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => report.state_dir = true,
            Err(e) => errors.push(format!("remove {}: {e}", dir.display())),
        }
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(LabError::Teardown(errors.join("; ")))
    }
}
