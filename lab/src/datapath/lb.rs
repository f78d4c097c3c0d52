//! The service maps (bpf/lib/lb.h): what they hold for a lab's [`Services`] on each node (pure),
//! and writing it into every node's pinned maps. Every node holds every service, as every Cilium
//! agent does, and its own address's NodePorts. What the outside reaches (NodePorts,
//! LoadBalancer addresses, external IPs) lists only the node's own backends with
//! `externalTrafficPolicy: Local`; what pods reach, with `internalTrafficPolicy: Local`.

use std::collections::BTreeMap;
use std::hash::Hash;

use anyhow::{Context, Result};
use aya::Pod;
use aya::maps::{HashMap, Map};

use super::abi::{
    BE_STATE_ACTIVE, BE_STATE_TERMINATING, LB_SCOPE_EXT, LB_SCOPE_INT, LB4_F_AFFINITY, LB4_F_MAGLEV, LB4_F_NODEPORT,
    LB4_F_SCOPE_INT, LB4_F_TWO_SCOPES, Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service, MAGLEV_SIZE, MaglevKey,
};
use super::maps::{ipv4, open};
use super::pins;
use crate::plan::{Plan, stable_hash};
use crate::policy::ports::{IPPROTO_TCP, IPPROTO_UDP};
use crate::services::{Backend, BackendState, Services};
use crate::topology::{LoadBalancerAlgorithm, Protocol};

pub const SERVICES_MAP: &str = "lab_lb4_services";
pub const BACKENDS_MAP: &str = "lab_lb4_backends";
pub const REVERSE_NAT_MAP: &str = "lab_lb4_reverse_nat";
pub const MAGLEV_MAP: &str = "lab_lb4_maglev";

/// The contents of the three service maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbMaps {
    pub services: BTreeMap<Lb4Key, Lb4Service>,
    pub backends: BTreeMap<u32, Lb4Backend>,
    pub reverse_nat: BTreeMap<u16, Lb4ReverseNat>,
    /// Each Maglev frontend's table, by reverse NAT index and slot.
    pub maglev: BTreeMap<MaglevKey, u32>,
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
    // A backend is active if any frontend has it ready (Kubernetes' conditions are per slice).
    let active: std::collections::BTreeSet<(std::net::Ipv4Addr, u16)> = services
        .services
        .iter()
        .flat_map(|s| &s.frontends)
        .flat_map(|f| &f.backends)
        .filter(|b| b.state == BackendState::Active)
        .map(|b| (b.address, b.port))
        .collect();
    for ((address, port, protocol), id) in &ids {
        let state = if active.contains(&(*address, *port)) { BE_STATE_ACTIVE } else { BE_STATE_TERMINATING };
        let backend =
            Lb4Backend { address: ipv4(*address), port: port.to_be(), proto: protocol_number(*protocol), state };
        maps.backends.insert(*id, backend);
    }
    let maglev = plan.load_balancer_algorithm == LoadBalancerAlgorithm::Maglev;
    for (rev_nat_index, service, frontend) in services.frontends() {
        let affinity = if service.affinity_seconds.is_some() { LB4_F_AFFINITY } else { 0 };
        let all: Vec<&Backend> = frontend.backends.iter().collect();
        let on_this_node = |local_only: bool| -> Vec<&Backend> {
            all.iter().copied().filter(|b| !local_only || local.contains(&b.address)).collect()
        };
        let internal = on_this_node(service.internal_local);
        let external = on_this_node(service.external_local);
        let active: Vec<&Backend> = all.iter().copied().filter(|b| b.state == BackendState::Active).collect();
        // One table per frontend, over all its active backends: a set narrowed to the node's
        // own backends picks among them at random.
        let algorithm = |backends: &[&Backend]| {
            if maglev && !active.is_empty() && backends.len() == all.len() { LB4_F_MAGLEV } else { 0 }
        };
        if maglev && !active.is_empty() {
            let names: Vec<String> = active.iter().map(|b| format!("{}:{}", b.address, b.port)).collect();
            for (slot, backend) in maglev_table(&names, MAGLEV_SIZE).into_iter().enumerate() {
                let key = MaglevKey { rev_nat_index, pad: 0, slot: slot as u32 };
                let backend = active[backend];
                maps.maglev.insert(key, ids[&(backend.address, backend.port, frontend.protocol)]);
            }
        }
        let mut add = |address, port: u16, scope, flags, backends: &[&Backend]| {
            let key = |slot: u16| Lb4Key {
                address: ipv4(address),
                dport: port.to_be(),
                backend_slot: slot,
                proto: protocol_number(frontend.protocol),
                scope,
                pad: [0; 2],
            };
            let active = backends.iter().filter(|b| b.state == BackendState::Active).count();
            let master = Lb4Service {
                backend_id: service.affinity_seconds.unwrap_or(0),
                count: active as u16,
                rev_nat_index,
                flags: affinity | algorithm(backends) | flags,
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
        if frontend.kind.is_external() {
            // The outside's backends, and the pods' where they differ (Cilium's two scopes).
            let two_scopes = internal != external;
            add(
                frontend.address,
                frontend.port,
                LB_SCOPE_EXT,
                LB4_F_NODEPORT | if two_scopes { LB4_F_TWO_SCOPES } else { 0 },
                &external,
            );
            if two_scopes {
                add(frontend.address, frontend.port, LB_SCOPE_INT, LB4_F_SCOPE_INT, &internal);
            }
        } else {
            add(frontend.address, frontend.port, LB_SCOPE_EXT, 0, &internal);
            if let Some(node_port) = frontend.node_port {
                add(node_ip, node_port, LB_SCOPE_EXT, LB4_F_NODEPORT, &external);
            }
        }
        // Pods' connections are translated back to the frontend with this; a connection from
        // outside finds its frontend in the NAT map (bpf/lab_host.c).
        let frontend_address = Lb4ReverseNat { address: ipv4(frontend.address), port: frontend.port.to_be(), pad: 0 };
        maps.reverse_nat.insert(rev_nat_index, frontend_address);
    }
    maps
}

/// Maglev's lookup table (Eisenbud et al., NSDI 2016, section 3.4): the backends take turns
/// taking their next preferred free slot, each one's preferences a permutation of the slots
/// derived from its name, so each gets about `size / n` slots, and a backend that goes away
/// moves little more than its own. `size` must be prime. The index of the backend per slot.
pub fn maglev_table(backends: &[String], size: u32) -> Vec<usize> {
    let size = u64::from(size);
    let mut table = vec![usize::MAX; size as usize];
    if backends.is_empty() {
        return Vec::new();
    }
    let permutation: Vec<(u64, u64)> = backends
        .iter()
        .map(|name| {
            (
                stable_hash(&format!("maglev-offset/{name}")) % size,
                stable_hash(&format!("maglev-skip/{name}")) % (size - 1) + 1,
            )
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut filled = 0;
    'fill: loop {
        for (backend, (offset, skip)) in permutation.iter().enumerate() {
            let mut slot = (offset + next[backend] * skip) % size;
            while table[slot as usize] != usize::MAX {
                next[backend] += 1;
                slot = (offset + next[backend] * skip) % size;
            }
            table[slot as usize] = backend;
            next[backend] += 1;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    table
}

/// Makes every node's service maps hold exactly what [`lb_maps`] says for it. Backends and
/// reverse NAT entries are added before the services that name them and removed after, so a
/// lookup never dangles.
pub fn sync(plan: &Plan, services: &Services) -> Result<()> {
    let wanted: Vec<LbMaps> = (0..plan.nodes.len()).map(|node| lb_maps(services, plan, node)).collect();
    write(plan, &wanted)
}

/// Makes node `i`'s service maps hold exactly `wanted[i]`, in the order [`sync`] describes.
pub fn write(plan: &Plan, wanted: &[LbMaps]) -> Result<()> {
    for (node, wanted) in plan.nodes.iter().zip(wanted) {
        let path = |map: &str| pins::node_map(&plan.lab, &node.name, map);
        let mut backends = Synced::open(&path(BACKENDS_MAP), &wanted.backends)?;
        let mut maglev = Synced::open(&path(MAGLEV_MAP), &wanted.maglev)?;
        maglev.write()?;
        let mut reverse_nat = Synced::open(&path(REVERSE_NAT_MAP), &wanted.reverse_nat)?;
        backends.write()?;
        reverse_nat.write()?;
        let mut services = Synced::open(&path(SERVICES_MAP), &wanted.services)?;
        services.remove_unwanted()?;
        services.write()?;
        backends.remove_unwanted()?;
        reverse_nat.remove_unwanted()?;
        maglev.remove_unwanted()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Node `node`'s master entries: (address, port, scope) → (flags, active backends).
    fn masters(topology: &str, node: usize) -> BTreeMap<(std::net::Ipv4Addr, u16, u8), (u8, u16)> {
        let loaded = crate::topology::load_str(std::path::Path::new("t.yaml"), topology).unwrap();
        let plan = Plan::new(&loaded.topology, "t");
        let services = Services::resolve(&plan, &loaded.resources).unwrap();
        lb_maps(&services, &plan, node)
            .services
            .into_iter()
            .filter(|(key, _)| key.backend_slot == 0)
            .map(|(key, service)| {
                let address = std::net::Ipv4Addr::from(u32::from_be(key.address));
                ((address, u16::from_be(key.dport), key.scope), (service.flags, service.count))
            })
            .collect()
    }

    #[test]
    fn the_outside_and_the_pods_get_their_own_backends_where_traffic_policies_differ() {
        let topology = "name: t
nodes: [{name: a}, {name: b}]
pods:
  - {name: web-1, node: a, labels: {app: web}}
  - {name: web-2, node: b, labels: {app: web}}
resources:
  - inline: |
      apiVersion: v1
      kind: Service
      metadata: {name: web}
      spec:
        type: LoadBalancer
        clusterIP: 172.30.0.10
        loadBalancerIP: 192.0.2.80
        externalTrafficPolicy: Local
        selector: {app: web}
        ports: [{port: 80, nodePort: 30080}]
";
        let lb = std::net::Ipv4Addr::new(192, 0, 2, 80);
        let cluster_ip = std::net::Ipv4Addr::new(172, 30, 0, 10);
        let a = masters(topology, 0);
        // The outside reaches node a's backend only; pods every backend, in the internal scope.
        assert_eq!(a[&(lb, 80, LB_SCOPE_EXT)], (LB4_F_NODEPORT | LB4_F_TWO_SCOPES, 1));
        assert_eq!(a[&(lb, 80, LB_SCOPE_INT)], (LB4_F_SCOPE_INT, 2));
        assert_eq!(a[&(cluster_ip, 80, LB_SCOPE_EXT)], (0, 2));
        assert_eq!(a.values().filter(|(flags, count)| *flags == LB4_F_NODEPORT && *count == 1).count(), 1, "NodePort");

        // internalTrafficPolicy Local as well: both scopes are the node's own backend, so one.
        let both = topology.replace("        selector:", "        internalTrafficPolicy: Local\n        selector:");
        let a = masters(&both, 0);
        assert_eq!(a[&(lb, 80, LB_SCOPE_EXT)], (LB4_F_NODEPORT, 1));
        assert!(!a.contains_key(&(lb, 80, LB_SCOPE_INT)));
        assert_eq!(a[&(cluster_ip, 80, LB_SCOPE_EXT)], (0, 1));
    }

    #[test]
    fn maglev_spreads_evenly_and_a_departure_moves_little_else() {
        let names: Vec<String> = (1..=5).map(|i| format!("10.0.0.{i}:8080")).collect();
        let table = maglev_table(&names, MAGLEV_SIZE);
        assert_eq!(table.len(), MAGLEV_SIZE as usize);
        for backend in 0..names.len() {
            let share = table.iter().filter(|b| **b == backend).count();
            assert!((200..=210).contains(&share), "backend {backend} has {share} of 1021 slots");
        }
        // Without the third backend: its slots are shared out, and few others change hands.
        let fewer: Vec<String> = names.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, n)| n.clone()).collect();
        let after = maglev_table(&fewer, MAGLEV_SIZE);
        let moved = table
            .iter()
            .zip(&after)
            .filter(|(before, after)| **before != 2 && names[**before] != fewer[**after])
            .count();
        assert!(moved < 60, "{moved} slots of the remaining backends moved");
        assert_eq!(maglev_table(&names, MAGLEV_SIZE), table, "the same table every time");
    }
}
