//! `vpn-operator cni`: the chained CNI plugin (spec 0.4.0 and 1.0.0) that
//! attaches pods opting into a MaskGateway to the node's gateway bridge.
//!
//! The runtime runs it after the cluster's own plugin with `CNI_COMMAND`
//! etc. in the environment and the config (with `prevResult`) on stdin.
//! Pods that do not opt in get the previous result back untouched. Opted-in
//! pods get a veth (`vpn0`) onto the bridge, an address from the node's slice,
//! the gateway network's MTU, and `0.0.0.0/0` minus the excludes via the
//! router VIP, each route twinned with an `unreachable` route that outlives
//! the interface. The MaskGateway's own gateways and routers ([`membership`])
//! get their fixed address, no routes and forwarding on. Every client port
//! is registered in the bridge's anti-spoofing table ([`guard`]) before it
//! joins the bridge. The binary is entered as `vpn-operator cni` or through a
//! link named `vpno-cni` (what CNI config `"type"` names), see [`argv`].
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod config;
pub mod guard;
pub mod ipam;
pub mod kernel;
pub mod membership;
pub mod plan;
pub mod pods;
pub mod spec;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::path::Path;

use ipnet::Ipv4Net;

use crate::config::PluginConfig;
use crate::ipam::{AddressStore, IpamError, Lease, Pool};
use crate::kernel::{KernelError, PodNetwork};
use crate::membership::{Membership, Role};
use crate::pods::{GivenAnnotations, KubeLookup, PodLookup};
use crate::spec::{CniEnv, CniError, Code, Command};

/// The file name under which the runtime finds the plugin (`"type"` in the config).
pub const PLUGIN_NAME: &str = "vpno-cni";

/// `vpn-operator cni` takes no arguments: the runtime speaks through the
/// environment and stdin.
#[derive(Debug, Clone, clap::Args)]
pub struct CniArgs {}

/// The command line to parse: when the binary was started as
/// [`PLUGIN_NAME`] (a symlink or copy in the CNI bin directory, which the
/// runtime runs without arguments), `cni` is inserted as the subcommand.
pub fn argv(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let invoked_as_plugin = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == PLUGIN_NAME);
    if invoked_as_plugin {
        args.insert(1, "cni".into());
    }
    args
}

/// Runs one invocation: reads env and stdin, prints the result or the error
/// JSON on stdout, returns the exit code.
pub async fn run(_args: CniArgs) -> i32 {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = config::version_of(&stdin)
        .filter(|v| spec::check_version(v).is_ok())
        .unwrap_or_else(|| spec::SUPPORTED_VERSIONS[1].to_string());
    let outcome = match read {
        Err(e) => Err(CniError::new(
            Code::Io,
            "cannot read the configuration from stdin",
            e.to_string(),
        )),
        Ok(_) => match CniEnv::from_env(|k| std::env::var(k).ok()) {
            Err(e) => Err(e),
            Ok(env) => invoke(&env, &stdin, &kernel::Netlink).await,
        },
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(json)) => {
            let _ = writeln!(out, "{json}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            tracing::error!(code = e.code as u32, "{e}");
            let _ = writeln!(out, "{}", e.to_json(&version));
            1
        }
    }
}

/// One CNI command against `kernel`; `Some(json)` is printed on stdout.
pub async fn invoke(
    env: &CniEnv,
    stdin: &[u8],
    kernel: &impl PodNetwork,
) -> Result<Option<String>, CniError> {
    if env.command == Command::Version {
        let asked = config::version_of(stdin).unwrap_or_else(|| spec::SUPPORTED_VERSIONS[1].into());
        return Ok(Some(spec::version_json(&asked)));
    }
    let config = PluginConfig::parse(stdin)?;
    spec::check_version(&config.cni_version)?;
    match env.command {
        Command::Add => add(env, &config, kernel).await.map(Some),
        Command::Del => del(env, &config, kernel).await.map(|()| None),
        Command::Check => check(env, &config, kernel).await.map(|()| None),
        Command::Version => unreachable!("handled above"),
    }
}

fn store_error(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted(slice) => CniError::new(
            Code::AddressesExhausted,
            format!("no free address in this node's slice {slice}"),
            "pods that opted into the gateway hold every address; the slice frees as they go",
        ),
        other => CniError::new(Code::Io, "address store failure", other.to_string()),
    }
}

fn kernel_error(e: KernelError) -> CniError {
    match e {
        KernelError::NoBridge(b) => CniError::new(
            Code::TryAgainLater,
            format!("gateway bridge {b} is not on this node yet"),
            "the vpn-operator node agent creates it; the pod will be retried",
        ),
        other => CniError::new(
            Code::Io,
            "cannot set up the pod's gateway interface",
            other.to_string(),
        ),
    }
}

fn netns_str(env: &CniEnv) -> String {
    env.netns
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The pass-through result: the previous plugin's, or an empty one.
fn passthrough(config: &PluginConfig) -> String {
    match &config.prev_result {
        Some(prev) => prev.to_string(),
        None => serde_json::json!({ "cniVersion": config.cni_version }).to_string(),
    }
}

/// The pod's part in this config's MaskGateway, from the API server when
/// the config has a kubeconfig, else from the runtime's annotations.
async fn membership(env: &CniEnv, config: &PluginConfig) -> Result<Membership, CniError> {
    let Some((namespace, name)) = env.pod() else {
        tracing::debug!(
            "no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS: not a Kubernetes pod, passing through"
        );
        return Ok(Membership::Outside);
    };
    let wants_namespace = config
        .clients
        .as_ref()
        .is_some_and(|c| c.namespace_selector.is_some());
    let facts = if let Some(kubeconfig) = &config.kubeconfig {
        KubeLookup {
            kubeconfig: kubeconfig.clone(),
        }
        .facts(namespace, name, wants_namespace)
        .await
    } else if let Some(given) = &config.runtime_config.pod_annotations {
        GivenAnnotations(given.clone())
            .facts(namespace, name, false)
            .await
    } else {
        return Err(CniError::new(
            Code::InvalidConfig,
            "cannot learn the pod's annotations",
            format!(
                "set \"kubeconfig\" or declare the {} capability",
                config::POD_ANNOTATIONS_CAPABILITY
            ),
        ));
    };
    // Fail closed: starting an opted-in pod without its gateway would leak.
    let facts = facts.map_err(|e| {
        CniError::new(
            Code::TryAgainLater,
            "cannot read the pod's annotations and labels",
            e.to_string(),
        )
    })?;
    membership::decide(
        &facts,
        namespace,
        &config.gateway,
        config.network,
        config.clients.as_ref(),
    )
    .map_err(|why| {
        CniError::new(
            Code::InvalidConfig,
            format!(
                "pod {namespace}/{name} is a member of {}/{} but cannot be attached",
                config.gateway.namespace, config.gateway.name
            ),
            why,
        )
    })
}

fn guard_error(e: guard::kernel::GuardError) -> CniError {
    CniError::new(
        Code::Io,
        "cannot register the pod's port for anti-spoofing",
        e.to_string(),
    )
}

/// Registers the port, makes the attachment, and extends the result; on
/// failure undoes what it can (the runtime's DEL finishes the job).
async fn attach(
    env: &CniEnv,
    config: &PluginConfig,
    kernel: &impl PodNetwork,
    plan: &plan::AttachPlan,
    address: Ipv4Net,
) -> Result<String, CniError> {
    let netns = env
        .netns
        .as_deref()
        .expect("ADD has CNI_NETNS (checked when reading env)");
    let mac = vpno_sys::format_mac(&plan.mac);
    let link = plan.host_link.clone();
    let port = match plan.role {
        None => guard::Port::Client {
            link,
            mac: mac.clone(),
            ip: address.addr(),
        },
        Some(_) => guard::Port::Member { link },
    };
    // Registered before the link joins the bridge: no frame passes unchecked.
    let attached = match kernel.admit(&port).await {
        Ok(()) => kernel
            .attach(netns, plan, address)
            .await
            .map_err(kernel_error),
        Err(e) => Err(guard_error(e)),
    };
    let mac = match attached {
        Ok(mac) => mac,
        Err(e) => {
            let _ = kernel.detach(Some(netns), &plan.host_link).await;
            let _ = kernel.forget(&plan.host_link).await;
            if plan.role.is_none()
                && let Ok(store) = AddressStore::open(&config.data_dir, &config.name)
            {
                let _ = store.release(&env.container_id, &config.interface);
            }
            return Err(e);
        }
    };
    tracing::info!(container = %env.container_id, %address, role = ?plan.role, "attached to the gateway network");
    let got = plan::Attached {
        mac,
        address,
        sandbox: netns_str(env),
    };
    Ok(
        plan::extend_result(config.prev_result.as_ref(), &config.cni_version, plan, &got)
            .to_string(),
    )
}

async fn add(
    env: &CniEnv,
    config: &PluginConfig,
    kernel: &impl PodNetwork,
) -> Result<String, CniError> {
    let member = membership(env, config).await?;
    if member == Membership::Outside {
        return Ok(passthrough(config));
    }
    if plan::recorded_address(
        config.prev_result.as_ref(),
        &config.interface,
        &netns_str(env),
    )
    .is_some()
    {
        tracing::warn!(interface = %config.interface, gateway = %config.gateway.name, "the pod is already attached to another gateway network; a pod belongs to one");
        return Ok(passthrough(config));
    }
    if let Membership::Role { role, address } = member {
        let plan = plan::member_plan(config, &env.container_id, role, address);
        let address = Ipv4Net::new(address, plan.prefix_len).expect("prefix of a parsed network");
        return attach(env, config, kernel, &plan, address).await;
    }
    let plan = plan::attach_plan(config, &env.container_id)?;
    let store = AddressStore::open(&config.data_dir, &config.name).map_err(store_error)?;
    let pool = Pool {
        network: config.network,
        slice: config.slice,
        reserved: config
            .reserved
            .iter()
            .copied()
            .chain([config.vip])
            .collect::<BTreeSet<_>>(),
    };
    let owner = Lease {
        address: std::net::Ipv4Addr::UNSPECIFIED,
        container_id: env.container_id.clone(),
        interface: config.interface.clone(),
        netns: netns_str(env),
    };
    let (address, reclaimed) = store
        .allocate(&pool, &owner, |l| Path::new(&l.netns).exists())
        .map_err(store_error)?;
    for stale in reclaimed {
        tracing::info!(address = %stale.address, container = %stale.container_id, "reclaimed the address of a container that no longer exists");
        let link = plan::host_link_name(&stale.container_id, &stale.interface);
        if let Err(e) = kernel.detach(None, &link).await {
            tracing::warn!(%link, "cannot remove a stale container's link: {e}");
        }
        if let Err(e) = kernel.forget(&link).await {
            tracing::warn!(%link, "cannot unregister a stale container's port: {e}");
        }
    }
    let address =
        Ipv4Net::new(address, plan.prefix_len).expect("prefix length of a parsed network");
    attach(env, config, kernel, &plan, address).await
}

async fn del(
    env: &CniEnv,
    config: &PluginConfig,
    kernel: &impl PodNetwork,
) -> Result<(), CniError> {
    let link = plan::host_link_name(&env.container_id, &config.interface);
    kernel
        .detach(env.netns.as_deref(), &link)
        .await
        .map_err(kernel_error)?;
    kernel.forget(&link).await.map_err(guard_error)?;
    let store = AddressStore::open(&config.data_dir, &config.name).map_err(store_error)?;
    let freed = store
        .release(&env.container_id, &config.interface)
        .map_err(store_error)?;
    if !freed.is_empty() {
        tracing::info!(container = %env.container_id, ?freed, "released");
    }
    Ok(())
}

async fn check(
    env: &CniEnv,
    config: &PluginConfig,
    kernel: &impl PodNetwork,
) -> Result<(), CniError> {
    let Some(prev) = &config.prev_result else {
        return Err(CniError::new(
            Code::InvalidConfig,
            "CHECK needs prevResult",
            "the runtime passes the result of ADD",
        ));
    };
    let sandbox = netns_str(env);
    let Some(address) = plan::recorded_address(Some(prev), &config.interface, &sandbox) else {
        return Ok(()); // not attached at ADD: nothing of ours to check
    };
    let mut primary = config.clone();
    primary.prev_result = Some(plan::without_ours(
        prev,
        &config.interface,
        &sandbox,
        config.vip,
    ));
    // A member's fixed address lies outside the node's slice.
    let plan = if config.slice.contains(&address.addr()) {
        plan::attach_plan(&primary, &env.container_id)?
    } else {
        plan::member_plan(&primary, &env.container_id, Role::Gateway, address.addr())
    };
    let netns = env
        .netns
        .as_deref()
        .expect("CHECK has CNI_NETNS (checked when reading env)");
    if !netns.exists() {
        return Err(CniError::new(
            Code::UnknownContainer,
            format!("network namespace {sandbox} does not exist"),
            "",
        ));
    }
    let mut seen = kernel.observe(netns, &plan).await.map_err(kernel_error)?;
    let store = AddressStore::open(&config.data_dir, &config.name).map_err(store_error)?;
    seen.address_recorded = store
        .find(&env.container_id, &config.interface)
        .map_err(store_error)?
        .is_some_and(|l| l.address == address.addr());
    let problems = plan::check(&plan, address, &seen);
    if problems.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        Code::CheckFailed,
        "the pod's gateway attachment differs from ADD's",
        problems.join("; "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_inserts_the_subcommand_only_for_the_plugin_name() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            argv(os(&["/opt/cni/bin/vpno-cni"])),
            os(&["/opt/cni/bin/vpno-cni", "cni"])
        );
        assert_eq!(argv(os(&["vpno-cni"])), os(&["vpno-cni", "cni"]));
        assert_eq!(
            argv(os(&["vpn-operator", "router"])),
            os(&["vpn-operator", "router"])
        );
        assert!(argv(Vec::<OsString>::new()).is_empty());
    }
}
