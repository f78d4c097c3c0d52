//! The policy language after parsing, whatever kind of object it came from: rules that select
//! endpoints and carry per-direction items of peers and ports. CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy translate to it in [`super::cnp`], NetworkPolicy in
//! [`super::knp`].

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use crate::datapath::abi::identity as reserved;
use crate::identity::CLUSTER_NAME;
use crate::topology::source::Location;

use super::cidr::CidrPeer;
use super::ports::{PortSpec, ProtocolSpec};
use super::selector::{LabelKey, Requirement, Selector, Source};

/// A policy direction, from the selected endpoint's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn is_egress(self) -> bool {
        self == Direction::Egress
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one rule item is: the cookie in [`crate::datapath::abi::PolicyEntry::rule`] is its
/// 1-based index in [`super::Compiled::rules`]. Cookie 0 is the implicit allow-all of a direction
/// that has rules but no default deny (`enableDefaultDeny: false`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// `CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy`, ...
    pub kind: String,
    /// `None` for cluster-scoped policies.
    pub namespace: Option<String>,
    pub name: String,
    /// `None` for `spec`, the index for `specs[i]`.
    pub spec: Option<usize>,
    /// The item inside the object: `spec.ingress[0]`, `specs[1].egressDeny[2]`.
    pub path: String,
    pub direction: Direction,
    pub deny: bool,
    pub file: PathBuf,
    pub location: Option<Location>,
}

impl RuleInfo {
    /// The policy, as kubectl names it: `CiliumNetworkPolicy ns/name`.
    pub fn policy(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    pub fn verdict(&self) -> &'static str {
        if self.deny { "deny" } else { "allow" }
    }
}

impl fmt::Display for RuleInfo {
    /// `CiliumNetworkPolicy default/web spec.ingress[0] (ingress allow)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({} {})", self.policy(), self.path, self.direction, self.verdict())
    }
}

/// Cilium's entities (pkg/policy/api/entity.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    World,
    WorldIpv4,
    WorldIpv6,
    Host,
    RemoteNode,
    Cluster,
    All,
    Health,
    Init,
    Unmanaged,
    KubeApiserver,
    Ingress,
    None,
}

impl Entity {
    pub const NAMES: &[(&str, Entity)] = &[
        ("world", Entity::World),
        ("world-ipv4", Entity::WorldIpv4),
        ("world-ipv6", Entity::WorldIpv6),
        ("host", Entity::Host),
        ("remote-node", Entity::RemoteNode),
        ("cluster", Entity::Cluster),
        ("all", Entity::All),
        ("health", Entity::Health),
        ("init", Entity::Init),
        ("unmanaged", Entity::Unmanaged),
        ("kube-apiserver", Entity::KubeApiserver),
        ("ingress", Entity::Ingress),
        ("none", Entity::None),
    ];

    pub fn parse(text: &str) -> Result<Entity, String> {
        Self::NAMES.iter().find(|(name, _)| *name == text).map(|(_, e)| *e).ok_or_else(|| {
            let names: Vec<&str> = Self::NAMES.iter().map(|(n, _)| *n).collect();
            format!("unknown entity `{text}`, expected one of {}", names.join(", "))
        })
    }

    /// The reserved labels (without `reserved:`) and numbers this entity stands for. The numbers
    /// are Cilium's fixed ones; the labels also find them in an identity map that renumbers.
    fn reserved(self) -> (&'static [&'static str], &'static [u32]) {
        match self {
            // A single-stack (IPv4) lab: world-ipv4 is world, world-ipv6 exists only by label.
            Entity::World => (&["world", "world-ipv4", "world-ipv6"], &[reserved::WORLD]),
            Entity::WorldIpv4 => (&["world", "world-ipv4"], &[reserved::WORLD]),
            Entity::WorldIpv6 => (&["world-ipv6"], &[]),
            Entity::Host => (&["host"], &[reserved::HOST]),
            Entity::RemoteNode => (&["remote-node"], &[reserved::REMOTE_NODE]),
            Entity::Health => (&["health"], &[reserved::HEALTH]),
            Entity::Init => (&["init"], &[reserved::INIT]),
            Entity::Unmanaged => (&["unmanaged"], &[reserved::UNMANAGED]),
            Entity::KubeApiserver => (&["kube-apiserver"], &[reserved::KUBE_APISERVER]),
            Entity::Ingress => (&["ingress"], &[reserved::INGRESS]),
            Entity::Cluster => (
                &["host", "remote-node", "init", "ingress", "health", "unmanaged", "kube-apiserver"],
                &[
                    reserved::HOST,
                    reserved::REMOTE_NODE,
                    reserved::INIT,
                    reserved::INGRESS,
                    reserved::HEALTH,
                    reserved::UNMANAGED,
                    reserved::KUBE_APISERVER,
                ],
            ),
            Entity::All | Entity::None => (&[], &[]),
        }
    }

    /// The identities this entity selects: its fixed numbers and whatever `select` finds for its
    /// reserved labels (and, for `cluster`, the cluster label); `None` for `all`, the wildcard.
    pub fn resolve(self, mut select: impl FnMut(&Selector) -> BTreeSet<u32>) -> Option<BTreeSet<u32>> {
        if self == Entity::All {
            return None;
        }
        let (labels, numbers) = self.reserved();
        let mut ids: BTreeSet<u32> = numbers.iter().copied().collect();
        for label in labels {
            ids.extend(select(&Selector::default().with(Requirement::exists(LabelKey::new(Source::Reserved, label)))));
        }
        if self == Entity::Cluster {
            let cluster = LabelKey::new(Source::K8s, "io.cilium.k8s.policy.cluster");
            ids.extend(select(&Selector::default().with(Requirement::equals(cluster, CLUSTER_NAME))));
        }
        Some(ids)
    }
}

/// One peer of a rule item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Endpoints whose identity's labels match (never reserved identities: those are entities).
    Selector(Selector),
    Entity(Entity),
    /// Addresses: `fromCIDR`, `toCIDRSet`, `ipBlock`. Selects local CIDR identities (and world for
    /// `0.0.0.0/0`; and, with Kubernetes semantics, pods whose address is in the block).
    Cidr(CidrPeer),
    /// A peer the lab cannot resolve (`toFQDNs`, an IPv6 block): it selects no identity.
    Nothing,
}

/// Whom a rule item applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// No peer given but ports are: any identity, including world (identity 0 in the key).
    Wildcard,
    /// The union of these peers; an empty list selects nothing.
    List(Vec<Peer>),
}

/// One port of a rule item: a protocol and a port, range or name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    pub protocol: ProtocolSpec,
    pub port: PortSpec,
}

/// One item of a rule: `ingress[i]`, `egressDeny[j]`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The cookie: 1-based index into the rule list.
    pub rule: u32,
    pub direction: Direction,
    pub deny: bool,
    pub peers: Peers,
    /// `None`: every protocol and port (L3-only). `Some(empty)` allows nothing.
    pub ports: Option<Vec<PortRule>>,
}

/// One rule (`spec` or `specs[i]`): whom it selects, whether it puts them in default deny, and
/// its items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The endpoints it applies to, with any namespace restriction already added.
    pub subject: Selector,
    /// A host policy (`nodeSelector`): `subject` selects nodes' host endpoints, and only those.
    /// An `endpointSelector` never selects a host endpoint, as in Cilium.
    pub hosts: bool,
    pub default_deny_ingress: bool,
    pub default_deny_egress: bool,
    pub items: Vec<Item>,
    /// Directions a NetworkPolicy has rules for but its `policyTypes` leaves out. Cilium 1.18
    /// enforces them anyway (they count in the default deny flags above); with Kubernetes
    /// semantics their items are skipped and they put nothing in default deny.
    pub outside_policy_types: Vec<Direction>,
}
