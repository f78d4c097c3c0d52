//! From a checked topology to a plan: every namespace, interface, address, MAC and route the lab
//! will create, derived only from the file (and the lab's name), so the same file always yields
//! the same lab. The plan is also the lab's record on disk: `lab down`, `lab ls`, `lab exec` and
//! the agent read it back, and never need the topology file again.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::identity::{self, LabelFilter, Labels};
use crate::topology::{AttachMode, PolicyEnforcement, PolicySemantics, Port, RoutingMode, Topology};

/// Lab names end up in namespace and directory names; keep them short enough to read.
pub const MAX_LAB_NAME: usize = 32;
/// The VXLAN port Cilium uses.
pub use crate::datapath::abi::VXLAN_PORT;
/// Cilium gives pods the underlay MTU less the VXLAN overhead in tunnel mode.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Interface indexes are fixed, so flows and captures name the same interface on every run:
/// `lo` is 1 in every namespace, the uplink (`eth0` of a node, pod or external) is 2, a node's
/// tunnel device 3, the fabric's bridge 2, and ports on a node or the fabric count up from [`ifindex::FIRST_PORT`].
pub mod ifindex {
    pub const UPLINK: u32 = 2;
    pub const VXLAN: u32 = 3;
    pub const BRIDGE: u32 = 2;
    pub const FIRST_PORT: u32 = 16;
}
pub const UPLINK_NAME: &str = "eth0";
pub const VXLAN_NAME: &str = "lab_vxlan";

/// Every network namespace of a lab is named `lab.<lab>.<kind>...`; no other name starts so.
pub fn netns_prefix(lab: &str) -> String {
    format!("lab.{lab}.")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub lab: String,
    /// Where Services' ClusterIPs are allocated.
    pub service_cidr: Ipv4Net,
    /// Whether pod traffic leaving for outside `native_routing_cidr` is masqueraded.
    pub masquerade: bool,
    pub native_routing_cidr: Ipv4Net,
    pub load_balancer_algorithm: crate::topology::LoadBalancerAlgorithm,
    pub routing_mode: RoutingMode,
    pub attach: AttachMode,
    pub mtu: u32,
    /// Entries of each endpoint's policy map.
    pub policy_map_size: u32,
    pub policy_enforcement: PolicyEnforcement,
    pub policy_semantics: PolicySemantics,
    /// Every identity in use, reserved ones included, with its identity-relevant labels.
    pub identities: BTreeMap<u32, Labels>,
    pub fabric: FabricPlan,
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<PodPlan>,
    pub externals: Vec<ExternalPlan>,
}

/// The underlay: one namespace with a bridge the nodes and externals plug into, routing between
/// the node subnet, the external subnets and the pod CIDRs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricPlan {
    pub netns: String,
    pub bridge: String,
    pub bridge_mac: Mac,
    /// Addresses of the bridge: the nodes' gateway and one router address per external subnet.
    pub addresses: Vec<Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    /// 1-based, in node order: events and flows name the node by it.
    pub id: u16,
    pub netns: String,
    /// The node's uplink (`eth0`) address on the underlay.
    pub ip: Ipv4Net,
    pub uplink_mac: Mac,
    /// The node's port on the fabric bridge.
    pub fabric_port: String,
    pub fabric_port_index: u32,
    pub fabric_port_mac: Mac,
    pub gateway: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    /// The node's address inside its pod CIDR (Cilium's router IP on `cilium_host`): pods' gateway.
    pub router_ip: Ipv4Addr,
    pub vxlan_mac: Mac,
    pub sysctls: BTreeMap<String, String>,
    /// The labels of the node's host endpoint, Cilium style: the node's, and `reserved:host`.
    pub labels: Labels,
    pub ports: Vec<Port>,
    /// Its interfaces on the fabric besides `eth0`.
    pub uplinks: Vec<UplinkPlan>,
    /// Its own routes: destination, gateway, interface index.
    pub routes: Vec<(Ipv4Net, Ipv4Addr, u32)>,
}

impl NodePlan {
    /// Every address the node has: its uplinks' and its router IP.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        let mut addresses = vec![self.ip.addr(), self.router_ip];
        addresses.extend(self.uplinks.iter().map(|u| u.address.addr()));
        addresses
    }
}

/// A node's extra interface on the fabric (see [`crate::topology::Uplink`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkPlan {
    pub name: String,
    pub index: u32,
    pub address: Ipv4Net,
    pub mac: Mac,
    /// The fabric's address in the uplink's subnet.
    pub gateway: Ipv4Addr,
    pub fabric_port: String,
    pub fabric_port_index: u32,
    pub fabric_port_mac: Mac,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    /// The endpoint's number on its node (Cilium's endpoint ID), derived from its name.
    pub endpoint_id: u16,
    /// Its security identity, from its identity-relevant labels.
    pub identity: u32,
    /// All of its labels, Cilium style (`k8s:app=web`), relevant to identity or not.
    /// Index into [`Plan::nodes`].
    pub node: usize,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// The node side of the pod's veth (`lxc` + hash, as Cilium names it).
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: Mac,
    pub labels: Labels,
    pub service_account: String,
    pub ports: Vec<Port>,
    /// Whether the datapath is attached to the pod's veth (see [`crate::topology::Pod::managed`]).
    pub managed: bool,
}

impl PodPlan {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalPlan {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Net,
    pub mac: Mac,
    pub gateway: Ipv4Addr,
    pub fabric_port: String,
    pub fabric_port_index: u32,
    pub fabric_port_mac: Mac,
    pub ports: Vec<Port>,
}

/// A MAC address, written `0a:58:0a:00:01:05`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A locally administered unicast MAC: two role bytes, then the IPv4 address it belongs to,
    /// so a capture reads back which interface sent a frame.
    pub fn for_ip(role: [u8; 2], ip: Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([role[0], role[1], o[0], o[1], o[2], o[3]])
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl From<Mac> for String {
    fn from(mac: Mac) -> String {
        mac.to_string()
    }
}

impl TryFrom<String> for Mac {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        let bytes: Vec<u8> = text
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).map_err(|_| format!("bad MAC `{text}`")))
            .collect::<Result<_, _>>()?;
        Ok(Mac(bytes.try_into().map_err(|_| format!("bad MAC `{text}`"))?))
    }
}

/// MAC roles: the first two bytes of each kind of interface (0a = locally administered).
mod role {
    pub const POD: [u8; 2] = [0x0a, 0x58];
    pub const POD_HOST_SIDE: [u8; 2] = [0x0a, 0x59];
    pub const NODE_UPLINK: [u8; 2] = [0x0a, 0x5a];
    pub const FABRIC_PORT: [u8; 2] = [0x0a, 0x5b];
    pub const VXLAN: [u8; 2] = [0x0a, 0x5c];
    pub const EXTERNAL: [u8; 2] = [0x0a, 0x5d];
    pub const FABRIC_BRIDGE: [u8; 6] = [0x0a, 0x5e, 0, 0, 0, 1];
}

/// 64-bit FNV-1a: a stable hash, the same on every machine and Rust version.
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Each node's pod CIDR: its own, or the next block of the pool that no node claimed.
pub fn node_pod_cidrs(topology: &Topology) -> Result<Vec<Ipv4Net>, String> {
    let cluster = &topology.cluster;
    let claimed: Vec<Ipv4Net> = topology.nodes.iter().filter_map(|n| n.pod_cidr).collect();
    let mut free = cluster
        .pod_cidr
        .subnets(cluster.pod_cidr_mask_size)
        .map_err(|e| format!("cannot split `{}` into /{}: {e}", cluster.pod_cidr, cluster.pod_cidr_mask_size))?
        .filter(|block| !claimed.iter().any(|c| crate::topology::validate::overlaps(c, block)));
    topology
        .nodes
        .iter()
        .map(|node| match node.pod_cidr {
            Some(cidr) => Ok(cidr),
            None => free.next().ok_or_else(|| {
                format!(
                    "the pool `{}` has no /{} left for node `{}`",
                    cluster.pod_cidr, cluster.pod_cidr_mask_size, node.name
                )
            }),
        })
        .collect()
}

/// The node's router address: the first host of its pod CIDR.
pub fn router_ip(pod_cidr: &Ipv4Net) -> Ipv4Addr {
    pod_cidr.hosts().next().expect("a pod CIDR has hosts")
}

/// How many addresses pods may take in a pod CIDR: every host but the router.
pub fn pod_capacity(pod_cidr: &Ipv4Net) -> usize {
    (1usize << (32 - pod_cidr.prefix_len())).saturating_sub(3)
}

/// The `k`-th address pods may take (0-based): after the network address and the router.
pub fn pod_host(pod_cidr: &Ipv4Net, k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pod_cidr.network()) + 2 + k as u32)
}

/// Whether pods may take `ip` in `pod_cidr`.
pub fn is_pod_host(pod_cidr: &Ipv4Net, ip: Ipv4Addr) -> bool {
    let offset = u32::from(ip).wrapping_sub(u32::from(pod_cidr.network()));
    pod_cidr.contains(&ip) && offset >= 2 && (offset as usize) < 2 + pod_capacity(pod_cidr)
}

/// The fabric's router address in an external's subnet: its last host.
pub fn external_gateway(address: &Ipv4Net) -> Ipv4Addr {
    address.trunc().hosts().last().expect("a /30 or larger has hosts")
}

/// Derives pods' addresses: fixed ones first, then each other pod, in namespace/name order, gets
/// the address its name hashes to, probing onwards on collision. So adding a pod moves no other
/// pod, unless the new pod sorts before one it collides with and takes that pod's address first.
fn pod_ips(topology: &Topology, cidrs: &[Ipv4Net], node_of: &[usize]) -> Vec<Ipv4Addr> {
    let mut taken: Vec<std::collections::HashSet<Ipv4Addr>> = vec![Default::default(); cidrs.len()];
    let mut ips: Vec<Option<Ipv4Addr>> = topology.pods.iter().map(|p| p.ip).collect();
    for (pod, ip) in ips.iter().enumerate() {
        if let Some(ip) = ip {
            taken[node_of[pod]].insert(*ip);
        }
    }
    let mut order: Vec<usize> = (0..topology.pods.len()).filter(|&i| ips[i].is_none()).collect();
    order.sort_by(|&a, &b| {
        let (pa, pb) = (&topology.pods[a], &topology.pods[b]);
        (&pa.namespace, &pa.name).cmp(&(&pb.namespace, &pb.name))
    });
    for pod in order {
        let node = node_of[pod];
        let capacity = pod_capacity(&cidrs[node]);
        let p = &topology.pods[pod];
        let start = (stable_hash(&format!("{}/{}", p.namespace, p.name)) % capacity as u64) as usize;
        let ip = (0..capacity)
            .map(|k| pod_host(&cidrs[node], (start + k) % capacity))
            .find(|ip| !taken[node].contains(ip))
            .expect("validation checked the node has room");
        taken[node].insert(ip);
        ips[pod] = Some(ip);
    }
    ips.into_iter().map(|ip| ip.expect("every pod got an address")).collect()
}

/// Endpoint IDs, unique per node, each derived from the pod's name as addresses are (1..=4095,
/// Cilium's range).
fn endpoint_ids(topology: &Topology, node_of: &[usize]) -> Vec<u16> {
    const RANGE: u64 = 4095;
    let mut taken = std::collections::HashSet::new();
    let mut ids = vec![0; topology.pods.len()];
    let mut order: Vec<usize> = (0..topology.pods.len()).collect();
    order.sort_by(|&a, &b| {
        let (pa, pb) = (&topology.pods[a], &topology.pods[b]);
        (&pa.namespace, &pa.name).cmp(&(&pb.namespace, &pb.name))
    });
    for pod in order {
        let p = &topology.pods[pod];
        let start = stable_hash(&format!("endpoint/{}/{}", p.namespace, p.name)) % RANGE;
        let id = (0..RANGE)
            .map(|k| 1 + ((start + k) % RANGE) as u16)
            .find(|id| !taken.contains(&(node_of[pod], *id)))
            .expect("fewer than 4095 pods on a node");
        taken.insert((node_of[pod], id));
        ids[pod] = id;
    }
    ids
}

impl Plan {
    /// The plan for a topology that passed [`crate::topology::validate::check`].
    pub fn new(topology: &Topology, lab: &str) -> Plan {
        let cluster = &topology.cluster;
        let prefix = netns_prefix(lab);
        let cidrs = node_pod_cidrs(topology).expect("validated");
        let mut node_ips = cluster.node_cidr.hosts();
        let fabric_gateway = node_ips.next().expect("validated size");

        let mut nodes: Vec<NodePlan> = topology
            .nodes
            .iter()
            .zip(&cidrs)
            .enumerate()
            .map(|(i, (node, cidr))| {
                let ip = node_ips.next().expect("validated size");
                NodePlan {
                    name: node.name.clone(),
                    id: i as u16 + 1,
                    netns: format!("{prefix}node.{}", node.name),
                    ip: Ipv4Net::new(ip, cluster.node_cidr.prefix_len()).expect("valid prefix"),
                    uplink_mac: Mac::for_ip(role::NODE_UPLINK, ip),
                    fabric_port: node.name.clone(),
                    fabric_port_index: ifindex::FIRST_PORT + i as u32,
                    fabric_port_mac: Mac::for_ip(role::FABRIC_PORT, ip),
                    gateway: fabric_gateway,
                    pod_cidr: *cidr,
                    router_ip: router_ip(cidr),
                    vxlan_mac: Mac::for_ip(role::VXLAN, ip),
                    sysctls: node.sysctls.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect(),
                    labels: crate::identity::host_labels(&node.name, &node.labels),
                    ports: node.ports.clone(),
                    uplinks: Vec::new(),
                    routes: Vec::new(),
                }
            })
            .collect();

        let node_of: Vec<usize> = topology
            .pods
            .iter()
            .map(|p| topology.nodes.iter().position(|n| n.name == p.node).expect("validated"))
            .collect();
        let ips = pod_ips(topology, &cidrs, &node_of);
        let endpoint_ids = endpoint_ids(topology, &node_of);
        let filter = LabelFilter::new(&cluster.identity_labels);
        let namespace_labels =
            |ns: &str| topology.namespaces.iter().find(|n| n.name == ns).map(|n| n.labels.clone()).unwrap_or_default();
        let labels: Vec<Labels> = topology
            .pods
            .iter()
            .map(|p| identity::pod_labels(&p.namespace, &namespace_labels(&p.namespace), &p.labels, &p.service_account))
            .collect();
        let managed = |i: usize| topology.pods[i].managed;
        let numbers =
            identity::allocate(labels.iter().enumerate().filter(|(i, _)| managed(*i)).map(|(_, l)| filter.relevant(l)));
        let mut identities = identity::reserved_identities();
        identities.extend(numbers.iter().map(|(set, number)| (*number, set.clone())));
        let mut ports_on_node = vec![0u32; nodes.len()];
        let pods = topology
            .pods
            .iter()
            .zip(ips)
            .zip(node_of)
            .zip(labels)
            .enumerate()
            .map(|(i, (((pod, ip), node), labels))| PodPlan {
                endpoint_id: endpoint_ids[i],
                identity: if pod.managed {
                    numbers[&filter.relevant(&labels)]
                } else {
                    crate::datapath::abi::identity::UNMANAGED
                },
                host_ifindex: {
                    ports_on_node[node] += 1;
                    ifindex::FIRST_PORT + ports_on_node[node] - 1
                },
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                node,
                netns: format!("{prefix}pod.{}.{}", pod.namespace, pod.name),
                ip,
                mac: Mac::for_ip(role::POD, ip),
                host_ifname: format!("lxc{:012x}", stable_hash(&format!("{}/{}", pod.namespace, pod.name)) >> 16),
                host_mac: Mac::for_ip(role::POD_HOST_SIDE, ip),
                labels,
                service_account: pod.service_account.clone(),
                ports: pod.ports.clone(),
                managed: pod.managed,
            })
            .collect();

        let externals: Vec<ExternalPlan> = topology
            .externals
            .iter()
            .enumerate()
            .map(|(i, external)| {
                let address = external.address.0;
                ExternalPlan {
                    name: external.name.clone(),
                    netns: format!("{prefix}ext.{}", external.name),
                    address,
                    mac: Mac::for_ip(role::EXTERNAL, address.addr()),
                    gateway: external_gateway(&address),
                    fabric_port: external.name.clone(),
                    fabric_port_index: ifindex::FIRST_PORT + (nodes.len() + i) as u32,
                    fabric_port_mac: Mac::for_ip(role::FABRIC_PORT, address.addr()),
                    ports: external.ports.clone(),
                }
            })
            .collect();

        // Extra uplinks take the fabric's ports after the externals'.
        let mut next_port = ifindex::FIRST_PORT + (nodes.len() + externals.len()) as u32;
        for (node, planned) in topology.nodes.iter().zip(nodes.iter_mut()) {
            for (k, uplink) in node.uplinks.iter().enumerate() {
                let ip = uplink.address.addr();
                planned.uplinks.push(UplinkPlan {
                    name: uplink.name.clone(),
                    index: ifindex::VXLAN + 1 + k as u32,
                    address: uplink.address,
                    mac: Mac::for_ip(role::NODE_UPLINK, ip),
                    gateway: external_gateway(&uplink.address),
                    fabric_port: format!("{}-{}", node.name, uplink.name),
                    fabric_port_index: next_port,
                    fabric_port_mac: Mac::for_ip(role::FABRIC_PORT, ip),
                });
                next_port += 1;
            }
            planned.routes = node
                .routes
                .iter()
                .map(|route| match planned.uplinks.iter().find(|u| u.name == route.via) {
                    Some(uplink) => (route.to, uplink.gateway, uplink.index),
                    None => (route.to, planned.gateway, ifindex::UPLINK),
                })
                .collect();
        }

        let mut addresses = vec![Ipv4Net::new(fabric_gateway, cluster.node_cidr.prefix_len()).expect("valid prefix")];
        let routers = externals
            .iter()
            .map(|e| (e.gateway, e.address))
            .chain(nodes.iter().flat_map(|n| n.uplinks.iter().map(|u| (u.gateway, u.address))));
        for (gateway, subnet) in routers {
            let router = Ipv4Net::new(gateway, subnet.prefix_len()).expect("valid prefix");
            if !addresses.contains(&router) {
                addresses.push(router);
            }
        }

        Plan {
            lab: lab.to_string(),
            service_cidr: cluster.service_cidr,
            masquerade: cluster.masquerade,
            native_routing_cidr: cluster.native_routing_cidr.unwrap_or(cluster.pod_cidr),
            load_balancer_algorithm: cluster.load_balancer_algorithm,
            routing_mode: cluster.routing_mode,
            attach: cluster.attach,
            mtu: cluster.mtu,
            policy_map_size: cluster.policy_map_size,
            policy_enforcement: cluster.policy_enforcement,
            policy_semantics: cluster.policy_semantics,
            identities,
            fabric: FabricPlan {
                netns: format!("{prefix}fabric"),
                bridge: "br0".into(),
                bridge_mac: Mac(role::FABRIC_BRIDGE),
                addresses,
            },
            nodes,
            pods,
            externals,
        }
    }

    /// The MTU of pod interfaces: the underlay's, less the tunnel overhead in tunnel mode.
    pub fn pod_mtu(&self) -> u32 {
        match self.routing_mode {
            RoutingMode::Native => self.mtu,
            RoutingMode::Tunnel => self.mtu - VXLAN_OVERHEAD,
        }
    }

    /// Every network namespace of the lab, in the order they are created.
    pub fn netns_names(&self) -> Vec<&str> {
        std::iter::once(self.fabric.netns.as_str())
            .chain(self.nodes.iter().map(|n| n.netns.as_str()))
            .chain(self.pods.iter().map(|p| p.netns.as_str()))
            .chain(self.externals.iter().map(|e| e.netns.as_str()))
            .collect()
    }

    /// Does anything in this lab serve a port (and so need the agent)?
    pub fn serves_ports(&self) -> bool {
        self.pods.iter().any(|p| !p.ports.is_empty()) || self.externals.iter().any(|e| !e.ports.is_empty())
    }

    /// Finds a pod by `namespace/name`, or by name alone when only one pod has it.
    /// After pods were added to or removed from the running lab of `running`: every pod that was
    /// running keeps its address, MACs, endpoint ID and interface index (a pod keeps them while
    /// it lives), and a pod new to the lab that derivation put on one of those moves to the next
    /// free one. Addresses given in the file (`fixed`, by pod) stay as given.
    pub fn keep_running_pods(&mut self, running: &Plan, fixed: impl Fn(&PodPlan) -> bool) {
        let mut new = Vec::new();
        for (index, pod) in self.pods.iter_mut().enumerate() {
            match running.pods.iter().find(|old| old.namespace == pod.namespace && old.name == pod.name) {
                Some(old) => {
                    pod.ip = old.ip;
                    pod.mac = old.mac;
                    pod.host_mac = old.host_mac;
                    pod.endpoint_id = old.endpoint_id;
                    pod.host_ifindex = old.host_ifindex;
                }
                None => new.push(index),
            }
        }
        for index in new {
            let (node, cidr) = (self.pods[index].node, self.nodes[self.pods[index].node].pod_cidr);
            let others: Vec<&PodPlan> =
                self.pods.iter().enumerate().filter(|(i, p)| *i != index && p.node == node).map(|(_, p)| p).collect();
            let ips: std::collections::HashSet<Ipv4Addr> = others.iter().map(|p| p.ip).collect();
            let ids: std::collections::HashSet<u16> = others.iter().map(|p| p.endpoint_id).collect();
            let ifindexes: std::collections::HashSet<u32> = others.iter().map(|p| p.host_ifindex).collect();
            let pod = &self.pods[index];
            let ip = if fixed(pod) || !ips.contains(&pod.ip) {
                pod.ip
            } else {
                let capacity = pod_capacity(&cidr);
                let start = (u32::from(pod.ip) - u32::from(cidr.network()) - 2) as usize;
                (0..capacity)
                    .map(|k| pod_host(&cidr, (start + k) % capacity))
                    .find(|ip| !ips.contains(ip))
                    .unwrap_or(pod.ip)
            };
            let endpoint_id = (0..4095u16).map(|k| 1 + (pod.endpoint_id - 1 + k) % 4095).find(|id| !ids.contains(id));
            let host_ifindex = (pod.host_ifindex..).find(|i| !ifindexes.contains(i)).expect("a free index");
            let pod = &mut self.pods[index];
            pod.endpoint_id = endpoint_id.unwrap_or(pod.endpoint_id);
            pod.host_ifindex = host_ifindex;
            pod.ip = ip;
            pod.mac = Mac::for_ip(role::POD, ip);
            pod.host_mac = Mac::for_ip(role::POD_HOST_SIDE, ip);
        }
    }

    pub fn find_pod(&self, target: &str) -> Result<&PodPlan, String> {
        if let Some((ns, name)) = target.split_once('/') {
            return self
                .pods
                .iter()
                .find(|p| p.namespace == ns && p.name == name)
                .ok_or_else(|| format!("no pod `{target}` in lab `{}`", self.lab));
        }
        let matches: Vec<&PodPlan> = self.pods.iter().filter(|p| p.name == target).collect();
        match matches.as_slice() {
            [pod] => Ok(pod),
            [] => Err(format!("no pod `{target}` in lab `{}`", self.lab)),
            many => Err(format!(
                "`{target}` names {} pods ({}); say which as namespace/name",
                many.len(),
                many.iter().map(|p| p.id()).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::load_str;
    use std::path::Path;

    fn plan(text: &str) -> Plan {
        let loaded = load_str(Path::new("t.yaml"), text).unwrap();
        Plan::new(&loaded.topology, "t")
    }

    const TWO_NODES: &str = "
name: t
nodes: [{name: a}, {name: b, podCIDR: 10.9.0.0/24}, {name: c}]
pods:
  - {name: web, node: a}
  - {name: db, node: b, ip: 10.9.0.7}
  - {name: cache, node: a}
externals: [{name: inet, address: 203.0.113.10}]
";

    #[test]
    fn addresses_are_deterministic_and_inside_their_node() {
        let p = plan(TWO_NODES);
        assert_eq!(p, plan(TWO_NODES));
        assert_eq!(p.nodes[0].pod_cidr.to_string(), "10.0.0.0/24");
        assert_eq!(p.nodes[1].pod_cidr.to_string(), "10.9.0.0/24");
        assert_eq!(p.nodes[2].pod_cidr.to_string(), "10.0.1.0/24");
        assert_eq!(p.nodes[0].ip.to_string(), "172.18.0.2/24");
        assert_eq!(p.nodes[0].router_ip.to_string(), "10.0.0.1");
        assert_eq!(p.pods[1].ip.to_string(), "10.9.0.7");
        for pod in &p.pods {
            assert!(p.nodes[pod.node].pod_cidr.contains(&pod.ip));
            assert_ne!(pod.ip, p.nodes[pod.node].router_ip);
            assert_eq!(pod.mac, Mac::for_ip([0x0a, 0x58], pod.ip));
            assert!(pod.host_ifname.len() <= 15);
        }
        assert_eq!(p.externals[0].gateway.to_string(), "203.0.113.254");
        assert_eq!(
            p.fabric.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["172.18.0.1/24", "203.0.113.254/24"]
        );
    }

    #[test]
    fn adding_a_pod_moves_no_other_pod() {
        let before = plan(TWO_NODES);
        let after = plan(
            &TWO_NODES.replace("  - {name: cache, node: a}", "  - {name: cache, node: a}\n  - {name: zz, node: a}"),
        );
        for pod in &before.pods {
            let same = after.pods.iter().find(|p| p.name == pod.name).unwrap();
            assert_eq!(pod.ip, same.ip, "{}", pod.name);
        }
    }

    #[test]
    fn pods_are_found_by_short_or_full_name() {
        let p = plan(TWO_NODES);
        assert_eq!(p.find_pod("web").unwrap().name, "web");
        assert_eq!(p.find_pod("default/db").unwrap().name, "db");
        assert!(p.find_pod("nope").unwrap_err().contains("no pod"));
    }

    #[test]
    fn the_plan_round_trips_through_json() {
        let p = plan(TWO_NODES);
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Plan>(&text).unwrap(), p);
    }
}
