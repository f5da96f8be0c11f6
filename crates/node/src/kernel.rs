//! The kernel side of the node agent: reads the bridge, the VXLAN device
//! and its FDB into an [`Observed`], and applies [`Op`]s, over rtnetlink.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVxlan};

use crate::plan::{LinkState, Observed, Op, VxlanParams, VxlanState};

/// Errors talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// An rtnetlink request failed.
    #[error("{op}: {source}")]
    Netlink {
        /// What was attempted.
        op: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Opening the netlink socket failed.
    #[error("opening rtnetlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// A named interface does not exist.
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    /// nftables refused the anti-spoofing table.
    #[error(transparent)]
    Guard(#[from] vpno_cni::guard::kernel::GuardError),
    /// The node's InternalIP is on none of its interfaces.
    #[error("no interface of this node has the address {0} (the Node's InternalIP)")]
    NoUnderlay(Ipv4Addr),
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let op = op.into();
    move |source| KernelError::Netlink { op, source }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Narrow interface the agent drives; [`NetlinkKernel`] is the real one.
#[allow(async_fn_in_trait)]
pub trait NodeKernel {
    /// Reads the bridge, the VXLAN device and its FDB remotes.
    async fn observe(&self, bridge: &str, vxlan: &str) -> Result<Observed, KernelError>;
    /// The MTU of the interface holding `local`.
    async fn underlay_mtu(&self, local: Ipv4Addr) -> Result<u32, KernelError>;
    /// Applies one operation.
    async fn apply(&self, op: &Op) -> Result<(), KernelError>;
    /// Names of every link the agent made for some gateway network
    /// ([`crate::gateways::is_ours`]).
    async fn our_links(&self) -> Result<Vec<String>, KernelError>;
    /// Installs the bridges' anti-spoofing chain letting clients send IPv4
    /// to the `allowed` MACs, or removes the table (`None`); returns whether
    /// anything changed.
    async fn guard(&self, allowed: Option<&[String]>) -> Result<bool, KernelError>;
}

/// [`NodeKernel`] over rtnetlink in the caller's network namespace.
pub struct NetlinkKernel {
    handle: Handle,
}

impl NetlinkKernel {
    /// Opens the connection (spawning its task on the current runtime).
    pub fn connect() -> Result<Self, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(KernelError::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    async fn link(&self, name: &str) -> Result<Option<LinkMessage>, KernelError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if matches!(errno(&e), Some(libc::ENODEV)) => Ok(None),
            Err(e) => Err(nl(format!("looking up interface {name}"))(e)),
        }
    }

    async fn index(&self, name: &str) -> Result<u32, KernelError> {
        Ok(self
            .link(name)
            .await?
            .ok_or_else(|| KernelError::NoSuchInterface(name.to_string()))?
            .header
            .index)
    }

    async fn link_state(&self, link: &LinkMessage) -> Result<LinkState, KernelError> {
        let mut mtu = 0;
        let mut master = None;
        for a in &link.attributes {
            match a {
                LinkAttribute::Mtu(m) => mtu = *m,
                LinkAttribute::Controller(i) => master = Some(*i),
                _ => {}
            }
        }
        let master = match master {
            Some(i) => self.name_of(i).await?,
            None => None,
        };
        Ok(LinkState {
            mtu,
            up: link.header.flags.contains(LinkFlags::Up),
            master,
        })
    }

    async fn name_of(&self, index: u32) -> Result<Option<String>, KernelError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let link = links.try_next().await.map_err(nl("looking up a bridge"))?;
        Ok(link.and_then(|l| {
            l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            })
        }))
    }

    /// Every bridge-family FDB entry of the link with `index`.
    async fn fdb(&self, index: u32) -> Result<Vec<NeighbourMessage>, KernelError> {
        let all: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing FDB entries"))?;
        Ok(all
            .into_iter()
            .filter(|m| m.header.ifindex == index)
            .collect())
    }

    async fn set(&self, msg: LinkMessage, what: String) -> Result<(), KernelError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl(what))
    }

    async fn create_vxlan(
        &self,
        name: &str,
        p: &VxlanParams,
        mtu: u32,
        master: &str,
    ) -> Result<(), KernelError> {
        let bridge = self.index(master).await?;
        let msg = LinkVxlan::new(name, p.vni)
            .port(p.port)
            .local(p.local)
            .learning(true)
            .mtu(mtu)
            .controller(bridge)
            .up()
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("creating VXLAN device {name}")))
    }

    /// `bridge fdb append 00:00:00:00:00:00 dev <vxlan> dst <remote> self permanent`.
    /// rtnetlink's neighbour add sends NLM_F_EXCL, which refuses a second
    /// all-zero entry, so this one message is built here with NLM_F_APPEND.
    async fn add_remote(&self, vxlan: &str, remote: Ipv4Addr) -> Result<(), KernelError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = self.index(vxlan).await?;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                remote,
            )));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        let what = format!("adding FDB entry for {remote} on {vxlan}");
        let mut resp = self.handle.clone().request(req).map_err(nl(what.clone()))?;
        while let Some(m) = futures::StreamExt::next(&mut resp).await {
            if let NetlinkPayload::Error(e) = m.payload {
                return Err(nl(what)(rtnetlink::Error::NetlinkError(e)));
            }
        }
        Ok(())
    }

    async fn delete_remote(&self, vxlan: &str, remote: Ipv4Addr) -> Result<(), KernelError> {
        let index = self.index(vxlan).await?;
        for entry in self.fdb(index).await? {
            if fdb_remote(&entry) == Some(remote) {
                match self.handle.neighbours().del(entry).execute().await {
                    Err(e) if matches!(errno(&e), Some(libc::ENOENT)) => {}
                    r => r.map_err(nl(format!("deleting FDB entry for {remote} on {vxlan}")))?,
                }
            }
        }
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<(), KernelError> {
        let Some(link) = self.link(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.header.index).execute().await {
            Err(e) if matches!(errno(&e), Some(libc::ENODEV | libc::ENOENT)) => Ok(()),
            r => r.map_err(nl(format!("deleting interface {name}"))),
        }
    }
}

/// The IPv4 remote of a VXLAN FDB entry. In bridge-family messages the
/// parser leaves `NDA_DST` as raw bytes (it keys on the message's family).
fn fdb_remote(entry: &NeighbourMessage) -> Option<Ipv4Addr> {
    entry.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
            <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

fn vxlan_params(link: &LinkMessage) -> Option<VxlanParams> {
    let infos = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    })?;
    if !infos.contains(&LinkInfo::Kind(InfoKind::Vxlan)) {
        return None;
    }
    let data = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
        _ => None,
    })?;
    let (mut vni, mut port, mut local) = (None, None, None);
    for d in data {
        match d {
            InfoVxlan::Id(v) => vni = Some(*v),
            InfoVxlan::Port(p) => port = Some(*p),
            InfoVxlan::Local(l) => local = Some(*l),
            _ => {}
        }
    }
    Some(VxlanParams {
        vni: vni?,
        port: port?,
        local: local?,
    })
}

impl NodeKernel for NetlinkKernel {
    async fn our_links(&self) -> Result<Vec<String>, KernelError> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing interfaces"))?;
        Ok(links
            .into_iter()
            .filter_map(|l| {
                l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                })
            })
            .filter(|n| crate::gateways::is_ours(n))
            .collect())
    }

    async fn guard(&self, allowed: Option<&[String]>) -> Result<bool, KernelError> {
        use vpno_cni::guard::kernel;
        if let Some(allowed) = allowed {
            Ok(kernel::install(allowed)?)
        } else if kernel::listed().is_some() {
            kernel::remove()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    async fn observe(&self, bridge: &str, vxlan: &str) -> Result<Observed, KernelError> {
        let bridge = match self.link(bridge).await? {
            Some(l) => Some(self.link_state(&l).await?),
            None => None,
        };
        let vxlan = match self.link(vxlan).await? {
            Some(l) => Some(VxlanState {
                link: self.link_state(&l).await?,
                params: vxlan_params(&l),
                remotes: self
                    .fdb(l.header.index)
                    .await?
                    .iter()
                    .filter_map(fdb_remote)
                    .collect::<BTreeSet<_>>(),
            }),
            None => None,
        };
        Ok(Observed { bridge, vxlan })
    }

    async fn underlay_mtu(&self, local: Ipv4Addr) -> Result<u32, KernelError> {
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))?;
        let index = addrs
            .iter()
            .find(|m| {
                m.attributes.iter().any(|a| {
                    matches!(a, AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) if *ip == local)
                })
            })
            .map(|m| m.header.index)
            .ok_or(KernelError::NoUnderlay(local))?;
        let mut links = self.handle.link().get().match_index(index).execute();
        let link = links
            .try_next()
            .await
            .map_err(nl("looking up the underlay interface"))?
            .ok_or(KernelError::NoUnderlay(local))?;
        Ok(self.link_state(&link).await?.mtu)
    }

    async fn apply(&self, op: &Op) -> Result<(), KernelError> {
        match op {
            Op::CreateBridge { name, mtu } => self
                .handle
                .link()
                .add(LinkBridge::new(name).mtu(*mtu).build())
                .execute()
                .await
                .map_err(nl(format!("creating bridge {name}"))),
            Op::CreateVxlan {
                name,
                params,
                mtu,
                master,
            } => self.create_vxlan(name, params, *mtu, master).await,
            Op::DeleteLink(name) => self.delete_link(name).await,
            Op::SetMtu { name, mtu } => {
                let i = self.index(name).await?;
                self.set(
                    LinkUnspec::new_with_index(i).mtu(*mtu).build(),
                    format!("setting MTU {mtu} on {name}"),
                )
                .await
            }
            Op::SetMaster { name, master } => {
                let (i, b) = (self.index(name).await?, self.index(master).await?);
                self.set(
                    LinkUnspec::new_with_index(i).controller(b).build(),
                    format!("attaching {name} to {master}"),
                )
                .await
            }
            Op::SetUp(name) => {
                let i = self.index(name).await?;
                self.set(
                    LinkUnspec::new_with_index(i).up().build(),
                    format!("bringing up {name}"),
                )
                .await
            }
            Op::AddRemote { vxlan, remote } => self.add_remote(vxlan, *remote).await,
            Op::DeleteRemote { vxlan, remote } => self.delete_remote(vxlan, *remote).await,
        }
    }
}
