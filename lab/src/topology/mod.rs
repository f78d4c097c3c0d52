//! The topology file, version 1: what a person writes to describe a lab.
//!
//! These types are the single source of truth for the file format: serde reads them (unknown
//! fields are errors), schemars derives `docs/topology.schema.json` from them, and
//! `docs/topology.md` documents them. Loading (with file:line:column errors) lives in [`load`],
//! semantic checks in [`validate`].

pub mod load;
pub mod port;
pub mod resources;
pub mod scenario;
pub mod source;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

pub use load::{Diagnostic, Loaded, TopologyError, load_file, load_str};
pub use port::{Port, Protocol};

/// A lab: Kubernetes-like nodes, namespaces and pods on one host, plus hosts outside the cluster.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "lab topology (version 1)")]
pub struct Topology {
    /// The lab's name: a DNS label. Every kernel object the lab creates carries it, so labs with
    /// different names run side by side. `lab up --name` overrides it.
    pub name: String,
    /// Cluster-wide settings; every field has a default.
    #[serde(default)]
    pub cluster: Cluster,
    /// Kubernetes nodes. Each is a network namespace with an uplink to the fabric.
    pub nodes: Vec<Node>,
    /// Kubernetes namespaces and their labels. `default` exists without being declared.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// Pods. Each is a network namespace whose `eth0` is a veth to its node.
    #[serde(default)]
    pub pods: Vec<Pod>,
    /// Hosts outside the cluster, on the fabric, with documentation-range addresses.
    #[serde(default)]
    pub externals: Vec<External>,
    /// Kubernetes objects (policies, services, ...): files relative to the topology file, inline
    /// multi-document YAML, or objects written in place.
    #[serde(default)]
    pub resources: Vec<ResourceEntry>,
    /// Ordered, named steps that change the running lab and send traffic through it with
    /// expected outcomes; `lab test` runs them and compares each step with golden files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<scenario::Scenario>,
}

/// Cluster-wide settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cluster {
    /// The pod CIDR pool nodes' pod CIDRs are allocated from, in node order (Cilium's
    /// `clusterPoolIPv4PodCIDRList`).
    #[serde(default = "Cluster::default_pod_cidr", rename = "podCIDR")]
    #[schemars(with = "String")]
    pub pod_cidr: Ipv4Net,
    /// The prefix length of each node's pod CIDR (Cilium's `clusterPoolIPv4MaskSize`).
    #[serde(default = "Cluster::default_pod_cidr_mask_size", rename = "podCIDRMaskSize")]
    pub pod_cidr_mask_size: u8,
    /// The underlay subnet the nodes share on the fabric; nodes get addresses from .2 upwards in
    /// node order, the fabric router has .1.
    #[serde(default = "Cluster::default_node_cidr", rename = "nodeCIDR")]
    #[schemars(with = "String")]
    pub node_cidr: Ipv4Net,
    /// Where Services' ClusterIPs come from when a Service names none (the apiserver's
    /// `--service-cluster-ip-range`). Outside the pod and node CIDRs.
    #[serde(default = "Cluster::default_service_cidr", rename = "serviceCIDR")]
    #[schemars(with = "String")]
    pub service_cidr: Ipv4Net,
    /// Masquerade (Cilium's BPF masquerade, on by default): pod traffic leaving a node for a
    /// destination outside `nativeRoutingCIDR` and not a node leaves with the node's address.
    #[serde(default = "Cluster::default_masquerade")]
    pub masquerade: bool,
    /// What is reached without masquerade (Cilium's `ipv4NativeRoutingCIDR`); by default the pod
    /// CIDR pool. A CIDR that leaves out some pods' addresses reproduces the real consequence:
    /// their traffic leaves as the node's.
    #[serde(default, rename = "nativeRoutingCIDR")]
    #[schemars(with = "Option<String>")]
    pub native_routing_cidr: Option<Ipv4Net>,
    /// How services pick a backend for a new connection: `random` or `maglev`.
    #[serde(default)]
    pub load_balancer_algorithm: LoadBalancerAlgorithm,
    /// How pods on different nodes reach each other.
    #[serde(default)]
    pub routing_mode: RoutingMode,
    /// MTU of the underlay. In tunnel mode pods get 50 bytes less, as Cilium gives them.
    #[serde(default = "Cluster::default_mtu")]
    pub mtu: u32,
    /// How programs are attached: `netlink` (clsact and cls_bpf, any kernel) or `tcx` (BPF
    /// links, kernel 6.6 and later).
    #[serde(default)]
    pub attach: AttachMode,
    /// Entries of each endpoint's policy map (Cilium's `--bpf-policy-map-max`): 256 to 65,536.
    /// A policy that does not fit is refused, never applied in part.
    #[serde(default = "Cluster::default_policy_map_size")]
    pub policy_map_size: u32,
    /// Cilium's policy enforcement mode: `default` (an endpoint is enforced in a direction once
    /// a policy selects it there), `always` (every endpoint, default deny) or `never`.
    #[serde(default)]
    pub policy_enforcement: PolicyEnforcement,
    /// Whose reading of NetworkPolicy to follow where Cilium and the Kubernetes API differ (see
    /// docs/policy-semantics.md): `cilium` (1.18's behaviour) or `kubernetes`.
    #[serde(default)]
    pub policy_semantics: PolicySemantics,
    /// Which labels make a pod's identity, in Cilium's `--labels` syntax: `k8s:app` includes,
    /// `!k8s:version` excludes. By default, Cilium's default label filter.
    #[serde(default)]
    pub identity_labels: Vec<String>,
}

impl Cluster {
    fn default_pod_cidr() -> Ipv4Net {
        "10.0.0.0/8".parse().expect("valid default")
    }
    fn default_pod_cidr_mask_size() -> u8 {
        24
    }
    fn default_node_cidr() -> Ipv4Net {
        "172.18.0.0/24".parse().expect("valid default")
    }
    fn default_service_cidr() -> Ipv4Net {
        "172.30.0.0/16".parse().expect("valid default")
    }
    fn default_masquerade() -> bool {
        true
    }
    fn default_mtu() -> u32 {
        1500
    }
    fn default_policy_map_size() -> u32 {
        16384
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            pod_cidr: Self::default_pod_cidr(),
            pod_cidr_mask_size: Self::default_pod_cidr_mask_size(),
            node_cidr: Self::default_node_cidr(),
            service_cidr: Self::default_service_cidr(),
            masquerade: Self::default_masquerade(),
            native_routing_cidr: None,
            load_balancer_algorithm: LoadBalancerAlgorithm::default(),
            routing_mode: RoutingMode::default(),
            mtu: Self::default_mtu(),
            attach: AttachMode::default(),
            policy_map_size: Self::default_policy_map_size(),
            policy_enforcement: PolicyEnforcement::default(),
            policy_semantics: PolicySemantics::default(),
            identity_labels: Vec::new(),
        }
    }
}

/// Cilium's `routingMode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    /// Nodes route each other's pod CIDRs over the underlay.
    #[default]
    Native,
    /// Pod traffic between nodes is encapsulated in VXLAN (UDP 8472).
    Tunnel,
}

impl fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoutingMode::Native => "native",
            RoutingMode::Tunnel => "tunnel",
        })
    }
}

/// How a service's backend is chosen for a new connection (Cilium's `loadBalancer.algorithm`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalancerAlgorithm {
    /// At random among the ready backends.
    #[default]
    Random,
    /// By the frontend's Maglev table: a connection's tuple always maps to the same backend, on
    /// every node, and a backend that goes away moves only its own connections.
    Maglev,
}

/// How the datapath's programs are attached to interfaces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// A clsact qdisc with direct-action cls_bpf filters, as Cilium does on older kernels.
    #[default]
    Netlink,
    /// TCX links (kernel 6.6+), pinned under the lab's bpffs folder.
    Tcx,
}

/// Cilium's `--enable-policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyEnforcement {
    #[default]
    Default,
    Always,
    Never,
}

/// Where Cilium's NetworkPolicy differs from the Kubernetes API definition, which to follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicySemantics {
    #[default]
    Cilium,
    Kubernetes,
}

/// A Kubernetes node.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    /// A DNS label of at most 15 characters: it also names the node's port on the fabric.
    pub name: String,
    /// This node's pod CIDR; by default the next free block of the cluster pool.
    #[serde(default, rename = "podCIDR")]
    #[schemars(with = "Option<String>")]
    pub pod_cidr: Option<Ipv4Net>,
    /// The node's Kubernetes labels, which host policies' `nodeSelector` match (besides
    /// `kubernetes.io/hostname`, the node's name, and `kubernetes.io/os: linux`, which every node has).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Ports the node itself serves (`tcp/22`, `tcp/10250`), with the lab's built-in echo server
    /// in the node's namespace: what host policies protect.
    #[serde(default)]
    pub ports: Vec<Port>,
    /// `net.*` sysctls set inside this node's namespace only, e.g. `net.ipv4.conf.all.rp_filter: 1`.
    #[serde(default)]
    pub sysctls: BTreeMap<String, Scalar>,
    /// More interfaces on the fabric besides `eth0`, each in a subnet of its own (a second NIC,
    /// or a cloud's secondary ENI). The datapath's uplink programs run on each, as Cilium's do on
    /// every native device.
    #[serde(default)]
    pub uplinks: Vec<Uplink>,
    /// Routes in the node's main table, each through one of its uplinks' gateways.
    #[serde(default)]
    pub routes: Vec<NodeRoute>,
}

/// A node's extra interface on the fabric.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Uplink {
    /// The interface's name in the node (`eth1`); `<node>-<name>` names its fabric port, so
    /// both together fit in 14 characters.
    pub name: String,
    /// Its address with the subnet's prefix length, `172.19.0.2/24`; the fabric routes for the
    /// subnet from its last host address.
    #[schemars(with = "String")]
    pub address: Ipv4Net,
}

/// A route of a node: `to` a network, `via` one of its uplinks (`eth0` or an extra one), whose
/// gateway on the fabric forwards it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeRoute {
    #[schemars(with = "String")]
    pub to: Ipv4Net,
    pub via: String,
}

/// A Kubernetes namespace.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Namespace {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A pod.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pod {
    pub name: String,
    #[serde(default = "Pod::default_namespace")]
    pub namespace: String,
    /// The node the pod runs on.
    pub node: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "Pod::default_service_account")]
    pub service_account: String,
    /// Ports the pod serves: `tcp/80`, `udp/53`, or `{name: http, port: 8080, protocol: TCP}`.
    /// The lab's built-in server answers on each (TCP and UDP echo).
    #[serde(default)]
    pub ports: Vec<Port>,
    /// A fixed address inside the node's pod CIDR; by default one is derived from the pod's name.
    /// Two pods may be given the same address on purpose, to reproduce address bugs.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub ip: Option<Ipv4Addr>,
    /// `false`: the pod started before the datapath was attached to its node (Cilium's
    /// unmanaged pods): its veth has no programs, so none of its policies are enforced, and
    /// everyone else sees it as identity `unmanaged`, whatever its labels.
    #[serde(default = "Pod::default_managed")]
    pub managed: bool,
}

impl Pod {
    fn default_managed() -> bool {
        true
    }
    fn default_namespace() -> String {
        "default".to_string()
    }
    fn default_service_account() -> String {
        "default".to_string()
    }
}

/// A host outside the cluster.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct External {
    /// A DNS label of at most 15 characters: it also names the host's port on the fabric.
    pub name: String,
    /// An address from 192.0.2.0/24, 198.51.100.0/24 or 203.0.113.0/24, with an optional prefix
    /// length (default /24). The fabric routes for it from the last host address of its subnet.
    #[schemars(with = "String")]
    pub address: ExternalAddress,
    #[serde(default)]
    pub ports: Vec<Port>,
}

/// An external's address: `203.0.113.10` or `203.0.113.10/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct ExternalAddress(pub Ipv4Net);

impl<'de> Deserialize<'de> for ExternalAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let net = if text.contains('/') {
            text.parse::<Ipv4Net>().map_err(serde::de::Error::custom)?
        } else {
            let ip: Ipv4Addr = text.parse().map_err(serde::de::Error::custom)?;
            Ipv4Net::new(ip, 24).expect("24 is a valid prefix length")
        };
        Ok(ExternalAddress(net))
    }
}

impl From<ExternalAddress> for String {
    fn from(address: ExternalAddress) -> String {
        address.0.to_string()
    }
}

/// One entry of `resources:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ResourceEntry {
    File(FileResources),
    Inline(InlineResources),
    /// A Kubernetes object written in place (or a `kind: List`).
    Object(#[schemars(with = "KubernetesObjectSchema")] serde_yaml::Value),
}

/// `file: path/relative/to/topology.yaml`, one or more YAML documents.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileResources {
    pub file: String,
}

/// `inline: |` followed by one or more YAML documents separated by `---`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InlineResources {
    pub inline: String,
}

/// What the schema says of an object written in place.
#[derive(JsonSchema)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
struct KubernetesObjectSchema {
    api_version: String,
    kind: String,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

/// A YAML scalar that reads as a string whether it was written as `1`, `true` or `"loose"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Scalar(#[schemars(with = "serde_json::Value")] pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_yaml::Value::deserialize(deserializer)? {
            serde_yaml::Value::String(s) => Ok(Scalar(s)),
            serde_yaml::Value::Number(n) => Ok(Scalar(n.to_string())),
            serde_yaml::Value::Bool(b) => Ok(Scalar(if b { "1" } else { "0" }.to_string())),
            _ => Err(serde::de::Error::custom("expected a string, number or boolean")),
        }
    }
}

/// The JSON Schema of the topology file, as committed in `docs/topology.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Topology);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serialises");
    text.push('\n');
    text
}
