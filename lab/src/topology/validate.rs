//! Checks that need more than the YAML's shape: names unique and well-formed, references that
//! resolve, CIDRs that fit and do not overlap, derived interface names that Linux accepts. Pure:
//! it reads a [`Topology`] and returns findings by field path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::Topology;
use crate::plan;

/// Linux refuses interface names of 16 bytes or more.
pub const MAX_IFNAME: usize = 15;

/// The documentation ranges (RFC 5737) externals take their addresses from.
pub const DOCUMENTATION_RANGES: [&str; 3] = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub field: String,
    pub message: String,
}

#[derive(Default)]
pub(crate) struct Findings(pub(crate) Vec<Finding>);

impl Findings {
    pub(crate) fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Finding { severity: Severity::Error, field: field.into(), message: message.into() });
    }
    pub(crate) fn warning(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Finding { severity: Severity::Warning, field: field.into(), message: message.into() });
    }
}

/// Every problem with `topology`, errors and warnings, in file order.
pub fn check(topology: &Topology) -> Vec<Finding> {
    let mut findings = Findings::default();
    check_name(&mut findings, "name", &topology.name, "lab name", plan::MAX_LAB_NAME);
    let cidrs_ok = check_cluster(&mut findings, topology);
    check_nodes(&mut findings, topology);
    if cidrs_ok {
        check_node_cidrs(&mut findings, topology);
    }
    check_namespaces(&mut findings, topology);
    check_pods(&mut findings, topology);
    check_externals(&mut findings, topology);
    check_uplinks(&mut findings, topology);
    findings.0
}

/// Checks a lab name given on the command line (`--name`), as `name:` in a file is checked.
pub fn check_lab_name(name: &str) -> Result<(), String> {
    let mut findings = Findings::default();
    check_name(&mut findings, "--name", name, "lab name", plan::MAX_LAB_NAME);
    findings.0.pop().map_or(Ok(()), |f| Err(f.message))
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

pub(crate) fn check_name(findings: &mut Findings, field: &str, name: &str, what: &str, max: usize) {
    if !is_dns_label(name) {
        findings.error(field, format!("`{name}` is not a valid {what}: use lowercase letters, digits and `-`"));
    } else if name.len() > max {
        findings.error(field, format!("{what} `{name}` is {} characters long; at most {max} are allowed", name.len()));
    }
}

/// Interface names the fabric itself uses.
const RESERVED_IFNAMES: &[&str] = &["lo", "br0"];

/// A name that also becomes an interface on the fabric.
fn check_ifname(findings: &mut Findings, field: &str, name: &str, what: &str) {
    if RESERVED_IFNAMES.contains(&name) {
        findings.error(field, format!("{what} `{name}` would clash with the fabric's own `{name}` interface"));
    } else if is_dns_label(name) && name.len() > MAX_IFNAME {
        findings.error(
            field,
            format!(
                "{what} `{name}` would name the interface `{name}` on the fabric, which is {} bytes long; \
                 Linux allows at most {MAX_IFNAME}: choose a shorter name",
                name.len()
            ),
        );
    }
}

fn check_cluster(findings: &mut Findings, topology: &Topology) -> bool {
    let cluster = &topology.cluster;
    let mut ok = true;
    if cluster.pod_cidr != cluster.pod_cidr.trunc() {
        findings.error(
            "cluster.podCIDR",
            format!("`{}` has host bits set; did you mean `{}`?", cluster.pod_cidr, cluster.pod_cidr.trunc()),
        );
        ok = false;
    }
    if cluster.node_cidr != cluster.node_cidr.trunc() {
        findings.error(
            "cluster.nodeCIDR",
            format!("`{}` has host bits set; did you mean `{}`?", cluster.node_cidr, cluster.node_cidr.trunc()),
        );
        ok = false;
    }
    let mask = cluster.pod_cidr_mask_size;
    if mask < cluster.pod_cidr.prefix_len() || mask > 28 {
        findings.error(
            "cluster.podCIDRMaskSize",
            format!("must be between the pool's prefix length /{} and /28, not /{mask}", cluster.pod_cidr.prefix_len()),
        );
        ok = false;
    }
    if cluster.node_cidr.prefix_len() > 29 {
        findings.error("cluster.nodeCIDR", "must be /29 or larger to hold the fabric router and nodes");
        ok = false;
    }
    if overlaps(&cluster.pod_cidr, &cluster.node_cidr) {
        findings.error(
            "cluster.nodeCIDR",
            format!("`{}` overlaps the pod CIDR pool `{}`", cluster.node_cidr, cluster.pod_cidr),
        );
        ok = false;
    }
    if let Some(native) = cluster.native_routing_cidr
        && native != native.trunc()
    {
        findings.error(
            "cluster.nativeRoutingCIDR",
            format!("`{native}` has host bits set; did you mean `{}`?", native.trunc()),
        );
    }
    let services = cluster.service_cidr;
    if services != services.trunc() {
        findings.error(
            "cluster.serviceCIDR",
            format!("`{services}` has host bits set; did you mean `{}`?", services.trunc()),
        );
    } else if services.prefix_len() > 28 {
        findings.error("cluster.serviceCIDR", "must be /28 or larger");
    }
    for (name, other) in [("pod CIDR pool", cluster.pod_cidr), ("nodeCIDR", cluster.node_cidr)] {
        if overlaps(&services, &other) {
            findings.error("cluster.serviceCIDR", format!("`{services}` overlaps the {name} `{other}`"));
        }
    }
    if !(256..=65536).contains(&cluster.policy_map_size) {
        findings.error("cluster.policyMapSize", format!("{} is out of range 256-65536", cluster.policy_map_size));
    }
    if !(1280..=9000).contains(&cluster.mtu) {
        findings.error("cluster.mtu", format!("{} is out of range 1280-9000", cluster.mtu));
    }
    ok
}

pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn check_nodes(findings: &mut Findings, topology: &Topology) {
    if topology.nodes.is_empty() {
        findings.error("nodes", "a lab needs at least one node");
    }
    let capacity = topology.cluster.node_cidr.hosts().count().saturating_sub(1);
    if topology.nodes.len() > capacity {
        findings.error(
            "nodes",
            format!(
                "{} nodes do not fit in nodeCIDR `{}` ({capacity} addresses)",
                topology.nodes.len(),
                topology.cluster.node_cidr
            ),
        );
    }
    let mut seen = HashSet::new();
    for (i, node) in topology.nodes.iter().enumerate() {
        let field = format!("nodes[{i}].name");
        check_name(findings, &field, &node.name, "node name", 63);
        check_ifname(findings, &field, &node.name, "node name");
        if !seen.insert(node.name.as_str()) {
            findings.error(&field, format!("node `{}` is defined twice", node.name));
        }
        check_labels(findings, &format!("nodes[{i}].labels"), &node.labels);
        check_ports(findings, &format!("nodes[{i}].ports"), &node.ports);
        check_sysctls(findings, &format!("nodes[{i}].sysctls"), &node.sysctls);
    }
}

/// Only `net.*` sysctls are per network namespace; anything else would change the host.
pub(crate) fn check_sysctls(findings: &mut Findings, field: &str, sysctls: &BTreeMap<String, super::Scalar>) {
    for (key, value) in sysctls {
        let field = format!("{field}.{key}");
        let well_formed = key
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        if !key.starts_with("net.") || !well_formed {
            findings.error(&field, format!("`{key}` is not a network sysctl; only `net.*` sysctls are per-namespace"));
        } else if value.0.is_empty() || value.0.contains('\n') {
            findings.error(&field, "a sysctl value must be a single line");
        }
    }
}

fn check_node_cidrs(findings: &mut Findings, topology: &Topology) {
    let cluster = &topology.cluster;
    let mut assigned: Vec<(usize, Ipv4Net)> = Vec::new();
    for (i, node) in topology.nodes.iter().enumerate() {
        let Some(cidr) = node.pod_cidr else { continue };
        let field = format!("nodes[{i}].podCIDR");
        if cidr != cidr.trunc() {
            findings.error(&field, format!("`{cidr}` has host bits set; did you mean `{}`?", cidr.trunc()));
        } else if cidr.prefix_len() > 28 {
            findings.error(&field, format!("`{cidr}` is too small for pods; use /28 or larger"));
        } else if overlaps(&cidr, &cluster.node_cidr) {
            findings.error(&field, format!("`{cidr}` overlaps nodeCIDR `{}`", cluster.node_cidr));
        } else if let Some((j, _)) = assigned.iter().find(|(_, other)| overlaps(&cidr, other)) {
            findings.error(&field, format!("`{cidr}` overlaps the pod CIDR of node `{}`", topology.nodes[*j].name));
        } else {
            assigned.push((i, cidr));
        }
    }
    if findings.0.iter().any(|f| f.severity == Severity::Error && f.field.contains("podCIDR")) {
        return;
    }
    let cidrs = match plan::node_pod_cidrs(topology) {
        Ok(cidrs) => cidrs,
        Err(message) => {
            findings.error("cluster.podCIDR", message);
            return;
        }
    };
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for pod in &topology.pods {
        *per_node.entry(pod.node.as_str()).or_default() += 1;
    }
    for (i, node) in topology.nodes.iter().enumerate() {
        let pods = per_node.get(node.name.as_str()).copied().unwrap_or(0);
        let capacity = plan::pod_capacity(&cidrs[i]);
        if pods > capacity {
            findings.error(
                format!("nodes[{i}]"),
                format!("node `{}` has {pods} pods but its pod CIDR `{}` holds {capacity}", node.name, cidrs[i]),
            );
        }
    }
}

fn check_namespaces(findings: &mut Findings, topology: &Topology) {
    let mut seen = HashSet::new();
    for (i, namespace) in topology.namespaces.iter().enumerate() {
        let field = format!("namespaces[{i}].name");
        check_name(findings, &field, &namespace.name, "namespace name", 63);
        if !seen.insert(namespace.name.as_str()) {
            findings.error(&field, format!("namespace `{}` is defined twice", namespace.name));
        }
        check_labels(findings, &format!("namespaces[{i}].labels"), &namespace.labels);
    }
}

/// Kubernetes label syntax: an optional DNS-subdomain prefix and a name of at most 63 characters.
pub(crate) fn check_labels(findings: &mut Findings, field: &str, labels: &BTreeMap<String, String>) {
    let valid_name = |s: &str| {
        s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
    };
    let valid_prefix = |p: &str| p.len() <= 253 && p.split('.').all(is_dns_label);
    for (key, value) in labels {
        let (prefix, name) = key.rsplit_once('/').map_or(("", key.as_str()), |(prefix, name)| (prefix, name));
        if name.is_empty() || !valid_name(name) || (key.contains('/') && !valid_prefix(prefix)) {
            findings.error(format!("{field}.{key}"), format!("`{key}` is not a valid label key"));
        } else if !valid_name(value) {
            findings.error(format!("{field}.{key}"), format!("`{value}` is not a valid label value"));
        }
    }
}

fn check_pods(findings: &mut Findings, topology: &Topology) {
    let nodes: Vec<&str> = topology.nodes.iter().map(|n| n.name.as_str()).collect();
    let namespaces: HashSet<&str> = topology.namespaces.iter().map(|n| n.name.as_str()).chain(["default"]).collect();
    let cidrs = plan::node_pod_cidrs(topology).ok();
    let mut seen = HashSet::new();
    let mut fixed_ips: HashMap<Ipv4Addr, usize> = HashMap::new();

    for (i, pod) in topology.pods.iter().enumerate() {
        let field = |f: &str| format!("pods[{i}].{f}");
        check_name(findings, &field("name"), &pod.name, "pod name", 63);
        if !seen.insert((pod.namespace.as_str(), pod.name.as_str())) {
            findings.error(field("name"), format!("pod `{}/{}` is defined twice", pod.namespace, pod.name));
        }
        if !namespaces.contains(pod.namespace.as_str()) {
            findings
                .error(field("namespace"), format!("no namespace `{}`; declare it under `namespaces:`", pod.namespace));
        }
        check_name(findings, &field("serviceAccount"), &pod.service_account, "service account name", 63);
        check_labels(findings, &field("labels"), &pod.labels);
        let node = nodes.iter().position(|n| *n == pod.node);
        if node.is_none() {
            findings.error(field("node"), format!("no node `{}`; nodes are: {}", pod.node, nodes.join(", ")));
        }
        if let (Some(ip), Some(node), Some(cidrs)) = (pod.ip, node, &cidrs) {
            let cidr = cidrs[node];
            if !cidr.contains(&ip) {
                findings.error(field("ip"), format!("{ip} is outside the pod CIDR `{cidr}` of node `{}`", pod.node));
            } else if !plan::is_pod_host(&cidr, ip) {
                findings
                    .error(field("ip"), format!("{ip} is reserved in `{cidr}` (network, router or broadcast address)"));
            } else if let Some(first) = fixed_ips.insert(ip, i) {
                findings.warning(
                    field("ip"),
                    format!(
                        "{ip} is also given to pod `{}`: both pods get it, as after an IPAM bug",
                        topology.pods[first].name
                    ),
                );
            }
        }
        check_ports(findings, &format!("pods[{i}].ports"), &pod.ports);
    }
}

fn check_ports(findings: &mut Findings, field: &str, ports: &[super::Port]) {
    let mut seen = HashSet::new();
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        if !seen.insert((port.protocol, port.port)) {
            findings.error(format!("{field}[{i}]"), format!("{port} is listed twice"));
        }
        if let Some(name) = &port.name {
            let valid = !name.is_empty()
                && name.len() <= 15
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && name.bytes().any(|b| b.is_ascii_lowercase())
                && !name.starts_with('-')
                && !name.ends_with('-')
                && !name.contains("--");
            if !valid {
                findings.error(format!("{field}[{i}].name"), format!("`{name}` is not a valid port name (IANA_SVC_NAME: at most 15 lowercase letters, digits and `-`)"));
            } else if !names.insert(name.as_str()) {
                findings.error(format!("{field}[{i}].name"), format!("port name `{name}` is used twice"));
            }
        }
    }
}

/// The most extra uplinks a node may have: their interface indices lie between the tunnel
/// device's and the first pod's.
const MAX_EXTRA_UPLINKS: usize = (plan::ifindex::FIRST_PORT - plan::ifindex::VXLAN - 1) as usize;

fn check_uplinks(findings: &mut Findings, topology: &Topology) {
    let cluster = &topology.cluster;
    let taken: Vec<(String, Ipv4Net)> = [
        ("nodeCIDR".to_string(), cluster.node_cidr),
        ("the pod CIDR pool".to_string(), cluster.pod_cidr),
        ("serviceCIDR".to_string(), cluster.service_cidr),
    ]
    .into_iter()
    .chain(topology.nodes.iter().filter_map(|n| n.pod_cidr.map(|c| (format!("the pod CIDR of node `{}`", n.name), c))))
    .chain(topology.externals.iter().map(|e| (format!("the subnet of external `{}`", e.name), e.address.0.trunc())))
    .collect();
    let mut addresses: HashMap<Ipv4Addr, String> = HashMap::new();
    for (i, node) in topology.nodes.iter().enumerate() {
        if node.uplinks.len() > MAX_EXTRA_UPLINKS {
            findings.error(
                format!("nodes[{i}].uplinks"),
                format!("a node may have at most {MAX_EXTRA_UPLINKS} more uplinks"),
            );
        }
        let mut names = HashSet::from([plan::UPLINK_NAME]);
        for (k, uplink) in node.uplinks.iter().enumerate() {
            let field = |f: &str| format!("nodes[{i}].uplinks[{k}].{f}");
            check_name(findings, &field("name"), &uplink.name, "uplink name", MAX_IFNAME);
            let port = format!("{}-{}", node.name, uplink.name);
            if [plan::UPLINK_NAME, plan::VXLAN_NAME, "lo"].contains(&uplink.name.as_str()) {
                findings.error(field("name"), format!("`{}` is an interface the lab makes in every node", uplink.name));
            } else if !names.insert(uplink.name.as_str()) {
                findings.error(field("name"), format!("node `{}` has two uplinks named `{}`", node.name, uplink.name));
            } else if port.len() > MAX_IFNAME {
                findings.error(
                    field("name"),
                    format!(
                        "its fabric port `{port}` would be {} bytes long; Linux allows at most {MAX_IFNAME}: \
                         choose a shorter name",
                        port.len()
                    ),
                );
            }
            let (address, ip) = (uplink.address, uplink.address.addr());
            if !(8..=30).contains(&address.prefix_len()) {
                findings.error(field("address"), format!("/{} does not fit: use /8 to /30", address.prefix_len()));
            } else if ip == address.network() || ip == address.broadcast() || ip == plan::external_gateway(&address) {
                findings.error(
                    field("address"),
                    format!("{ip} is the network, broadcast or fabric's (last host) address of `{}`", address.trunc()),
                );
            } else if let Some((what, range)) = taken.iter().find(|(_, range)| overlaps(range, &address.trunc())) {
                findings.error(field("address"), format!("`{}` overlaps {what} `{range}`", address.trunc()));
            } else if let Some(owner) = addresses.insert(ip, node.name.clone()) {
                findings.error(field("address"), format!("{ip} is already an uplink address of node `{owner}`"));
            }
        }
        for (r, route) in node.routes.iter().enumerate() {
            let field = |f: &str| format!("nodes[{i}].routes[{r}].{f}");
            if route.to != route.to.trunc() {
                findings.error(
                    field("to"),
                    format!("`{}` has host bits set; did you mean `{}`?", route.to, route.to.trunc()),
                );
            }
            if !names.contains(route.via.as_str()) {
                let mut known: Vec<&str> = names.iter().copied().collect();
                known.sort_unstable();
                findings.error(
                    field("via"),
                    format!(
                        "node `{}` has no uplink `{}`; its uplinks are: {}",
                        node.name,
                        route.via,
                        known.join(", ")
                    ),
                );
            }
        }
    }
}

fn check_externals(findings: &mut Findings, topology: &Topology) {
    let ranges: Vec<Ipv4Net> = DOCUMENTATION_RANGES.iter().map(|r| r.parse().expect("valid range")).collect();
    let nodes: HashSet<&str> = topology.nodes.iter().map(|n| n.name.as_str()).collect();
    let cluster_ranges: Vec<(String, Ipv4Net)> = [
        ("nodeCIDR".to_string(), topology.cluster.node_cidr),
        ("the pod CIDR pool".to_string(), topology.cluster.pod_cidr),
    ]
    .into_iter()
    .chain(topology.nodes.iter().filter_map(|n| n.pod_cidr.map(|c| (format!("the pod CIDR of node `{}`", n.name), c))))
    .collect();
    let routers: HashSet<Ipv4Addr> = topology.externals.iter().map(|e| plan::external_gateway(&e.address.0)).collect();
    let mut seen = HashSet::new();
    let mut addresses = HashMap::new();
    for (i, external) in topology.externals.iter().enumerate() {
        let field = |f: &str| format!("externals[{i}].{f}");
        check_name(findings, &field("name"), &external.name, "external name", 63);
        check_ifname(findings, &field("name"), &external.name, "external name");
        if !seen.insert(external.name.as_str()) {
            findings.error(field("name"), format!("external `{}` is defined twice", external.name));
        } else if nodes.contains(external.name.as_str()) {
            findings.error(
                field("name"),
                format!("`{}` is already a node's name; nodes and externals share the fabric", external.name),
            );
        }
        let address = external.address.0;
        let ip = address.addr();
        match ranges.iter().find(|r| r.contains(&ip)) {
            None => findings.error(
                field("address"),
                format!(
                    "{ip} is outside the documentation ranges ({}); externals never get real addresses",
                    DOCUMENTATION_RANGES.join(", ")
                ),
            ),
            Some(range) if address.prefix_len() < range.prefix_len() || address.prefix_len() > 30 => findings.error(
                field("address"),
                format!(
                    "/{} does not fit: the subnet must lie inside `{range}` and be /30 or larger",
                    address.prefix_len()
                ),
            ),
            Some(_) => {
                if ip == address.network() || ip == address.broadcast() {
                    findings.error(
                        field("address"),
                        format!("{ip} is the network or broadcast address of `{}`", address.trunc()),
                    );
                } else if routers.contains(&ip) {
                    findings.error(
                        field("address"),
                        format!(
                            "{ip} is a fabric router address (the last host of an external subnet); choose another"
                        ),
                    );
                } else if let Some((what, range)) = cluster_ranges.iter().find(|(_, r)| overlaps(r, &address.trunc())) {
                    findings.error(field("address"), format!("`{}` overlaps {what} `{range}`", address.trunc()));
                } else if let Some(other) = addresses.insert(ip, i) {
                    findings.error(
                        field("address"),
                        format!("{ip} is already the address of external `{}`", topology.externals[other].name),
                    );
                }
            }
        }
        check_ports(findings, &format!("externals[{i}].ports"), &external.ports);
    }
}
