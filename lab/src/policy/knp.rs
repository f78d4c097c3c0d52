//! NetworkPolicy (`networking.k8s.io/v1`): checked as the apiserver validates it, defaulted as
//! the apiserver defaults it, and translated into [`Rule`]s as Cilium's pkg/k8s/network_policy.go
//! does (docs/policy-semantics.md lists every field).
//!
//! - The subject is `podSelector` in the policy's namespace.
//! - A peer is `podSelector` alone (pods of the policy's namespace), `namespaceSelector` alone
//!   (keys re-prefixed `io.cilium.k8s.namespace.labels.`; `{}` is every namespace, i.e.
//!   `io.kubernetes.pod.namespace` exists), both (AND), or `ipBlock` (a CIDR peer).
//! - An empty or missing `from`/`to` is the wildcard (any identity, world included); empty or
//!   missing `ports` is every protocol and port. A port's protocol defaults to TCP, a missing
//!   `port` is every port of it, `endPort` makes a range, a name resolves per endpoint.
//! - Omitted `policyTypes` is `[Ingress]`, plus `Egress` if there are egress rules. Every item is an
//!   allow; a direction in `policyTypes` is default deny. Cilium 1.18 also translates (and puts in
//!   default deny) a direction that has rules but is not in `policyTypes` (cilium/cilium#48703);
//!   the rule records it in [`Rule::outside_policy_types`] so that compilation with Kubernetes
//!   semantics can skip it.

use serde::Deserialize;

use crate::topology::PolicySemantics;
use crate::topology::load::Diagnostic;
use crate::topology::resources::Resource;

use super::cidr::{self, CidrPeer};
use super::cnp::{NAMESPACE_LABELS_PREFIX, PortValue, deserialize_untagged, serde_field};
use super::ports::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, PortSpec, ProtocolSpec, is_port_name};
use super::rule::{Direction, Item, Peer, Peers, PortRule, Rule, RuleInfo};
use super::selector::{LabelKey, NAMESPACE_KEY, Requirement, Selector, SelectorSpec, Source};

pub(super) const KIND: &str = "NetworkPolicy";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NetworkPolicySpec {
    pod_selector: Option<SelectorSpec>,
    ingress: Option<Vec<IngressRuleSpec>>,
    egress: Option<Vec<EgressRuleSpec>>,
    policy_types: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngressRuleSpec {
    from: Option<Vec<PeerSpec>>,
    ports: Option<Vec<PortSpecK8s>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressRuleSpec {
    to: Option<Vec<PeerSpec>>,
    ports: Option<Vec<PortSpecK8s>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PeerSpec {
    pod_selector: Option<SelectorSpec>,
    namespace_selector: Option<SelectorSpec>,
    ip_block: Option<IpBlockSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IpBlockSpec {
    cidr: String,
    except: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortSpecK8s {
    protocol: Option<String>,
    port: Option<PortValue>,
    end_port: Option<i64>,
}

/// Translates one NetworkPolicy. Rule items are numbered from `infos.len() + 1`; on success its
/// rule and infos are appended. Errors are returned; warnings pushed, those that depend on the
/// semantics with the semantics they apply to.
pub(crate) fn translate(
    resource: &Resource,
    rules: &mut Vec<Rule>,
    infos: &mut Vec<RuleInfo>,
    warnings: &mut Vec<Diagnostic>,
    semantic_warnings: &mut Vec<(PolicySemantics, Diagnostic)>,
) -> Result<(), Vec<Diagnostic>> {
    let namespace = resource.namespace.clone().unwrap_or_else(|| "default".to_string());
    let mut cx = Context {
        resource,
        namespace,
        infos: Vec::new(),
        first: infos.len() as u32 + 1,
        warnings: Vec::new(),
        semantic_warnings: Vec::new(),
    };
    let rule = cx.rule().map_err(|e| vec![e])?;
    rules.push(rule);
    infos.extend(cx.infos);
    warnings.extend(cx.warnings);
    semantic_warnings.extend(cx.semantic_warnings);
    Ok(())
}

struct Context<'a> {
    resource: &'a Resource,
    namespace: String,
    infos: Vec<RuleInfo>,
    first: u32,
    warnings: Vec<Diagnostic>,
    semantic_warnings: Vec<(PolicySemantics, Diagnostic)>,
}

/// One rule of a section: its peers (`from`/`to`) and `ports`.
type RuleView<'a> = (Option<&'a Vec<PeerSpec>>, Option<&'a Vec<PortSpecK8s>>);

/// One direction's rules, whichever struct they came from.
struct Section<'a> {
    name: &'static str,
    direction: Direction,
    peers_field: &'static str,
    rules: Vec<RuleView<'a>>,
    listed: bool,
}

impl Context<'_> {
    fn error(&self, field: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.resource.file.clone(),
            location: self.resource.location,
            field: field.to_string(),
            message: format!("{}: {}", self.resource.display_name(), message.into()),
        }
    }

    fn warn(&mut self, field: &str, message: impl Into<String>) {
        let warning = self.error(field, message);
        self.warnings.push(warning);
    }

    fn rule(&mut self) -> Result<Rule, Diagnostic> {
        let object = self.resource.object.as_mapping();
        let Some(value) = object.and_then(|o| o.get("spec")).filter(|v| !v.is_null()) else {
            return Err(self.error("spec", "a NetworkPolicy needs a `spec` with a `podSelector`"));
        };
        let spec: NetworkPolicySpec = match deserialize_untagged(value) {
            Some(spec) => spec,
            None => {
                let text = serde_yaml::to_string(value).map_err(|e| self.error("spec", e.to_string()))?;
                serde_yaml::from_str(&text).map_err(|e| {
                    let (field, message) = serde_field("spec", &e);
                    self.error(&field, message)
                })?
            }
        };

        let Some(pod_selector) = &spec.pod_selector else {
            return Err(
                self.error("spec.podSelector", "`podSelector` is required (`{}` selects every pod of the namespace)")
            );
        };
        let subject = self.subject(pod_selector)?;

        // The apiserver's defaulting (pkg/apis/networking/v1/defaults.go).
        let mut types = [false; 2];
        match spec.policy_types.as_deref() {
            None | Some([]) => {
                types[0] = true;
                types[1] = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            }
            Some(listed) => {
                for (i, name) in listed.iter().enumerate() {
                    match name.as_str() {
                        "Ingress" => types[0] = true,
                        "Egress" => types[1] = true,
                        other => {
                            return Err(self.error(
                                &format!("spec.policyTypes[{i}]"),
                                format!("unknown policy type `{other}`, expected Ingress or Egress"),
                            ));
                        }
                    }
                }
            }
        }

        let sections = [
            Section {
                name: "ingress",
                direction: Direction::Ingress,
                peers_field: "from",
                rules: spec.ingress.iter().flatten().map(|r| (r.from.as_ref(), r.ports.as_ref())).collect(),
                listed: types[0],
            },
            Section {
                name: "egress",
                direction: Direction::Egress,
                peers_field: "to",
                rules: spec.egress.iter().flatten().map(|r| (r.to.as_ref(), r.ports.as_ref())).collect(),
                listed: types[1],
            },
        ];

        let mut items = Vec::new();
        let mut outside_policy_types = Vec::new();
        let mut default_deny = [false; 2];
        for (d, section) in sections.iter().enumerate() {
            // Cilium: a direction with rules, or listed in policyTypes, is default deny.
            default_deny[d] = section.listed || !section.rules.is_empty();
            if !section.listed && !section.rules.is_empty() {
                outside_policy_types.push(section.direction);
                self.outside_policy_types(section);
            }
            for (i, (peers, ports)) in section.rules.iter().enumerate() {
                let path = format!("spec.{}[{i}]", section.name);
                let peers = self.peers(&format!("{path}.{}", section.peers_field), *peers)?;
                let ports = self.ports(&format!("{path}.ports"), *ports)?;
                let rule = self.first + self.infos.len() as u32;
                self.infos.push(RuleInfo {
                    kind: self.resource.kind.clone(),
                    namespace: Some(self.namespace.clone()),
                    name: self.resource.name.clone(),
                    spec: None,
                    path,
                    direction: section.direction,
                    deny: false,
                    file: self.resource.file.clone(),
                    location: self.resource.location,
                });
                items.push(Item { rule, direction: section.direction, deny: false, peers, ports });
            }
        }
        Ok(Rule {
            hosts: false,
            subject,
            default_deny_ingress: default_deny[0],
            default_deny_egress: default_deny[1],
            items,
            outside_policy_types,
        })
    }

    /// The warnings for a section outside `policyTypes`, one per semantics.
    fn outside_policy_types(&mut self, section: &Section) {
        let field = format!("spec.{}", section.name);
        let kind = if section.direction == Direction::Ingress { "Ingress" } else { "Egress" };
        let cilium = self.error(
            &field,
            format!(
                "`{}` rules while `policyTypes` lacks {kind}: Kubernetes ignores them, Cilium 1.18 enforces them \
                 (default deny and their allows, cilium/cilium#48703), and so does the lab with policySemantics cilium",
                section.name
            ),
        );
        let kubernetes = self.error(
            &field,
            format!(
                "`{}` rules while `policyTypes` lacks {kind}: ignored, as Kubernetes specifies (policySemantics \
                 kubernetes); Cilium 1.18 would enforce them (cilium/cilium#48703)",
                section.name
            ),
        );
        self.semantic_warnings.push((PolicySemantics::Cilium, cilium));
        self.semantic_warnings.push((PolicySemantics::Kubernetes, kubernetes));
    }

    fn k8s_selector(&self, path: &str, spec: &SelectorSpec, prefix: &str) -> Result<Selector, Diagnostic> {
        spec.to_k8s_selector(prefix).map_err(|(field, message)| self.error(&format!("{path}.{field}"), message))
    }

    /// `podSelector` in the policy's namespace; a namespace the selector names itself is
    /// overwritten, as Cilium's parsePodSelector does.
    fn subject(&self, spec: &SelectorSpec) -> Result<Selector, Diagnostic> {
        let mut spec = spec.clone();
        if let Some(labels) = spec.match_labels.as_mut() {
            labels.remove(NAMESPACE_KEY);
        }
        let selector = self.k8s_selector("spec.podSelector", &spec, "")?;
        Ok(selector.with(Requirement::equals(LabelKey::new(Source::K8s, NAMESPACE_KEY), &self.namespace)))
    }

    /// `from`/`to`: missing or empty is the wildcard.
    fn peers(&mut self, path: &str, peers: Option<&Vec<PeerSpec>>) -> Result<Peers, Diagnostic> {
        let Some(peers) = peers.filter(|p| !p.is_empty()) else {
            return Ok(Peers::Wildcard);
        };
        let mut list = Vec::new();
        for (j, peer) in peers.iter().enumerate() {
            list.push(self.peer(&format!("{path}[{j}]"), peer)?);
        }
        Ok(Peers::List(list))
    }

    fn peer(&mut self, path: &str, spec: &PeerSpec) -> Result<Peer, Diagnostic> {
        let selectors = spec.pod_selector.is_some() || spec.namespace_selector.is_some();
        match (&spec.ip_block, selectors) {
            (Some(_), true) => Err(self.error(
                path,
                "a peer may have `ipBlock` or `podSelector`/`namespaceSelector`, not both (the apiserver refuses it)",
            )),
            (None, false) => Err(self.error(path, "a peer needs `podSelector`, `namespaceSelector` or `ipBlock`")),
            (Some(block), false) => self.ip_block(&format!("{path}.ipBlock"), block),
            (None, true) => {
                let namespace_key = LabelKey::new(Source::K8s, NAMESPACE_KEY);
                let mut selector = match &spec.namespace_selector {
                    // Pods of the policy's namespace.
                    None => Selector::default().with(Requirement::equals(namespace_key, &self.namespace)),
                    Some(ns) => {
                        let ns =
                            self.k8s_selector(&format!("{path}.namespaceSelector"), ns, NAMESPACE_LABELS_PREFIX)?;
                        // `{}` is every namespace; a non-empty one still selects pods only (Cilium
                        // adds the cluster label, to the same effect: NotIn and DoesNotExist never
                        // match reserved or CIDR identities).
                        ns.with(Requirement::exists(namespace_key))
                    }
                };
                if let Some(pods) = &spec.pod_selector {
                    let pods = self.k8s_selector(&format!("{path}.podSelector"), pods, "")?;
                    selector.requirements.extend(pods.requirements);
                }
                Ok(Peer::Selector(selector))
            }
        }
    }

    /// `ipBlock`, as the apiserver validates it: a CIDR (not a bare address), every `except` a
    /// CIDR strictly inside it. IPv6 blocks match nothing in the IPv4-only lab (a warning).
    fn ip_block(&mut self, path: &str, block: &IpBlockSpec) -> Result<Peer, Diagnostic> {
        let cidr_field = format!("{path}.cidr");
        let cidr = match cidr::parse(&block.cidr, false).map_err(|m| self.error(&cidr_field, m))? {
            cidr::Parsed::V4(net) => Some(net),
            cidr::Parsed::V6 => None,
        };
        let mut except = Vec::new();
        for (k, text) in block.except.iter().flatten().enumerate() {
            let field = format!("{path}.except[{k}]");
            let parsed = cidr::parse(text, false).map_err(|m| self.error(&field, m))?;
            match (cidr, parsed) {
                (Some(cidr), cidr::Parsed::V4(net)) if cidr.contains(&net) && net.prefix_len() > cidr.prefix_len() => {
                    except.push(net);
                }
                (None, cidr::Parsed::V6) => {}
                _ => {
                    return Err(
                        self.error(&field, format!("`{text}` must be a strict subset of `cidr` {}", block.cidr))
                    );
                }
            }
        }
        let Some(cidr) = cidr else {
            self.warn(
                &cidr_field,
                format!("`{}` is an IPv6 block and the lab is IPv4 only: it matches nothing", block.cidr),
            );
            return Ok(Peer::Nothing);
        };
        Ok(Peer::Cidr(CidrPeer { cidr, except, field: path.to_string() }))
    }

    /// `ports`: missing or empty is every protocol and port.
    fn ports(&self, path: &str, ports: Option<&Vec<PortSpecK8s>>) -> Result<Option<Vec<PortRule>>, Diagnostic> {
        let Some(ports) = ports.filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let mut rules = Vec::new();
        for (k, port) in ports.iter().enumerate() {
            rules.push(self.port(&format!("{path}[{k}]"), port)?);
        }
        Ok(Some(rules))
    }

    fn port(&self, path: &str, spec: &PortSpecK8s) -> Result<PortRule, Diagnostic> {
        let protocol = match spec.protocol.as_deref() {
            None => IPPROTO_TCP,
            Some("TCP") => IPPROTO_TCP,
            Some("UDP") => IPPROTO_UDP,
            Some("SCTP") => IPPROTO_SCTP,
            Some(other) => {
                let hint = match ProtocolSpec::parse(Some(other)) {
                    Err(message) if message.contains("upper case") => message,
                    _ => format!("unknown protocol `{other}`, expected TCP, UDP or SCTP"),
                };
                return Err(self.error(&format!("{path}.protocol"), hint));
            }
        };
        let port_field = format!("{path}.port");
        let port = match &spec.port {
            None => PortSpec::Any,
            Some(PortValue::Number(n)) if (1..=65535).contains(n) => PortSpec::Range(*n as u16, *n as u16),
            Some(PortValue::Number(n)) => {
                return Err(self.error(&port_field, format!("port {n} is out of range 1-65535")));
            }
            Some(PortValue::Text(text)) if is_port_name(text) => PortSpec::Named(text.clone()),
            Some(PortValue::Text(text)) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(self.error(
                    &port_field,
                    format!("`\"{text}\"` is a string, so a port name, and not a valid one: write the number unquoted"),
                ));
            }
            Some(PortValue::Text(text)) => {
                return Err(self.error(
                    &port_field,
                    format!("`{text}` is neither a port number nor a port name (lower-case letters, digits, `-`, at most 15)"),
                ));
            }
        };
        let port = match (spec.end_port, port) {
            (None, port) => port,
            (Some(end), PortSpec::Range(start, _)) if (i64::from(start)..=65535).contains(&end) => {
                PortSpec::Range(start, end as u16)
            }
            (Some(end), PortSpec::Range(start, _)) => {
                return Err(self.error(
                    &format!("{path}.endPort"),
                    format!("endPort {end} must be between port {start} and 65535"),
                ));
            }
            (Some(_), _) => {
                return Err(self.error(&format!("{path}.endPort"), "`endPort` needs a numeric `port` to start from"));
            }
        };
        Ok(PortRule { protocol: ProtocolSpec::One(protocol), port })
    }
}
