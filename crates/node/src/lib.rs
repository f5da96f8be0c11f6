//! The node agent (`vpn-operator node`): one per node, it makes the node's
//! share of the gateway network — a bridge, one VXLAN device with an FDB
//! entry per other node, the planned MTU — and installs the chained CNI
//! plugin (binary and conflist entry) that attaches opted-in pods to it.
//!
//! Shaped like the router: observe the kernel → [`plan::plan`] (pure) →
//! [`plan::diff`] → apply, each time the Node list changes and on a resync
//! timer. SIGTERM stops the agent and leaves everything in place (pods keep
//! their gateway network across agent restarts and upgrades, and a pod that
//! asked for the VPN never starts without it); `--uninstall` removes exactly
//! what the agent made.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod conflist;
pub mod kernel;
pub mod nodes;
pub mod plan;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::json;
use tracing::{info, warn};
use vpno_net::slices::{self, SliceError, SliceLayout};

pub use conflist::{CniInstall, ConflistError};
pub use kernel::{KernelError, NetlinkKernel, NodeKernel};
pub use nodes::{NodeSource, NodeWatch, NodesError, SLICE_ANNOTATION};
pub use plan::{Desired, GatewaySpec, NodeInfo, PlanError};

/// `vpn-operator node` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// This node's name (as in its Node object).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The MaskGateway served, `<namespace>/<name>` (written into the CNI entry).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub gateway: Option<String>,
    /// The gateway network.
    #[arg(long, default_value = slices::DEFAULT_NETWORK)]
    pub network: Ipv4Net,
    /// Prefix length of each node's slice of the network.
    #[arg(long, default_value_t = slices::DEFAULT_SLICE_PREFIX)]
    pub slice_prefix: u8,
    /// The router VIP (client pods' next hop).
    #[arg(long, default_value = "192.168.24.1")]
    pub vip: Ipv4Addr,
    /// Destinations that stay on the pods' primary interface (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<Ipv4Net>,
    /// Tunnel MTU to use when the underlay allows it.
    #[arg(long)]
    pub tunnel_mtu: Option<u32>,
    /// The gateway bridge's name.
    #[arg(long, default_value = "vpno-gw0")]
    pub bridge: String,
    /// The VXLAN device's name.
    #[arg(long, default_value = "vpno-vx0")]
    pub vxlan: String,
    /// VXLAN network identifier.
    #[arg(long, default_value_t = 4242)]
    pub vni: u32,
    /// VXLAN UDP port.
    #[arg(long, default_value_t = 4789)]
    pub vxlan_port: u16,
    /// The CNI config directory holding the cluster's conflist.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The CNI bin directory.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The binary copied to `<cni-bin-dir>/vpno-cni` (default: this executable).
    #[arg(long)]
    pub cni_binary: Option<PathBuf>,
    /// Kubeconfig the plugin reads pod annotations with (written into the entry).
    #[arg(long)]
    pub cni_kubeconfig: Option<PathBuf>,
    /// Seconds between re-reads of the kernel state when no Node changed.
    #[arg(long, default_value_t = 30)]
    pub resync_seconds: u64,
    /// Remove the conflist entry, the plugin binary, the VXLAN device and the bridge, then exit.
    #[arg(long)]
    pub uninstall: bool,
}

/// Errors of the node agent.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A flag is wrong.
    #[error("{0}")]
    Config(String),
    /// The slice layout is wrong.
    #[error(transparent)]
    Slice(#[from] SliceError),
    /// This node's state cannot be planned.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The kernel refused.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The CNI config or binary.
    #[error(transparent)]
    Cni(#[from] ConflistError),
    /// The Node list.
    #[error(transparent)]
    Nodes(#[from] NodesError),
    /// The Kubernetes client.
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// Several teardown steps failed.
    #[error("uninstall: {}", .0.join("; "))]
    Uninstall(Vec<String>),
}

/// What the agent writes into the node's CNI config besides the plan.
#[derive(Debug, Clone)]
pub struct CniSettings {
    /// Where.
    pub install: CniInstall,
    /// The binary to copy (None: leave the bin directory alone).
    pub binary: Option<PathBuf>,
    /// `<namespace>/<name>` of the MaskGateway.
    pub gateway: (String, String),
    /// The router VIP.
    pub vip: Ipv4Addr,
    /// Excluded destinations.
    pub excludes: Vec<Ipv4Net>,
    /// Kubeconfig for the plugin.
    pub kubeconfig: Option<PathBuf>,
}

impl CniSettings {
    /// The plugin's conflist entry for `desired`.
    pub fn entry(&self, network: Ipv4Net, desired: &Desired) -> serde_json::Value {
        let mut e = json!({
            "type": conflist::PLUGIN_TYPE,
            "gateway": { "namespace": self.gateway.0, "name": self.gateway.1 },
            "network": network.trunc(),
            "slice": desired.slice,
            "vip": self.vip,
            "excludes": self.excludes,
            "mtu": desired.mtu,
            "bridge": desired.bridge,
            "capabilities": { "io.kubernetes.cri.pod-annotations": true },
        });
        if let Some(k) = &self.kubeconfig {
            e["kubeconfig"] = json!(k);
        }
        e
    }
}

/// One node's agent: the kernel, what it is configured to make, and the
/// last plan applied.
pub struct Agent<K> {
    kernel: K,
    spec: GatewaySpec,
    cni: Option<CniSettings>,
    last: Option<Desired>,
}

impl<K: NodeKernel> Agent<K> {
    /// An agent over `kernel`; `cni: None` leaves the CNI config alone.
    pub fn new(kernel: K, spec: GatewaySpec, cni: Option<CniSettings>) -> Self {
        Self {
            kernel,
            spec,
            cni,
            last: None,
        }
    }

    /// The last plan applied.
    pub fn last(&self) -> Option<&Desired> {
        self.last.as_ref()
    }

    /// Observe → plan → diff → apply for `nodes`, then the CNI entry (after
    /// the links exist, so no pod is attached to a missing bridge).
    pub async fn reconcile(&mut self, nodes: &[NodeInfo]) -> Result<&Desired, NodeError> {
        let local = plan::local_address(&self.spec, nodes)?;
        let underlay = self.kernel.underlay_mtu(local).await?;
        let desired = plan::plan(&self.spec, nodes, underlay)?;
        self.report(&desired);
        let observed = self
            .kernel
            .observe(&self.spec.bridge, &self.spec.vxlan)
            .await?;
        for op in plan::diff(&desired, &observed) {
            info!(?op, "applying");
            self.kernel.apply(&op).await?;
        }
        if let Some(cni) = &self.cni {
            if let Some(binary) = &cni.binary
                && cni.install.install_binary(binary)?
            {
                info!(path = %cni.install.plugin_path().display(), "installed the CNI plugin");
            }
            if cni
                .install
                .install_entry(&cni.entry(self.spec.layout.network, &desired))?
            {
                info!(dir = %cni.install.conf_dir.display(), "wrote the CNI config entry");
            }
        }
        Ok(self.last.insert(desired))
    }

    /// Logs what changed about the plan that the operator must know.
    fn report(&self, d: &Desired) {
        let before = self.last.as_ref();
        if before.map(|b| &b.mtu_reduced) != Some(&d.mtu_reduced)
            && let Some(why) = &d.mtu_reduced
        {
            warn!(mtu = d.mtu, reason = %why, "gateway network MTU reduced");
        }
        if before.map(|b| &b.skipped) != Some(&d.skipped) && !d.skipped.is_empty() {
            warn!(nodes = ?d.skipped, "nodes without an IPv4 InternalIP are left out of the gateway network");
        }
        if before.map(|b| b.slice) != Some(d.slice) {
            info!(slice = %d.slice, mtu = d.mtu, "this node's slice of the gateway network");
        }
    }

    /// Removes our conflist entry, the plugin binary, the VXLAN device and
    /// the bridge; keeps going after a failure and reports every error.
    pub async fn uninstall(&self) -> Result<(), NodeError> {
        let mut errors = Vec::new();
        if let Some(cni) = &self.cni {
            if let Err(e) = cni.install.remove_entry() {
                errors.push(e.to_string());
            }
            if cni.binary.is_some()
                && let Err(e) = cni.install.remove_binary()
            {
                errors.push(e.to_string());
            }
        }
        match self
            .kernel
            .observe(&self.spec.bridge, &self.spec.vxlan)
            .await
        {
            Ok(observed) => {
                for op in plan::teardown(&self.spec.bridge, &self.spec.vxlan, &observed) {
                    if let Err(e) = self.kernel.apply(&op).await {
                        errors.push(e.to_string());
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NodeError::Uninstall(errors))
        }
    }
}

/// The planner's spec from the flags.
pub fn gateway_spec(args: &NodeArgs) -> Result<GatewaySpec, NodeError> {
    Ok(GatewaySpec {
        node: args.node_name.clone(),
        bridge: args.bridge.clone(),
        vxlan: args.vxlan.clone(),
        vni: args.vni,
        port: args.vxlan_port,
        layout: SliceLayout::with_infrastructure_slice(args.network, args.slice_prefix)?,
        tunnel_mtu: args.tunnel_mtu,
    })
}

/// The CNI settings from the flags (`--gateway` is required unless uninstalling).
pub fn cni_settings(args: &NodeArgs) -> Result<CniSettings, NodeError> {
    let gateway = match &args.gateway {
        Some(g) => g
            .split_once('/')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
            .map(|(ns, n)| (ns.to_string(), n.to_string()))
            .ok_or_else(|| {
                NodeError::Config(format!("--gateway {g:?} is not <namespace>/<name>"))
            })?,
        None if args.uninstall => (String::new(), String::new()),
        None => {
            return Err(NodeError::Config(
                "--gateway <namespace>/<name> is required".into(),
            ));
        }
    };
    let binary = match &args.cni_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| {
            NodeError::Config(format!(
                "cannot find this executable to install as the CNI plugin: {e}"
            ))
        })?,
    };
    Ok(CniSettings {
        install: CniInstall {
            conf_dir: args.cni_conf_dir.clone(),
            bin_dir: args.cni_bin_dir.clone(),
        },
        binary: Some(binary),
        gateway,
        vip: args.vip,
        excludes: args.exclude.clone(),
        kubeconfig: args.cni_kubeconfig.clone(),
    })
}

/// Runs the agent until SIGTERM/ctrl-c (or, with `--uninstall`, removes
/// everything and returns).
pub async fn run(args: NodeArgs) -> Result<(), NodeError> {
    let spec = gateway_spec(&args)?;
    let cni = cni_settings(&args)?;
    let mut agent = Agent::new(NetlinkKernel::connect()?, spec, Some(cni));
    if args.uninstall {
        agent.uninstall().await?;
        info!("uninstalled");
        return Ok(());
    }
    let mut source = NodeWatch::new(kube::Client::try_default().await?);
    let resync = Duration::from_secs(args.resync_seconds.max(1));
    tokio::select! {
        r = drive(&mut agent, &mut source, resync) => r,
        _ = vpno_sys::shutdown_signal() => {
            info!("stopping; the gateway network and CNI entry stay (use --uninstall to remove them)");
            Ok(())
        }
    }
}

/// Reconciles on every node list from `source`, and again every `resync`
/// with the last list; a failed reconcile is logged and retried.
pub async fn drive<K: NodeKernel, S: NodeSource>(
    agent: &mut Agent<K>,
    source: &mut S,
    resync: Duration,
) -> Result<(), NodeError> {
    let mut nodes = source.next().await?;
    loop {
        if let Err(e) = agent.reconcile(&nodes).await {
            warn!(error = %e, "reconciling the node's gateway network");
        }
        match tokio::time::timeout(resync, source.next()).await {
            Ok(next) => nodes = next?,
            Err(_elapsed) => {}
        }
    }
}
