//! Why a packet passes or is dropped, computed from a lab's plan and compiled policy alone: no
//! packets, no kernel. [`explain`] answers for one sender, receiver and port, naming the map
//! entry and the rule behind each side's decision; [`matrix`] fills the netpol-style truth table
//! of every pod to every pod, which should equal what `lab probe --matrix` measures.
//!
//! The datapath (bpf/lab_lxc.c, bpf/lab_host.c) decides a new connection in two places:
//! - at the sender, if it is a pod: its `from_container` looks up its own policy in the egress
//!   direction, the remote identity being what its node's ipcache gives the destination address;
//! - at the receiver, if it is a pod: its `to_container` looks up its own policy in the ingress
//!   direction, the remote identity being the sender's (a pod's program marks its packets with
//!   its identity; traffic from elsewhere gets the identity the receiving node's ipcache gives the
//!   source address, a peer node's own traffic coming out as `remote-node`).
//!
//! A direction that is not enforced allows without a lookup; replies of an allowed connection
//! skip policy on the way back, so only the request's path counts. ICMP is looked up with the
//! ICMP type as its port (an echo request is 8). A pod reaching its own address goes over its
//! loopback and never meets the datapath.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::datapath::abi::{IpcacheEntry, POLICY_PREFIX_STATIC, PolicyEntry, PolicyKey, identity as reserved};
use crate::datapath::maps;
use crate::identity::Labels;
use crate::plan::Plan;
use crate::policy::{self, Compiled, Decision, Direction, EndpointPolicy, RuleInfo, Verdict};
use crate::probe::Kind;
use crate::topology::Protocol;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// The ICMP type of an echo request: what the datapath uses as the port of a ping.
pub const ICMP_ECHO: u16 = 8;

/// One end of a packet's path: a pod (an index into [`Plan::pods`]) or any other address (a
/// node's, an external's, or one the lab does not know).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Pod(usize),
    Address(Ipv4Addr),
}

impl Peer {
    /// A pod (`namespace/name`, or `name` when only one pod has it), a node or an external by
    /// name, or an IPv4 address; an address that is a pod's is that pod.
    pub fn resolve(plan: &Plan, text: &str) -> Result<Peer, String> {
        if let Ok(ip) = text.parse::<Ipv4Addr>() {
            return Ok(match plan.pods.iter().position(|p| p.ip == ip) {
                Some(pod) => Peer::Pod(pod),
                None => Peer::Address(ip),
            });
        }
        if text.contains('/') || plan.pods.iter().any(|p| p.name == text) {
            let pod = plan.find_pod(text)?;
            let index = plan.pods.iter().position(|p| std::ptr::eq(p, pod)).expect("a pod of the plan");
            return Ok(Peer::Pod(index));
        }
        if let Some(node) = plan.nodes.iter().find(|n| n.name == text) {
            return Ok(Peer::Address(node.ip.addr()));
        }
        if let Some(external) = plan.externals.iter().find(|e| e.name == text) {
            return Ok(Peer::Address(external.address.addr()));
        }
        Err(format!("no pod, node or external `{text}` in lab `{}`, and not an IPv4 address", plan.lab))
    }

    pub fn ip(self, plan: &Plan) -> Ipv4Addr {
        match self {
            Peer::Pod(pod) => plan.pods[pod].ip,
            Peer::Address(ip) => ip,
        }
    }

    pub fn pod(self) -> Option<usize> {
        match self {
            Peer::Pod(pod) => Some(pod),
            Peer::Address(_) => None,
        }
    }

    /// `x/a`, `node-a`, `web`, or the address itself.
    pub fn name(self, plan: &Plan) -> String {
        match self {
            Peer::Pod(pod) => plan.pods[pod].id(),
            Peer::Address(ip) => {
                let node = plan.nodes.iter().find(|n| n.ip.addr() == ip || n.router_ip == ip).map(|n| n.name.clone());
                let external = || plan.externals.iter().find(|e| e.address.addr() == ip).map(|e| e.name.clone());
                node.or_else(external).unwrap_or_else(|| ip.to_string())
            }
        }
    }
}

/// The IP protocol and the port the datapath looks the packet up with: the destination port, or
/// for ICMP the type of an echo request.
pub fn protocol_port(kind: Kind) -> (u8, u16) {
    match kind {
        Kind::Tcp(port) => (IPPROTO_TCP, port),
        Kind::Udp(port) => (IPPROTO_UDP, port),
        Kind::Icmp => (IPPROTO_ICMP, ICMP_ECHO),
    }
}

/// One policy check on the packet's way: the sender's egress or the receiver's ingress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    /// Egress at the sender, ingress at the receiver.
    pub direction: Direction,
    /// The pod whose policy map decides.
    pub pod: usize,
    /// The other end's address, and the identity the datapath gives it there.
    pub remote_ip: Ipv4Addr,
    pub remote_identity: u32,
    /// The ipcache entry (of the deciding pod's node) that gave the identity; `None` when the
    /// address has none, which makes it `world`.
    pub remote_prefix: Option<Ipv4Net>,
    /// What [`policy::lookup`] (the datapath's lookup) decides.
    pub decision: Decision,
    /// The rule item behind the deciding entry; `None` when no entry decided, or for the
    /// implicit allow-all (cookie 0).
    pub rule: Option<RuleInfo>,
}

impl Side {
    /// The cookie of the deciding entry.
    pub fn cookie(&self) -> Option<u32> {
        self.decision.matched.map(|m| m.entry.rule)
    }

    /// The decision another map and enforcement (the kernel's) would give the same packet.
    pub fn decide_with(&self, policy: &EndpointPolicy, protocol: u8, port: u16) -> Decision {
        policy::lookup(policy, self.remote_identity, self.direction.is_egress(), protocol, port)
    }
}

/// What happens to the first packet of a connection, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub from: Peer,
    pub to: Peer,
    pub kind: Kind,
    /// As looked up: the IP protocol and the port (ICMP: its type).
    pub protocol: u8,
    pub port: u16,
    /// A pod to itself: over loopback, no policy applies.
    pub loopback: bool,
    /// The sender's egress check, if the sender is a pod (and not talking to itself).
    pub egress: Option<Side>,
    /// The receiver's ingress check, if the receiver is a pod (and not the sender itself).
    pub ingress: Option<Side>,
    /// Whether the receiver answers on the port: pods and externals serve the ports their plan
    /// lists, and every pod and external answers pings. `None`: the lab cannot tell (a node, an
    /// address it does not know).
    pub served: Option<bool>,
}

impl Explanation {
    /// The first check that drops the packet: egress comes first on the packet's way.
    pub fn dropped_at(&self) -> Option<&Side> {
        [&self.egress, &self.ingress].into_iter().flatten().find(|side| !side.decision.verdict.is_allowed())
    }

    /// What the datapath does with the packet: the verdict of the first check that drops it.
    pub fn verdict(&self) -> Verdict {
        self.dropped_at().map_or(Verdict::Allowed, |side| side.decision.verdict)
    }

    /// Whether a probe would connect: policy lets the packet through and something answers
    /// (unless the lab cannot tell).
    pub fn reachable(&self) -> bool {
        self.verdict().is_allowed() && self.served != Some(false)
    }
}

/// Every node's ipcache, as [`maps::ipcache`] computes it, for repeated lookups.
struct Ipcaches(Vec<BTreeMap<Ipv4Net, IpcacheEntry>>);

impl Ipcaches {
    fn new(plan: &Plan, compiled: &Compiled) -> Ipcaches {
        Ipcaches((0..plan.nodes.len()).map(|node| maps::ipcache(plan, node, &compiled.cidr_identities)).collect())
    }

    /// The kernel's longest-prefix match of `ip` in node `node`'s ipcache; a miss is world.
    fn identity(&self, node: usize, ip: Ipv4Addr) -> (u32, Option<Ipv4Net>) {
        let cache = &self.0[node];
        let hit = (0..=32u8).rev().find_map(|len| {
            let prefix = Ipv4Net::new(ip, len).expect("a valid prefix length").trunc();
            cache.get(&prefix).map(|entry| (entry.identity, Some(prefix)))
        });
        hit.unwrap_or((reserved::WORLD, None))
    }
}

/// The identity the ipcache of node `node` gives `ip` (world when it has no entry), with the
/// prefix that gave it: what the datapath of that node sees as the remote identity.
pub fn remote_identity(plan: &Plan, compiled: &Compiled, node: usize, ip: Ipv4Addr) -> (u32, Option<Ipv4Net>) {
    Ipcaches::new(plan, compiled).identity(node, ip)
}

/// Explains what the datapath does with a new connection from `from` to `to` on `kind`.
pub fn explain(plan: &Plan, compiled: &Compiled, from: Peer, to: Peer, kind: Kind) -> Explanation {
    explain_with(plan, compiled, &Ipcaches::new(plan, compiled), from, to, kind)
}

fn explain_with(plan: &Plan, compiled: &Compiled, caches: &Ipcaches, from: Peer, to: Peer, kind: Kind) -> Explanation {
    let (protocol, port) = protocol_port(kind);
    let loopback = from.pod().is_some() && from == to;
    let side = |direction: Direction, pod: usize, remote: Peer| {
        let remote_ip = remote.ip(plan);
        let (remote_identity, remote_prefix) = caches.identity(plan.pods[pod].node, remote_ip);
        let decision = policy::lookup(&compiled.endpoints[pod], remote_identity, direction.is_egress(), protocol, port);
        let rule = decision.matched.and_then(|m| compiled.rule(m.entry.rule)).cloned();
        Side { direction, pod, remote_ip, remote_identity, remote_prefix, decision, rule }
    };
    let (egress, ingress) = if loopback {
        (None, None)
    } else {
        (
            from.pod().map(|pod| side(Direction::Egress, pod, to)),
            to.pod().map(|pod| side(Direction::Ingress, pod, from)),
        )
    };
    Explanation { from, to, kind, protocol, port, loopback, egress, ingress, served: served(plan, to, kind) }
}

/// Whether `to` answers on `kind`; see [`Explanation::served`].
fn served(plan: &Plan, to: Peer, kind: Kind) -> Option<bool> {
    let ports = match to {
        Peer::Pod(pod) => &plan.pods[pod].ports,
        Peer::Address(ip) => &plan.externals.iter().find(|e| e.address.addr() == ip)?.ports,
    };
    Some(match kind {
        Kind::Icmp => true,
        Kind::Tcp(port) => ports.iter().any(|p| p.protocol == Protocol::Tcp && p.port == port),
        Kind::Udp(port) => ports.iter().any(|p| p.protocol == Protocol::Udp && p.port == port),
    })
}

/// The truth table of every pod to every pod on `kind`, as the netpol e2e suite and
/// `lab probe --matrix` print it (`.` connects, `X` not; rows are senders). A cell connects when
/// both checks allow and the receiver serves the port; a pod reaching itself (the diagonal)
/// only needs the latter.
pub fn matrix(plan: &Plan, compiled: &Compiled, kind: Kind) -> String {
    matrix_of(plan, compiled, kind, &(0..plan.pods.len()).collect::<Vec<_>>())
}

/// [`matrix`] for some pods only (indexes into [`Plan::pods`], in the order given).
pub fn matrix_of(plan: &Plan, compiled: &Compiled, kind: Kind, pods: &[usize]) -> String {
    let caches = Ipcaches::new(plan, compiled);
    let table: Vec<Vec<char>> = pods
        .iter()
        .map(|&a| {
            pods.iter()
                .map(|&b| {
                    let explanation = explain_with(plan, compiled, &caches, Peer::Pod(a), Peer::Pod(b), kind);
                    if explanation.reachable() { '.' } else { 'X' }
                })
                .collect()
        })
        .collect();
    crate::probe::render_matrix(&pods.iter().map(|&p| plan.pods[p].id()).collect::<Vec<_>>(), &table)
}

/// The labels of identity `id`: a pod's or a reserved identity's from the plan, a CIDR
/// identity's (`cidr:<prefix>`, `reserved:world`) from the compiled policy.
pub fn identity_labels(plan: &Plan, compiled: &Compiled, id: u32) -> Option<Labels> {
    plan.identities.get(&id).cloned().or_else(|| {
        let prefix = compiled.cidr_identities.iter().find(|(_, i)| **i == id)?.0;
        Some(policy::cidr::labels(prefix))
    })
}

/// A short name for identity `id`: `any` for 0 (a key that matches every identity), the
/// reserved entity (`world`, `host`), the pods that have it (`x/a, x/b`), or its CIDR.
pub fn identity_name(plan: &Plan, compiled: &Compiled, id: u32) -> String {
    if id == 0 {
        return "any".to_string();
    }
    let pods: Vec<String> = plan.pods.iter().filter(|p| p.identity == id).map(|p| p.id()).collect();
    if !pods.is_empty() {
        return pods.join(", ");
    }
    if let Some((prefix, _)) = compiled.cidr_identities.iter().find(|(_, i)| **i == id) {
        return format!("cidr:{prefix}");
    }
    match plan.identities.get(&id) {
        Some(labels) => {
            let reserved: Vec<&str> = labels.0.keys().filter_map(|k| k.strip_prefix("reserved:")).collect();
            if reserved.is_empty() { format!("pods with {labels}") } else { reserved.join(",") }
        }
        None => "an identity the lab does not know".to_string(),
    }
}

/// The protocol and ports a policy key covers: `any protocol`, `TCP (any port)`, `TCP/80`,
/// `TCP/8080-8087`; ICMP's port is its type.
pub fn describe_ports(key: &PolicyKey) -> String {
    if key.prefixlen <= POLICY_PREFIX_STATIC {
        return "any protocol".to_string();
    }
    let protocol = policy::ports::protocol_name(key.protocol);
    let bits = key.prefixlen.saturating_sub(POLICY_PREFIX_STATIC + 8).min(16);
    if bits == 0 {
        return format!("{protocol} (any port)");
    }
    let first = u16::from_be(key.dport);
    let last = first | (u32::from(u16::MAX) >> bits) as u16;
    let what = if key.protocol == IPPROTO_ICMP { " type " } else { "/" };
    if first == last { format!("{protocol}{what}{first}") } else { format!("{protocol}{what}{first}-{last}") }
}

/// How a policy map differs from another (the kernel's from the compiled one): counters aside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryDiff {
    /// Compiled but not in the kernel.
    pub missing: Vec<PolicyKey>,
    /// In the kernel but not compiled.
    pub extra: Vec<PolicyKey>,
    /// In both, with another verdict, port prefix or rule.
    pub changed: Vec<PolicyKey>,
}

impl EntryDiff {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.changed.is_empty()
    }
}

/// Compares the map the kernel holds with the compiled one, ignoring the packet counters.
pub fn diff_entries(
    compiled: &BTreeMap<PolicyKey, PolicyEntry>,
    kernel: &BTreeMap<PolicyKey, PolicyEntry>,
) -> EntryDiff {
    let same =
        |a: &PolicyEntry, b: &PolicyEntry| (a.deny, a.prefix_length, a.rule) == (b.deny, b.prefix_length, b.rule);
    EntryDiff {
        missing: compiled.keys().filter(|k| !kernel.contains_key(k)).copied().collect(),
        extra: kernel.keys().filter(|k| !compiled.contains_key(k)).copied().collect(),
        changed: compiled
            .iter()
            .filter(|(k, e)| kernel.get(k).is_some_and(|have| !same(e, have)))
            .map(|(k, _)| *k)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::abi::{POLICY_PREFIX_FULL, match_type};
    use crate::topology::load_str;

    /// x/a and y/b on node-a, y/c on node-b; `web` outside. x/a accepts TCP/80 from namespace y
    /// and pings from y/c; y/b may only send to x/a, and never to port 81; y/c may not reach the
    /// 203.0.113.0/24 block (nor anything else beyond the cluster, by default deny).
    const TOPOLOGY: &str = r#"
name: t
nodes: [{name: node-a}, {name: node-b}]
namespaces: [{name: x}, {name: y}]
pods:
  - {name: a, namespace: x, node: node-a, labels: {app: a}, ports: [tcp/80, tcp/81]}
  - {name: b, namespace: y, node: node-a, labels: {app: b}, ports: [tcp/80]}
  - {name: c, namespace: y, node: node-b, labels: {app: c}, ports: [tcp/80]}
externals:
  - {name: web, address: 203.0.113.10, ports: [tcp/443]}
resources:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: x-a, namespace: x}
    spec:
      endpointSelector: {matchLabels: {app: a}}
      ingress:
        - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: y}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: y, app: c}}]
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: y-b, namespace: y}
    spec:
      endpointSelector: {matchLabels: {app: b}}
      egress:
        - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: x}}]
      egressDeny:
        - toPorts: [{ports: [{port: "81", protocol: TCP}]}]
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: y-c, namespace: y}
    spec:
      endpointSelector: {matchLabels: {app: c}}
      egress:
        - toEntities: [cluster]
      egressDeny:
        - toCIDR: [203.0.113.0/24]
"#;

    fn lab() -> (Plan, Compiled) {
        let loaded = load_str(std::path::Path::new("t.yaml"), TOPOLOGY).unwrap();
        let plan = Plan::new(&loaded.topology, "t");
        let compiled = crate::live::compile(&plan, &loaded.resources).unwrap();
        (plan, compiled)
    }

    fn peer(plan: &Plan, text: &str) -> Peer {
        Peer::resolve(plan, text).unwrap()
    }

    #[test]
    fn peers_resolve_by_name_and_address() {
        let (plan, _) = lab();
        assert_eq!(peer(&plan, "x/a"), Peer::Pod(0));
        assert_eq!(peer(&plan, "c"), Peer::Pod(2), "a unique pod name needs no namespace");
        assert_eq!(peer(&plan, &plan.pods[1].ip.to_string()), Peer::Pod(1), "a pod's address is the pod");
        assert_eq!(peer(&plan, "node-b"), Peer::Address(plan.nodes[1].ip.addr()));
        assert_eq!(peer(&plan, "web"), Peer::Address("203.0.113.10".parse().unwrap()));
        assert_eq!(peer(&plan, "web").name(&plan), "web");
        assert!(Peer::resolve(&plan, "nothing").unwrap_err().contains("no pod, node or external"));
        assert!(Peer::resolve(&plan, "x/zz").is_err());
    }

    #[test]
    fn an_allowed_connection_names_both_entries_and_rules() {
        let (plan, compiled) = lab();
        let e = explain(&plan, &compiled, peer(&plan, "y/b"), peer(&plan, "x/a"), Kind::Tcp(80));
        assert_eq!(e.verdict(), Verdict::Allowed);
        assert!(e.reachable());
        let egress = e.egress.as_ref().unwrap();
        assert_eq!(
            (egress.direction, egress.pod, egress.remote_identity),
            (Direction::Egress, 1, plan.pods[0].identity)
        );
        assert!(egress.decision.enforced);
        assert_eq!(
            egress.rule.as_ref().unwrap().to_string(),
            "CiliumNetworkPolicy y/y-b spec.egress[0] (egress allow)"
        );
        let matched = egress.decision.matched.unwrap();
        assert_eq!(matched.key.identity, plan.pods[0].identity);
        assert_eq!(describe_ports(&matched.key), "any protocol");

        let ingress = e.ingress.as_ref().unwrap();
        assert_eq!(
            (ingress.direction, ingress.pod, ingress.remote_identity),
            (Direction::Ingress, 0, plan.pods[1].identity)
        );
        assert_eq!(ingress.remote_prefix, Some(Ipv4Net::new(plan.pods[1].ip, 32).unwrap()));
        let matched = ingress.decision.matched.unwrap();
        assert_eq!(describe_ports(&matched.key), "TCP/80");
        assert_eq!(matched.key.prefixlen, POLICY_PREFIX_FULL);
        assert_eq!(ingress.decision.match_type, match_type::L3_L4);
        assert_eq!(ingress.rule.as_ref().unwrap().path, "spec.ingress[0]");
    }

    #[test]
    fn drops_say_where_and_why() {
        let (plan, compiled) = lab();
        // Default deny at x/a's ingress: y/b may send on 443 but x/a accepts only 80 from it.
        let e = explain(&plan, &compiled, peer(&plan, "y/b"), peer(&plan, "x/a"), Kind::Tcp(443));
        assert_eq!(e.verdict(), Verdict::DefaultDenied);
        assert_eq!(e.dropped_at().unwrap().direction, Direction::Ingress);
        assert_eq!(e.verdict().drop_reason(), Some(policy::DROP_POLICY));
        assert!(e.ingress.as_ref().unwrap().decision.matched.is_none());
        assert_eq!(e.served, Some(false));

        // The egress deny at y/b wins over its allow of namespace x, whatever x/a accepts.
        let e = explain(&plan, &compiled, peer(&plan, "y/b"), peer(&plan, "x/a"), Kind::Tcp(81));
        assert_eq!(e.verdict(), Verdict::Denied);
        let side = e.dropped_at().unwrap();
        assert_eq!((side.direction, side.pod), (Direction::Egress, 1));
        assert_eq!(side.rule.as_ref().unwrap().path, "spec.egressDeny[0]");
        assert!(side.rule.as_ref().unwrap().deny);
        assert_eq!(e.verdict().drop_reason(), Some(policy::DROP_POLICY_DENY));
        assert!(!e.ingress.as_ref().unwrap().decision.verdict.is_allowed(), "both sides are explained");

        // y/b's egress is enforced: y/c is not in namespace x.
        let e = explain(&plan, &compiled, peer(&plan, "y/b"), peer(&plan, "y/c"), Kind::Tcp(80));
        assert_eq!(e.verdict(), Verdict::DefaultDenied);
        assert!(!e.ingress.as_ref().unwrap().decision.enforced, "y/c has no ingress policy");
    }

    #[test]
    fn pings_are_looked_up_by_icmp_type() {
        let (plan, compiled) = lab();
        let e = explain(&plan, &compiled, peer(&plan, "y/c"), peer(&plan, "x/a"), Kind::Icmp);
        assert_eq!((e.protocol, e.port), (1, ICMP_ECHO));
        assert!(e.reachable(), "x/a accepts anything from y/c, y/c may reach the cluster");
        let e = explain(&plan, &compiled, peer(&plan, "y/b"), peer(&plan, "x/a"), Kind::Icmp);
        assert_eq!(e.verdict(), Verdict::DefaultDenied, "only TCP/80 from y/b");
    }

    #[test]
    fn addresses_get_the_identity_their_ipcache_gives() {
        let (plan, compiled) = lab();
        // y/c to the external: the CIDR identity of 203.0.113.0/24, denied.
        let e = explain(&plan, &compiled, peer(&plan, "y/c"), peer(&plan, "web"), Kind::Tcp(443));
        let egress = e.egress.as_ref().unwrap();
        let prefix: Ipv4Net = "203.0.113.0/24".parse().unwrap();
        assert_eq!(egress.remote_prefix, Some(prefix));
        assert_eq!(egress.remote_identity, compiled.cidr_identities[&prefix]);
        assert_eq!(identity_name(&plan, &compiled, egress.remote_identity), "cidr:203.0.113.0/24");
        assert!(identity_labels(&plan, &compiled, egress.remote_identity).unwrap().0.contains_key("reserved:world"));
        assert_eq!(e.verdict(), Verdict::Denied);
        assert!(e.ingress.is_none(), "an external has no policy");
        assert_eq!(e.served, Some(true));

        // An address nobody has is world.
        let e = explain(&plan, &compiled, peer(&plan, "y/c"), peer(&plan, "198.51.100.1"), Kind::Tcp(80));
        let egress = e.egress.as_ref().unwrap();
        assert_eq!((egress.remote_identity, egress.remote_prefix), (reserved::WORLD, None));
        assert_eq!(e.verdict(), Verdict::DefaultDenied);
        assert_eq!(e.served, None);

        // A node's own traffic is host on its node, remote-node elsewhere.
        let e = explain(&plan, &compiled, peer(&plan, "node-a"), peer(&plan, "x/a"), Kind::Tcp(80));
        assert!(e.egress.is_none());
        assert_eq!(e.ingress.as_ref().unwrap().remote_identity, reserved::HOST);
        assert_eq!(e.verdict(), Verdict::DefaultDenied);
        let e = explain(&plan, &compiled, peer(&plan, "node-b"), peer(&plan, "x/a"), Kind::Tcp(80));
        assert_eq!(e.ingress.as_ref().unwrap().remote_identity, reserved::REMOTE_NODE);
        assert_eq!(identity_name(&plan, &compiled, reserved::REMOTE_NODE), "remote-node");
        let e = explain(&plan, &compiled, peer(&plan, "y/c"), peer(&plan, "node-a"), Kind::Icmp);
        assert_eq!(e.egress.as_ref().unwrap().remote_identity, reserved::REMOTE_NODE, "node-a is remote to y/c");
        assert!(e.reachable(), "cluster includes remote nodes");
    }

    #[test]
    fn a_pod_to_itself_skips_the_datapath() {
        let (plan, compiled) = lab();
        let e = explain(&plan, &compiled, Peer::Pod(1), Peer::Pod(1), Kind::Tcp(80));
        assert!(e.loopback && e.egress.is_none() && e.ingress.is_none());
        assert!(e.reachable());
    }

    #[test]
    fn the_matrix_combines_both_sides_and_the_servers() {
        let (plan, compiled) = lab();
        assert_eq!(
            matrix(&plan, &compiled, Kind::Tcp(80)),
            "-\tx/a\ty/b\ty/c\nx/a\t.\t.\t.\ny/b\t.\t.\tX\ny/c\t.\t.\t.\n"
        );
        // Nobody but x/a serves 81, y/b may not send to it, and x/a accepts anything from y/c.
        assert_eq!(
            matrix(&plan, &compiled, Kind::Tcp(81)),
            "-\tx/a\ty/b\ty/c\nx/a\t.\tX\tX\ny/b\tX\tX\tX\ny/c\t.\tX\tX\n"
        );
        assert_eq!(matrix_of(&plan, &compiled, Kind::Icmp, &[2, 0]), "-\ty/c\tx/a\ny/c\t.\t.\nx/a\t.\t.\n");
    }

    #[test]
    fn ports_are_described_as_written() {
        let key = |prefixlen, protocol, port: u16| PolicyKey {
            prefixlen,
            identity: 7,
            egress: 0,
            protocol,
            dport: port.to_be(),
        };
        assert_eq!(describe_ports(&key(40, 0, 0)), "any protocol");
        assert_eq!(describe_ports(&key(48, 17, 0)), "UDP (any port)");
        assert_eq!(describe_ports(&key(64, 6, 443)), "TCP/443");
        assert_eq!(describe_ports(&key(61, 6, 8080)), "TCP/8080-8087");
        assert_eq!(describe_ports(&key(64, 1, 8)), "ICMP type 8");
    }

    #[test]
    fn kernel_maps_compare_without_counters() {
        let key = |identity| PolicyKey { prefixlen: 40, identity, egress: 0, protocol: 0, dport: 0 };
        let entry = |rule, packets| PolicyEntry { rule, packets, ..PolicyEntry::default() };
        let compiled = BTreeMap::from([(key(1), entry(1, 0)), (key(2), entry(2, 0)), (key(3), entry(3, 0))]);
        let kernel = BTreeMap::from([(key(1), entry(1, 99)), (key(2), entry(5, 0)), (key(4), entry(4, 0))]);
        let diff = diff_entries(&compiled, &kernel);
        assert_eq!(diff, EntryDiff { missing: vec![key(3)], extra: vec![key(4)], changed: vec![key(2)] });
        assert!(diff_entries(&compiled, &compiled).is_empty());
    }
}
