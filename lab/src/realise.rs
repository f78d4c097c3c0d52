//! Turns a [`Plan`] into namespaces, veths, addresses, routes and neighbours, and removes them
//! again. Nothing here touches the root namespace: every veth end is born in its own namespace.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use futures::{StreamExt, TryFutureExt, TryStreamExt, stream};
use indicatif::ProgressBar;
use ipnet::Ipv4Net;

use crate::net::netlink::{LOOPBACK, Netlink, Route, VethEnd, Vxlan};
use crate::net::{netns, sysctl};
use crate::plan::{self, ExternalPlan, NodePlan, Plan, PodPlan, UPLINK_NAME, VXLAN_NAME, ifindex};
use crate::services::Services;
use crate::state::LabDir;
use crate::topology::RoutingMode;

/// How many namespaces are configured at once. The kernel serialises most of this work under
/// `rtnl_lock`, so more buys little on two cores.
const IN_FLIGHT: usize = 16;

fn default_route() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid")
}

fn host_route(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("valid")
}

/// Builds everything in `plan`. On error, what was built stays: the caller tears down.
pub async fn build(plan: &Plan, progress: &ProgressBar) -> Result<()> {
    progress.set_length((plan.netns_names().len() + plan.pods.len()) as u64);
    progress.set_message("namespaces");
    let namespaces = create_namespaces(plan, progress).await?;
    crash_point("namespaces");
    let ns = |name: &str| namespaces.get(name).expect("every namespace of the plan was created");

    progress.set_message("fabric");
    let fabric = Netlink::connect_in(ns(&plan.fabric.netns))?;
    fabric.set_up(LOOPBACK).await?;
    netns::run_in(ns(&plan.fabric.netns), || {
        sysctl::write("net.ipv4.ip_forward", "1")?;
        sysctl::no_icmp_redirects()
    })??;
    fabric.add_bridge(&plan.fabric.bridge, ifindex::BRIDGE, plan.fabric.bridge_mac).await?;
    for address in &plan.fabric.addresses {
        fabric.add_address(ifindex::BRIDGE, *address).await?;
    }
    // Externals reply to pods directly, so the fabric routes every pod CIDR to its node, as a
    // cloud network's route table does.
    for node in &plan.nodes {
        let route = Route {
            destination: node.pod_cidr,
            gateway: Some(node.ip.addr()),
            interface: ifindex::BRIDGE,
            source: None,
        };
        fabric.add_route(route).await?;
        fabric.add_neighbour(ifindex::BRIDGE, node.ip.addr(), node.uplink_mac).await?;
    }

    progress.set_message("nodes");
    let node_links: Vec<Netlink> =
        futures::future::try_join_all(plan.nodes.iter().map(|node| build_node(plan, node, &fabric, ns(&node.netns))))
            .await?;

    progress.set_message("pods");
    // Pods given one address on purpose (an IPAM bug reproduced) are built last and in file
    // order, so the node's route to that address deterministically names the last of them.
    let shares_address = |pod: &PodPlan| plan.pods.iter().filter(|p| p.node == pod.node && p.ip == pod.ip).count() > 1;
    let (shared, unique): (Vec<&PodPlan>, Vec<&PodPlan>) = plan.pods.iter().partition(|p| shares_address(p));
    for (pods, in_flight) in [(unique, IN_FLIGHT), (shared, 1)] {
        stream::iter(pods)
            .map(|pod| build_pod(plan, pod, &node_links[pod.node], ns(&pod.netns)).inspect_ok(|()| progress.inc(1)))
            .buffer_unordered(in_flight)
            .try_collect::<()>()
            .await?;
    }
    crash_point("pods");

    progress.set_message("externals");
    for external in &plan.externals {
        build_external(plan, external, &fabric, ns(&external.netns)).await?;
    }
    Ok(())
}

/// Builds the pods `pods` (indices into `plan.pods`) of a running lab: their namespaces, veths,
/// routes and neighbour entries, as `lab up` builds every pod.
pub async fn add_pods(plan: &Plan, pods: &[usize]) -> Result<()> {
    for &index in pods {
        let pod = &plan.pods[index];
        let name = pod.netns.clone();
        let file = tokio::task::spawn_blocking(move || create_namespace(&name))
            .await
            .context("namespace creation panicked")??;
        let node = Netlink::connect_in(&netns::open(&plan.nodes[pod.node].netns)?)?;
        build_pod(plan, pod, &node, &file).await?;
    }
    Ok(())
}

/// Removes a pod of a running lab: its veth (with the node's route and neighbour entry to it)
/// and its namespace.
pub async fn remove_pod(plan: &Plan, pod: &PodPlan) -> Result<()> {
    let node = Netlink::connect_in(&netns::open(&plan.nodes[pod.node].netns)?)?;
    node.delete_link(pod.host_ifindex).await.with_context(|| format!("removing pod {}", pod.id()))?;
    netns::remove(&pod.netns).with_context(|| format!("removing the namespace of pod {}", pod.id()))
}

/// Cuts (`up` false) or mends the wire of a pod, node or external, at its far end: a node's or
/// external's port on the fabric, a pod's `lxc` on its node. The target's own interface stays
/// up, with its routes, and sees its carrier go, as when a cable is pulled. Mending a pod's wire
/// also puts back the node's route and neighbour entry to it, which the kernel flushed.
pub async fn set_wire(plan: &Plan, target: &str, up: bool) -> Result<()> {
    let fabric_port = |name: &str| {
        let node = plan.nodes.iter().find(|n| n.name == name).map(|n| n.fabric_port_index);
        node.or_else(|| plan.externals.iter().find(|e| e.name == name).map(|e| e.fabric_port_index))
    };
    if let Some(index) = fabric_port(target) {
        let fabric = Netlink::connect_in(&netns::open(&plan.fabric.netns)?)?;
        if !up {
            return fabric.set_down(index).await;
        }
        fabric.set_up(index).await?;
        return wait_running(&fabric, index).await;
    }
    let pod = plan.find_pod(target).map_err(anyhow::Error::msg)?;
    let node = Netlink::connect_in(&netns::open(&plan.nodes[pod.node].netns)?)?;
    if !up {
        return node.set_down(pod.host_ifindex).await;
    }
    node.set_up(pod.host_ifindex).await?;
    wait_running(&node, pod.host_ifindex).await?;
    let to_pod = Route {
        destination: host_route(pod.ip),
        gateway: None,
        interface: pod.host_ifindex,
        source: Some(plan.nodes[pod.node].router_ip),
    };
    node.add_route(to_pod).await?;
    node.add_neighbour(pod.host_ifindex, pod.ip, pod.mac).await
}

/// Waits until an interface set up carries traffic: until then its queue drops every packet.
async fn wait_running(link: &Netlink, index: u32) -> Result<()> {
    let deadline = std::time::Instant::now() + crate::probe::scaled(std::time::Duration::from_secs(3));
    while !link.is_running(index).await? {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("interface {index} did not come up");
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Creates a namespace as every namespace of a lab starts: IPv6 and reverse path filtering off,
/// ping sockets allowed.
fn create_namespace(name: &str) -> Result<File> {
    let file = netns::create(name)?;
    netns::run_in(&file, || -> std::io::Result<()> {
        sysctl::disable_ipv6()?;
        sysctl::no_reverse_path_filter()?;
        sysctl::allow_ping_sockets()
    })??;
    Ok(file)
}

/// Creates every namespace of the plan ([`create_namespace`]), on blocking threads.
async fn create_namespaces(plan: &Plan, progress: &ProgressBar) -> Result<HashMap<String, File>> {
    stream::iter(plan.netns_names())
        .map(|name| {
            let name = name.to_string();
            let progress = progress.clone();
            tokio::task::spawn_blocking(move || {
                let file = create_namespace(&name)?;
                progress.inc(1);
                Ok::<_, anyhow::Error>((name, file))
            })
        })
        .buffer_unordered(IN_FLIGHT)
        .map(|joined| joined.context("namespace creation panicked")?)
        .try_collect()
        .await
}

async fn build_node(plan: &Plan, node: &NodePlan, fabric: &Netlink, netns_file: &File) -> Result<Netlink> {
    let uplink = ifindex::UPLINK;
    fabric
        .add_veth(
            VethEnd {
                name: &node.fabric_port,
                index: node.fabric_port_index,
                mac: node.fabric_port_mac,
                mtu: plan.mtu,
            },
            Some(ifindex::BRIDGE),
            VethEnd { name: UPLINK_NAME, index: uplink, mac: node.uplink_mac, mtu: plan.mtu },
            netns_file,
        )
        .await?;
    fabric.add_fdb(node.fabric_port_index, node.uplink_mac).await?;

    let link = Netlink::connect_in(netns_file)?;
    link.set_up(LOOPBACK).await?;
    link.set_up(uplink).await?;
    link.add_address(uplink, node.ip).await?;
    // The router IP is the node's own address in its pod CIDR (Cilium puts it on cilium_host).
    link.add_address(LOOPBACK, host_route(node.router_ip)).await?;
    link.add_neighbour(uplink, node.gateway, plan.fabric.bridge_mac).await?;
    link.add_route(Route {
        destination: default_route(),
        gateway: Some(node.gateway),
        interface: uplink,
        source: None,
    })
    .await?;

    for peer in plan.nodes.iter().filter(|peer| peer.name != node.name) {
        link.add_neighbour(uplink, peer.ip.addr(), peer.uplink_mac).await?;
        match plan.routing_mode {
            RoutingMode::Native => {
                let route = Route {
                    destination: peer.pod_cidr,
                    gateway: Some(peer.ip.addr()),
                    interface: uplink,
                    source: None,
                };
                link.add_route(route).await?;
            }
            RoutingMode::Tunnel => {}
        }
    }
    if plan.routing_mode == RoutingMode::Tunnel {
        build_tunnel(plan, node, &link).await?;
    }
    for uplink in &node.uplinks {
        fabric
            .add_veth(
                VethEnd {
                    name: &uplink.fabric_port,
                    index: uplink.fabric_port_index,
                    mac: uplink.fabric_port_mac,
                    mtu: plan.mtu,
                },
                Some(ifindex::BRIDGE),
                VethEnd { name: &uplink.name, index: uplink.index, mac: uplink.mac, mtu: plan.mtu },
                netns_file,
            )
            .await?;
        fabric.add_fdb(uplink.fabric_port_index, uplink.mac).await?;
        fabric.add_neighbour(ifindex::BRIDGE, uplink.address.addr(), uplink.mac).await?;
        link.set_up(uplink.index).await?;
        link.add_address(uplink.index, uplink.address).await?;
        link.add_neighbour(uplink.index, uplink.gateway, plan.fabric.bridge_mac).await?;
    }
    for &(destination, gateway, interface) in &node.routes {
        link.add_route(Route { destination, gateway: Some(gateway), interface, source: None })
            .await
            .with_context(|| format!("node {}", node.name))?;
    }

    netns::run_in(netns_file, || -> std::io::Result<()> {
        sysctl::write("net.ipv4.ip_forward", "1")?;
        for (key, value) in &node.sysctls {
            sysctl::write(key, value)?;
        }
        Ok(())
    })?
    .with_context(|| format!("setting sysctls of node {}", node.name))?;
    Ok(link)
}

/// VXLAN between nodes: each remote pod CIDR is routed via the remote node's router IP on the
/// tunnel device (its MAC pinned, so no ARP crosses the tunnel); the datapath's program on the
/// device picks the remote node per packet from the ipcache.
async fn build_tunnel(plan: &Plan, node: &NodePlan, link: &Netlink) -> Result<()> {
    let tunnel = ifindex::VXLAN;
    let mtu = plan.mtu - plan::VXLAN_OVERHEAD;
    link.add_vxlan(Vxlan {
        name: VXLAN_NAME,
        index: tunnel,
        uplink: ifindex::UPLINK,
        local: node.ip.addr(),
        port: plan::VXLAN_PORT,
        mac: node.vxlan_mac,
        mtu,
    })
    .await?;
    for peer in plan.nodes.iter().filter(|peer| peer.name != node.name) {
        link.add_neighbour(tunnel, peer.router_ip, peer.vxlan_mac).await?;
        let route =
            Route { destination: peer.pod_cidr, gateway: Some(peer.router_ip), interface: tunnel, source: None };
        link.add_route(route).await?;
    }
    Ok(())
}

async fn build_pod(plan: &Plan, pod: &PodPlan, node_link: &Netlink, netns_file: &File) -> Result<()> {
    let node = &plan.nodes[pod.node];
    let mtu = plan.pod_mtu();
    node_link
        .add_veth(
            VethEnd { name: &pod.host_ifname, index: pod.host_ifindex, mac: pod.host_mac, mtu },
            None,
            VethEnd { name: UPLINK_NAME, index: ifindex::UPLINK, mac: pod.mac, mtu },
            netns_file,
        )
        .await
        .with_context(|| format!("pod {}", pod.id()))?;
    let to_pod = Route {
        destination: host_route(pod.ip),
        gateway: None,
        interface: pod.host_ifindex,
        source: Some(node.router_ip),
    };
    node_link.add_route(to_pod).await?;
    node_link.add_neighbour(pod.host_ifindex, pod.ip, pod.mac).await?;

    let link = Netlink::connect_in(netns_file)?;
    let eth0 = ifindex::UPLINK;
    link.set_up(LOOPBACK).await?;
    link.set_up(eth0).await?;
    link.add_address(eth0, host_route(pod.ip)).await?;
    link.add_neighbour(eth0, node.router_ip, pod.host_mac).await?;
    link.add_route(Route { destination: default_route(), gateway: Some(node.router_ip), interface: eth0, source: None })
        .await
        .with_context(|| format!("pod {}", pod.id()))
}

async fn build_external(plan: &Plan, external: &ExternalPlan, fabric: &Netlink, netns_file: &File) -> Result<()> {
    let eth0 = ifindex::UPLINK;
    fabric
        .add_veth(
            VethEnd {
                name: &external.fabric_port,
                index: external.fabric_port_index,
                mac: external.fabric_port_mac,
                mtu: plan.mtu,
            },
            Some(ifindex::BRIDGE),
            VethEnd { name: UPLINK_NAME, index: eth0, mac: external.mac, mtu: plan.mtu },
            netns_file,
        )
        .await?;
    fabric.add_fdb(external.fabric_port_index, external.mac).await?;
    fabric.add_neighbour(ifindex::BRIDGE, external.address.addr(), external.mac).await?;

    let link = Netlink::connect_in(netns_file)?;
    link.set_up(LOOPBACK).await?;
    link.set_up(eth0).await?;
    link.add_address(eth0, external.address).await?;
    link.add_neighbour(eth0, external.gateway, plan.fabric.bridge_mac).await?;
    link.add_route(Route {
        destination: default_route(),
        gateway: Some(external.gateway),
        interface: eth0,
        source: None,
    })
    .await
    .with_context(|| format!("external {}", external.name))
}

/// Routes every LoadBalancer address and external IP in the fabric to the node that announces
/// it ([`Services::announcements`]), as `proto bgp` routes, and removes the routes of addresses
/// no longer announced: the fabric plays the network a BGP speaker or L2 announcements would
/// teach. On a thread of its own, so callers inside an async runtime may use it too.
pub fn announce(plan: &Plan, services: &Services) -> Result<()> {
    let wanted: BTreeMap<Ipv4Addr, Ipv4Addr> =
        services.announcements(plan).into_iter().map(|(address, node)| (address, plan.nodes[node].ip.addr())).collect();
    let fabric = netns::open(&plan.fabric.netns).with_context(|| format!("opening {}", plan.fabric.netns))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(async { Netlink::connect_in(&fabric)?.sync_announced(ifindex::BRIDGE, &wanted).await })
            })
            .join()
            .expect("announcing does not panic")
    })
    .context("announcing LoadBalancer addresses and external IPs in the fabric")
}

/// What teardown removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub namespaces: usize,
    pub agents: usize,
    pub pins: bool,
}

/// Removes a lab: its agent, every namespace it recorded or that carries its prefix, its BPF pin
/// folder, and last its record. Safe to repeat, and complete after a crash at any point of
/// `lab up`, because the record is written before anything is created.
pub fn teardown(lab: &LabDir) -> Result<Removed> {
    let mut removed = Removed { agents: crate::agent::stop(&lab.name)?, ..Removed::default() };
    let mut names: Vec<String> =
        lab.read_plan().map(|p| p.netns_names().iter().map(|n| n.to_string()).collect()).unwrap_or_default();
    names.extend(netns::list_with_prefix(&plan::netns_prefix(&lab.name)));
    names.sort();
    names.dedup();
    for name in &names {
        if netns::path(name).exists() {
            netns::remove(name)?;
            removed.namespaces += 1;
        }
    }
    let pins = lab.bpffs_path();
    if pins.exists() {
        std::fs::remove_dir_all(&pins).with_context(|| format!("removing {}", pins.display()))?;
        removed.pins = true;
    }
    lab.remove()?;
    Ok(removed)
}

/// A test hook: `LAB_CRASH_AT=<point>` makes `lab up` kill itself with SIGKILL at that point
/// (`recorded`, `namespaces`, `pods`, `built`, `served`), so tests can prove `lab down` cleans up
/// after a crash anywhere.
pub fn crash_point(point: &str) {
    if std::env::var("LAB_CRASH_AT").is_ok_and(|at| at == point) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
