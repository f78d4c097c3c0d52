//! The policy engine: Kubernetes policy objects → the contents of each endpoint's policy map, as
//! Cilium 1.18 computes them, and the datapath's decision for a packet. Pure: no kernel, no IO.
//!
//! Two steps, so that identity churn recompiles without reparsing:
//! 1. [`PolicySet::parse`] checks the policies ([`Resource`]s of kind CiliumNetworkPolicy,
//!    CiliumClusterwideNetworkPolicy and NetworkPolicy; other kinds are not policies and are
//!    skipped) and turns them into rules, each item of which (`spec.ingress[0]`,
//!    `specs[1].egressDeny[2]`) gets a cookie, its 1-based index in [`PolicySet::rules`], which the
//!    map entries it produces carry in [`PolicyEntry::rule`].
//! 2. [`PolicySet::compile`] resolves selectors, entities and CIDRs against the identities in use
//!    and builds one [`EndpointPolicy`] per endpoint, following [`Options::enforcement`] and
//!    [`Options::semantics`].
//!
//! [`lookup`] then answers "what happens to this packet" exactly as bpf/lib/policy.h does.
//!
//! Semantics (Cilium 1.18; the datapath reference, sections 6-8 and 11):
//! - A rule selects an endpoint by its identity's labels (Cilium computes policy per identity).
//!   A CNP's `endpointSelector` always applies in its namespace. Peer selectors of a CNP that name
//!   no namespace (and no `io.cilium.k8s.namespace.labels.*` and no `reserved:` key) are limited to
//!   the policy's namespace; a CCNP's to pods (`io.kubernetes.pod.namespace` exists).
//! - A rule with an ingress or ingressDeny item puts its endpoints in default deny at ingress
//!   (likewise egress) unless `enableDefaultDeny` says otherwise. A direction with entries but no
//!   default deny is enforced with an implicit allow-all (cookie 0), so its denies still apply.
//! - A NetworkPolicy is a rule whose subject is its `podSelector` in its namespace, every item an
//!   allow, default deny in the directions of its (defaulted) `policyTypes` and, as in Cilium
//!   1.18, in any direction it has rules for (`knp.rs`).
//! - CIDR peers (`fromCIDR`, `toCIDRSet`, `ipBlock`) select local CIDR identities
//!   ([`Compiled::cidr_identities`], [`cidr`]): every prefix a rule names gets one, and the
//!   datapath puts them in the ipcache, where pods' and nodes' own entries stay more specific, so
//!   CIDR peers never match pods or nodes. `0.0.0.0/0` also selects world. The `world` entity
//!   selects the CIDR identities too (Cilium gives them the world label).
//! - Semantics ([`PolicySemantics`]): `cilium` is the above; `kubernetes` follows the Kubernetes
//!   API where Cilium does not: CIDR peers also select the identities of pods whose address is in
//!   the block, and NetworkPolicy sections outside `policyTypes` are ignored
//!   (docs/policy-semantics.md).
//! - Enforcement ([`PolicyEnforcement`]): `default` as above; `always` enforces both directions of
//!   every endpoint, default deny, selected by a rule or not; `never` enforces nothing.
//! - No peers but ports: any identity (key identity 0). Peers but no ports: every protocol and
//!   port (key prefix 40, entry prefix 0). A port with a protocol: prefix 48 + port bits (entry
//!   prefix 8 + port bits); `ANY` is one entry per TCP and UDP (with or without a port, as Cilium
//!   expands it in port rules). `endPort` ranges split into aligned blocks.
//! - Denies beat allows: after merging duplicates (deny first, then the lowest cookie), every allow
//!   covered by a deny becomes a deny at its own key, so the datapath's longest-prefix lookups can
//!   never pick an allow that a deny should override.

pub mod cidr;
mod cnp;
mod compile;
mod knp;
mod lookup;
pub mod ports;
mod rule;
pub mod selector;
mod selector_cache;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_semantics;

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::datapath::abi::{ENDPOINT_F_EGRESS_ENFORCED, ENDPOINT_F_INGRESS_ENFORCED};
pub use crate::datapath::abi::{PolicyEntry, PolicyKey};
use crate::identity::Labels;
use crate::topology::Protocol;
use crate::topology::load::Diagnostic;
use crate::topology::resources::Resource;
pub use crate::topology::{PolicyEnforcement, PolicySemantics};

pub use cidr::LOCAL_IDENTITY_FLAG;
pub use lookup::{
    DROP_POLICY, DROP_POLICY_DENY, Decision, Matched, Verdict, key_bits, lookup, lpm_lookup, match_type, prefix_matches,
};
pub use rule::{Direction, Entity, RuleInfo};

/// The default size of an endpoint's policy map (Cilium's `--bpf-policy-map-max`, bpf/lib/policy.h
/// `POLICY_SIZE`).
pub const DEFAULT_MAX_ENTRIES: usize = 16384;

/// An endpoint, by its index in the slice given to [`PolicySet::compile`].
pub type EndpointRef = usize;

/// A local endpoint (a pod) that policies may select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint id, unique per node.
    pub id: u16,
    /// Its security identity.
    pub identity: u32,
    /// All of the pod's labels, Cilium style (`k8s:app` → `web`). Rules select the endpoint by its
    /// identity's labels when `identity` is in the identity map, by these otherwise.
    pub labels: Labels,
    pub namespace: String,
    /// The pod's address: with Kubernetes semantics, CIDR peers select the identities of pods
    /// whose address is in the block. `0.0.0.0` is no address.
    pub ip: Ipv4Addr,
    /// Named container ports: `(name, port, protocol)`.
    pub named_ports: Vec<(String, u16, Protocol)>,
    /// A node's host endpoint rather than a pod: only host policies (`nodeSelector`) select it,
    /// by its `labels` (the node's, and `reserved:host`), and enforcement `always` leaves it be.
    pub host: bool,
}

/// Compilation settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The most entries one endpoint's map may hold; more is an error.
    pub max_entries: usize,
    /// Cilium's policy enforcement mode.
    pub enforcement: PolicyEnforcement,
    /// Whose reading of NetworkPolicy to follow where Cilium and Kubernetes differ.
    pub semantics: PolicySemantics,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_entries: DEFAULT_MAX_ENTRIES,
            enforcement: PolicyEnforcement::default(),
            semantics: PolicySemantics::default(),
        }
    }
}

/// What one endpoint's policy map and flags should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    pub entries: BTreeMap<PolicyKey, PolicyEntry>,
}

impl EndpointPolicy {
    /// The `ENDPOINT_F_*` flags of the endpoints map.
    pub fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.ingress_enforced {
            flags |= ENDPOINT_F_INGRESS_ENFORCED;
        }
        if self.egress_enforced {
            flags |= ENDPOINT_F_EGRESS_ENFORCED;
        }
        flags
    }
}

/// Every endpoint's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// Parallel to the endpoints given.
    pub endpoints: Vec<EndpointPolicy>,
    /// Rule item `n` (the cookie in [`PolicyEntry::rule`]) is `rules[n - 1]`; cookie 0 is the
    /// implicit allow-all of a direction without default deny.
    pub rules: Vec<RuleInfo>,
    /// The local CIDR identity of every prefix a CIDR peer names (`cidr` and each `except`), to
    /// be put in the ipcache; `0.0.0.0/0` is not one (it is world). Pods' /32s and node addresses
    /// must stay as they are: where a prefix equals one, the pod's or node's entry wins.
    pub cidr_identities: BTreeMap<Ipv4Net, u32>,
    /// Things the lab accepted but does not do as Cilium would (L7 rules, toFQDNs, ...), and where
    /// the chosen semantics part from Cilium's or Kubernetes' reading.
    pub warnings: Vec<Diagnostic>,
}

impl Compiled {
    /// The rule behind a cookie; `None` for 0 or an unknown cookie.
    pub fn rule(&self, cookie: u32) -> Option<&RuleInfo> {
        cookie.checked_sub(1).and_then(|i| self.rules.get(i as usize))
    }
}

/// An endpoint whose policy does not fit its map. The endpoint gets no partial policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityError {
    pub endpoint: EndpointRef,
    pub endpoint_id: u16,
    pub identity: u32,
    pub namespace: String,
    pub entries: usize,
    pub max_entries: usize,
    /// The policies that put entries in its map, in rule order (`CiliumNetworkPolicy ns/name`).
    pub policies: Vec<String>,
}

impl fmt::Display for CapacityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "endpoint {} (identity {}, namespace {}) needs {} policy map entries, more than the map's {}; \
             the entries come from {}",
            self.endpoint_id,
            self.identity,
            self.namespace,
            self.entries,
            self.max_entries,
            if self.policies.is_empty() { "no policy".to_string() } else { self.policies.join(", ") },
        )
    }
}

/// Why policies could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Invalid or unsupported policies.
    #[error("{}", join(.0))]
    Invalid(Vec<Diagnostic>),
    /// Endpoints whose policy exceeds the map.
    #[error("{}", join(.0))]
    Capacity(Vec<CapacityError>),
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// Parsed, checked policies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySet {
    rules: Vec<rule::Rule>,
    infos: Vec<RuleInfo>,
    warnings: Vec<Diagnostic>,
    /// Warnings that apply under one semantics only.
    semantic_warnings: Vec<(PolicySemantics, Diagnostic)>,
}

impl PolicySet {
    /// Checks and translates every policy among `resources`; any invalid one is an error naming
    /// its file, location and field.
    pub fn parse(resources: &[Resource]) -> Result<PolicySet, Vec<Diagnostic>> {
        let mut set = PolicySet::default();
        let mut errors = Vec::new();
        for resource in resources {
            let result = match (resource.api_version.as_str(), resource.kind.as_str()) {
                ("cilium.io/v2", "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy") => {
                    cnp::translate(resource, &mut set.rules, &mut set.infos, &mut set.warnings)
                }
                ("networking.k8s.io/v1", knp::KIND) => knp::translate(
                    resource,
                    &mut set.rules,
                    &mut set.infos,
                    &mut set.warnings,
                    &mut set.semantic_warnings,
                ),
                _ => Ok(()),
            };
            if let Err(mut e) = result {
                errors.append(&mut e);
            }
        }
        if errors.is_empty() { Ok(set) } else { Err(errors) }
    }

    /// Rule item `n` is `rules()[n - 1]`.
    pub fn rules(&self) -> &[RuleInfo] {
        &self.infos
    }

    /// Accepted but not enforced as Cilium would (L7 rules, toFQDNs, ...). Warnings that depend on
    /// the semantics come with the compiled policy.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The local CIDR identity of every prefix the rules name; see [`Compiled::cidr_identities`].
    pub fn cidr_identities(&self) -> BTreeMap<Ipv4Net, u32> {
        let peers = self.rules.iter().flat_map(|rule| &rule.items).flat_map(|item| match &item.peers {
            rule::Peers::List(peers) => peers.as_slice(),
            rule::Peers::Wildcard => &[],
        });
        cidr::number(
            peers
                .filter_map(|peer| if let rule::Peer::Cidr(block) = peer { Some(block) } else { None })
                .flat_map(|block| block.prefixes()),
        )
    }

    /// Every endpoint's policy, given every identity in use (reserved ones included, with their
    /// `reserved:*` labels; CIDR identities are added here). An endpoint whose entries exceed
    /// `options.max_entries` is an error.
    pub fn compile(
        &self,
        endpoints: &[Endpoint],
        identities: &BTreeMap<u32, Labels>,
        options: &Options,
    ) -> Result<Compiled, Vec<CapacityError>> {
        compile::compile(self, endpoints, identities, options)
    }
}

/// [`PolicySet::parse`] then [`PolicySet::compile`].
pub fn compile(
    resources: &[Resource],
    endpoints: &[Endpoint],
    identities: &BTreeMap<u32, Labels>,
    options: &Options,
) -> Result<Compiled, PolicyError> {
    let set = PolicySet::parse(resources).map_err(PolicyError::Invalid)?;
    set.compile(endpoints, identities, options).map_err(PolicyError::Capacity)
}
