//! The kernel side of the router: reads the router's share of kernel state
//! into a [`vpno_net::egress::EgressState`] and applies
//! [`vpno_net::egress::Change`]s, over rtnetlink (links, addresses, routes,
//! rules) and [`crate::nexthop`] (nexthop objects). Every object the router
//! creates carries [`PROTOCOL`], which is how it recognises its own.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, MacVlanMode};
use netlink_packet_route::route::{
    RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, LinkMacVlan, LinkUnspec, RouteMessageBuilder};
use vpno_net::egress::{
    self, Change, DefaultRoute, EgressConfig, EgressState, GroupSpec, NexthopSpec, RuleSpec,
    VipSpec,
};

use crate::nexthop::{GROUP_TYPE_RESILIENT, NexthopError, NexthopHandle};
use vpno_sys::sysctl;

/// Routing protocol id marking the router's nexthops, routes and rules
/// (`proto 77` in `ip` output).
pub const PROTOCOL: u8 = 77;

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
    /// A nexthop request failed.
    #[error(transparent)]
    Nexthop(#[from] NexthopError),
    /// Opening the netlink socket failed.
    #[error("opening rtnetlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// A named interface does not exist.
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    /// A sysctl could not be written.
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
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

/// Treats "no such object" as success (for deletes).
fn ignore_missing(r: Result<(), rtnetlink::Error>, op: &str) -> Result<(), KernelError> {
    match r {
        Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::ESRCH | libc::ENODEV)) => Ok(()),
        other => other.map_err(nl(op)),
    }
}

/// Narrow interface the reconcile loop drives; the netlink implementation is
/// [`NetlinkDataplane`].
#[allow(async_fn_in_trait)]
pub trait Dataplane {
    /// Reads the router's current share of kernel state.
    async fn observe(&self, config: &EgressConfig) -> Result<EgressState, KernelError>;
    /// Applies one change.
    async fn apply(&self, change: &Change) -> Result<(), KernelError>;
}

/// rtnetlink + nexthop netlink connections in the current network namespace.
#[derive(Debug, Clone)]
pub struct NetlinkDataplane {
    handle: Handle,
    nexthops: NexthopHandle,
}

impl NetlinkDataplane {
    /// Opens both connections (spawning their tasks on the current runtime).
    pub fn connect() -> Result<Self, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(KernelError::Socket)?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            nexthops: NexthopHandle::connect()?,
        })
    }

    /// Interface index by name.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, KernelError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            Err(e) if matches!(errno(&e), Some(libc::ENODEV)) => Ok(None),
            Err(e) => Err(nl(format!("looking up interface {name}"))(e)),
        }
    }

    /// Sets an interface's MAC address; returns the one it had when that
    /// differed (`None`: it already had `mac`, nothing changed).
    pub async fn set_link_mac(
        &self,
        index: u32,
        mac: [u8; 6],
    ) -> Result<Option<[u8; 6]>, KernelError> {
        let links = self.link_names().await?;
        let old: Option<[u8; 6]> = links
            .get(&index)
            .and_then(|l| <[u8; 6]>::try_from(l.2.as_slice()).ok());
        if old == Some(mac) {
            return Ok(None);
        }
        self.handle
            .link()
            .set(
                rtnetlink::LinkUnspec::new_with_index(index)
                    .address(mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("setting the MAC address of interface {index}")))?;
        Ok(old)
    }

    async fn require_index(&self, name: &str) -> Result<u32, KernelError> {
        self.link_index(name)
            .await?
            .ok_or_else(|| KernelError::NoSuchInterface(name.to_string()))
    }

    /// IPv4 addresses (with prefix) of an interface.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Net>, KernelError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                let prefix = m.header.prefix_len;
                m.attributes.into_iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip))
                    | AddressAttribute::Address(IpAddr::V4(ip)) => Ipv4Net::new(ip, prefix).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    async fn link_names(
        &self,
    ) -> Result<BTreeMap<u32, (String, Option<u32>, Vec<u8>, bool)>, KernelError> {
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing links"))?;
        Ok(links
            .into_iter()
            .map(|l| {
                let (mut name, mut parent, mut mac) = (String::new(), None, Vec::new());
                for a in l.attributes {
                    match a {
                        LinkAttribute::IfName(n) => name = n,
                        LinkAttribute::Link(p) => parent = Some(p),
                        LinkAttribute::Address(m) => mac = m,
                        _ => {}
                    }
                }
                (
                    l.header.index,
                    (name, parent, mac, l.header.flags.contains(LinkFlags::Up)),
                )
            })
            .collect())
    }

    fn default_route_message(table: u32) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(table)
            .protocol(RouteProtocol::Other(PROTOCOL))
            .scope(RouteScope::Universe)
            .build()
    }

    fn rule_message(rule: &RuleSpec) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.src_len = rule.source.prefix_len();
        m.attributes = vec![
            RuleAttribute::Priority(rule.priority),
            RuleAttribute::Source(IpAddr::V4(rule.source.network())),
            RuleAttribute::Iifname(rule.iif.clone()),
            RuleAttribute::Protocol(RouteProtocol::Other(PROTOCOL)),
        ];
        match rule.action {
            egress::RuleAction::Lookup(table) => {
                m.header.action = RuleAction::ToTable;
                // Tables >= 256 only fit FRA_TABLE; the header then says RT_TABLE_UNSPEC.
                m.header.table = u8::try_from(table).unwrap_or(0);
                m.attributes.push(RuleAttribute::Table(table));
            }
            egress::RuleAction::Unreachable => m.header.action = RuleAction::Unreachable,
        }
        m
    }

    async fn create_vip(&self, vip: &VipSpec) -> Result<(), KernelError> {
        let parent = self.require_index(&vip.parent).await?;
        self.handle
            .link()
            .add(
                LinkMacVlan::new(&vip.interface, parent, MacVlanMode::Bridge)
                    .address(vip.mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("creating VIP interface {}", vip.interface)))?;
        let index = self.require_index(&vip.interface).await?;
        // Gratuitous ARP when the link comes up; answer ARP only for own addresses.
        sysctl::write(&sysctl::conf(&vip.interface, "arp_notify"), "1")?;
        sysctl::write(&sysctl::conf(&vip.interface, "arp_ignore"), "1")?;
        sysctl::write(&sysctl::conf(&vip.interface, "send_redirects"), "0")?;
        let mut add = self.handle.address().add(
            index,
            IpAddr::V4(vip.address.addr()),
            vip.address.prefix_len(),
        );
        // The parent already has the subnet's connected route.
        add.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
        add.execute().await.map_err(nl(format!(
            "adding VIP {} to {}",
            vip.address, vip.interface
        )))?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl(format!("bringing up {}", vip.interface)))
    }

    async fn delete_link(&self, name: &str) -> Result<(), KernelError> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(());
        };
        ignore_missing(
            self.handle.link().del(index).execute().await,
            &format!("deleting interface {name}"),
        )
    }
}

impl Dataplane for NetlinkDataplane {
    async fn observe(&self, config: &EgressConfig) -> Result<EgressState, KernelError> {
        let links = self.link_names().await?;
        let name_of = |i: u32| {
            links
                .get(&i)
                .map(|l| l.0.clone())
                .unwrap_or_else(|| format!("if{i}"))
        };
        let mut state = EgressState::default();

        for nh in self.nexthops.dump().await? {
            if nh.protocol != PROTOCOL {
                continue;
            }
            if let Some(members) = nh.group {
                let weights_equal = members.iter().all(|(_, w)| *w == 1);
                state.group = Some(GroupSpec {
                    id: nh.id,
                    // A foreign group type or weights make the spec differ, so it is replaced.
                    members: members.iter().map(|(id, _)| *id).collect(),
                    buckets: if nh.group_type == GROUP_TYPE_RESILIENT && weights_equal {
                        nh.resilient.buckets.unwrap_or(0)
                    } else {
                        0
                    },
                    idle_timer_secs: nh.resilient.idle_timer.unwrap_or(0) / 100,
                });
            } else if let Some((gateway, oif)) = nh.via {
                state.nexthops.insert(
                    nh.id,
                    NexthopSpec {
                        gateway,
                        interface: name_of(oif),
                    },
                );
            } else {
                // Ours but neither: make it differ so it is replaced or deleted.
                state.nexthops.insert(
                    nh.id,
                    NexthopSpec {
                        gateway: Ipv4Addr::UNSPECIFIED,
                        interface: String::new(),
                    },
                );
            }
        }

        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing routes"))?;
        for r in routes {
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if table != config.table || r.header.destination_prefix_length != 0 {
                continue;
            }
            let nhid = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::NhId(id) => Some(*id),
                _ => None,
            });
            state.default_route = Some(match (r.header.kind, nhid) {
                (RouteType::Unreachable, _) => DefaultRoute::Unreachable,
                (_, Some(id)) => DefaultRoute::ViaGroup(id),
                // Something else sits there (not ours): an impossible group id makes it differ.
                _ => DefaultRoute::ViaGroup(u32::MAX),
            });
        }

        let rules: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(rtnetlink::IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing rules"))?;
        for r in rules {
            let mut ours = false;
            let (mut priority, mut source, mut iif) = (0, Ipv4Addr::UNSPECIFIED, String::new());
            let mut table = u32::from(r.header.table);
            for a in &r.attributes {
                match a {
                    RuleAttribute::Protocol(RouteProtocol::Other(p)) if *p == PROTOCOL => {
                        ours = true
                    }
                    RuleAttribute::Priority(p) => priority = *p,
                    RuleAttribute::Source(IpAddr::V4(s)) => source = *s,
                    RuleAttribute::Iifname(i) => iif = i.clone(),
                    RuleAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            if ours {
                let source = Ipv4Net::new(source, r.header.src_len).unwrap_or_default();
                let action = match r.header.action {
                    RuleAction::ToTable => egress::RuleAction::Lookup(table),
                    RuleAction::Unreachable => egress::RuleAction::Unreachable,
                    // Ours but odd: a lookup of an impossible table makes it differ, so it is deleted.
                    _ => egress::RuleAction::Lookup(u32::MAX),
                };
                state.rules.insert(RuleSpec {
                    priority,
                    source,
                    iif,
                    action,
                });
            }
        }

        if let Some((&index, (name, parent, mac, up))) =
            links.iter().find(|(_, l)| l.0 == config.vip_interface)
        {
            let addresses = self.ipv4_addresses(index).await?;
            let address = match (up, addresses.as_slice()) {
                (true, [one]) => *one,
                _ => Ipv4Net::default(), // down or half-configured: differs, gets recreated
            };
            state.vip = Some(VipSpec {
                interface: name.clone(),
                parent: parent.map(name_of).unwrap_or_default(),
                mac: mac.as_slice().try_into().unwrap_or([0; 6]),
                address,
            });
        }
        Ok(state)
    }

    async fn apply(&self, change: &Change) -> Result<(), KernelError> {
        match change {
            Change::ReplaceNexthop { id, spec } => {
                let oif = self.require_index(&spec.interface).await?;
                self.nexthops
                    .replace_via(*id, spec.gateway, oif, PROTOCOL)
                    .await?;
            }
            Change::ReplaceGroup(g) => {
                let members: Vec<u32> = g.members.iter().copied().collect();
                self.nexthops
                    .replace_resilient_group(g.id, &members, g.buckets, g.idle_timer_secs, PROTOCOL)
                    .await?;
            }
            Change::ReplaceDefaultRoute { table, route } => {
                let mut msg = Self::default_route_message(*table);
                match route {
                    DefaultRoute::ViaGroup(id) => msg.attributes.push(RouteAttribute::NhId(*id)),
                    DefaultRoute::Unreachable => msg.header.kind = RouteType::Unreachable,
                }
                self.handle
                    .route()
                    .add(msg)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl(format!("replacing default route in table {table}")))?;
            }
            Change::DeleteDefaultRoute { table } => {
                let mut msg = Self::default_route_message(*table);
                msg.header.kind = RouteType::Unspec;
                msg.header.scope = RouteScope::NoWhere;
                ignore_missing(
                    self.handle.route().del(msg).execute().await,
                    &format!("deleting default route in table {table}"),
                )?;
            }
            Change::AddRule(rule) => {
                let mut req = self.handle.rule().add().v4();
                *req.message_mut() = Self::rule_message(rule);
                match req.execute().await {
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                    other => other.map_err(nl(format!(
                        "adding rule from {} {:?}",
                        rule.source, rule.action
                    )))?,
                }
            }
            Change::DeleteRule(rule) => {
                ignore_missing(
                    self.handle
                        .rule()
                        .del(Self::rule_message(rule))
                        .execute()
                        .await,
                    &format!("deleting rule from {} {:?}", rule.source, rule.action),
                )?;
            }
            Change::CreateVip(vip) => {
                // A leftover half-made interface would make the create fail.
                self.delete_link(&vip.interface).await?;
                self.create_vip(vip).await?;
            }
            Change::DeleteVip { interface } => self.delete_link(interface).await?,
            Change::DeleteGroup { id } | Change::DeleteNexthop { id } => {
                self.nexthops.delete(*id).await?
            }
        }
        Ok(())
    }
}

/// Members of the observed group, for status reporting.
pub fn group_members(state: &EgressState) -> BTreeSet<u32> {
    state
        .group
        .as_ref()
        .map(|g| g.members.clone())
        .unwrap_or_default()
}
