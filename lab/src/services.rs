//! Services: `v1` Service and `discovery.k8s.io/v1` EndpointSlice objects (read with
//! k8s-openapi's types) → frontends and their backends, as kube-proxy or Cilium's service cache
//! would see them. Pure: the datapath's maps are written from the result (`datapath::maps`).
//!
//! - A Service's ClusterIP is `spec.clusterIP`, or one allocated from `cluster.serviceCIDR`,
//!   derived from its namespace and name (so it is the same in every run), as the apiserver would
//!   allocate one. `None` (headless) has no frontend.
//! - Backends come from the EndpointSlices labelled `kubernetes.io/service-name` with the
//!   Service's name in its namespace; a Service with a selector and no slice gets them from the
//!   pods it selects, as the endpoint controller would (every pod is ready). A `targetPort` by
//!   name resolves per pod, against the pod's named ports.
//! - An endpoint that is ready serves new connections; one that is terminating but still
//!   serving keeps its established connections only (Cilium's terminating backends); any other
//!   is no backend.
//! - `sessionAffinity: ClientIP` keeps a client on its backend for
//!   `sessionAffinityConfig.clientIP.timeoutSeconds` (10,800 s by default).
//!
//! - NodePort and LoadBalancer Services are also served on every node's address at their
//!   `nodePort` (given, or derived from the namespace, name and port within 30000-32767), with
//!   `externalTrafficPolicy` Cluster or Local.
//! - A LoadBalancer Service's given addresses (`spec.loadBalancerIP`,
//!   `status.loadBalancer.ingress[].ip`; the lab runs no LB IPAM) and any Service's
//!   `spec.externalIPs` are frontends of their own, served to the outside by the node the fabric
//!   routes them to ([`Services::announcements`]) and to pods like the ClusterIP.
//! - `internalTrafficPolicy: Local`: pods reach the node's own backends only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;

use crate::plan::{Plan, PodPlan, stable_hash};
use crate::topology::Protocol;
use crate::topology::load::Diagnostic;
use crate::topology::resources::Resource;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kubernetes' default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// Every service of a lab, in namespace/name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Services {
    pub services: Vec<Service>,
    /// What the lab accepted but does not do yet.
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    /// `sessionAffinity: ClientIP`, with its timeout in seconds.
    pub affinity_seconds: Option<u32>,
    /// `externalTrafficPolicy: Local`: a node serves its NodePorts, LoadBalancer addresses and
    /// external IPs to the outside with its own backends only, and the client's address reaches
    /// them.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: pods reach the backends on their own node only.
    pub internal_local: bool,
    /// One frontend per port, in the Service's order.
    pub frontends: Vec<Frontend>,
}

impl Service {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One port of a service at one of its addresses, and its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    pub name: Option<String>,
    pub kind: FrontendKind,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    /// The port every node serves this frontend on too (NodePort and LoadBalancer Services).
    pub node_port: Option<u16>,
    /// Active backends first, in address order, then terminating ones.
    pub backends: Vec<Backend>,
}

/// Which of a Service's addresses a frontend is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    /// Reached by pods only.
    ClusterIp,
    /// A LoadBalancer address: reached by pods and, through the node announcing it, the outside.
    LoadBalancer,
    /// One of `spec.externalIPs`: as a LoadBalancer address.
    ExternalIp,
}

impl FrontendKind {
    /// Whether the outside reaches it through a node's uplink (as well as pods).
    pub fn is_external(self) -> bool {
        self != FrontendKind::ClusterIp
    }
}

impl std::fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
            FrontendKind::ExternalIp => "externalIP",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub address: Ipv4Addr,
    pub port: u16,
    pub state: BackendState,
}

/// Ordered so that active backends sort first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendState {
    /// Ready: new connections may pick it.
    Active,
    /// Terminating but serving: keeps its established connections, gets no new ones.
    Terminating,
}

impl Services {
    /// The services among `resources` for the lab `plan`; an invalid Service or EndpointSlice is
    /// an error naming its file, location and field.
    pub fn resolve(plan: &Plan, resources: &[Resource]) -> Result<Services, Vec<Diagnostic>> {
        let service_cidr = plan.service_cidr;
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut parsed: Vec<(&Resource, K8sService)> = Vec::new();
        let mut slices: Vec<(&Resource, EndpointSlice)> = Vec::new();
        for resource in resources {
            match (resource.api_version.as_str(), resource.kind.as_str()) {
                ("v1", "Service") => match object::<K8sService>(resource) {
                    Ok(service) => parsed.push((resource, service)),
                    Err(e) => errors.push(e),
                },
                ("discovery.k8s.io/v1", "EndpointSlice") => match object::<EndpointSlice>(resource) {
                    Ok(slice) => slices.push((resource, slice)),
                    Err(e) => errors.push(e),
                },
                _ => {}
            }
        }
        parsed.sort_by(|(a, _), (b, _)| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        let mut addresses = Addresses::new(service_cidr);
        // Given nodePorts are taken before any is allocated, as ClusterIPs are; each may be
        // claimed once.
        let mut node_ports: BTreeSet<u16> = parsed
            .iter()
            .flat_map(|(_, s)| s.spec.iter().flat_map(|spec| spec.ports.iter().flatten()))
            .filter_map(|p| p.node_port.and_then(|n| u16::try_from(n).ok()))
            .collect();
        let mut claimed: BTreeSet<u16> = BTreeSet::new();
        // A LoadBalancer address or external IP may be shared by Services on different ports.
        let mut claimed_frontends: BTreeMap<(Ipv4Addr, u16, Protocol), String> = BTreeMap::new();
        // Given addresses are taken before any is allocated, whatever the order.
        for (resource, service) in &parsed {
            let spec = service.spec.as_ref();
            match spec.and_then(|s| s.cluster_ip.as_deref()) {
                None | Some("") | Some("None") => {}
                Some(text) => {
                    if let Err(message) = addresses.take(text) {
                        errors.push(diagnostic(resource, "spec.clusterIP", message));
                    }
                }
            }
        }

        let mut services = Vec::new();
        for (resource, service) in &parsed {
            let spec = service.spec.clone().unwrap_or_default();
            let namespace = resource.namespace.clone().unwrap_or_default();
            let cluster_ip = match spec.cluster_ip.as_deref() {
                Some("None") => continue,
                None | Some("") => match addresses.allocate(&format!("{namespace}/{}", resource.name)) {
                    Some(ip) => ip,
                    None => {
                        errors.push(diagnostic(
                            resource,
                            "spec.clusterIP",
                            format!("serviceCIDR `{service_cidr}` is full"),
                        ));
                        continue;
                    }
                },
                Some(text) => match text.parse() {
                    Ok(ip) => ip,
                    Err(_) => continue,
                },
            };
            let mut traffic_policy = |field: &str, value: Option<&str>| match value {
                None | Some("Cluster") => Some(false),
                Some("Local") => Some(true),
                Some(other) => {
                    errors.push(diagnostic(
                        resource,
                        field,
                        format!("`{other}` is not a traffic policy; use `Cluster` or `Local`"),
                    ));
                    None
                }
            };
            let external_local = traffic_policy("spec.externalTrafficPolicy", spec.external_traffic_policy.as_deref());
            let internal_local = traffic_policy("spec.internalTrafficPolicy", spec.internal_traffic_policy.as_deref());
            let (Some(external_local), Some(internal_local)) = (external_local, internal_local) else {
                continue;
            };
            let mut external_addresses: Vec<(FrontendKind, Ipv4Addr)> = Vec::new();
            let mut given = |kind: FrontendKind, field: String, text: &str| match outside_address(plan, text) {
                Ok(ip) if !external_addresses.iter().any(|(_, known)| *known == ip) => {
                    external_addresses.push((kind, ip))
                }
                Ok(_) => {}
                Err(message) => errors.push(diagnostic(resource, &field, message)),
            };
            if spec.type_.as_deref() == Some("LoadBalancer") {
                if let Some(ip) = spec.load_balancer_ip.as_deref().filter(|ip| !ip.is_empty()) {
                    given(FrontendKind::LoadBalancer, "spec.loadBalancerIP".to_string(), ip);
                }
                let ingress =
                    service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
                for (i, entry) in ingress.into_iter().flatten().enumerate() {
                    if let Some(ip) = entry.ip.as_deref() {
                        given(FrontendKind::LoadBalancer, format!("status.loadBalancer.ingress[{i}].ip"), ip);
                    }
                }
            }
            for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
                given(FrontendKind::ExternalIp, format!("spec.externalIPs[{i}]"), ip);
            }
            if spec.type_.as_deref() == Some("LoadBalancer")
                && !external_addresses.iter().any(|(kind, _)| *kind == FrontendKind::LoadBalancer)
            {
                warnings.push(diagnostic(
                    resource,
                    "spec.loadBalancerIP",
                    "no address given, so it is served at its NodePorts only: the lab allocates no LoadBalancer \
                     addresses; give one in `spec.loadBalancerIP` or `status.loadBalancer.ingress[].ip`",
                ));
            }
            let with_node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
            if let Some(t) = spec.type_.as_deref()
                && !["ClusterIP", "NodePort", "LoadBalancer"].contains(&t)
            {
                errors.push(diagnostic(resource, "spec.type", format!("unknown Service type `{t}`")));
                continue;
            }
            let affinity_seconds = match spec.session_affinity.as_deref() {
                None | Some("None") => None,
                Some("ClientIP") => Some(
                    spec.session_affinity_config
                        .as_ref()
                        .and_then(|c| c.client_ip.as_ref())
                        .and_then(|c| c.timeout_seconds)
                        .map_or(DEFAULT_AFFINITY_SECONDS, |s| s.clamp(1, 86_400) as u32),
                ),
                Some(other) => {
                    errors.push(diagnostic(
                        resource,
                        "spec.sessionAffinity",
                        format!("`{other}` is not a session affinity; use `None` or `ClientIP`"),
                    ));
                    continue;
                }
            };
            let own_slices: Vec<&EndpointSlice> = slices
                .iter()
                .filter(|(r, slice)| {
                    r.namespace == resource.namespace
                        && slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL))
                            == Some(&resource.name)
                })
                .map(|(_, slice)| slice)
                .collect();
            let mut frontends = Vec::new();
            let mut outside = Vec::new();
            for (i, port) in spec.ports.iter().flatten().enumerate() {
                let field = format!("spec.ports[{i}]");
                let protocol = match port.protocol.as_deref() {
                    None | Some("TCP") => Protocol::Tcp,
                    Some("UDP") => Protocol::Udp,
                    Some(other) => {
                        errors.push(diagnostic(
                            resource,
                            &format!("{field}.protocol"),
                            format!("protocol `{other}` is not served by the lab; use TCP or UDP"),
                        ));
                        continue;
                    }
                };
                let Ok(number) =
                    u16::try_from(port.port).map_err(|_| ()).and_then(|p| if p == 0 { Err(()) } else { Ok(p) })
                else {
                    errors.push(diagnostic(resource, &format!("{field}.port"), format!("{} is not a port", port.port)));
                    continue;
                };
                let node_port = match (with_node_ports, port.node_port) {
                    (false, _) => None,
                    (true, Some(given)) => match u16::try_from(given).ok().filter(|p| NODE_PORTS.contains(p)) {
                        Some(given) if claimed.insert(given) => Some(given),
                        Some(_) => {
                            errors.push(diagnostic(
                                resource,
                                &format!("{field}.nodePort"),
                                format!("{given} is the nodePort of another Service port"),
                            ));
                            continue;
                        }
                        None => {
                            errors.push(diagnostic(
                                resource,
                                &format!("{field}.nodePort"),
                                format!("{given} is outside the NodePort range 30000-32767"),
                            ));
                            continue;
                        }
                    },
                    (true, None) => {
                        Some(allocate_node_port(&mut node_ports, &format!("{namespace}/{}/{i}", resource.name)))
                    }
                };
                let target = port.target_port.clone().unwrap_or(IntOrString::Int(port.port));
                let mut backends: BTreeSet<Backend> = if own_slices.is_empty() {
                    match &spec.selector {
                        Some(selector) if !selector.is_empty() => plan
                            .pods
                            .iter()
                            .filter(|pod| pod.namespace == namespace && selects(selector, pod))
                            .filter_map(|pod| {
                                let port = target_port(&target, pod, protocol)?;
                                Some(Backend { address: pod.ip, port, state: BackendState::Active })
                            })
                            .collect(),
                        _ => BTreeSet::new(),
                    }
                } else {
                    own_slices.iter().flat_map(|slice| slice_backends(slice, port.name.as_deref(), protocol)).collect()
                };
                // An address both active and terminating in different slices counts as active.
                let active: BTreeSet<(Ipv4Addr, u16)> =
                    backends.iter().filter(|b| b.state == BackendState::Active).map(|b| (b.address, b.port)).collect();
                backends.retain(|b| b.state == BackendState::Active || !active.contains(&(b.address, b.port)));
                let mut backends: Vec<Backend> = backends.into_iter().collect();
                backends.sort_by_key(|b| (b.state, b.address, b.port));
                for (kind, address) in &external_addresses {
                    let frontend = (*address, number, protocol);
                    match claimed_frontends.get(&frontend) {
                        Some(owner) => errors.push(diagnostic(
                            resource,
                            &format!("{field}.port"),
                            format!("{address}:{number}/{protocol:?} is already a frontend of Service {owner}"),
                        )),
                        None => {
                            claimed_frontends.insert(frontend, format!("{namespace}/{}", resource.name));
                            outside.push(Frontend {
                                name: port.name.clone(),
                                kind: *kind,
                                address: *address,
                                port: number,
                                protocol,
                                node_port: None,
                                backends: backends.clone(),
                            });
                        }
                    }
                }
                frontends.push(Frontend {
                    name: port.name.clone(),
                    kind: FrontendKind::ClusterIp,
                    address: cluster_ip,
                    port: number,
                    protocol,
                    node_port,
                    backends,
                });
            }
            frontends.append(&mut outside);
            services.push(Service {
                namespace,
                name: resource.name.clone(),
                cluster_ip,
                affinity_seconds,
                external_local,
                internal_local,
                frontends,
            });
        }
        if errors.is_empty() { Ok(Services { services, warnings }) } else { Err(errors) }
    }

    /// Every frontend with its reverse NAT index (see [`stable_ids`]).
    pub fn frontends(&self) -> impl Iterator<Item = (u16, &Service, &Frontend)> {
        let all = self.services.iter().flat_map(|s| s.frontends.iter().map(move |f| (s, f)));
        let ids =
            stable_ids(all.clone().map(|(_, f)| (f.address, f.port, f.protocol)), u64::from(u16::MAX), "frontend");
        all.map(move |(s, f)| (ids[&(f.address, f.port, f.protocol)] as u16, s, f))
    }

    /// The node (index in the plan) each LoadBalancer address and external IP is routed to, as
    /// Cilium's L2 announcements or BGP would make the network do: the first node that may serve
    /// it, which with `externalTrafficPolicy: Local` is the first with an active backend (none:
    /// not announced, so unreachable from outside). Deterministic, so captures are too.
    pub fn announcements(&self, plan: &Plan) -> BTreeMap<Ipv4Addr, usize> {
        let mut announced = BTreeMap::new();
        for (_, service, frontend) in self.frontends().filter(|(_, _, f)| f.kind.is_external()) {
            let node = if service.external_local {
                let serving = |node: usize| {
                    frontend.backends.iter().any(|b| {
                        b.state == BackendState::Active && plan.pods.iter().any(|p| p.node == node && p.ip == b.address)
                    })
                };
                (0..plan.nodes.len()).find(|node| serving(*node))
            } else {
                (!plan.nodes.is_empty()).then_some(0)
            };
            if let Some(node) = node {
                let first = announced.entry(frontend.address).or_insert(node);
                *first = (*first).min(node);
            }
        }
        announced
    }

    /// Every distinct backend (address, port, protocol) with its id (see [`stable_ids`]).
    pub fn backend_ids(&self) -> BTreeMap<(Ipv4Addr, u16, Protocol), u32> {
        let all = self
            .services
            .iter()
            .flat_map(|s| &s.frontends)
            .flat_map(|f| f.backends.iter().map(move |b| (b.address, b.port, f.protocol)));
        stable_ids(all, u64::from(i32::MAX as u32), "backend").into_iter().map(|(k, id)| (k, id as u32)).collect()
    }
}

/// A LoadBalancer address or external IP: one that the fabric can route to a node, so none of
/// the lab's own ranges (its nodes', pods', Services' and externals' subnets).
fn outside_address(plan: &Plan, text: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = text.parse().map_err(|_| format!("`{text}` is not an IPv4 address"))?;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() || ip.is_link_local() {
        return Err(format!("`{ip}` cannot be routed to a node"));
    }
    let ranges = plan
        .nodes
        .iter()
        .flat_map(|n| [("the nodes' subnet", n.ip.trunc()), ("a pod CIDR", n.pod_cidr)])
        .chain(plan.externals.iter().map(|e| ("an external's subnet", e.address.trunc())))
        .chain([("serviceCIDR", plan.service_cidr)]);
    for (what, range) in ranges {
        if range.contains(&ip) {
            return Err(format!("`{ip}` is inside {what} `{range}`; give an address the lab does not use"));
        }
    }
    Ok(ip)
}

/// Numbers for frontends and backends that stay what they were while others come and go:
/// open connections keep theirs in conntrack (a backend id, a reverse NAT index), so renumbering
/// would hand them to another backend or translate their replies to another frontend. Each is
/// derived from the address, port and protocol (1..=`space`); on a collision the later key in
/// sorted order takes the next free number.
fn stable_ids(
    keys: impl Iterator<Item = (Ipv4Addr, u16, Protocol)>,
    space: u64,
    what: &str,
) -> BTreeMap<(Ipv4Addr, u16, Protocol), u64> {
    let keys: BTreeSet<(Ipv4Addr, u16, Protocol)> = keys.collect();
    let mut taken = BTreeSet::new();
    let mut ids = BTreeMap::new();
    for key in keys {
        let (address, port, protocol) = key;
        let start = stable_hash(&format!("{what}/{address}:{port}/{protocol:?}")) % space;
        let id = (0..space).map(|k| 1 + (start + k) % space).find(|id| !taken.contains(id)).expect("room");
        taken.insert(id);
        ids.insert(key, id);
    }
    ids
}

/// Reads a Kubernetes object into its k8s-openapi type; an error names the field.
fn object<T: DeserializeOwned>(resource: &Resource) -> Result<T, Diagnostic> {
    // Through text: serde_yaml names the field of an error only when it reads text.
    let text = serde_yaml::to_string(&resource.object).map_err(|e| diagnostic(resource, "", e.to_string()))?;
    serde_yaml::from_str(&text).map_err(|e| {
        let text = e.to_string();
        let (field, message) = match text.split_once(": ") {
            Some((field, message)) if !field.contains(' ') => (field.to_string(), message.to_string()),
            _ => (String::new(), text.clone()),
        };
        // The position is in the text made above, not in the user's file.
        let message = message.split(" at line ").next().unwrap_or_default().to_string();
        diagnostic(resource, &field, message)
    })
}

fn diagnostic(resource: &Resource, field: &str, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        file: resource.file.clone(),
        location: resource.location,
        field: field.to_string(),
        message: format!("{}: {}", resource.display_name(), message.into()),
    }
}

/// Whether a Service's `selector` (plain labels, all of which must match) selects `pod`.
fn selects(selector: &BTreeMap<String, String>, pod: &PodPlan) -> bool {
    selector.iter().all(|(key, value)| pod.labels.get(&format!("k8s:{key}")) == Some(value.as_str()))
}

/// A targetPort at `pod`: a number as it is, a name among the pod's named ports of that protocol.
fn target_port(target: &IntOrString, pod: &PodPlan, protocol: Protocol) -> Option<u16> {
    match target {
        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|p| *p != 0),
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => pod
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol == protocol)
                .map(|p| p.port),
        },
    }
}

/// The backends one EndpointSlice gives the service port named `name` (`None`: the unnamed one).
fn slice_backends(slice: &EndpointSlice, name: Option<&str>, protocol: Protocol) -> Vec<Backend> {
    if slice.address_type != "IPv4" {
        return Vec::new();
    }
    let protocol_name = match protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    };
    let Some(port) = slice.ports.iter().flatten().find(|p| {
        p.name.as_deref().unwrap_or("") == name.unwrap_or("") && p.protocol.as_deref().unwrap_or("TCP") == protocol_name
    }) else {
        return Vec::new();
    };
    let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) else { return Vec::new() };
    let mut backends = Vec::new();
    for endpoint in &slice.endpoints {
        let conditions = endpoint.conditions.clone().unwrap_or_default();
        // Kubernetes: a nil `ready` means ready; `serving` defaults to `ready`.
        let ready = conditions.ready.unwrap_or(true);
        let serving = conditions.serving.unwrap_or(ready);
        let state = match (ready, conditions.terminating.unwrap_or(false), serving) {
            (true, false, _) => BackendState::Active,
            (_, true, true) => BackendState::Terminating,
            _ => continue,
        };
        for address in &endpoint.addresses {
            if let Ok(address) = address.parse() {
                backends.push(Backend { address, port: number, state });
            }
        }
    }
    backends
}

/// Kubernetes' default NodePort range (`--service-node-port-range`).
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// The first free NodePort after one derived from `key`.
fn allocate_node_port(taken: &mut BTreeSet<u16>, key: &str) -> u16 {
    let size = u64::from(NODE_PORTS.end() - NODE_PORTS.start() + 1);
    let start = stable_hash(&format!("nodeport/{key}")) % size;
    let port = (0..size)
        .map(|k| NODE_PORTS.start() + ((start + k) % size) as u16)
        .find(|p| !taken.contains(p))
        .expect("fewer Service ports than NodePorts");
    taken.insert(port);
    port
}

/// ClusterIPs in use and the allocator of new ones.
struct Addresses {
    cidr: Ipv4Net,
    taken: BTreeSet<Ipv4Addr>,
}

impl Addresses {
    fn new(cidr: Ipv4Net) -> Addresses {
        Addresses { cidr, taken: BTreeSet::new() }
    }

    fn take(&mut self, text: &str) -> Result<(), String> {
        let ip: Ipv4Addr = text.parse().map_err(|_| format!("`{text}` is not an IPv4 address"))?;
        if !self.cidr.contains(&ip) || ip == self.cidr.network() || ip == self.cidr.broadcast() {
            return Err(format!("`{ip}` is not an address of serviceCIDR `{}`", self.cidr));
        }
        if !self.taken.insert(ip) {
            return Err(format!("`{ip}` is the ClusterIP of another Service"));
        }
        Ok(())
    }

    /// The first free address after one derived from `key`.
    fn allocate(&mut self, key: &str) -> Option<Ipv4Addr> {
        let hosts: u64 = self.cidr.hosts().count() as u64;
        let first = u32::from(self.cidr.network()) + 1;
        let start = stable_hash(&format!("service/{key}")) % hosts;
        let ip = (0..hosts)
            .map(|k| Ipv4Addr::from(first + ((start + k) % hosts) as u32))
            .find(|ip| !self.taken.contains(ip))?;
        self.taken.insert(ip);
        Some(ip)
    }
}

#[cfg(test)]
mod tests;
