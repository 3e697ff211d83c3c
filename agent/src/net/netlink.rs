//! One wrapper around `rtnetlink::Handle` with the domain operations the
//! reconciler needs. No `ip`, `bridge` or `ethtool` is ever run.
//!
//! A connection can be opened inside a named network namespace
//! (`/run/netns/<name>`): the socket is created on a short-lived thread that
//! has entered the namespace, and netlink sockets stay bound to the namespace
//! they were created in.
//!
//! Each connection has a driver task (the socket's reader and writer). It is
//! owned by the value that uses the connection — [`Netlink`] (shared by its
//! clones) or [`Events`] — and aborted when that is dropped; nothing is left
//! detached. [`Netlink::open_in`] and [`Netlink::watch_in`] also spawn it in
//! the caller's task tracker, so the owning subsystem's stop waits for it.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::TryStreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoKind, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage, LinkVfInfo, VfInfo,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, MulticastGroup, RouteMessageBuilder};
use tokio::task::AbortHandle;
use tokio_util::task::TaskTracker;

use super::NetError;
use super::model::RouteSpec;
use super::vf::{VfState, parse_vfs};

/// Routes the agent adds carry this protocol number, so they are told apart
/// from every other route on the host (`ip route` shows it as `proto 196`).
pub const RTPROT_HOSTPLANE: u8 = 196;

/// What the reconciler needs to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    pub controller: Option<u32>,
    pub alias: Option<String>,
    pub is_bridge: bool,
}

/// The kernel's main routing table, the only one the agent adds routes to.
pub const RT_TABLE_MAIN: u32 = 254;

/// A route in the main table, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub destination: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub metric: u32,
    pub scope: RouteScope,
    /// `RTPROT_*`: [`RTPROT_HOSTPLANE`] on the agent's own routes.
    pub protocol: u8,
    msg: RouteMessage,
}

/// The host's links, addresses and owned routes at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub links: Vec<Link>,
    /// ifindex -> global-scope addresses (link-local IPv6 is left out: the kernel makes those).
    pub addrs: BTreeMap<u32, Vec<IpNetwork>>,
    /// The agent's routes (protocol [`RTPROT_HOSTPLANE`]) in the main table.
    pub routes: Vec<KernelRoute>,
    /// Every other route in the main table (never changed; a desired route
    /// that would collide with one is refused).
    pub foreign_routes: Vec<KernelRoute>,
}

impl Snapshot {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }
    pub fn by_index(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }
}

/// A netlink connection for requests. Clones share the connection; its
/// driver task is aborted when the last clone is dropped.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    driver: Arc<Driver>,
}

/// One change notification from the kernel.
pub type Event = (
    rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
);

/// The change notifications of a multicast subscription ([`Netlink::watch`]),
/// a stream of [`Event`]s; dropping it aborts the subscription's driver task.
pub struct Events {
    rx: UnboundedReceiver<Event>,
    driver: Driver,
}

impl Events {
    /// Discard the notifications already received; none is waited for.
    pub fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// The driver task, to check that it ends (tests).
    pub fn driver(&self) -> AbortHandle {
        self.driver.0.clone()
    }
}

impl futures::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

/// A connection's driver task, aborted when this is dropped.
struct Driver(AbortHandle);

impl Driver {
    /// Spawn `conn` in `tasks` (or on the runtime when None), owned by the result.
    fn spawn<F>(conn: F, tasks: Option<&TaskTracker>) -> Driver
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let task = match tasks {
            Some(t) => t.spawn(conn),
            None => tokio::spawn(conn),
        };
        Driver(task.abort_handle())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run `f` on a thread that has entered network namespace `netns` (or the
/// current one when None), with the tokio runtime entered.
fn in_netns<T: Send + 'static>(
    netns: Option<&str>,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, NetError> {
    let rt = tokio::runtime::Handle::current();
    let ns = netns.map(|n| format!("/run/netns/{n}"));
    let label = netns.unwrap_or("(own)").to_string();
    std::thread::spawn(move || -> Result<T, NetError> {
        let _rt = rt.enter();
        if let Some(path) = &ns {
            let file = std::fs::File::open(path).map_err(|source| NetError::Netns {
                netns: label.clone(),
                source,
            })?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Netns {
                netns: label.clone(),
                source: e.into(),
            })?;
        }
        f().map_err(|source| NetError::Netns { netns: label, source })
    })
    .join()
    .map_err(|_| NetError::Netns {
        netns: "?".into(),
        source: std::io::Error::other("netns thread panicked"),
    })?
}

impl Netlink {
    /// Open a connection in `netns` (None: the agent's own namespace). Its
    /// driver task lives as long as the returned value (and its clones).
    pub fn open(netns: Option<&str>) -> Result<Netlink, NetError> {
        Netlink::open_on(netns, None)
    }

    /// [`Netlink::open`] with the driver task in `tasks` as well.
    pub fn open_in(netns: Option<&str>, tasks: &TaskTracker) -> Result<Netlink, NetError> {
        Netlink::open_on(netns, Some(tasks))
    }

    fn open_on(netns: Option<&str>, tasks: Option<&TaskTracker>) -> Result<Netlink, NetError> {
        let (conn, handle, _) = in_netns(netns, rtnetlink::new_connection)?;
        Ok(Netlink {
            handle,
            driver: Arc::new(Driver::spawn(conn, tasks)),
        })
    }

    /// The driver task, to check that it ends (tests).
    pub fn driver(&self) -> AbortHandle {
        self.driver.0.clone()
    }

    /// A multicast subscription to link, address and route changes in
    /// `netns`. Its driver task lives as long as the returned [`Events`].
    pub fn watch(netns: Option<&str>) -> Result<Events, NetError> {
        Netlink::watch_on(netns, None)
    }

    /// [`Netlink::watch`] with the driver task in `tasks` as well.
    pub fn watch_in(netns: Option<&str>, tasks: &TaskTracker) -> Result<Events, NetError> {
        Netlink::watch_on(netns, Some(tasks))
    }

    fn watch_on(netns: Option<&str>, tasks: Option<&TaskTracker>) -> Result<Events, NetError> {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ];
        let (conn, _handle, rx) = in_netns(netns, move || rtnetlink::new_multicast_connection(&groups))?;
        Ok(Events {
            rx,
            driver: Driver::spawn(conn, tasks),
        })
    }

    fn err(op: &'static str, ifname: &str, e: rtnetlink::Error) -> NetError {
        NetError::Netlink {
            op,
            ifname: ifname.to_string(),
            source: e,
        }
    }

    pub async fn snapshot(&self) -> Result<Snapshot, NetError> {
        let mut s = Snapshot::default();
        let mut links = self.handle.link().get().execute();
        while let Some(m) = links
            .try_next()
            .await
            .map_err(|e| Self::err("list links", "*", e))?
        {
            s.links.push(link_of(&m));
        }
        let mut addrs = self.handle.address().get().execute();
        while let Some(m) = addrs
            .try_next()
            .await
            .map_err(|e| Self::err("list addresses", "*", e))?
        {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            let Some(ip) = ip else { continue };
            if let IpAddr::V6(v6) = ip
                && v6.segments()[0] & 0xffc0 == 0xfe80
            {
                continue;
            }
            if let Ok(net) = IpNetwork::new(ip, m.header.prefix_len) {
                s.addrs.entry(m.header.index).or_default().push(net);
            }
        }
        for v6 in [false, true] {
            let filter = if v6 {
                RouteMessageBuilder::<Ipv6Addr>::new().build()
            } else {
                RouteMessageBuilder::<Ipv4Addr>::new().build()
            };
            let mut routes = self.handle.route().get(filter).execute();
            while let Some(m) = routes
                .try_next()
                .await
                .map_err(|e| Self::err("list routes", "*", e))?
            {
                match route_of(m) {
                    Some(r) if r.protocol == RTPROT_HOSTPLANE => s.routes.push(r),
                    Some(r) => s.foreign_routes.push(r),
                    None => {}
                }
            }
        }
        Ok(s)
    }

    /// Create a bridge tagged `alias`, down; returns its index.
    pub async fn create_bridge(&self, name: &str, alias: &str) -> Result<u32, NetError> {
        let msg = LinkBridge::new(name).build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| Self::err("create bridge", name, e))?;
        let index = self.index_of(name).await?;
        self.set(index, name, "set alias", |b| b.alias(alias)).await?;
        Ok(index)
    }

    async fn index_of(&self, name: &str) -> Result<u32, NetError> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links
            .try_next()
            .await
            .map_err(|e| Self::err("find link", name, e))?
        {
            Some(m) => Ok(m.header.index),
            None => Err(NetError::NoSuchInterface {
                ifname: name.to_string(),
            }),
        }
    }

    async fn set(
        &self,
        index: u32,
        name: &str,
        op: &'static str,
        f: impl FnOnce(rtnetlink::LinkMessageBuilder<LinkUnspec>) -> rtnetlink::LinkMessageBuilder<LinkUnspec>,
    ) -> Result<(), NetError> {
        let msg: LinkMessage = f(LinkUnspec::new_with_index(index)).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| Self::err(op, name, e))
    }

    pub async fn set_mtu(&self, l: &Link, mtu: u32) -> Result<(), NetError> {
        self.set(l.index, &l.name, "set mtu", |b| b.mtu(mtu)).await
    }
    pub async fn set_up(&self, l: &Link) -> Result<(), NetError> {
        self.set(l.index, &l.name, "set up", |b| b.up()).await
    }
    pub async fn set_controller(&self, l: &Link, bridge: u32) -> Result<(), NetError> {
        self.set(l.index, &l.name, "attach to bridge", |b| b.controller(bridge))
            .await
    }
    pub async fn detach(&self, l: &Link) -> Result<(), NetError> {
        self.set(l.index, &l.name, "detach from bridge", |b| b.nocontroller())
            .await
    }
    pub async fn delete(&self, l: &Link) -> Result<(), NetError> {
        self.handle
            .link()
            .del(l.index)
            .execute()
            .await
            .map_err(|e| Self::err("delete link", &l.name, e))
    }

    pub async fn add_address(&self, l: &Link, net: IpNetwork) -> Result<(), NetError> {
        self.handle
            .address()
            .add(l.index, net.ip(), net.prefix())
            .execute()
            .await
            .map_err(|e| Self::err("add address", &l.name, e))
    }

    pub async fn del_address(&self, l: &Link, net: IpNetwork) -> Result<(), NetError> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(l.index)
            .execute();
        while let Some(m) = addrs
            .try_next()
            .await
            .map_err(|e| Self::err("list addresses", &l.name, e))?
        {
            let same = m.header.prefix_len == net.prefix()
                && m.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if *ip == net.ip()));
            if same {
                return self
                    .handle
                    .address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(|e| Self::err("delete address", &l.name, e));
            }
        }
        Ok(())
    }

    /// Add route `r` (out of `oif` when given) in the main table with
    /// protocol [`RTPROT_HOSTPLANE`]. `replace`: replace in place the route
    /// with the same destination and metric (`NLM_F_REPLACE`, one atomic
    /// change, so a gateway change never leaves the host without the route);
    /// otherwise the add fails if such a route exists (`NLM_F_EXCL`).
    pub async fn add_route(&self, r: &RouteSpec, oif: Option<u32>, replace: bool) -> Result<(), NetError> {
        let dest = r.destination;
        let invalid = |e: &dyn std::fmt::Display| NetError::Port {
            reason: format!("route {dest}: {e}"),
        };
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dest.ip(), dest.prefix())
            .map_err(|e| invalid(&e))?;
        if let Some(g) = r.gateway {
            b = b.gateway(g).map_err(|e| invalid(&e))?;
        }
        if let Some(i) = oif {
            b = b.output_interface(i);
        }
        let msg = b
            .priority(r.metric)
            .table_id(RT_TABLE_MAIN)
            .scope(r.scope())
            .protocol(RouteProtocol::Other(RTPROT_HOSTPLANE))
            .build();
        let req = self.handle.route().add(msg);
        let (req, op) = if replace {
            (req.replace(), "replace route")
        } else {
            (req, "add route")
        };
        let what = format!("{dest} metric {}", r.metric);
        req.execute().await.map_err(|e| Self::err(op, &what, e))
    }

    /// The PF's index and the state of its VFs (`IFLA_VFINFO_LIST`).
    pub async fn vfs_of(&self, pf: &str) -> Result<(u32, BTreeMap<u32, VfState>), NetError> {
        let req = self
            .handle
            .link()
            .get()
            .match_name(pf.to_string())
            .set_filter_mask(
                rtnetlink::packet_route::AddressFamily::Unspec,
                vec![LinkExtentMask::Vf],
            );
        let mut links = req.execute();
        let m = links
            .try_next()
            .await
            .map_err(|e| Self::err("read VFs of", pf, e))?
            .ok_or(NetError::NoSuchInterface {
                ifname: pf.to_string(),
            })?;
        let vfs = m
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::VfInfoList(l) => Some(parse_vfs(l)),
                _ => None,
            })
            .unwrap_or_default();
        Ok((m.header.index, vfs))
    }

    /// Set VF attributes on the PF in one RTM_SETLINK.
    pub async fn set_vfs(&self, pf_index: u32, pf: &str, infos: Vec<VfInfo>) -> Result<(), NetError> {
        let msg = LinkUnspec::new_with_index(pf_index)
            .append_extra_attribute(LinkAttribute::VfInfoList(vec![LinkVfInfo(infos)]))
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| Self::err("set VF attributes on", pf, e))
    }

    /// Delete an owned route; one that is already gone (ESRCH) is fine.
    pub async fn del_route(&self, r: &KernelRoute) -> Result<(), NetError> {
        match self.handle.route().del(r.msg.clone()).execute().await {
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ESRCH => Ok(()),
            other => other.map_err(|e| Self::err("delete route", &r.destination.to_string(), e)),
        }
    }
}

fn link_of(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        controller: None,
        alias: None,
        is_bridge: false,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(c) => l.controller = Some(*c),
            LinkAttribute::IfAlias(a) => l.alias = Some(a.clone()),
            LinkAttribute::LinkInfo(infos) => {
                l.is_bridge = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge)));
            }
            _ => {}
        }
    }
    l
}

fn route_of(m: RouteMessage) -> Option<KernelRoute> {
    let mut dest: Option<IpAddr> = None;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = 0;
    let mut table = u32::from(m.header.table);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dest = Some(IpAddr::V4(*ip)),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dest = Some(IpAddr::V6(*ip)),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(IpAddr::V4(*ip)),
            RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => gateway = Some(IpAddr::V6(*ip)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    if table != RT_TABLE_MAIN {
        return None;
    }
    let v6 = m.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6;
    let dest = dest.unwrap_or(if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    let destination = IpNetwork::new(dest, m.header.destination_prefix_length).ok()?;
    Some(KernelRoute {
        destination,
        gateway,
        oif,
        metric,
        scope: m.header.scope,
        protocol: u8::from(m.header.protocol),
        msg: m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Until the driver tasks `handles` have ended, let the runtime run the
    /// aborted ones (a bounded number of turns: no clock).
    async fn ended(handles: &[&AbortHandle]) -> bool {
        for _ in 0..1000 {
            if handles.iter().all(|h| h.is_finished()) {
                return true;
            }
            tokio::task::yield_now().await;
        }
        false
    }

    // A netlink socket in the test's own namespace needs no privilege.
    #[tokio::test]
    async fn dropping_a_connection_ends_its_driver_task() {
        let tasks = TaskTracker::new();
        let nl = match Netlink::open_in(None, &tasks) {
            Ok(nl) => nl,
            Err(e) => {
                eprintln!("skipped: no netlink socket here: {e}");
                return;
            }
        };
        let events = Netlink::watch_in(None, &tasks).unwrap();
        let (conn, watch) = (nl.driver(), events.driver());
        assert_eq!(tasks.len(), 2, "both drivers run in the owner's tracker");

        // A clone keeps the connection (and its driver) alive.
        let clone = nl.clone();
        drop(nl);
        clone
            .snapshot()
            .await
            .expect("the clone still talks to the kernel");
        assert!(!conn.is_finished());

        drop(events);
        assert!(
            ended(&[&watch]).await,
            "the subscription's driver outlived its Events"
        );
        assert!(!conn.is_finished());
        drop(clone);
        assert!(
            ended(&[&conn]).await,
            "the connection's driver outlived the last Netlink"
        );
        tasks.close();
        tasks.wait().await;
        assert!(tasks.is_empty());
    }
}
