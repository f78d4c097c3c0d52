//! The service maps (bpf/lib/lb.h): what they hold for a lab's [`Services`] on each node (pure),
//! and writing it into every node's pinned maps. Every node holds every service, as every Cilium
//! agent does, and its own address's NodePorts; with `externalTrafficPolicy: Local` those list
//! the node's own backends only.

use std::collections::BTreeMap;
use std::hash::Hash;

use anyhow::{Context, Result};
use aya::Pod;
use aya::maps::{HashMap, Map};

use super::abi::{LB4_F_AFFINITY, LB4_F_NODEPORT, Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service};
use super::maps::{ipv4, open};
use super::pins;
use crate::plan::Plan;
use crate::policy::ports::{IPPROTO_TCP, IPPROTO_UDP};
use crate::services::{Backend, BackendState, Services};
use crate::topology::Protocol;

pub const SERVICES_MAP: &str = "lab_lb4_services";
pub const BACKENDS_MAP: &str = "lab_lb4_backends";
pub const REVERSE_NAT_MAP: &str = "lab_lb4_reverse_nat";

/// The contents of the three service maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbMaps {
    pub services: BTreeMap<Lb4Key, Lb4Service>,
    pub backends: BTreeMap<u32, Lb4Backend>,
    pub reverse_nat: BTreeMap<u16, Lb4ReverseNat>,
}

fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

/// What node `node`'s maps hold: each frontend's master entry (slot 0) and one slot per backend,
/// active ones first; for NodePorts, at the node's address.
pub fn lb_maps(services: &Services, plan: &Plan, node: usize) -> LbMaps {
    let ids = services.backend_ids();
    let local: std::collections::BTreeSet<std::net::Ipv4Addr> =
        plan.pods.iter().filter(|p| p.node == node).map(|p| p.ip).collect();
    let node_ip = plan.nodes[node].ip.addr();
    let mut maps = LbMaps::default();
    for ((address, port, protocol), id) in &ids {
        let backend =
            Lb4Backend { address: ipv4(*address), port: port.to_be(), proto: protocol_number(*protocol), pad: 0 };
        maps.backends.insert(*id, backend);
    }
    for (rev_nat_index, service, frontend) in services.frontends() {
        let affinity = if service.affinity_seconds.is_some() { LB4_F_AFFINITY } else { 0 };
        let mut add = |address, port: u16, flags, backends: Vec<&Backend>| {
            let key = |slot: u16| Lb4Key {
                address: ipv4(address),
                dport: port.to_be(),
                backend_slot: slot,
                proto: protocol_number(frontend.protocol),
                pad: [0; 3],
            };
            let active = backends.iter().filter(|b| b.state == BackendState::Active).count();
            let master = Lb4Service {
                backend_id: service.affinity_seconds.unwrap_or(0),
                count: active as u16,
                rev_nat_index,
                flags: affinity | flags,
                pad: 0,
                terminating: (backends.len() - active) as u16,
            };
            maps.services.insert(key(0), master);
            for (slot, backend) in backends.iter().enumerate() {
                let id = ids[&(backend.address, backend.port, frontend.protocol)];
                let entry = Lb4Service { backend_id: id, rev_nat_index, ..Default::default() };
                maps.services.insert(key(slot as u16 + 1), entry);
            }
        };
        add(frontend.address, frontend.port, 0, frontend.backends.iter().collect());
        if let Some(node_port) = frontend.node_port {
            let backends = frontend.backends.iter().filter(|b| !service.external_local || local.contains(&b.address));
            add(node_ip, node_port, LB4_F_NODEPORT, backends.collect());
        }
        // Pods' connections are translated back to the ClusterIP with this; a NodePort's
        // answers find their frontend in the NAT map (bpf/lab_host.c).
        let frontend_address = Lb4ReverseNat { address: ipv4(frontend.address), port: frontend.port.to_be(), pad: 0 };
        maps.reverse_nat.insert(rev_nat_index, frontend_address);
    }
    maps
}

/// Makes every node's service maps hold exactly what [`lb_maps`] says for it. Backends and
/// reverse NAT entries are added before the services that name them and removed after, so a
/// lookup never dangles.
pub fn sync(plan: &Plan, services: &Services) -> Result<()> {
    for (index, node) in plan.nodes.iter().enumerate() {
        let wanted = &lb_maps(services, plan, index);
        let path = |map: &str| pins::node_map(&plan.lab, &node.name, map);
        let mut backends = Synced::open(&path(BACKENDS_MAP), &wanted.backends)?;
        let mut reverse_nat = Synced::open(&path(REVERSE_NAT_MAP), &wanted.reverse_nat)?;
        backends.write()?;
        reverse_nat.write()?;
        let mut services = Synced::open(&path(SERVICES_MAP), &wanted.services)?;
        services.remove_unwanted()?;
        services.write()?;
        backends.remove_unwanted()?;
        reverse_nat.remove_unwanted()?;
    }
    Ok(())
}

/// One pinned hash map, what it holds, and what it should hold.
struct Synced<'a, K: Pod + Ord, V: Pod> {
    map: HashMap<aya::maps::MapData, K, V>,
    present: BTreeMap<K, V>,
    wanted: &'a BTreeMap<K, V>,
}

impl<'a, K: Pod + Ord + Hash, V: Pod + PartialEq> Synced<'a, K, V> {
    fn open(path: &std::path::Path, wanted: &'a BTreeMap<K, V>) -> Result<Self> {
        let map: HashMap<_, K, V> = HashMap::try_from(Map::HashMap(open(path)?))?;
        let present = map.iter().collect::<Result<_, _>>().with_context(|| format!("reading {}", path.display()))?;
        Ok(Synced { map, present, wanted })
    }

    fn write(&mut self) -> Result<()> {
        for (key, value) in self.wanted {
            if self.present.get(key) != Some(value) {
                self.map.insert(key, value, 0)?;
            }
        }
        Ok(())
    }

    fn remove_unwanted(&mut self) -> Result<()> {
        for key in self.present.keys().filter(|k| !self.wanted.contains_key(k)) {
            self.map.remove(key)?;
        }
        Ok(())
    }
}
