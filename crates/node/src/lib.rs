//! The node agent (`vpn-operator node`): one per node, it makes the node's
//! share of every MaskGateway's network — per MaskGateway a bridge and one
//! VXLAN device with an FDB entry per other node, the planned MTU — the
//! bridges' anti-spoofing chain, and the chained CNI plugin's install (the
//! binary, one conflist entry per MaskGateway, a kubeconfig for the plugin).
//!
//! Shaped like the router: observe the kernel → [`plan::plan`] (pure) →
//! [`plan::diff`] → apply, each time a Node or MaskGateway changes and on a
//! resync timer. MaskGateways come from the API server ([`cluster`]): names
//! and VNI from the uid, the node's slice from `status.nodes`, VIP, excludes
//! and MTU from `status.network` ([`gateways`]). Everything made for a
//! MaskGateway that is gone is removed. SIGTERM stops the agent and leaves
//! the networks in place while MaskGateways exist (pods keep their gateway
//! network across agent restarts and upgrades, and a pod that asked for the
//! VPN never starts without it), and removes everything when none is left;
//! `--uninstall` removes exactly what the agent made.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod cluster;
pub mod conflist;
pub mod gateways;
pub mod kernel;
pub mod kubeconfig;
pub mod notices;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};

pub use cluster::{Cluster, ClusterError, ClusterSource, ClusterWatch};
pub use conflist::{CniInstall, ConflistError};
pub use gateways::{GatewayInfo, Served};
pub use kernel::{KernelError, NetlinkKernel, NodeKernel};
pub use kubeconfig::KubeconfigError;
pub use notices::{KubeEvents, NoEvents, Notice, NoticeSink};
pub use plan::{Desired, GatewaySpec, NodeInfo, PlanError};

/// Prefix of the per-MaskGateway address store directories under `--cni-data-dir`.
pub const STORE_PREFIX: &str = "gw-";

/// `vpn-operator node` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// This node's name (as in its Node object).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// VXLAN UDP port of every gateway network.
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
    /// Kubeconfig the plugin reads pods with (default: one written to
    /// `<cni-conf-dir>/vpno-cni.d/kubeconfig` from this Pod's service account).
    #[arg(long)]
    pub cni_kubeconfig: Option<PathBuf>,
    /// Where the plugin keeps its address leases (one directory per MaskGateway).
    #[arg(long, default_value = "/var/lib/cni/vpno")]
    pub cni_data_dir: PathBuf,
    /// Seconds between re-reads of the kernel state when nothing changed.
    #[arg(long, default_value_t = 30)]
    pub resync_seconds: u64,
    /// Remove every conflist entry, the plugin binary and kubeconfig, every
    /// gateway bridge and VXLAN device, the anti-spoofing table and the
    /// address stores, then exit.
    #[arg(long)]
    pub uninstall: bool,
}

/// Errors of the node agent.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A flag is wrong.
    #[error("{0}")]
    Config(String),
    /// This node's state cannot be planned.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The kernel refused.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The CNI config or binary.
    #[error(transparent)]
    Cni(#[from] ConflistError),
    /// The plugin's kubeconfig.
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    /// The Node/MaskGateway watch.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The Kubernetes client.
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// Several steps failed (teardown keeps going).
    #[error("{}", .0.join("; "))]
    Several(Vec<String>),
}

/// Where the plugin's kubeconfig comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginKubeconfig {
    /// None: the plugin uses the runtime's pod annotations (selectors unavailable).
    None,
    /// This file, written by someone else.
    Given(PathBuf),
    /// Written here from the agent's service account, kept current.
    FromServiceAccount(PathBuf),
}

impl PluginKubeconfig {
    fn path(&self) -> Option<&Path> {
        match self {
            Self::None => None,
            Self::Given(p) | Self::FromServiceAccount(p) => Some(p),
        }
    }
}

/// What the agent installs for the CNI plugin.
#[derive(Debug, Clone)]
pub struct CniSettings {
    /// Where.
    pub install: CniInstall,
    /// The binary to copy (None: leave the bin directory alone).
    pub binary: Option<PathBuf>,
    /// The plugin's kubeconfig.
    pub kubeconfig: PluginKubeconfig,
    /// The plugin's address stores (`<data_dir>/gw-<uid>` per MaskGateway).
    pub data_dir: PathBuf,
}

impl CniSettings {
    /// The address store directory of the MaskGateway with `uid`.
    pub fn store_dir(&self, uid: &str) -> PathBuf {
        self.data_dir.join(format!("{STORE_PREFIX}{uid}"))
    }

    /// The plugin's conflist entry for one served gateway network.
    pub fn entry(&self, served: &Served, desired: &Desired) -> serde_json::Value {
        let gw = &served.gateway;
        let mut e = json!({
            "type": conflist::PLUGIN_TYPE,
            "gateway": { "namespace": gw.namespace, "name": gw.name },
            "network": served.network.cidr,
            "slice": desired.slice,
            "vip": served.network.vip,
            "excludes": served.network.excludes,
            "mtu": desired.mtu,
            "bridge": desired.bridge,
            "dataDir": self.store_dir(&gw.uid),
            "capabilities": { "io.kubernetes.cri.pod-annotations": true },
        });
        if let Some(k) = self.kubeconfig.path() {
            e["kubeconfig"] = json!(k);
        }
        if let Some(c) = &gw.clients {
            e["clients"] = json!(c);
        }
        e
    }
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Gateway networks in place on this node (`namespace/name` → plan).
    pub served: BTreeMap<String, Desired>,
    /// Gateway networks not served yet, and why.
    pub waiting: Vec<(String, String)>,
    /// Gateway networks whose planning or kernel work failed, and why.
    pub failed: Vec<(String, String)>,
    /// Links removed because their MaskGateway is gone.
    pub removed: Vec<String>,
}

/// One node's agent: the kernel, what it installs, and the last pass.
pub struct Agent<K> {
    kernel: K,
    node: String,
    port: u16,
    cni: Option<CniSettings>,
    last: Summary,
}

impl<K: NodeKernel> Agent<K> {
    /// An agent for `node` over `kernel`; `cni: None` leaves the CNI config alone.
    pub fn new(kernel: K, node: impl Into<String>, port: u16, cni: Option<CniSettings>) -> Self {
        Self {
            kernel,
            node: node.into(),
            port,
            cni,
            last: Summary::default(),
        }
    }

    /// The last pass's summary.
    pub fn last(&self) -> &Summary {
        &self.last
    }

    /// One pass over `cluster`: the anti-spoofing chain, every served
    /// gateway network's links, the removal of those whose MaskGateway is
    /// gone, then the CNI install (after the links exist, so no pod is attached
    /// to a missing bridge). A gateway network that fails is reported and
    /// left as it was; the others go on.
    pub async fn reconcile(&mut self, cluster: &Cluster) -> Result<&Summary, NodeError> {
        let (served, waiting) = gateways::serve(&self.node, self.port, &cluster.gateways);
        let mut summary = Summary {
            waiting,
            ..Default::default()
        };
        // The chain first, so no bridge exists unguarded (after a reboot the
        // runtime retries pods as soon as their bridge appears). On while any
        // MaskGateway exists (a waiting one may still have ports registered):
        // removing the table forgets every registered port.
        let allowed = vpno_cni::guard::allowed_macs();
        let guard = (!cluster.uids.is_empty()).then_some(allowed.as_slice());
        self.kernel.guard(guard).await?;
        let mut ready = Vec::new();
        for s in served {
            let id = format!("{}/{}", s.gateway.namespace, s.gateway.name);
            match self.build(&s.spec, &cluster.nodes).await {
                Ok(d) => {
                    summary.served.insert(id, d.clone());
                    ready.push((s, d));
                }
                Err(e) => summary.failed.push((id, e.to_string())),
            }
        }
        summary.removed = self.remove_gone(&cluster.uids).await?;
        if let Some(cni) = &self.cni {
            install_cni(cni, &ready)?;
            remove_gone_stores(&cni.data_dir, &cluster.uids);
        }
        self.report(&summary);
        self.last = summary;
        Ok(&self.last)
    }

    /// Observe → plan → diff → apply for one gateway network.
    async fn build(&self, spec: &GatewaySpec, nodes: &[NodeInfo]) -> Result<Desired, NodeError> {
        let local = plan::local_address(spec, nodes)?;
        let underlay = self.kernel.underlay_mtu(local).await?;
        let desired = plan::plan(spec, nodes, underlay)?;
        let observed = self.kernel.observe(&spec.bridge, &spec.vxlan).await?;
        for op in plan::diff(&desired, &observed) {
            info!(?op, bridge = %spec.bridge, "applying");
            self.kernel.apply(&op).await?;
        }
        Ok(desired)
    }

    /// Deletes the links of gateway networks whose MaskGateway is not in `uids`.
    async fn remove_gone(&self, uids: &BTreeSet<String>) -> Result<Vec<String>, NodeError> {
        let keep: BTreeSet<String> = uids
            .iter()
            .flat_map(|u| [gateways::bridge_name(u), gateways::vxlan_name(u)])
            .collect();
        let mut gone: Vec<String> = self
            .kernel
            .our_links()
            .await?
            .into_iter()
            .filter(|l| !keep.contains(l))
            .collect();
        // VXLAN devices before bridges.
        gone.sort_by_key(|l| !l.starts_with(gateways::VXLAN_PREFIX));
        for link in &gone {
            info!(%link, "removing the link of a MaskGateway that is gone");
            self.kernel
                .apply(&plan::Op::DeleteLink(link.clone()))
                .await?;
        }
        Ok(gone)
    }

    /// Logs what changed that the operator must know.
    fn report(&self, now: &Summary) {
        for (id, d) in &now.served {
            let before = self.last.served.get(id);
            if before.map(|b| &b.mtu_reduced) != Some(&d.mtu_reduced)
                && let Some(why) = &d.mtu_reduced
            {
                warn!(gateway = %id, mtu = d.mtu, reason = %why, "gateway network MTU reduced");
            }
            if before.map(|b| &b.skipped) != Some(&d.skipped) && !d.skipped.is_empty() {
                warn!(gateway = %id, nodes = ?d.skipped, "nodes without an IPv4 InternalIP are left out of the gateway network");
            }
            if before.map(|b| (b.slice, b.mtu)) != Some((d.slice, d.mtu)) {
                info!(gateway = %id, bridge = %d.bridge, vni = d.params.vni, slice = %d.slice, mtu = d.mtu, "serving the gateway network");
            }
        }
        for (id, why) in &now.waiting {
            if !self.last.waiting.iter().any(|(i, w)| i == id && w == why) {
                info!(gateway = %id, "waiting: {why}");
            }
        }
        for (id, why) in &now.failed {
            warn!(gateway = %id, "cannot serve the gateway network: {why}");
        }
    }

    /// Removes every conflist entry of ours, the plugin binary and the
    /// kubeconfig the agent wrote, every gateway link, the anti-spoofing
    /// table and the address stores; keeps going after a failure and
    /// reports every error.
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
            if let PluginKubeconfig::FromServiceAccount(p) = &cni.kubeconfig
                && let Err(e) = remove_file(p)
            {
                errors.push(e);
            }
            remove_gone_stores(&cni.data_dir, &BTreeSet::new());
        }
        match self.remove_gone(&BTreeSet::new()).await {
            Ok(_) => {}
            Err(e) => errors.push(e.to_string()),
        }
        if let Err(e) = self.kernel.guard(None).await {
            errors.push(e.to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NodeError::Several(errors))
        }
    }
}

fn remove_file(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("removing {}: {e}", path.display()))
        }
        _ => {
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir(dir); // only if empty
            }
            Ok(())
        }
    }
}

/// The CNI side of a pass: binary, kubeconfig, one entry per ready network.
fn install_cni(cni: &CniSettings, ready: &[(Served, Desired)]) -> Result<(), NodeError> {
    if ready.is_empty() {
        if cni.install.remove_entry()? {
            info!(dir = %cni.install.conf_dir.display(), "removed the CNI config entries");
        }
        return Ok(());
    }
    if let Some(binary) = &cni.binary
        && cni.install.install_binary(binary)?
    {
        info!(path = %cni.install.plugin_path().display(), "installed the CNI plugin");
    }
    if let PluginKubeconfig::FromServiceAccount(path) = &cni.kubeconfig {
        let creds = kubeconfig::in_cluster()?;
        if kubeconfig::write(path, &kubeconfig::render(&creds))? {
            info!(path = %path.display(), "wrote the CNI plugin's kubeconfig");
        }
    }
    let entries: Vec<serde_json::Value> = ready.iter().map(|(s, d)| cni.entry(s, d)).collect();
    if cni.install.install_entries(&entries)? {
        info!(dir = %cni.install.conf_dir.display(), entries = entries.len(), "wrote the CNI config entries");
    }
    Ok(())
}

/// Removes the address stores (`gw-<uid>`) of MaskGateways not in `uids`.
fn remove_gone_stores(data_dir: &Path, uids: &BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(uid) = name.strip_prefix(STORE_PREFIX)
            && !uids.contains(uid)
        {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => {
                    info!(dir = %e.path().display(), "removed the address store of a MaskGateway that is gone")
                }
                Err(err) => {
                    warn!(dir = %e.path().display(), "cannot remove an address store: {err}")
                }
            }
        }
    }
}

/// The CNI settings from the flags.
pub fn cni_settings(args: &NodeArgs) -> Result<CniSettings, NodeError> {
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
        kubeconfig: match &args.cni_kubeconfig {
            Some(p) => PluginKubeconfig::Given(p.clone()),
            None => PluginKubeconfig::FromServiceAccount(
                args.cni_conf_dir.join("vpno-cni.d").join("kubeconfig"),
            ),
        },
        data_dir: args.cni_data_dir.clone(),
    })
}

/// Runs the agent until SIGTERM/ctrl-c (or, with `--uninstall`, removes
/// everything and returns).
pub async fn run(args: NodeArgs) -> Result<(), NodeError> {
    let cni = cni_settings(&args)?;
    let mut agent = Agent::new(
        NetlinkKernel::connect()?,
        args.node_name.clone(),
        args.vxlan_port,
        Some(cni),
    );
    if args.uninstall {
        agent.uninstall().await?;
        info!("uninstalled");
        return Ok(());
    }
    let client = kube::Client::try_default().await?;
    let mut source = ClusterWatch::new(client.clone());
    let events = KubeEvents::new(client, &args.node_name);
    let resync = Duration::from_secs(args.resync_seconds.max(1));
    let mut seen = None;
    tokio::select! {
        r = drive(&mut agent, &mut source, &events, resync, &mut seen) => r,
        _ = vpno_sys::shutdown_signal() => {
            match seen {
                Some(c) if c.uids.is_empty() => {
                    info!("stopping with no MaskGateway left: removing everything");
                    agent.uninstall().await
                }
                _ => {
                    info!("stopping; the gateway networks and CNI entries stay while MaskGateways exist (use --uninstall to remove them)");
                    Ok(())
                }
            }
        }
    }
}

/// Reconciles on every picture from `source`, and again every `resync`
/// with the last one (kept in `seen`); publishes what changed that the
/// operator must hear about; a failed pass is logged and retried.
pub async fn drive<K: NodeKernel, S: ClusterSource, E: NoticeSink>(
    agent: &mut Agent<K>,
    source: &mut S,
    events: &E,
    resync: Duration,
    seen: &mut Option<Cluster>,
) -> Result<(), NodeError> {
    let mut cluster = source.next().await?;
    loop {
        *seen = Some(cluster.clone());
        let before = agent.last().clone();
        let node = agent.node.clone();
        match agent.reconcile(&cluster).await {
            Ok(after) => {
                for n in notices::notices(&node, &before, after, &cluster.gateways) {
                    events.publish(&n).await;
                }
            }
            Err(e) => warn!(error = %e, "reconciling the node's gateway networks"),
        }
        match tokio::time::timeout(resync, source.next()).await {
            Ok(next) => cluster = next?,
            Err(_elapsed) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_carries_network_slice_store_kubeconfig_and_selectors() {
        let mut gw = vpno_api::gateway::MaskGateway::new("egress", Default::default());
        gw.metadata.namespace = Some("vpn".into());
        gw.metadata.uid = Some("u1".into());
        gw.spec.clients = Some(Default::default());
        gw.status = Some(vpno_api::gateway::MaskGatewayStatus {
            network: Some(vpno_api::gateway::NetworkStatus {
                cidr: "192.168.24.0/22".into(),
                vip: "192.168.24.1".into(),
                mtu: Some(1400),
                excludes: vec!["10.96.0.0/12".into()],
            }),
            nodes: vec![vpno_api::gateway::NodeSlice {
                node: "a".into(),
                slice: "192.168.24.64/26".into(),
            }],
            ..Default::default()
        });
        let info = gateways::gateway_info(&gw).unwrap();
        let (served, _) = gateways::serve("a", 4789, &[info]);
        let nodes = [NodeInfo {
            name: "a".into(),
            address: Some("192.0.2.1".parse().unwrap()),
        }];
        let d = plan::plan(&served[0].spec, &nodes, 1500).unwrap();
        let cni = CniSettings {
            install: CniInstall {
                conf_dir: "/etc/cni/net.d".into(),
                bin_dir: "/opt/cni/bin".into(),
            },
            binary: None,
            kubeconfig: PluginKubeconfig::FromServiceAccount(
                "/etc/cni/net.d/vpno-cni.d/kubeconfig".into(),
            ),
            data_dir: "/var/lib/cni/vpno".into(),
        };
        let e = cni.entry(&served[0], &d);
        assert_eq!(e["type"], "vpno-cni");
        assert_eq!(e["gateway"], json!({"namespace": "vpn", "name": "egress"}));
        assert_eq!(e["network"], "192.168.24.0/22");
        assert_eq!(e["slice"], "192.168.24.64/26");
        assert_eq!(e["vip"], "192.168.24.1");
        assert_eq!(e["excludes"], json!(["10.96.0.0/12"]));
        assert_eq!(e["mtu"], 1400);
        assert_eq!(e["bridge"], gateways::bridge_name("u1"));
        assert_eq!(e["dataDir"], "/var/lib/cni/vpno/gw-u1");
        assert_eq!(e["kubeconfig"], "/etc/cni/net.d/vpno-cni.d/kubeconfig");
        assert_eq!(e["clients"], json!({}));
        // The plugin accepts what the agent writes.
        let mut conf = e.clone();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!("podnet");
        vpno_cni::config::PluginConfig::parse(conf.to_string().as_bytes()).unwrap();
    }
}
