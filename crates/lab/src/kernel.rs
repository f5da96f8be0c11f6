//! The lab's only contact with the kernel: namespaces, links, addresses,
//! nftables and processes, through `ip`, `nft` and signals. Everything here is
//! a thin adapter; what to do is decided in [`crate::plan`] and [`crate::render`].

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::plan::{LabName, NodeName};
use crate::render::Op;

/// What went wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A command could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// Program name.
        program: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its standard error.
        stderr: String,
    },
    /// A namespace could not be entered.
    #[error("cannot enter network namespace {netns}: {reason}")]
    Netns {
        /// Namespace name.
        netns: String,
        /// Cause.
        reason: String,
    },
    /// Other I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Runs a command and returns its standard output, or its error output as an error.
pub fn run_cmd(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, KernelError> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|source| KernelError::Spawn {
        program: program.into(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| KernelError::Io {
                context: format!("writing to {program}"),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| KernelError::Io {
        context: format!("waiting for {program}"),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(KernelError::Failed {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Applies one operation of the plan inside the lab `name`.
pub fn apply(name: &LabName, op: &Op) -> Result<(), KernelError> {
    let ns = |n: &NodeName| name.netns(n);
    match op {
        Op::AddNetns { node } => run_cmd("ip", &["netns", "add", &ns(node)], None).map(drop),
        Op::Sysctl { node, key, value } => write_sysctl(&ns(node), key, value),
        Op::Veth {
            a,
            a_iface,
            b,
            b_iface,
        } => run_cmd(
            "ip",
            &[
                "link",
                "add",
                "name",
                a_iface,
                "netns",
                &ns(a),
                "type",
                "veth",
                "peer",
                "name",
                b_iface,
                "netns",
                &ns(b),
            ],
            None,
        )
        .map(drop),
        Op::Bridge { node, iface } => run_cmd(
            "ip",
            &["-n", &ns(node), "link", "add", iface, "type", "bridge"],
            None,
        )
        .map(drop),
        Op::Enslave {
            node,
            iface,
            bridge,
        } => run_cmd(
            "ip",
            &["-n", &ns(node), "link", "set", iface, "master", bridge],
            None,
        )
        .map(drop),
        Op::Mtu { node, iface, mtu } => run_cmd(
            "ip",
            &[
                "-n",
                &ns(node),
                "link",
                "set",
                iface,
                "mtu",
                &mtu.to_string(),
            ],
            None,
        )
        .map(drop),
        Op::Up { node, iface } => {
            run_cmd("ip", &["-n", &ns(node), "link", "set", iface, "up"], None).map(drop)
        }
        Op::Addr { node, iface, addr } => run_cmd(
            "ip",
            &[
                "-n",
                &ns(node),
                "addr",
                "add",
                &addr.to_string(),
                "dev",
                iface,
            ],
            None,
        )
        .map(drop),
        Op::Route { node, dest, via } => run_cmd(
            "ip",
            &[
                "-n",
                &ns(node),
                "route",
                "replace",
                &dest.to_string(),
                "via",
                &via.to_string(),
            ],
            None,
        )
        .map(drop),
        Op::LinkRoute {
            node,
            dest,
            iface,
            src,
        } => run_cmd(
            "ip",
            &[
                "-n",
                &ns(node),
                "route",
                "replace",
                &dest.to_string(),
                "dev",
                iface,
                "scope",
                "link",
                "src",
                &src.to_string(),
            ],
            None,
        )
        .map(drop),
        Op::Nft { node, script } => nft(&ns(node), script),
    }
}

/// Loads an nftables script inside a namespace (one atomic batch).
pub fn nft(netns: &str, script: &str) -> Result<(), KernelError> {
    run_cmd(
        "ip",
        &["netns", "exec", netns, "nft", "-f", "-"],
        Some(script),
    )
    .map(drop)
}

/// Reads a named nftables counter's packet count inside a namespace.
pub fn nft_counter_packets(netns: &str, table: &str, counter: &str) -> Result<u64, KernelError> {
    let out = run_cmd(
        "ip",
        &[
            "netns", "exec", netns, "nft", "-j", "list", "counter", "ip", table, counter,
        ],
        None,
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| KernelError::Failed {
        command: "nft -j list counter".into(),
        stderr: e.to_string(),
    })?;
    let packets = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|item| item["counter"]["packets"].as_u64());
    packets.ok_or_else(|| KernelError::Failed {
        command: "nft -j list counter".into(),
        stderr: format!("no counter in {out}"),
    })
}

/// Runs `f` on a fresh thread that has entered the network namespace
/// `netns`. Sockets created there stay in that namespace wherever they are
/// used afterwards.
pub fn in_netns<T, F>(netns: &str, f: F) -> Result<T, KernelError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    vpno_sys::netns::run_in(netns, f).map_err(|e| KernelError::Netns {
        netns: netns.into(),
        reason: e.source.to_string(),
    })
}

/// Sets a sysctl inside a namespace (the `/proc/sys/net` tree follows the
/// namespace of the thread that opens it).
pub fn write_sysctl(netns: &str, key: &str, value: &str) -> Result<(), KernelError> {
    let path = vpno_sys::sysctl::dotted(key);
    let value = value.to_string();
    in_netns(netns, move || {
        vpno_sys::sysctl::write(&path, &value).map_err(|e| KernelError::Io {
            context: format!("writing {}", e.path),
            source: e.source,
        })
    })?
}

/// Pids of processes inside a namespace.
pub fn netns_pids(netns: &str) -> Vec<i32> {
    run_cmd("ip", &["netns", "pids", netns], None)
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Name of the namespace a process is in, if it is a named one.
pub fn netns_of_pid(pid: i32) -> Option<String> {
    let out = run_cmd("ip", &["netns", "identify", &pid.to_string()], None).ok()?;
    let name = out.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Deletes a namespace (and with it every link inside it).
pub fn delete_netns(netns: &str) -> Result<(), KernelError> {
    run_cmd("ip", &["netns", "delete", netns], None).map(drop)
}

/// Whether a process with this pid is alive (zombies count as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Sends a signal to one pid; a vanished process is not an error.
pub fn signal(pid: i32, sig: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
}

/// Stops processes: SIGTERM, then SIGKILL for any still alive after `grace`.
pub fn stop_pids(pids: &[i32], grace: Duration) {
    for &pid in pids {
        signal(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in pids.iter().filter(|&&p| alive(p)) {
        signal(pid, Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A detached process to start inside a namespace.
#[derive(Debug, Clone)]
pub struct Daemon {
    /// Namespace to run in.
    pub netns: String,
    /// Program.
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// Starts a daemon in its own session (so it outlives the caller and ignores
/// the caller's terminal signals), output appended to `log`. Returns its pid:
/// `setsid` and `ip netns exec` both exec, so the pid is the daemon's own.
pub fn spawn_daemon(d: &Daemon, log: &Path) -> Result<i32, KernelError> {
    let io = |source| KernelError::Io {
        context: format!("opening {}", log.display()),
        source,
    };
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io)?;
    let err = out.try_clone().map_err(io)?;
    let mut cmd = Command::new("setsid");
    cmd.args(["ip", "netns", "exec", &d.netns, &d.program])
        .args(&d.args)
        .envs(d.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = cmd.spawn().map_err(|source| KernelError::Spawn {
        program: d.program.clone(),
        source,
    })?;
    // The child is reaped by whoever outlives it; we never wait on it here.
    Ok(child.id() as i32)
}

/// Which router namespace holds `vip` on its lan interface.
pub fn holds_address(netns: &str, addr: Ipv4Addr) -> bool {
    let Ok(out) = run_cmd("ip", &["-n", netns, "-j", "-4", "addr", "show"], None) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
        return false;
    };
    let want = addr.to_string();
    v.as_array().into_iter().flatten().any(|link| {
        link["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["local"].as_str() == Some(want.as_str()))
    })
}

/// The gateways (by their next-hop address) of the route clients take
/// through a router: the members of every nexthop group, or the gateway(s)
/// of default routes in any table, as the router installed them.
pub fn router_nexthops(netns: &str) -> Vec<Ipv4Addr> {
    let mut hops = Vec::new();
    if let Ok(out) = run_cmd("ip", &["-n", netns, "-j", "nexthop", "show"], None)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&out)
    {
        let items = v.as_array().cloned().unwrap_or_default();
        let gateway_of = |id: u64| {
            items
                .iter()
                .find(|n| n["id"].as_u64() == Some(id))
                .and_then(|n| n["gateway"].as_str()?.parse().ok())
        };
        for group in items.iter().filter_map(|n| n["group"].as_array()) {
            for member in group {
                if let Some(ip) = member["id"].as_u64().and_then(gateway_of)
                    && !hops.contains(&ip)
                {
                    hops.push(ip);
                }
            }
        }
    }
    hops.sort();
    hops
}

/// Sets a link down (used to take a killed router off the network).
pub fn link_down(netns: &str, iface: &str) -> Result<(), KernelError> {
    run_cmd("ip", &["-n", netns, "link", "set", iface, "down"], None).map(drop)
}
