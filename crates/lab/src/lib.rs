//! Network-namespace lab that runs the whole data plane on one host: an
//! "internet" with an IP-echo service and a TCP sink, VPN providers (real
//! userspace WireGuard servers with NAT), gateways (`vpn-operator gateway`),
//! routers (`vpn-operator router`) and clients on a bridged gateway network.
//!
//! Planning ([`plan`], [`render`], [`agents`]) is pure; [`kernel`] is the
//! only module that touches the kernel.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agents;
pub mod bench;
pub mod daemons;
pub mod kernel;
pub mod lab;
pub mod plan;
pub mod render;
pub mod state;
pub mod status;
pub mod traffic;

use std::path::PathBuf;
use std::time::Duration;

use plan::{LabName, LabSpec, NodeName};

/// `vpn-operator lab`: build and drive the network-namespace lab (root).
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub select: LabSelect,
    /// What to do.
    #[command(subcommand)]
    pub command: LabCommand,
}

/// Selects a lab by name.
#[derive(Debug, Clone, clap::Args)]
pub struct LabSelect {
    /// Lab name: prefixes its namespaces (`vpno-<name>-gateway-1`) and state dir
    /// (`/run/vpno-lab/<name>`), so several labs can run at once.
    #[arg(long, global = true, default_value = "lab", env = "VPNO_LAB_NAME")]
    pub name: LabName,
}

/// The lab's subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LabCommand {
    /// Build the lab and wait until it is healthy.
    Up(UpArgs),
    /// Show gateways, routers and recent egress (live; --once for one print).
    Status(StatusArgs),
    /// Run a command inside a node's namespace: `lab exec client-1 -- curl http://192.0.2.80/`.
    Exec(ExecArgs),
    /// Fail a node: `gateway-I` loses its provider, `router-J` dies.
    Kill(NodeArgs),
    /// Undo `kill gateway-I`: its provider serves it again.
    Revive(NodeArgs),
    /// Remove everything of the lab (also after a crash); idempotent.
    Down(DownArgs),
    /// (internal) Echo service and TCP sink, run inside `internet`.
    #[command(hide = true)]
    ServeInternet(ServeArgs),
    /// (internal) A provider's WireGuard server, run inside `provider-K`.
    #[command(hide = true)]
    ServeProvider(ServeProviderArgs),
}

/// Arguments of `lab up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Number of gateways (spread round-robin over the providers).
    #[arg(long, default_value_t = 4)]
    pub gateways: u32,
    /// Number of VPN providers.
    #[arg(long, default_value_t = 2)]
    pub providers: u32,
    /// Number of routers (active/standby).
    #[arg(long, default_value_t = 2)]
    pub routers: u32,
    /// Number of clients.
    #[arg(long, default_value_t = 2)]
    pub clients: u32,
    /// How long to wait for everything to become healthy.
    #[arg(long, default_value = "60s", value_parser = vpno_sys::positive_duration)]
    pub timeout: Duration,
    /// The `vpn-operator` binary to run the agents with (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Print the status as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `lab status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Print JSON (one snapshot, includes `echo_url`).
    #[arg(long)]
    pub json: bool,
    /// Print one snapshot and exit instead of refreshing.
    #[arg(long)]
    pub once: bool,
}

/// Arguments of `lab exec`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// Node: internet, provider-K, gateway-I, router-J, client-C.
    pub node: NodeName,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Arguments naming one node.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Node: gateway-I or router-J.
    pub node: NodeName,
}

/// Arguments of `lab down`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownArgs {}

/// Arguments of the internal services.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The lab's state dir.
    #[arg(long)]
    pub state_dir: PathBuf,
}

/// Arguments of the internal provider server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeProviderArgs {
    /// The lab's state dir.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Provider index.
    #[arg(long)]
    pub provider: u32,
}

/// Errors of the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Not root.
    #[error("the lab needs root (network namespaces, nftables): run it with sudo")]
    NotRoot,
    /// A required program is missing.
    #[error("`{0}` is not installed (the lab needs iproute2, nftables and util-linux)")]
    MissingTool(String),
    /// A bad plan (name, counts).
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// The kernel refused something.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    /// Traffic from inside the lab failed.
    #[error(transparent)]
    Traffic(#[from] traffic::TrafficError),
    /// A lab of that name exists.
    #[error(
        "a lab named {0:?} already exists: use it, or remove it with `vpn-operator lab down --name {0}`"
    )]
    AlreadyExists(String),
    /// No state for that lab.
    #[error("no lab state in {dir}: {reason} (is the lab up? `vpn-operator lab up`)")]
    NotRunning {
        /// State dir.
        dir: PathBuf,
        /// Cause.
        reason: String,
    },
    /// State file I/O.
    #[error("lab state: {0}")]
    State(String),
    /// Building the topology failed (everything was removed again).
    #[error("building the lab failed (everything was removed again): {0}")]
    Build(String),
    /// The lab did not become healthy in time.
    #[error(
        "lab {name} did not become healthy in time: {problems}. Logs: {logs}/*.log; remove it with `vpn-operator lab down --name {name}`"
    )]
    Unhealthy {
        /// Lab name.
        name: String,
        /// What is wrong.
        problems: String,
        /// State dir with logs.
        logs: PathBuf,
    },
    /// Unknown node.
    #[error("lab {lab} has no node {node}")]
    NoSuchNode {
        /// Node.
        node: String,
        /// Lab.
        lab: String,
    },
    /// `kill` of a node that cannot fail that way.
    #[error(
        "cannot kill {0}: only gateway-I (provider outage) and router-J (process dies) can be killed"
    )]
    CannotKill(String),
    /// `revive` of a node that cannot be revived.
    #[error("cannot revive {0}: only a killed gateway-I can be revived")]
    CannotRevive(String),
    /// `exec` without a command.
    #[error("no command given: `vpn-operator lab exec NODE -- CMD ARGS...`")]
    EmptyCommand,
    /// Teardown left something behind.
    #[error("lab down left something behind: {0}")]
    Teardown(String),
    /// A lab service failed.
    #[error("lab service: {0}")]
    Daemon(String),
    /// The benchmark failed.
    #[error("benchmark: {0}")]
    Bench(String),
}

/// Runs one `lab` subcommand.
pub async fn run(args: LabArgs) -> Result<(), LabError> {
    let name = args.select.name;
    match args.command {
        LabCommand::Up(a) => {
            let spec = LabSpec {
                name: name.clone(),
                providers: a.providers,
                gateways: a.gateways,
                routers: a.routers,
                clients: a.clients,
            };
            let binary = match a.binary {
                Some(b) => b,
                None => std::env::current_exe()
                    .map_err(|e| LabError::State(format!("cannot find own binary: {e}")))?,
            };
            let opts = lab::UpOptions {
                spec,
                binary,
                timeout: a.timeout,
            };
            let report = lab::up(&opts).await?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report)
                        .map_err(|e| LabError::State(e.to_string()))?
                );
            } else {
                print!("{}", report.render());
                println!();
                println!("{}", how_to_try(&name, &report));
            }
            Ok(())
        }
        LabCommand::Status(a) => show_status(&name, &a).await,
        LabCommand::Exec(a) => {
            let code = lab::exec(&name, a.node, &a.command)?;
            if code != 0 {
                // Pass the command's exit code through, as `ip netns exec` does.
                std::process::exit(code);
            }
            Ok(())
        }
        LabCommand::Kill(a) => {
            lab::kill(&name, a.node)?;
            println!("{} killed", a.node);
            Ok(())
        }
        LabCommand::Revive(a) => {
            lab::revive(&name, a.node)?;
            println!("{} revived", a.node);
            Ok(())
        }
        LabCommand::Down(_) => {
            let r = lab::down(&name)?;
            println!(
                "lab {} removed: {} processes stopped, {} namespaces deleted{}",
                name,
                r.processes,
                r.namespaces,
                if r.state_dir {
                    ", state dir removed"
                } else {
                    ""
                }
            );
            Ok(())
        }
        LabCommand::ServeInternet(a) => daemons::serve_internet(&a.state_dir).await,
        LabCommand::ServeProvider(a) => daemons::serve_provider(&a.state_dir, a.provider).await,
    }
}

fn how_to_try(name: &LabName, report: &status::StatusReport) -> String {
    let n = if name.as_str() == "lab" {
        String::new()
    } else {
        format!(" --name {name}")
    };
    let n = n.as_str();
    let first_gateway = report
        .gateways
        .first()
        .map(|g| g.name.clone())
        .unwrap_or_else(|| "gateway-1".into());
    let active = report
        .active_router
        .clone()
        .unwrap_or_else(|| "router-1".into());
    format!(
        "Try it:\n  vpn-operator lab{n} exec client-1 -- curl -s {echo}      # prints the gateway's public IP\n  for i in $(seq 8); do vpn-operator lab{n} exec client-1 -- curl -s {echo}; done   # flows spread over gateways\n  vpn-operator lab{n} kill {first_gateway}      # provider outage: the router drops it within ~2 s\n  vpn-operator lab{n} kill {active}       # the standby router takes the VIP\n  vpn-operator lab{n} status              # live view (--once, --json)\n  vpn-operator lab{n} down                # remove everything",
        echo = report.echo_url
    )
}

async fn show_status(name: &LabName, a: &StatusArgs) -> Result<(), LabError> {
    use std::io::IsTerminal as _;
    if a.json {
        let r = status::collect(name).await?;
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| LabError::State(e.to_string()))?
        );
        return Ok(());
    }
    if a.once || !std::io::stdout().is_terminal() {
        print!("{}", status::collect(name).await?.render());
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg}\n{spinner} refreshing every second, Ctrl-C to quit",
        )
        .expect("static template"),
    );
    let stop = vpno_sys::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let r = status::collect(name).await?;
        bar.set_message(r.render());
        bar.tick();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut stop => { bar.finish(); return Ok(()); }
        }
    }
}
