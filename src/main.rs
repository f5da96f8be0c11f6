//! `vpn-operator`: one binary, one subcommand per component.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

/// Kubernetes-native VPN for workloads.
#[derive(Debug, Parser)]
#[command(name = "vpn-operator", version, about)]
struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "VPNO_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Mask API controllers against the current kubeconfig or in-cluster config.
    Controller(vpno_controller::ControllerArgs),
    /// Print the four CustomResourceDefinitions as one YAML stream.
    Crds(CrdsArgs),
    /// Run the gateway agent beside one VPN tunnel.
    Gateway(vpno_gateway::GatewayArgs),
    /// Run the router agent: health checks and the ECMP default route over gateways.
    Router(vpno_router::RouterArgs),
    /// Build and drive the network-namespace lab (root).
    Lab(vpno_lab::LabArgs),
    /// Run the REST API for on-demand VPN HTTP proxies.
    Api(vpno_server::ApiArgs),
    /// The chained CNI plugin (run by the container runtime; also entered as `vpno-cni`).
    Cni(vpno_cni::CniArgs),
    /// Run the split DNS resolver: cluster names to the cluster DNS, the rest to upstreams.
    Dns(vpno_dns::DnsArgs),
    /// Run the node agent: the gateway bridge, VXLAN links and the CNI plugin's install.
    Node(vpno_node::NodeArgs),
    /// Benchmarks that print figures measured in one run.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Slot assignment: 1,000 Masks over 20 providers on a local control plane.
    Slots(vpno_bench::SlotsArgs),
    /// Data plane: veth vs. routed path, 1 vs. N WireGuard gateways, failover.
    Dataplane(vpno_lab::bench::DataplaneArgs),
    /// Proxy API: latency and throughput of filtered `GET /servers` over a real catalog.
    Servers(vpno_server::bench::ServersArgs),
}

#[derive(Debug, clap::Args)]
struct CrdsArgs {
    /// Write one file per CRD into this directory instead of printing a stream.
    #[arg(long, value_name = "DIR")]
    write: Option<std::path::PathBuf>,
}

/// Prints the CRD stream, or writes one file per CRD (how `deploy/crds/` is made).
fn crds(args: CrdsArgs) -> anyhow::Result<()> {
    let Some(dir) = args.write else {
        print!("{}", vpno_api::crd::render_all()?);
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for crd in vpno_api::crd::all() {
        let path = dir.join(vpno_api::crd::file_name(&crd));
        std::fs::write(&path, vpno_api::crd::to_yaml(&crd)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The log filter when `RUST_LOG` is unset. hickory-server logs every query name at
/// info level; `vpn-operator dns` must not write the names pods resolve into logs.
const DEFAULT_LOG_FILTER: &str = "info,hickory_server=warn";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(vpno_cni::argv(std::env::args_os()));
    init_logging(cli.log_format);
    // kube and the API client use rustls; pick the ring provider explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Controller(args) => vpno_controller::run(args).await.context("controller")?,
        Command::Crds(args) => crds(args)?,
        Command::Gateway(args) => vpno_gateway::run(args).await.context("gateway")?,
        Command::Router(args) => vpno_router::run(args).await.context("router")?,
        Command::Lab(args) => vpno_lab::run(args).await.context("lab")?,
        Command::Api(args) => vpno_server::run(args).await.context("api")?,
        Command::Cni(args) => std::process::exit(vpno_cni::run(args).await),
        Command::Dns(args) => vpno_dns::run(args).await.context("dns")?,
        Command::Node(args) => vpno_node::run(args).await.context("node")?,
        Command::Bench(Bench::Slots(args)) => {
            vpno_bench::run_slots(args).await.context("bench slots")?
        }
        Command::Bench(Bench::Dataplane(args)) => vpno_lab::bench::run(args)
            .await
            .context("bench dataplane")?,
        Command::Bench(Bench::Servers(args)) => vpno_server::bench::run(args)
            .await
            .context("bench servers")?,
    }
    Ok(())
}
