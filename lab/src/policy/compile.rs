//! Rules → per-endpoint policy map contents, as Cilium's MapState builds them: peers resolved to
//! identities (CIDR peers to local CIDR identities), ports to protocol/port prefixes, duplicates
//! merged, and every allow that a deny covers turned into a deny at its own key (the invariant
//! bpf/lib/policy.h relies on). The enforcement mode and the semantics are applied here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::datapath::abi::identity as reserved;
use crate::datapath::abi::{POLICY_PREFIX_STATIC, PolicyEntry, PolicyKey};
use crate::identity::Labels;
use crate::topology::load::Diagnostic;
use crate::topology::{PolicyEnforcement, PolicySemantics, Protocol};

use super::cidr::{self, CidrPeer};
use super::knp;
use super::ports::{IPPROTO_TCP, IPPROTO_UDP, PortSpec, split_range};
use super::rule::{Direction, Item, Peer, Peers, Rule, RuleInfo};
use super::selector::{LabelKey, NAMESPACE_KEY, Selector, Source};
use super::selector_cache::SelectorCache;
use super::{CapacityError, Compiled, Endpoint, EndpointPolicy, Options, PolicySet};

/// Key prefix bits of the protocol.
const PROTOCOL_BITS: u32 = 8;

/// Which identities an item applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resolved {
    /// Any identity: key identity 0.
    Wildcard,
    /// Ascending, without duplicates.
    Identities(Vec<u32>),
}

/// What peers resolve against.
struct Resolver<'a> {
    /// Every identity in use but 0, CIDR identities included: the members of `peers`.
    identities: Vec<u32>,
    peers: SelectorCache<'a>,
    cidr_identities: &'a BTreeMap<Ipv4Net, u32>,
    endpoints: &'a [Endpoint],
    semantics: PolicySemantics,
}

impl<'a> Resolver<'a> {
    fn new(
        identities: &'a BTreeMap<u32, Labels>,
        cidr_identities: &'a BTreeMap<Ipv4Net, u32>,
        endpoints: &'a [Endpoint],
        semantics: PolicySemantics,
    ) -> Resolver<'a> {
        let peers = identities.iter().filter(|(id, _)| **id != 0);
        Resolver {
            identities: peers.clone().map(|(id, _)| *id).collect(),
            peers: SelectorCache::new(peers.map(|(_, labels)| labels)),
            cidr_identities,
            endpoints,
            semantics,
        }
    }

    /// The identities `selector` matches.
    fn select(&mut self, selector: &Selector) -> impl Iterator<Item = u32> {
        self.peers.select(selector).iter().map(|&member| self.identities[member])
    }

    fn resolve(&mut self, item: &Item, info: &RuleInfo, warnings: &mut Vec<Diagnostic>) -> Resolved {
        let Peers::List(list) = &item.peers else {
            return Resolved::Wildcard;
        };
        let mut ids = Vec::new();
        for peer in list {
            match peer {
                Peer::Selector(selector) => ids.extend(self.select(selector)),
                Peer::Entity(entity) => match entity.resolve(|selector| self.select(selector).collect()) {
                    None => return Resolved::Wildcard,
                    Some(set) => ids.extend(set),
                },
                Peer::Cidr(block) => ids.extend(self.cidr(block, info, warnings)),
                Peer::Nothing => {}
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Resolved::Identities(ids)
    }

    /// The CIDR identities inside the block (and world for `0.0.0.0/0`); with Kubernetes
    /// semantics, also the identity of every pod whose address is in the block.
    fn cidr(&self, block: &CidrPeer, info: &RuleInfo, warnings: &mut Vec<Diagnostic>) -> BTreeSet<u32> {
        let mut ids: BTreeSet<u32> =
            self.cidr_identities.iter().filter(|(prefix, _)| block.selects_prefix(prefix)).map(|(_, id)| *id).collect();
        if block.includes_world() {
            ids.insert(reserved::WORLD);
        }
        let has_ip = |e: &&Endpoint| e.ip != Ipv4Addr::UNSPECIFIED;
        let inside: Vec<&Endpoint> = self.endpoints.iter().filter(has_ip).filter(|e| block.contains_ip(e.ip)).collect();
        if inside.is_empty() {
            return ids;
        }
        let pods = |list: &[&Endpoint]| {
            list.iter().map(|e| format!("{} ({})", e.ip, e.namespace)).collect::<Vec<_>>().join(", ")
        };
        let mut warn = |message: String| {
            let warning = Diagnostic {
                file: info.file.clone(),
                location: info.location,
                field: block.field.clone(),
                message: format!("{}: {message}", info.policy()),
            };
            if !warnings.contains(&warning) {
                warnings.push(warning);
            }
        };
        match self.semantics {
            PolicySemantics::Cilium => {
                if info.kind == knp::KIND {
                    warn(format!(
                        "the ipBlock {} holds the addresses of pods {}: Kubernetes selects those pods, Cilium never \
                         matches pod addresses by CIDR (cilium/cilium#9998), and neither does the lab with \
                         policySemantics cilium",
                        block.describe(),
                        pods(&inside)
                    ));
                }
            }
            PolicySemantics::Kubernetes => {
                let selected: BTreeSet<u32> = inside.iter().map(|e| e.identity).collect();
                let outside: Vec<&Endpoint> = self
                    .endpoints
                    .iter()
                    .filter(has_ip)
                    .filter(|e| selected.contains(&e.identity) && !block.contains_ip(e.ip))
                    .collect();
                if !outside.is_empty() {
                    warn(format!(
                        "{} selects pods by address, but policy is per identity: pods {} share an identity with pods \
                         in the block and are selected too",
                        block.describe(),
                        pods(&outside)
                    ));
                }
                ids.extend(selected);
            }
        }
        ids
    }
}

fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

/// A protocol/port block of a key: protocol 0 (with bits 0) is every protocol and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Block {
    protocol: u8,
    port: u16,
    /// Prefix bits of the port, 0..=16.
    bits: u8,
}

const ALL_TRAFFIC: Block = Block { protocol: 0, port: 0, bits: 0 };

/// The key of `identity` and `block`, with every bit beyond the prefix zero, and the entry's
/// protocol+port prefix length.
fn key(identity: u32, egress: bool, block: Block) -> (PolicyKey, u8) {
    if block.protocol == 0 {
        let key =
            PolicyKey { prefixlen: POLICY_PREFIX_STATIC, identity, egress: u8::from(egress), protocol: 0, dport: 0 };
        return (key, 0);
    }
    let key = masked(
        identity,
        egress,
        block.protocol,
        block.port,
        POLICY_PREFIX_STATIC + PROTOCOL_BITS + u32::from(block.bits),
    );
    (key, PROTOCOL_BITS as u8 + block.bits)
}

/// The canonical key of prefix length `prefixlen` (40, or 48..=64) that contains the given
/// identity, direction, protocol and (host-order) port.
fn masked(identity: u32, egress: bool, protocol: u8, port: u16, prefixlen: u32) -> PolicyKey {
    let egress = u8::from(egress);
    if prefixlen < POLICY_PREFIX_STATIC + PROTOCOL_BITS {
        return PolicyKey { prefixlen: POLICY_PREFIX_STATIC, identity, egress, protocol: 0, dport: 0 };
    }
    let bits = prefixlen - POLICY_PREFIX_STATIC - PROTOCOL_BITS;
    let mask = if bits == 0 { 0 } else { u16::MAX << (16 - bits) };
    PolicyKey { prefixlen, identity, egress, protocol, dport: (port & mask).to_be() }
}

/// Ports named by rules, over all endpoints: what an egress rule's port name resolves to.
type NamedPorts = BTreeMap<(String, u8), BTreeSet<u16>>;

fn named_ports<'a>(endpoints: impl IntoIterator<Item = &'a Endpoint>) -> NamedPorts {
    let mut map = NamedPorts::new();
    for endpoint in endpoints {
        for (name, port, protocol) in &endpoint.named_ports {
            map.entry((name.clone(), protocol_number(*protocol))).or_default().insert(*port);
        }
    }
    map
}

/// The blocks an item's ports stand for at `endpoint`. Named ports resolve against the endpoint's
/// own ports at ingress and against every endpoint's at egress, as Cilium does; a name that means
/// several ports there is skipped with a warning (Cilium's ErrDuplicateNamedPorts).
fn blocks(item: &Item, endpoint: &Endpoint, egress_names: &NamedPorts, warnings: &mut Vec<String>) -> Vec<Block> {
    let Some(ports) = &item.ports else {
        return vec![ALL_TRAFFIC];
    };
    let mut blocks = Vec::new();
    for rule in ports {
        // `ANY` is TCP and UDP even without a port, as Cilium expands it for port rules: only an
        // item without ports (L3-only) wildcards the protocol.
        match (&rule.port, rule.protocol) {
            (PortSpec::Any, spec) => {
                blocks.extend(spec.expand().into_iter().map(|protocol| Block { protocol, port: 0, bits: 0 }));
            }
            (PortSpec::Range(start, end), spec) => {
                for protocol in spec.expand() {
                    for (port, bits) in split_range(*start, *end) {
                        blocks.push(Block { protocol, port, bits });
                    }
                }
            }
            (PortSpec::Named(name), spec) => {
                for protocol in spec.expand() {
                    let found: BTreeSet<u16> = match item.direction {
                        Direction::Ingress => endpoint
                            .named_ports
                            .iter()
                            .filter(|(n, _, p)| n == name && protocol_number(*p) == protocol)
                            .map(|(_, port, _)| *port)
                            .collect(),
                        Direction::Egress => egress_names.get(&(name.clone(), protocol)).cloned().unwrap_or_default(),
                    };
                    match found.len() {
                        0 => {}
                        1 => blocks.extend(found.iter().map(|&port| Block { protocol, port, bits: 16 })),
                        _ => warnings.push(format!(
                            "the port name `{name}` means several ports ({}) and is skipped, as Cilium does",
                            found.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
                        )),
                    }
                }
            }
        }
    }
    blocks.sort();
    blocks.dedup();
    blocks
}

/// Whether `new` should replace `old` at one key: a deny beats an allow; otherwise the lower
/// cookie of a real rule wins (cookie 0, the implicit allow-all, loses to any rule).
fn replaces(new: &PolicyEntry, old: &PolicyEntry) -> bool {
    let rank = |e: &PolicyEntry| (std::cmp::Reverse(e.deny), e.rule == 0, e.rule);
    rank(new) < rank(old)
}

fn insert(entries: &mut BTreeMap<PolicyKey, PolicyEntry>, key: PolicyKey, entry: PolicyEntry) {
    match entries.get_mut(&key) {
        Some(old) if replaces(&entry, old) => *old = entry,
        Some(_) => {}
        None => {
            entries.insert(key, entry);
        }
    }
}

/// Turns every allow covered by a deny (same direction, the deny's identity equal to the allow's
/// or 0, the deny's protocol/port prefix containing the allow's) into a deny at its own key,
/// carrying the lowest cookie among the covering denies.
pub(crate) fn apply_denies(entries: &mut BTreeMap<PolicyKey, PolicyEntry>) {
    // Most maps have no deny, and most allows of the others no deny of their direction and
    // identity (or 0): looking up every prefix of every allow would cost a map search each.
    let denied: BTreeSet<(u8, u32)> =
        entries.iter().filter(|(_, entry)| entry.deny != 0).map(|(key, _)| (key.egress, key.identity)).collect();
    if denied.is_empty() {
        return;
    }
    let mut converted = Vec::new();
    for (key, entry) in entries.iter() {
        if entry.deny != 0 {
            continue;
        }
        let port = u16::from_be(key.dport);
        let identities: &[u32] = if key.identity == 0 { &[0] } else { &[key.identity, 0] };
        if !identities.iter().any(|&identity| denied.contains(&(key.egress, identity))) {
            continue;
        }
        let prefixes = std::iter::once(POLICY_PREFIX_STATIC)
            .chain(POLICY_PREFIX_STATIC + PROTOCOL_BITS..=key.prefixlen.min(crate::datapath::abi::POLICY_PREFIX_FULL));
        let covering = prefixes
            .flat_map(|prefixlen| {
                identities.iter().map(move |&identity| masked(identity, key.egress != 0, key.protocol, port, prefixlen))
            })
            .filter(|candidate| candidate.prefixlen <= key.prefixlen)
            .filter_map(|candidate| entries.get(&candidate).filter(|e| e.deny != 0))
            .map(|deny| deny.rule)
            .min();
        if let Some(rule) = covering {
            converted.push((*key, PolicyEntry { deny: 1, rule, ..*entry }));
        }
    }
    for (key, entry) in converted {
        entries.insert(key, entry);
    }
}

/// The labels the subject selectors see: the identity's (Cilium computes policy per identity),
/// or the endpoint's own when its identity is unknown; with its namespace label in any case.
fn subject_labels(endpoint: &Endpoint, identities: &BTreeMap<u32, Labels>) -> Labels {
    // Every node's host endpoint has the host identity; nodeSelectors tell them apart by node labels.
    if endpoint.host {
        return endpoint.labels.clone();
    }
    let mut labels = identities.get(&endpoint.identity).cloned().unwrap_or_else(|| endpoint.labels.clone());
    let namespace = LabelKey::new(Source::K8s, NAMESPACE_KEY);
    if namespace.value(&labels).is_none() {
        labels.0.insert(format!("k8s:{NAMESPACE_KEY}"), endpoint.namespace.clone());
    }
    labels
}

/// Whether the semantics skip a rule's `direction`: with Kubernetes semantics, a NetworkPolicy
/// section outside its `policyTypes`.
fn skipped(rule: &Rule, direction: Direction, semantics: PolicySemantics) -> bool {
    semantics == PolicySemantics::Kubernetes && rule.outside_policy_types.contains(&direction)
}

pub(crate) fn compile(
    set: &PolicySet,
    endpoints: &[Endpoint],
    identities: &BTreeMap<u32, Labels>,
    options: &Options,
) -> Result<Compiled, Vec<CapacityError>> {
    let cidr_identities = set.cidr_identities();
    let mut all_identities = identities.clone();
    for (prefix, id) in &cidr_identities {
        all_identities.insert(*id, cidr::labels(prefix));
    }
    let mut warnings = set.warnings.clone();
    warnings.extend(set.semantic_warnings.iter().filter(|(s, _)| *s == options.semantics).map(|(_, d)| d.clone()));
    let mut resolver = Resolver::new(&all_identities, &cidr_identities, endpoints, options.semantics);
    let resolved: Vec<Vec<Resolved>> = set
        .rules
        .iter()
        .map(|rule| {
            rule.items
                .iter()
                .map(|item| {
                    if skipped(rule, item.direction, options.semantics) {
                        return Resolved::Identities(Vec::new());
                    }
                    resolver.resolve(item, &set.infos[item.rule as usize - 1], &mut warnings)
                })
                .collect()
        })
        .collect();

    if options.enforcement == PolicyEnforcement::Never {
        return Ok(Compiled {
            endpoints: vec![EndpointPolicy::default(); endpoints.len()],
            rules: set.infos.clone(),
            cidr_identities,
            warnings,
        });
    }

    let subject_labels: Vec<Labels> = endpoints.iter().map(|e| subject_labels(e, identities)).collect();
    let mut subjects = SelectorCache::new(&subject_labels);
    // Each endpoint's rules, in rule order.
    let mut rules_of: Vec<Vec<usize>> = vec![Vec::new(); endpoints.len()];
    for (index, rule) in set.rules.iter().enumerate() {
        // A nodeSelector selects host endpoints only, an endpointSelector pods only.
        for &endpoint in subjects.select(&rule.subject) {
            if endpoints[endpoint].host == rule.hosts {
                rules_of[endpoint].push(index);
            }
        }
    }

    let egress_names = named_ports(endpoints);
    let mut errors = Vec::new();
    let mut policies = Vec::with_capacity(endpoints.len());

    for (index, endpoint) in endpoints.iter().enumerate() {
        let mut entries = BTreeMap::new();
        // `always`: every pod is in default deny both ways, selected or not.
        let mut default_deny = [options.enforcement == PolicyEnforcement::Always && !endpoint.host; 2];
        let mut contributors = BTreeSet::new();
        for &selected in &rules_of[index] {
            let (rule, resolved) = (&set.rules[selected], &resolved[selected]);
            default_deny[0] |= rule.default_deny_ingress && !skipped(rule, Direction::Ingress, options.semantics);
            default_deny[1] |= rule.default_deny_egress && !skipped(rule, Direction::Egress, options.semantics);
            for (item, peers) in rule.items.iter().zip(resolved) {
                if skipped(rule, item.direction, options.semantics) {
                    continue;
                }
                let mut messages = Vec::new();
                let blocks = blocks(item, endpoint, &egress_names, &mut messages);
                for message in messages {
                    let warning = item_diagnostic(&set.infos[item.rule as usize - 1], message);
                    if !warnings.contains(&warning) {
                        warnings.push(warning);
                    }
                }
                let ids: &[u32] = match peers {
                    Resolved::Wildcard => &[0],
                    Resolved::Identities(ids) => ids,
                };
                if !ids.is_empty() && !blocks.is_empty() {
                    contributors.insert(item.rule);
                }
                let egress = item.direction.is_egress();
                for &identity in ids {
                    for &block in &blocks {
                        let (key, prefix_length) = key(identity, egress, block);
                        let entry = PolicyEntry {
                            deny: u8::from(item.deny),
                            prefix_length,
                            pad: 0,
                            rule: item.rule,
                            packets: 0,
                        };
                        insert(&mut entries, key, entry);
                    }
                }
            }
        }

        // A direction with entries but no rule asking for default deny: Cilium allows all there
        // and still applies the denies, so it is enforced with an implicit allow-all (cookie 0).
        let mut enforced = default_deny;
        for egress in [false, true] {
            let d = usize::from(egress);
            if !default_deny[d] && entries.keys().any(|k: &PolicyKey| k.egress == u8::from(egress)) {
                enforced[d] = true;
                let (key, prefix_length) = key(0, egress, ALL_TRAFFIC);
                insert(&mut entries, key, PolicyEntry { deny: 0, prefix_length, pad: 0, rule: 0, packets: 0 });
            }
        }
        apply_denies(&mut entries);

        if entries.len() > options.max_entries {
            let mut names: Vec<String> = Vec::new();
            for rule in &contributors {
                let name = set.infos[*rule as usize - 1].policy();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            errors.push(CapacityError {
                endpoint: index,
                endpoint_id: endpoint.id,
                identity: endpoint.identity,
                namespace: endpoint.namespace.clone(),
                entries: entries.len(),
                max_entries: options.max_entries,
                policies: names,
            });
        }
        policies.push(EndpointPolicy { ingress_enforced: enforced[0], egress_enforced: enforced[1], entries });
    }

    if errors.is_empty() {
        Ok(Compiled { endpoints: policies, rules: set.infos.clone(), cidr_identities, warnings })
    } else {
        Err(errors)
    }
}

fn item_diagnostic(info: &RuleInfo, message: String) -> Diagnostic {
    let ports = if info.kind == knp::KIND { "ports" } else { "toPorts" };
    Diagnostic {
        file: info.file.clone(),
        location: info.location,
        field: format!("{}.{ports}", info.path),
        message: format!("{}: {message}", info.policy()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(deny: bool, rule: u32) -> PolicyEntry {
        PolicyEntry { deny: u8::from(deny), prefix_length: 0, pad: 0, rule, packets: 0 }
    }

    #[test]
    fn keys_are_canonical() {
        let (k, p) = key(300, true, Block { protocol: 6, port: 8080, bits: 13 });
        assert_eq!(
            (k.prefixlen, k.identity, k.egress, k.protocol, u16::from_be(k.dport), p),
            (61, 300, 1, 6, 8080, 21)
        );
        let (k, p) = key(300, false, Block { protocol: 6, port: 8081, bits: 13 });
        assert_eq!(u16::from_be(k.dport), 8080, "bits beyond the prefix are cleared");
        assert_eq!(p, 21);
        let (k, p) = key(0, false, Block { protocol: 17, port: 0, bits: 0 });
        assert_eq!((k.prefixlen, k.protocol, k.dport, p), (48, 17, 0, 8));
        let (k, p) = key(7, false, ALL_TRAFFIC);
        assert_eq!((k.prefixlen, k.identity, k.protocol, k.dport, p), (40, 7, 0, 0, 0));
        assert_eq!(u16::from_be(key(1, false, Block { protocol: 6, port: 80, bits: 16 }).0.dport), 80);
        assert_eq!(key(1, false, Block { protocol: 6, port: 80, bits: 16 }).0.dport, 80u16.to_be());
    }

    #[test]
    fn merging_prefers_deny_then_the_lowest_rule() {
        let mut entries = BTreeMap::new();
        let k = key(5, false, ALL_TRAFFIC).0;
        insert(&mut entries, k, entry(false, 3));
        insert(&mut entries, k, entry(false, 2));
        assert_eq!(entries[&k].rule, 2);
        insert(&mut entries, k, entry(true, 9));
        insert(&mut entries, k, entry(false, 1));
        assert_eq!((entries[&k].deny, entries[&k].rule), (1, 9));
        insert(&mut entries, k, entry(true, 4));
        assert_eq!(entries[&k].rule, 4);
        let all = key(0, false, ALL_TRAFFIC).0;
        insert(&mut entries, all, entry(false, 0));
        insert(&mut entries, all, entry(false, 7));
        assert_eq!(entries[&all].rule, 7, "a real rule beats the implicit allow-all");
    }

    #[test]
    fn covered_allows_become_denies() {
        let mut entries = BTreeMap::new();
        let tcp = |id, port, bits| key(id, false, Block { protocol: 6, port, bits });
        // deny TCP/any for identity 0; allows for identity 0 and 9 under it; an UDP allow outside it
        let (k, p) = tcp(0, 0, 0);
        entries.insert(k, PolicyEntry { prefix_length: p, ..entry(true, 5) });
        for (k, p) in [tcp(0, 80, 16), tcp(9, 80, 16), tcp(9, 8080, 13)] {
            entries.insert(k, PolicyEntry { prefix_length: p, ..entry(false, 1) });
        }
        let (udp, p) = key(9, false, Block { protocol: 17, port: 53, bits: 16 });
        entries.insert(udp, PolicyEntry { prefix_length: p, ..entry(false, 1) });
        // an identity-specific deny does not cover identity 0's allow, nor the other direction
        let (k9, p) = key(9, true, ALL_TRAFFIC);
        entries.insert(k9, PolicyEntry { prefix_length: p, ..entry(true, 6) });
        let (k0_egress, p) = key(0, true, Block { protocol: 6, port: 443, bits: 16 });
        entries.insert(k0_egress, PolicyEntry { prefix_length: p, ..entry(false, 2) });
        apply_denies(&mut entries);
        for (k, _) in [tcp(0, 80, 16), tcp(9, 80, 16), tcp(9, 8080, 13)] {
            assert_eq!((entries[&k].deny, entries[&k].rule), (1, 5), "{k:?}");
            assert_eq!(entries[&k].prefix_length, if k.prefixlen == 61 { 21 } else { 24 });
        }
        assert_eq!(entries[&udp].deny, 0);
        assert_eq!(entries[&k0_egress].deny, 0);
    }
}
