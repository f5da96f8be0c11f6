//! The kernel side: veth pairs, addresses, routes and link state over
//! rtnetlink, in the node's and the pod's network namespaces.
//!
//! A netlink socket belongs to the namespace its creating thread was in, so
//! [`connect`] opens each connection on a short-lived thread that first
//! enters the namespace; the connection then runs on the caller's runtime.
//! The process's own threads never change namespace.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol, RouteType};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::guard;
use crate::plan::{AttachPlan, Observed, PodRoute, UNREACHABLE_METRIC, VIA_METRIC};

/// Routing protocol id marking the plugin's routes in pods (`proto 78`).
pub const PROTOCOL: u8 = 78;

/// Errors talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// An rtnetlink request failed.
    #[error("{op}: {source}")]
    Netlink {
        /// What was attempted.
        op: String,
        /// The error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A namespace could not be entered or a socket opened.
    #[error("{op}: {source}")]
    Os {
        /// What was attempted.
        op: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The node's gateway bridge does not exist (yet).
    #[error("bridge {0:?} does not exist on this node")]
    NoBridge(String),
    /// A link we just made is not there.
    #[error("interface {0:?} disappeared")]
    Vanished(String),
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let op = op.into();
    move |source| KernelError::Netlink { op, source }
}

fn os(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> KernelError {
    let op = op.into();
    move |source| KernelError::Os { op, source }
}

/// Runs `f` on a new thread inside the namespace at `netns` (or the
/// process's own when `None`).
fn in_netns<T: Send + 'static>(
    netns: Option<&Path>,
    f: impl FnOnce() -> Result<T, KernelError> + Send + 'static,
) -> Result<T, KernelError> {
    let netns: Option<PathBuf> = netns.map(Path::to_path_buf);
    std::thread::spawn(move || {
        if let Some(path) = &netns {
            let file = File::open(path).map_err(os(format!("opening {}", path.display())))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| os(format!("entering {}", path.display()))(e.into()))?;
        }
        f()
    })
    .join()
    .unwrap_or_else(|_| Err(os("namespace thread")(std::io::Error::other("panicked"))))
}

/// An rtnetlink handle inside `netns` (or the process's own namespace).
pub async fn connect(netns: Option<&Path>) -> Result<Handle, KernelError> {
    let runtime = tokio::runtime::Handle::current();
    let (conn, handle) = in_netns(netns, move || {
        let _entered = runtime.enter();
        let (conn, handle, _) = rtnetlink::new_connection().map_err(os("opening rtnetlink"))?;
        Ok((conn, handle))
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Writes a sysctl of the namespace at `netns` (`/proc/sys/net` is per namespace).
fn sysctl_in(netns: &Path, key: String, value: &'static str) -> Result<(), KernelError> {
    in_netns(Some(netns), move || {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value).map_err(os(format!("writing {path}")))
    })
}

/// A link's message by name, or `None`.
async fn link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, KernelError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l),
        Err(e) if matches!(errno(&e), Some(libc::ENODEV)) => Ok(None),
        Err(e) => Err(nl(format!("looking up {name}"))(e)),
    }
}

async fn index(handle: &Handle, name: &str) -> Result<u32, KernelError> {
    link(handle, name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| KernelError::Vanished(name.to_string()))
}

async fn delete_link(handle: &Handle, name: &str) -> Result<(), KernelError> {
    let Some(l) = link(handle, name).await? else {
        return Ok(());
    };
    match handle.link().del(l.header.index).execute().await {
        Err(e) if matches!(errno(&e), Some(libc::ENODEV | libc::ENOENT)) => Ok(()),
        other => other.map_err(nl(format!("deleting {name}"))),
    }
}

fn route_message(
    route: &PodRoute,
    vip: Ipv4Addr,
    oif: u32,
) -> netlink_packet_route::route::RouteMessage {
    let builder = RouteMessageBuilder::<Ipv4Addr>::new().protocol(RouteProtocol::Other(PROTOCOL));
    match route {
        PodRoute::Via(dst) => builder
            .destination_prefix(dst.network(), dst.prefix_len())
            .gateway(vip)
            .output_interface(oif)
            .priority(VIA_METRIC)
            .build(),
        PodRoute::Unreachable(dst) => builder
            .destination_prefix(dst.network(), dst.prefix_len())
            .kind(RouteType::Unreachable)
            .priority(UNREACHABLE_METRIC)
            .build(),
    }
}

/// The kernel operations of the plugin.
#[allow(async_fn_in_trait)]
pub trait PodNetwork {
    /// Makes the attachment; returns the pod interface's MAC address.
    async fn attach(
        &self,
        netns: &Path,
        plan: &AttachPlan,
        address: Ipv4Net,
    ) -> Result<String, KernelError>;
    /// Removes the veth pair named by `host_link` from the node and, when
    /// given, from the pod namespace (where a killed ADD may have left it).
    async fn detach(&self, netns: Option<&Path>, host_link: &str) -> Result<(), KernelError>;
    /// Reads the attachment's state for CHECK (the store's part left default).
    async fn observe(&self, netns: &Path, plan: &AttachPlan) -> Result<Observed, KernelError>;
    /// Registers a port in the anti-spoofing table.
    async fn admit(&self, port: &guard::Port) -> Result<(), guard::kernel::GuardError>;
    /// Unregisters a port (nothing registered is fine).
    async fn forget(&self, host_link: &str) -> Result<(), guard::kernel::GuardError>;
}

/// [`PodNetwork`] over rtnetlink; the node is the process's own namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Netlink;

impl PodNetwork for Netlink {
    async fn admit(&self, port: &guard::Port) -> Result<(), guard::kernel::GuardError> {
        guard::kernel::admit(port)
    }

    async fn forget(&self, host_link: &str) -> Result<(), guard::kernel::GuardError> {
        guard::kernel::forget(host_link)
    }

    async fn attach(
        &self,
        netns: &Path,
        plan: &AttachPlan,
        address: Ipv4Net,
    ) -> Result<String, KernelError> {
        let node = connect(None).await?;
        let pod = connect(Some(netns)).await?;
        let bridge = link(&node, &plan.bridge)
            .await?
            .ok_or_else(|| KernelError::NoBridge(plan.bridge.clone()))?
            .header
            .index;
        // Leftovers of an earlier, interrupted ADD of this container.
        self.detach(Some(netns), &plan.host_link).await?;

        // Made inside the pod, so its pod-side name never meets the node's names.
        pod.link()
            .add(
                LinkVeth::new(&plan.interface, &plan.host_link)
                    .mtu(plan.mtu)
                    .address(plan.mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("creating veth {} in the pod", plan.interface)))?;
        // The calling thread's namespace (the process's, when run as the plugin).
        let node_ns =
            File::open("/proc/thread-self/ns/net").map_err(os("opening the node namespace"))?;
        let peer = index(&pod, &plan.host_link).await?;
        pod.link()
            .set(
                LinkUnspec::new_with_index(peer)
                    .setns_by_fd(node_ns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("moving {} to the node", plan.host_link)))?;
        let host = index(&node, &plan.host_link).await?;
        node.link()
            .set(
                LinkUnspec::new_with_index(host)
                    .controller(bridge)
                    .mtu(plan.mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("joining {} to {}", plan.host_link, plan.bridge)))?;

        let inner = index(&pod, &plan.interface).await?;
        // A carrier-less interface's routes are skipped, so the unreachable twins answer at once.
        sysctl_in(
            netns,
            format!(
                "net.ipv4.conf.{}.ignore_routes_with_linkdown",
                plan.interface
            ),
            "1",
        )?;
        if plan.role.is_some() {
            // Members route for the clients; the namespace's own sysctl, so no capability.
            sysctl_in(netns, "net.ipv4.ip_forward".into(), "1")?;
        }
        pod.address()
            .add(inner, IpAddr::V4(address.addr()), plan.prefix_len)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding {address} to {}", plan.interface)))?;
        pod.link()
            .set(LinkUnspec::new_with_index(inner).up().build())
            .execute()
            .await
            .map_err(nl(format!("bringing up {}", plan.interface)))?;
        for route in &plan.routes {
            pod.route()
                .add(route_message(route, plan.vip, inner))
                .replace()
                .execute()
                .await
                .map_err(nl(format!("adding route {route:?}")))?;
        }
        let mac = link(&pod, &plan.interface)
            .await?
            .and_then(|l| {
                l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::Address(m) => Some(m),
                    _ => None,
                })
            })
            .ok_or_else(|| KernelError::Vanished(plan.interface.clone()))?;
        Ok(mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"))
    }

    async fn detach(&self, netns: Option<&Path>, host_link: &str) -> Result<(), KernelError> {
        delete_link(&connect(None).await?, host_link).await?;
        if let Some(path) = netns.filter(|p| p.exists()) {
            delete_link(&connect(Some(path)).await?, host_link).await?;
        }
        Ok(())
    }

    async fn observe(&self, netns: &Path, plan: &AttachPlan) -> Result<Observed, KernelError> {
        let node = connect(None).await?;
        let pod = connect(Some(netns)).await?;
        let mut seen = Observed::default();
        let mut inner = None;
        if let Some(l) = link(&pod, &plan.interface).await? {
            let index = l.header.index;
            inner = Some(index);
            let mtu = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            });
            let addrs: Vec<Ipv4Net> = pod
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect::<Vec<_>>()
                .await
                .map_err(nl("listing addresses"))?
                .into_iter()
                .filter(|m| m.header.index == index)
                .filter_map(|m| {
                    m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(IpAddr::V4(ip)) => {
                            Ipv4Net::new(*ip, m.header.prefix_len).ok()
                        }
                        _ => None,
                    })
                })
                .collect();
            seen.pod_link = Some((
                l.header.flags.contains(LinkFlags::Up),
                mtu.unwrap_or(0),
                addrs,
            ));
        }
        seen.routes = pod_routes(&pod, plan.vip, inner).await?;
        if let Some(l) = link(&node, &plan.host_link).await? {
            let master = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Controller(i) => Some(*i),
                _ => None,
            });
            let master_name = match master {
                Some(i) => node
                    .link()
                    .get()
                    .match_index(i)
                    .execute()
                    .try_next()
                    .await
                    .ok()
                    .flatten()
                    .and_then(|m| {
                        m.attributes.into_iter().find_map(|a| match a {
                            LinkAttribute::IfName(n) => Some(n),
                            _ => None,
                        })
                    }),
                None => None,
            };
            seen.host_link = Some((l.header.flags.contains(LinkFlags::Up), master_name));
        }
        Ok(seen)
    }
}

/// Our routes in the pod's main table, in the plan's terms; a route of ours
/// in any other shape is left out, so it shows as missing.
async fn pod_routes(
    pod: &Handle,
    vip: Ipv4Addr,
    inner: Option<u32>,
) -> Result<BTreeSet<PodRoute>, KernelError> {
    let routes: Vec<_> = pod
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing routes"))?;
    let mut out = BTreeSet::new();
    for r in routes {
        if r.header.protocol != RouteProtocol::Other(PROTOCOL) || r.header.table != 254 {
            continue;
        }
        let (mut dst, mut gw, mut oif, mut metric) = (Ipv4Addr::UNSPECIFIED, None, None, 0);
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Priority(p) => metric = *p,
                _ => {}
            }
        }
        let Ok(net) = Ipv4Net::new(dst, r.header.destination_prefix_length) else {
            continue;
        };
        match r.header.kind {
            RouteType::Unreachable if metric == UNREACHABLE_METRIC => {
                out.insert(PodRoute::Unreachable(net));
            }
            RouteType::Unicast
                if gw == Some(vip) && oif.is_some() && oif == inner && metric == VIA_METRIC =>
            {
                out.insert(PodRoute::Via(net));
            }
            _ => {}
        }
    }
    Ok(out)
}
