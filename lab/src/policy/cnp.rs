//! CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (`cilium.io/v2`): the spec as serde
//! structs that reject unknown fields, checked and translated into [`Rule`]s the way Cilium's
//! pkg/k8s/apis/cilium.io/utils does it (namespace restriction of selectors included).
//!
//! Supported: `endpointSelector`, `nodeSelector` (host policies, CCNP only: the rule selects the
//! host endpoints of nodes whose labels match, and nothing else), `ingress`/`ingressDeny`/`egress`/`egressDeny` with
//! `fromEndpoints`/`toEndpoints`, `fromEntities`/`toEntities`, `fromCIDR`/`toCIDR` (a CIDR or a
//! bare address, its /32), `fromCIDRSet`/`toCIDRSet` (`cidr` and `except`) and `toPorts[].ports[]`
//! (`port` as number, string or name, `endPort`, `protocol` TCP/UDP/SCTP/ANY), and
//! `enableDefaultDeny`. `labels`, `description` and `log` are accepted and ignored. As in Cilium,
//! one item may use only one kind of peer (`fromEndpoints` or `fromCIDR` or ...).
//!
//! Accepted with a warning: L7 `toPorts[].rules` (the port is allowed at L4, nothing is filtered
//! at L7), `toFQDNs` (selects no identity, so it allows nothing: the lab has no DNS proxy), IPv6
//! CIDRs (the lab is IPv4 only: they match nothing) and an `except` outside its `cidr` (ignored).
//!
//! Errors, as not supported yet: `fromRequires`/`toRequires`, `fromNodes`/`toNodes`,
//! `fromGroups`/`toGroups`, `toServices`, `cidrGroupRef`/`cidrGroupSelector` of CIDR sets, `icmps`,
//! `authentication`, and TLS/`serverNames`/`listener` of port rules.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::topology::load::Diagnostic;
use crate::topology::resources::Resource;

use super::cidr::{self, CidrPeer};
use super::ports::{PortSpec, ProtocolSpec, is_port_name};
use super::rule::{Direction, Entity, Item, Peer, Peers, PortRule, Rule, RuleInfo};
use super::selector::{LabelKey, NAMESPACE_KEY, Requirement, Selector, SelectorSpec, Source};

/// The namespace labels Cilium re-exports onto pods; a CNP selector on one of them is not
/// restricted to the policy's namespace.
pub(super) const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleSpec {
    endpoint_selector: Option<SelectorSpec>,
    node_selector: Option<SelectorSpec>,
    ingress: Option<Vec<IngressSpec>>,
    ingress_deny: Option<Vec<IngressSpec>>,
    egress: Option<Vec<EgressSpec>>,
    egress_deny: Option<Vec<EgressSpec>>,
    enable_default_deny: Option<DefaultDenySpec>,
    #[allow(dead_code)]
    labels: Option<Value>,
    #[allow(dead_code)]
    description: Option<Value>,
    #[allow(dead_code)]
    log: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultDenySpec {
    ingress: Option<bool>,
    egress: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IngressSpec {
    from_endpoints: Option<Vec<SelectorSpec>>,
    from_entities: Option<Vec<String>>,
    from_requires: Option<Value>,
    #[serde(rename = "fromCIDR")]
    from_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    from_cidr_set: Option<Vec<CidrRuleSpec>>,
    from_groups: Option<Value>,
    from_nodes: Option<Value>,
    to_ports: Option<Vec<PortRuleSpec>>,
    icmps: Option<Value>,
    authentication: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EgressSpec {
    to_endpoints: Option<Vec<SelectorSpec>>,
    to_entities: Option<Vec<String>>,
    to_requires: Option<Value>,
    #[serde(rename = "toCIDR")]
    to_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDRSet")]
    to_cidr_set: Option<Vec<CidrRuleSpec>>,
    to_groups: Option<Value>,
    to_nodes: Option<Value>,
    to_services: Option<Value>,
    #[serde(rename = "toFQDNs")]
    to_fqdns: Option<Value>,
    to_ports: Option<Vec<PortRuleSpec>>,
    icmps: Option<Value>,
    authentication: Option<Value>,
}

/// One entry of `fromCIDRSet`/`toCIDRSet`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CidrRuleSpec {
    cidr: Option<String>,
    except: Option<Vec<String>>,
    cidr_group_ref: Option<Value>,
    cidr_group_selector: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortRuleSpec {
    ports: Option<Vec<PortProtocolSpec>>,
    rules: Option<Value>,
    #[serde(rename = "terminatingTLS")]
    terminating_tls: Option<Value>,
    #[serde(rename = "originatingTLS")]
    originating_tls: Option<Value>,
    server_names: Option<Value>,
    listener: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortProtocolSpec {
    port: Option<PortValue>,
    end_port: Option<i64>,
    protocol: Option<String>,
}

/// `port: 80`, `port: "80"` or `port: http`.
#[derive(Debug)]
pub(super) enum PortValue {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for PortValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port number or name")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortValue, E> {
                Ok(PortValue::Number(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortValue, E> {
                Ok(PortValue::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortValue, E> {
                Ok(PortValue::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// One direction's item, whichever struct it came from.
struct ItemView<'a> {
    endpoints: (&'static str, Option<&'a Vec<SelectorSpec>>),
    entities: (&'static str, Option<&'a Vec<String>>),
    cidrs: (&'static str, Option<&'a Vec<String>>),
    cidr_sets: (&'static str, Option<&'a Vec<CidrRuleSpec>>),
    fqdns: Option<&'a Value>,
    /// Fields the lab does not support, with whether they are set.
    unsupported: Vec<(&'static str, bool, &'static str)>,
    to_ports: Option<&'a Vec<PortRuleSpec>>,
}

impl IngressSpec {
    fn view(&self) -> ItemView<'_> {
        ItemView {
            endpoints: ("fromEndpoints", self.from_endpoints.as_ref()),
            entities: ("fromEntities", self.from_entities.as_ref()),
            cidrs: ("fromCIDR", self.from_cidr.as_ref()),
            cidr_sets: ("fromCIDRSet", self.from_cidr_set.as_ref()),
            fqdns: None,
            unsupported: vec![
                ("fromRequires", self.from_requires.is_some(), "is not supported by the lab yet"),
                ("fromGroups", self.from_groups.is_some(), "is not supported by the lab"),
                ("fromNodes", self.from_nodes.is_some(), "is not supported by the lab yet"),
                ("icmps", self.icmps.is_some(), "(ICMP rules) is not supported by the lab yet"),
                (
                    "authentication",
                    self.authentication.is_some(),
                    "(mutual authentication) is not supported by the lab",
                ),
            ],
            to_ports: self.to_ports.as_ref(),
        }
    }
}

impl EgressSpec {
    fn view(&self) -> ItemView<'_> {
        ItemView {
            endpoints: ("toEndpoints", self.to_endpoints.as_ref()),
            entities: ("toEntities", self.to_entities.as_ref()),
            cidrs: ("toCIDR", self.to_cidr.as_ref()),
            cidr_sets: ("toCIDRSet", self.to_cidr_set.as_ref()),
            fqdns: self.to_fqdns.as_ref(),
            unsupported: vec![
                ("toRequires", self.to_requires.is_some(), "is not supported by the lab yet"),
                ("toGroups", self.to_groups.is_some(), "is not supported by the lab"),
                ("toNodes", self.to_nodes.is_some(), "is not supported by the lab yet"),
                ("toServices", self.to_services.is_some(), "is not supported by the lab yet"),
                ("icmps", self.icmps.is_some(), "(ICMP rules) is not supported by the lab yet"),
                (
                    "authentication",
                    self.authentication.is_some(),
                    "(mutual authentication) is not supported by the lab",
                ),
            ],
            to_ports: self.to_ports.as_ref(),
        }
    }
}

/// Where selectors of a policy may reach.
#[derive(Debug, Clone)]
enum Scope {
    /// A CiliumNetworkPolicy: its namespace.
    Namespace(String),
    /// A CiliumClusterwideNetworkPolicy: every namespace (every pod), but not what has none.
    Cluster,
}

/// Translates one CNP or CCNP. Rule items are numbered from `infos.len() + 1`; on success its
/// rules and infos are appended. Errors are returned, warnings pushed.
pub(crate) fn translate(
    resource: &Resource,
    rules: &mut Vec<Rule>,
    infos: &mut Vec<RuleInfo>,
    warnings: &mut Vec<Diagnostic>,
) -> Result<(), Vec<Diagnostic>> {
    let scope = match &resource.namespace {
        Some(ns) => Scope::Namespace(ns.clone()),
        None => Scope::Cluster,
    };
    let mut cx = Context { resource, scope, infos: Vec::new(), first: infos.len() as u32 + 1, warnings: Vec::new() };
    let mut errors = Vec::new();
    let mut new_rules = Vec::new();

    let object = resource.object.as_mapping();
    let get = |key: &str| object.and_then(|o| o.get(key)).filter(|v| !v.is_null());
    let mut specs: Vec<(String, Option<usize>, &Value)> = Vec::new();
    if let Some(spec) = get("spec") {
        specs.push(("spec".into(), None, spec));
    }
    match get("specs") {
        None => {}
        Some(Value::Sequence(list)) => {
            specs.extend(list.iter().enumerate().map(|(i, v)| (format!("specs[{i}]"), Some(i), v)));
        }
        Some(_) => errors.push(cx.error("specs", "expected a list of rules")),
    }
    if specs.is_empty() && errors.is_empty() {
        errors.push(cx.error("spec", format!("{} has no rules: it needs `spec` or `specs`", resource.kind)));
    }

    for (path, index, value) in specs {
        match cx.rule(&path, index, value) {
            Ok(rule) => new_rules.push(rule),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    rules.extend(new_rules);
    infos.extend(cx.infos);
    warnings.extend(cx.warnings);
    Ok(())
}

/// `value` deserialized straight from the tree, or `None` where that fails or the tree has tags:
/// there the caller goes through YAML text, which costs a serialisation and a parse (most of the
/// parse time of 10,000 policies) but reads tags and scalars as the file would and gives errors
/// the field path that a tree's errors lack.
pub(super) fn deserialize_untagged<T: DeserializeOwned>(value: &Value) -> Option<T> {
    fn tagged(value: &Value) -> bool {
        match value {
            Value::Tagged(_) => true,
            Value::Sequence(items) => items.iter().any(tagged),
            Value::Mapping(map) => map.iter().any(|(key, value)| tagged(key) || tagged(value)),
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => false,
        }
    }
    if tagged(value) { None } else { T::deserialize(value).ok() }
}

/// A serde error of the object at `path`, as (field, message): serde's own path, made absolute,
/// names the field.
pub(super) fn serde_field(path: &str, error: &serde_yaml::Error) -> (String, String) {
    let text = error.to_string();
    let text = text.rfind(" at line ").map_or(text.as_str(), |cut| &text[..cut]);
    let (mut field, message) = match text.split_once(": ") {
        Some((field, message)) if !field.contains(' ') => {
            let field = if field == "." { path.to_string() } else { format!("{path}.{field}") };
            (field, message.to_string())
        }
        _ => (path.to_string(), text.to_string()),
    };
    if let Some(name) = message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()) {
        field = format!("{field}.{name}");
    }
    (field, message)
}

struct Context<'a> {
    resource: &'a Resource,
    scope: Scope,
    infos: Vec<RuleInfo>,
    /// The cookie of this resource's first rule item.
    first: u32,
    warnings: Vec<Diagnostic>,
}

impl Context<'_> {
    fn diagnostic(&self, field: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.resource.file.clone(),
            location: self.resource.location,
            field: field.to_string(),
            message: format!("{}: {}", self.resource.display_name(), message.into()),
        }
    }

    fn error(&self, field: &str, message: impl Into<String>) -> Diagnostic {
        self.diagnostic(field, message)
    }

    fn warn(&mut self, field: &str, message: impl Into<String>) {
        let warning = self.diagnostic(field, message);
        self.warnings.push(warning);
    }

    /// Deserializes one rule; through YAML text where that fails, so serde's errors carry the
    /// field path.
    fn rule(&mut self, path: &str, index: Option<usize>, value: &Value) -> Result<Rule, Diagnostic> {
        let spec: RuleSpec = match deserialize_untagged(value) {
            Some(spec) => spec,
            None => {
                let text = serde_yaml::to_string(value).map_err(|e| self.error(path, e.to_string()))?;
                serde_yaml::from_str(&text).map_err(|e| self.serde_error(path, &e))?
            }
        };

        let (subject, hosts) = match (&spec.endpoint_selector, &spec.node_selector) {
            (Some(_), Some(_)) => {
                return Err(self.error(
                    &format!("{path}.nodeSelector"),
                    "a rule has either an `endpointSelector` or a `nodeSelector`, not both",
                ));
            }
            (None, None) => return Err(self.error(path, "a rule needs an `endpointSelector` or a `nodeSelector`")),
            (Some(selector), None) => (self.subject(&format!("{path}.endpointSelector"), selector)?, false),
            (None, Some(selector)) => {
                let field = format!("{path}.nodeSelector");
                if let Scope::Namespace(_) = self.scope {
                    return Err(self.error(
                        &field,
                        "host policies (`nodeSelector`) are cluster-wide: use a CiliumClusterwideNetworkPolicy",
                    ));
                }
                (self.selector(&field, selector)?, true)
            }
        };

        let sections: [(&str, Direction, bool, Vec<ItemView>); 4] = [
            ("ingress", Direction::Ingress, false, spec.ingress.iter().flatten().map(IngressSpec::view).collect()),
            (
                "ingressDeny",
                Direction::Ingress,
                true,
                spec.ingress_deny.iter().flatten().map(IngressSpec::view).collect(),
            ),
            ("egress", Direction::Egress, false, spec.egress.iter().flatten().map(EgressSpec::view).collect()),
            ("egressDeny", Direction::Egress, true, spec.egress_deny.iter().flatten().map(EgressSpec::view).collect()),
        ];
        let count =
            |direction: Direction| sections.iter().filter(|s| s.1 == direction).map(|s| s.3.len()).sum::<usize>();
        let defaults = spec.enable_default_deny.as_ref();
        let default_deny_ingress = defaults.and_then(|d| d.ingress).unwrap_or(count(Direction::Ingress) > 0);
        let default_deny_egress = defaults.and_then(|d| d.egress).unwrap_or(count(Direction::Egress) > 0);

        let mut items = Vec::new();
        for (section, direction, deny, views) in &sections {
            for (i, view) in views.iter().enumerate() {
                let item_path = format!("{path}.{section}[{i}]");
                let mut item = self.item(&item_path, *direction, *deny, view)?;
                item.rule = self.first + self.infos.len() as u32;
                self.infos.push(RuleInfo {
                    kind: self.resource.kind.clone(),
                    namespace: self.resource.namespace.clone(),
                    name: self.resource.name.clone(),
                    spec: index,
                    path: item_path,
                    direction: *direction,
                    deny: *deny,
                    file: self.resource.file.clone(),
                    location: self.resource.location,
                });
                items.push(item);
            }
        }
        Ok(Rule { subject, hosts, default_deny_ingress, default_deny_egress, items, outside_policy_types: Vec::new() })
    }

    /// A serde error of the rule at `path`: its own path, made absolute, names the field.
    fn serde_error(&self, path: &str, error: &serde_yaml::Error) -> Diagnostic {
        let (field, message) = serde_field(path, error);
        self.error(&field, message)
    }

    fn selector(&self, path: &str, spec: &SelectorSpec) -> Result<Selector, Diagnostic> {
        spec.to_selector().map_err(|(field, message)| self.error(&format!("{path}.{field}"), message))
    }

    /// The rule's subject: a CNP's always lives in the policy's namespace (a `k8s:` namespace
    /// match the user wrote is replaced, as Cilium does); a CCNP's is taken as written.
    fn subject(&mut self, path: &str, spec: &SelectorSpec) -> Result<Selector, Diagnostic> {
        let Scope::Namespace(namespace) = self.scope.clone() else {
            return self.selector(path, spec);
        };
        let mut spec = spec.clone();
        let key = format!("k8s:{NAMESPACE_KEY}");
        if let Some(written) = spec.match_labels.as_mut().and_then(|labels| labels.remove(&key))
            && written != namespace
        {
            self.warn(
                &format!("{path}.matchLabels.{key}"),
                format!("the endpointSelector always applies in the policy's namespace `{namespace}`; `{written}` is ignored"),
            );
        }
        let selector = self.selector(path, &spec)?;
        Ok(selector.with(Requirement::equals(LabelKey::new(Source::K8s, NAMESPACE_KEY), &namespace)))
    }

    /// A peer selector, restricted as Cilium's getEndpointSelector does: untouched if it has a
    /// `reserved:` key or names the namespace; otherwise a CNP's is limited to its namespace
    /// (unless it selects on namespace labels) and a CCNP's to pods (namespace exists).
    fn peer_selector(&self, path: &str, spec: &SelectorSpec) -> Result<Selector, Diagnostic> {
        let selector = self.selector(path, spec)?;
        let keys = || selector.requirements.iter().map(|r| &r.key);
        if keys().any(|k| k.source == Source::Reserved) || selector.mentions_namespace() {
            return Ok(selector);
        }
        let namespace_key = LabelKey::new(Source::K8s, NAMESPACE_KEY);
        Ok(match &self.scope {
            Scope::Namespace(_)
                if keys().any(|k| k.source != Source::Reserved && k.key.starts_with(NAMESPACE_LABELS_PREFIX)) =>
            {
                selector
            }
            Scope::Namespace(namespace) => selector.with(Requirement::equals(namespace_key, namespace)),
            Scope::Cluster => selector.with(Requirement::exists(namespace_key)),
        })
    }

    fn item(&mut self, path: &str, direction: Direction, deny: bool, view: &ItemView) -> Result<Item, Diagnostic> {
        for (field, set, why) in &view.unsupported {
            if *set {
                return Err(self.error(&format!("{path}.{field}"), format!("`{field}` {why}")));
            }
        }

        let (endpoints_field, endpoints) = view.endpoints;
        let (entities_field, entities) = view.entities;
        let (cidrs_field, cidrs) = view.cidrs;
        let (cidr_sets_field, cidr_sets) = view.cidr_sets;
        // Cilium's sanitize: one kind of L3 peer per item.
        let fqdns_given = view.fqdns.is_some_and(|v| v.as_sequence().is_none_or(|s| !s.is_empty()));
        let given: Vec<&str> = [
            (endpoints_field, endpoints.is_some_and(|v| !v.is_empty())),
            (entities_field, entities.is_some_and(|v| !v.is_empty())),
            (cidrs_field, cidrs.is_some_and(|v| !v.is_empty())),
            (cidr_sets_field, cidr_sets.is_some_and(|v| !v.is_empty())),
            ("toFQDNs", fqdns_given),
        ]
        .into_iter()
        .filter_map(|(field, set)| set.then_some(field))
        .collect();
        if let [first, second, ..] = given[..] {
            return Err(self.error(
                &format!("{path}.{second}"),
                format!("Cilium does not support combining `{first}` and `{second}` in one rule: write two rules"),
            ));
        }
        let has_ports = view.to_ports.is_some_and(|p| !p.is_empty());
        let no_peers =
            endpoints.is_none() && entities.is_none() && cidrs.is_none() && cidr_sets.is_none() && view.fqdns.is_none();
        let peers = if no_peers {
            if has_ports { Peers::Wildcard } else { Peers::List(Vec::new()) }
        } else {
            let mut peers = Vec::new();
            for (j, spec) in endpoints.iter().copied().flatten().enumerate() {
                peers.push(Peer::Selector(self.peer_selector(&format!("{path}.{endpoints_field}[{j}]"), spec)?));
            }
            for (j, name) in entities.iter().copied().flatten().enumerate() {
                let entity =
                    Entity::parse(name).map_err(|m| self.error(&format!("{path}.{entities_field}[{j}]"), m))?;
                peers.push(Peer::Entity(entity));
            }
            for (j, text) in cidrs.iter().copied().flatten().enumerate() {
                peers.push(self.cidr_peer(&format!("{path}.{cidrs_field}[{j}]"), text, None)?);
            }
            for (j, set) in cidr_sets.iter().copied().flatten().enumerate() {
                let set_path = format!("{path}.{cidr_sets_field}[{j}]");
                for (field, given) in [
                    ("cidrGroupRef", set.cidr_group_ref.is_some()),
                    ("cidrGroupSelector", set.cidr_group_selector.is_some()),
                ] {
                    if given {
                        return Err(self.error(
                            &format!("{set_path}.{field}"),
                            format!("`{field}` (CiliumCIDRGroup) is not supported by the lab"),
                        ));
                    }
                }
                let Some(text) = &set.cidr else {
                    return Err(self.error(&set_path, "a CIDR set entry needs a `cidr`"));
                };
                let except = set.except.as_deref().unwrap_or_default();
                peers.push(self.cidr_peer(&set_path, text, Some(except))?);
            }
            if view.fqdns.is_some() {
                if deny {
                    return Err(self.error(&format!("{path}.toFQDNs"), "`toFQDNs` is not allowed in a deny rule"));
                }
                self.warn(
                    &format!("{path}.toFQDNs"),
                    "`toFQDNs` is not supported by the lab (no DNS proxy): it selects no identity, so it allows nothing",
                );
                peers.push(Peer::Nothing);
            }
            // Cilium: an empty list in any peer field selects nothing, whatever the others say.
            let empty = endpoints.is_some_and(Vec::is_empty)
                || entities.is_some_and(Vec::is_empty)
                || cidrs.is_some_and(Vec::is_empty)
                || cidr_sets.is_some_and(Vec::is_empty);
            Peers::List(if empty { Vec::new() } else { peers })
        };

        let ports = if has_ports {
            let mut ports = Vec::new();
            for (k, rule) in view.to_ports.into_iter().flatten().enumerate() {
                let rule_path = format!("{path}.toPorts[{k}]");
                ports.extend(self.port_rule(&rule_path, deny, rule)?);
            }
            if ports.is_empty() {
                self.warn(&format!("{path}.toPorts"), "`toPorts` lists no ports, so this rule matches no traffic");
            }
            Some(ports)
        } else {
            None
        };

        Ok(Item { rule: 0, direction, deny, peers, ports })
    }

    /// A `fromCIDR` entry (`path` is the entry) or a `fromCIDRSet` entry (`path` is the set entry,
    /// its fields are `cidr` and `except`). An IPv6 CIDR selects nothing; an `except` that is not
    /// inside the `cidr` is ignored; both with a warning.
    fn cidr_peer(&mut self, path: &str, text: &str, except: Option<&[String]>) -> Result<Peer, Diagnostic> {
        let cidr_field = if except.is_some() { format!("{path}.cidr") } else { path.to_string() };
        let cidr = match cidr::parse(text, true).map_err(|m| self.error(&cidr_field, m))? {
            cidr::Parsed::V4(net) => net,
            cidr::Parsed::V6 => {
                self.warn(
                    &cidr_field,
                    format!("`{text}` is an IPv6 CIDR and the lab is IPv4 only: it matches nothing"),
                );
                return Ok(Peer::Nothing);
            }
        };
        let mut kept = Vec::new();
        for (k, text) in except.unwrap_or_default().iter().enumerate() {
            let field = format!("{path}.except[{k}]");
            match cidr::parse(text, true).map_err(|m| self.error(&field, m))? {
                cidr::Parsed::V4(net) if cidr.contains(&net) => kept.push(net),
                _ => {
                    self.warn(&field, format!("`{text}` is not inside `{cidr}`, so it excepts nothing and is ignored"))
                }
            }
        }
        Ok(Peer::Cidr(CidrPeer { cidr, except: kept, field: path.to_string() }))
    }

    fn port_rule(&mut self, path: &str, deny: bool, rule: &PortRuleSpec) -> Result<Vec<PortRule>, Diagnostic> {
        let l7 = [
            ("rules", rule.rules.is_some()),
            ("terminatingTLS", rule.terminating_tls.is_some()),
            ("originatingTLS", rule.originating_tls.is_some()),
            ("serverNames", rule.server_names.is_some()),
            ("listener", rule.listener.is_some()),
        ];
        for (field, set) in l7 {
            if !set {
                continue;
            }
            if deny {
                return Err(self.error(&format!("{path}.{field}"), format!("`{field}` is not allowed in a deny rule")));
            }
            if field != "rules" {
                return Err(self.error(&format!("{path}.{field}"), format!("`{field}` is not supported by the lab")));
            }
            self.warn(
                &format!("{path}.rules"),
                "L7 rules are not enforced by the lab (no proxy): the ports are allowed at L4 and nothing is filtered at L7",
            );
        }
        let mut ports = Vec::new();
        for (p, port) in rule.ports.iter().flatten().enumerate() {
            ports.push(self.port(&format!("{path}.ports[{p}]"), port)?);
        }
        Ok(ports)
    }

    fn port(&self, path: &str, spec: &PortProtocolSpec) -> Result<PortRule, Diagnostic> {
        let protocol =
            ProtocolSpec::parse(spec.protocol.as_deref()).map_err(|m| self.error(&format!("{path}.protocol"), m))?;
        let port_field = format!("{path}.port");
        let number =
            |n: i64| u16::try_from(n).map_err(|_| self.error(&port_field, format!("port {n} is out of range 0-65535")));
        let port = match &spec.port {
            None => PortSpec::Any,
            Some(PortValue::Number(n)) => match number(*n)? {
                0 => PortSpec::Any,
                n => PortSpec::Range(n, n),
            },
            Some(PortValue::Text(text)) if text.is_empty() => PortSpec::Any,
            Some(PortValue::Text(text)) if text.bytes().all(|b| b.is_ascii_digit()) => {
                let n = text.parse::<i64>().unwrap_or(i64::MAX);
                match number(n)? {
                    0 => PortSpec::Any,
                    n => PortSpec::Range(n, n),
                }
            }
            Some(PortValue::Text(text)) if is_port_name(text) => PortSpec::Named(text.clone()),
            Some(PortValue::Text(text)) => {
                return Err(self.error(
                    &port_field,
                    format!("`{text}` is neither a port number nor a port name (lower-case letters, digits, `-`, at most 15)"),
                ));
            }
        };
        let end_field = format!("{path}.endPort");
        let port = match (spec.end_port.unwrap_or(0), port) {
            (0, port) => port,
            (end, _) if !(0..=65535).contains(&end) => {
                return Err(self.error(&end_field, format!("endPort {end} is out of range 0-65535")));
            }
            (_, PortSpec::Any) => return Err(self.error(&end_field, "`endPort` needs a `port` to start from")),
            (_, PortSpec::Named(name)) => {
                return Err(self.error(&end_field, format!("`endPort` needs a numeric port, not the name `{name}`")));
            }
            (end, PortSpec::Range(start, _)) if end < i64::from(start) => {
                return Err(self.error(&end_field, format!("endPort {end} is below port {start}")));
            }
            (end, PortSpec::Range(start, _)) => PortSpec::Range(start, end as u16),
        };
        Ok(PortRule { protocol, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through_text(value: &Value) -> Result<RuleSpec, serde_yaml::Error> {
        serde_yaml::from_str(&serde_yaml::to_string(value).unwrap())
    }

    #[test]
    fn rules_read_from_the_tree_are_those_read_through_text() {
        let same = [
            "endpointSelector: {}",
            "{endpointSelector: {matchLabels: {app: web, 'k8s:tier': ''}}, enableDefaultDeny: {ingress: false}}",
            "endpointSelector: {matchExpressions: [{key: app, operator: NotIn, values: ['80', 'true', 'null']}]}
ingress:
  - fromEndpoints: [{}, {matchLabels: {'io.cilium.k8s.namespace.labels.team': red}}]
    toPorts: [{ports: [{port: 80}, {port: '8080', protocol: TCP}, {port: http, endPort: 90}, {port: -1}]}]
  - fromEntities: [world, cluster]
    fromCIDR: [10.0.0.0/8]
    fromCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.1/32]}]
    toPorts: [{ports: [{port: 53, protocol: ANY}], rules: {dns: [{matchPattern: '*'}]}}]
egressDeny:
  - toFQDNs: [{matchName: example.com}]
    toPorts: ~
labels: [{key: a, value: b}]
description: 42",
        ];
        for yaml in same {
            let value: Value = serde_yaml::from_str(yaml).unwrap();
            let direct: RuleSpec = deserialize_untagged(&value).expect(yaml);
            assert_eq!(format!("{direct:?}"), format!("{:?}", through_text(&value).unwrap()), "{yaml}");
        }
        // Read differently from a tree (a number or a tag where text is wanted), or an error there
        // too: left to the text, whose answer stands.
        let through = [
            ("endpointSelector: {matchLabels: {app: 80}}", true),
            ("endpointSelector: {matchLabels: {app: true}}", true),
            ("{endpointSelector: {}, ingress: [{fromEntities: [!custom world]}]}", true),
            ("{endpointSelector: {}, description: !note x}", true),
            ("{endpointSelector: {}, ingres: []}", false),
            ("{endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: 1.5}]}]}]}", false),
        ];
        for (yaml, valid) in through {
            let value: Value = serde_yaml::from_str(yaml).unwrap();
            assert!(deserialize_untagged::<RuleSpec>(&value).is_none(), "{yaml}");
            assert_eq!(through_text(&value).is_ok(), valid, "{yaml}");
        }
    }
}
