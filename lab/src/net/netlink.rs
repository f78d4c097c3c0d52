//! The netlink requests a lab makes, on a connection that belongs to one namespace.
//!
//! A netlink socket stays in the namespace it was created in, so [`Netlink::connect_in`] creates
//! it inside the target namespace and the requests can then be sent from any thread.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use super::netns;
use crate::plan::Mac;

/// The loopback interface's index in every namespace.
pub const LOOPBACK: u32 = 1;

#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// One end of a veth pair to be created.
pub struct VethEnd<'a> {
    pub name: &'a str,
    /// A fixed interface index, so flows and captures name the same interface on every run.
    pub index: u32,
    pub mac: Mac,
    pub mtu: u32,
}

/// A VXLAN device to be created, sending from `local` over the interface `uplink`.
pub struct Vxlan<'a> {
    pub name: &'a str,
    pub index: u32,
    pub uplink: u32,
    pub local: Ipv4Addr,
    pub port: u16,
    pub mac: Mac,
    pub mtu: u32,
}

/// A route to `destination`, through `gateway` (on-link: reachable whatever the interface's
/// addresses) or directly on the link.
pub struct Route {
    pub destination: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub interface: u32,
    pub source: Option<Ipv4Addr>,
}

impl Netlink {
    /// A connection whose socket lives in `netns`. Must be called inside a tokio runtime.
    pub fn connect_in(netns: &File) -> Result<Netlink> {
        let (connection, handle, _) =
            netns::run_in(netns, rtnetlink::new_connection)?.context("opening a netlink socket")?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    pub async fn index_of(&self, name: &str) -> Result<u32> {
        let link = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
            .with_context(|| format!("looking up interface {name}"))?
            .with_context(|| format!("no interface {name}"))?;
        Ok(link.header.index)
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| format!("setting interface {index} up"))
    }

    /// Whether the interface is operationally up (`IFF_RUNNING`): carrier on both ends and its
    /// queue started, which the kernel does a moment after the interface is set up.
    pub async fn is_running(&self, index: u32) -> Result<bool> {
        let link = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .with_context(|| format!("looking up interface {index}"))?
            .with_context(|| format!("no interface {index}"))?;
        Ok(link.header.flags.contains(rtnetlink::packet_route::link::LinkFlags::Running))
    }

    pub async fn set_down(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).down().build())
            .execute()
            .await
            .with_context(|| format!("setting interface {index} down"))
    }

    /// Removes an interface (both ends, for a veth).
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        self.handle.link().del(index).execute().await.with_context(|| format!("removing interface {index}"))
    }

    /// Creates a bridge, up, with a fixed index and MAC.
    pub async fn add_bridge(&self, name: &str, index: u32, mac: Mac) -> Result<()> {
        let message = LinkBridge::new(name).index(index).address(mac.0.to_vec()).up().build();
        self.handle.link().add(message).execute().await.with_context(|| format!("creating bridge {name}"))
    }

    /// Creates a veth pair with `local` in this connection's namespace (up, optionally a port of
    /// `controller`) and `peer` born directly inside `peer_netns`, so it never passes through
    /// any other namespace. The peer is brought up from its own namespace: a peer set up at
    /// creation fails because the pair is not yet linked.
    pub async fn add_veth(
        &self,
        local: VethEnd<'_>,
        controller: Option<u32>,
        peer: VethEnd<'_>,
        peer_netns: &File,
    ) -> Result<()> {
        let peer_message = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.name.to_string())
            .index(peer.index)
            .address(peer.mac.0.to_vec())
            .mtu(peer.mtu)
            .setns_by_fd(peer_netns.as_raw_fd())
            .build();
        let mut builder = LinkVeth::new(local.name, peer.name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message)))
            .index(local.index)
            .address(local.mac.0.to_vec())
            .mtu(local.mtu)
            .up();
        if let Some(controller) = controller {
            builder = builder.controller(controller);
        }
        self.handle
            .link()
            .add(builder.build())
            .execute()
            .await
            .with_context(|| format!("creating veth {} <-> {}", local.name, peer.name))
    }

    /// Creates a VXLAN device in metadata ("external") mode, as Cilium's: the datapath sets each
    /// packet's remote endpoint and VNI, and reads the VNI of what arrives.
    pub async fn add_vxlan(&self, device: Vxlan<'_>) -> Result<()> {
        // No VNI: a metadata-mode device with one would only receive that VNI, and the VNI
        // carries the sender's identity.
        let message = LinkMessageBuilder::<LinkVxlan>::new(device.name)
            .dev(device.uplink)
            .local(device.local)
            .port(device.port)
            .collect_metadata(true)
            .learning(false)
            .index(device.index)
            .address(device.mac.0.to_vec())
            .mtu(device.mtu)
            .up()
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .with_context(|| format!("creating vxlan device {}", device.name))
    }

    pub async fn add_address(&self, index: u32, address: Ipv4Net) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(address.addr()), address.prefix_len())
            .execute()
            .await
            .with_context(|| format!("adding address {address} to interface {index}"))
    }

    /// Adds (or replaces: the last of two pods given one address wins, as in the field) a route.
    pub async fn add_route(&self, route: Route) -> Result<()> {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.destination.addr(), route.destination.prefix_len())
            .output_interface(route.interface);
        if let Some(gateway) = route.gateway {
            builder = builder.gateway(gateway).onlink();
        } else {
            builder = builder.scope(rtnetlink::packet_route::route::RouteScope::Link);
        }
        if let Some(source) = route.source {
            builder = builder.pref_source(source);
        }
        self.handle
            .route()
            .add(builder.build())
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding route to {}", route.destination))
    }

    /// Makes the main table's `proto bgp` routes exactly `wanted` (each a /32 via a gateway on
    /// `interface`): the addresses the lab announces, as a BGP speaker would install them.
    pub async fn sync_announced(&self, interface: u32, wanted: &BTreeMap<Ipv4Addr, Ipv4Addr>) -> Result<()> {
        let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let present: Vec<RouteMessage> = self
            .handle
            .route()
            .get(dump)
            .execute()
            .try_filter(|route| futures::future::ready(route.header.protocol == RouteProtocol::Bgp))
            .try_collect()
            .await
            .context("listing routes")?;
        for route in present {
            let destination = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let gateway = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let kept = destination
                .is_some_and(|d| route.header.destination_prefix_length == 32 && wanted.get(&d) == gateway.as_ref());
            if !kept {
                self.handle.route().del(route).execute().await.context("removing an announced route")?;
            }
        }
        for (address, gateway) in wanted {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(*address, 32)
                .output_interface(interface)
                .gateway(*gateway)
                .onlink()
                .protocol(RouteProtocol::Bgp)
                .build();
            self.handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .with_context(|| format!("announcing {address} via {gateway}"))?;
        }
        Ok(())
    }

    /// A static entry in the forwarding database of the bridge that `port` belongs to: frames
    /// to `mac` go out of `port` only. With permanent ARP entries nobody's frames teach the
    /// bridge where a MAC lives, so without this it would flood them to every port, and every
    /// capture on the fabric would hold other hosts' traffic.
    pub async fn add_fdb(&self, port: u32, mac: Mac) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(port, &mac.0)
            .state(NeighbourState::Noarp)
            .flags(NeighbourFlags::Controller)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding {mac} to the bridge's forwarding database on interface {port}"))
    }

    /// A permanent ARP entry, so no ARP traffic is ever needed (or captured).
    pub async fn add_neighbour(&self, index: u32, ip: Ipv4Addr, mac: Mac) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac.0)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding neighbour {ip} -> {mac} on interface {index}"))
    }
}
