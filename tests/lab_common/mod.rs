//! Shared helpers of the lab integration tests: run `vpn-operator lab` with a
//! per-test lab name, always `down` on drop, skip loudly without root.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vpno_lab::plan::{ECHO_ADDR, ECHO_PORT, LabName, NodeName, SINK_PORT, Topology};
use vpno_lab::state::{LabState, state_dir};

/// The `vpn-operator` binary: `VPNO_LAB_BINARY` if set, else the one cargo built for these tests.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VPNO_LAB_BINARY") {
        return p.into();
    }
    match option_env!("CARGO_BIN_EXE_vpn-operator") {
        Some(p) => p.into(),
        None => panic!("set VPNO_LAB_BINARY to a vpn-operator binary"),
    }
}

/// `true` if the test may run; otherwise prints SKIPPED (or panics under CI=true).
pub fn require_root(test: &str) -> bool {
    let tools = ["ip", "nft", "setsid"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    let ok = vpno_sys::is_root() && Path::new("/dev/net/tun").exists() && tools;
    vpno_sys::require(
        ok,
        &format!("{test} needs root, /dev/net/tun, ip, nft and setsid"),
    )
}

/// A running lab; `down` on drop.
pub struct Lab {
    /// The lab's name.
    pub name: LabName,
    bin: PathBuf,
}

impl Lab {
    /// A handle for lab `name` without bringing it up (removes leftovers of an earlier run).
    pub fn handle(name: &str) -> Lab {
        let lab = Lab {
            name: name.parse().expect("valid lab name"),
            bin: binary(),
        };
        let _ = lab.cli(&["down"]);
        lab
    }

    /// Brings up lab `name` with extra `up` flags, or `None` when the test must skip.
    pub fn up(test: &str, name: &str, flags: &[&str]) -> Option<Lab> {
        if !require_root(test) {
            return None;
        }
        let lab = Lab::handle(name);
        let started = Instant::now();
        let mut args = vec!["up", "--timeout", "90s"];
        args.extend_from_slice(flags);
        let out = lab.cli(&args);
        assert!(
            out.status.success(),
            "lab up failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            lab.logs()
        );
        eprintln!(
            "[{test}] lab {name} up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Some(lab)
    }

    /// Runs `vpn-operator lab <args> --name <name>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("lab")
            .args(args)
            .args(["--name", self.name.as_str()]);
        // Everything after `--` belongs to the command `exec` runs.
        if let Some(pos) = args.iter().position(|a| *a == "--") {
            cmd = Command::new(&self.bin);
            cmd.arg("lab")
                .args(&args[..pos])
                .args(["--name", self.name.as_str()])
                .args(&args[pos..]);
        }
        cmd.output().expect("run vpn-operator")
    }

    /// Runs a lab subcommand that must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "lab {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `status --json`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json is JSON")
    }

    /// The plan and pids the lab recorded.
    pub fn state(&self) -> LabState {
        LabState::load(&state_dir(&self.name)).expect("lab state")
    }

    /// The plan.
    pub fn topology(&self) -> Topology {
        self.state().topology
    }

    /// Real namespace name of a node.
    pub fn netns(&self, node: NodeName) -> String {
        self.name.netns(&node)
    }

    /// Tail of every log in the state dir (for failure messages).
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(dir) = std::fs::read_dir(state_dir(&self.name)) {
            for e in dir
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                s.push_str(&format!(
                    "--- {}\n{}\n",
                    e.path().display(),
                    lines[lines.len().saturating_sub(15)..].join("\n")
                ));
            }
        }
        s
    }

    /// The gateway nexthops the router in `router`'s namespace routes clients over.
    pub fn nexthops(&self, router: u32) -> Vec<Ipv4Addr> {
        vpno_lab::kernel::router_nexthops(&self.netns(NodeName::Router(router)))
    }

    /// Polls until `cond` holds (every 20 ms), up to `bound`; returns the time it took.
    pub fn wait_for(
        &self,
        what: &str,
        bound: Duration,
        mut cond: impl FnMut() -> bool,
    ) -> Duration {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < bound,
                "timed out after {bound:?} waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.cli(&["down"]);
        if !out.status.success() {
            eprintln!("lab down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// The echo service's address.
pub fn echo() -> SocketAddrV4 {
    SocketAddrV4::new(ECHO_ADDR, ECHO_PORT)
}

/// The sink's address.
pub fn sink() -> SocketAddrV4 {
    SocketAddrV4::new(ECHO_ADDR, SINK_PORT)
}

/// One GET of the echo service from `netns` on a fresh connection: the
/// address the echo saw and the local port used.
pub async fn echo_once(netns: &str, timeout: Duration) -> Result<(Ipv4Addr, u16), String> {
    let r = vpno_lab::traffic::http_get(netns, SocketAddr::V4(echo()), "/", timeout)
        .await
        .map_err(|e| e.to_string())?;
    let ip = r
        .body
        .trim()
        .parse()
        .map_err(|_| format!("bad echo body {:?}", r.body))?;
    Ok((ip, r.local_port))
}

/// An nftables capture in `internet`: counts packets from the given sources.
pub struct Capture {
    netns: String,
}

const CAPTURE_TABLE: &str = "vpno_test_capture";

impl Capture {
    /// Starts counting, in `internet`, packets from the gateway network, from
    /// gateways' uplink (non-tunnel) addresses and from the providers' exit addresses.
    pub fn start(lab: &Lab) -> Capture {
        let t = lab.topology();
        let netns = lab.netns(NodeName::Internet);
        let uplinks = t
            .gateways
            .iter()
            .map(|g| g.uplink_addr.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let exits = t
            .gateways
            .iter()
            .map(|g| g.public_ip.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let script = format!(
            "table ip {CAPTURE_TABLE} {{\n counter lan {{ }}\n counter uplinks {{ }}\n counter exits {{ }}\n chain c {{\n  type filter hook prerouting priority -500; policy accept;\n  ip saddr {} counter name lan\n  ip saddr {{ {uplinks} }} counter name uplinks\n  ip saddr {{ {exits} }} counter name exits\n }}\n}}\n",
            t.lan_subnet
        );
        vpno_lab::kernel::nft(&netns, &script).expect("install capture");
        Capture { netns }
    }

    /// Packets counted so far by counter `name` (`lan`, `uplinks`, `exits`).
    pub fn packets(&self, name: &str) -> u64 {
        vpno_lab::kernel::nft_counter_packets(&self.netns, CAPTURE_TABLE, name)
            .expect("read capture counter")
    }
}
