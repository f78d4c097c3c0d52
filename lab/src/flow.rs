//! Datapath events as Hubble flows: an [`Event`] from the ring buffer becomes a [`Flow`] that
//! serialises exactly as `hubble observe -o json` prints one (protojson with proto field names,
//! enums by name, zero values left out), wrapped in a [`FlowRecord`] as Hubble's
//! `GetFlowsResponse` is: `{"flow":{...},"node_name":...,"time":...}`.
//!
//! What the datapath does not say, the plan does: a [`FlowContext`] built once from it names the
//! node, the pods behind addresses, the labels of identities and the interfaces of each node.
//! The decoding follows Hubble's (`pkg/hubble/parser/threefour`): the verdict from the event type,
//! `is_reply` from the conntrack result, the traffic direction that of the connection (so a reply
//! entering its client is EGRESS), and a `Summary` as gopacket names the last layer it decoded.
//!
//! The struct fields are declared in `flow.proto`'s order, so the JSON keys come out in the order
//! Hubble prints them, and [`Flow::normalized_json`] is stable for golden files.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::datapath::abi::{ct, match_type, obs};

use etherparse::{LaxPacketHeaders, LinkHeader, NetHeaders, TransportHeader};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::datapath::abi::{self, Event};
use crate::plan::{self, Plan};

/// The drop reasons: code, `flow.proto` `DropReason` name, and the text `cilium monitor` and
/// Hubble's compact output print (`pkg/monitor/api/drop.go`).
const DROP_REASONS: &[(u8, &str, &str)] = &[
    (130, "INVALID_SOURCE_MAC", "Invalid source mac"),
    (131, "INVALID_DESTINATION_MAC", "Invalid destination mac"),
    (132, "INVALID_SOURCE_IP", "Invalid source ip"),
    (133, "POLICY_DENIED", "Policy denied"),
    (134, "INVALID_PACKET_DROPPED", "Invalid packet"),
    (135, "CT_TRUNCATED_OR_INVALID_HEADER", "CT: Truncated or invalid header"),
    (136, "CT_MISSING_TCP_ACK_FLAG", "Fragmentation needed"),
    (137, "CT_UNKNOWN_L4_PROTOCOL", "CT: Unknown L4 protocol"),
    (138, "CT_CANNOT_CREATE_ENTRY_FROM_PACKET", "CT: Can't create entry from packet"),
    (139, "UNSUPPORTED_L3_PROTOCOL", "Unsupported L3 protocol"),
    (140, "MISSED_TAIL_CALL", "Missed tail call"),
    (141, "ERROR_WRITING_TO_PACKET", "Error writing to packet"),
    (142, "UNKNOWN_L4_PROTOCOL", "Unknown L4 protocol"),
    (143, "UNKNOWN_ICMPV4_CODE", "Unknown ICMPv4 code"),
    (144, "UNKNOWN_ICMPV4_TYPE", "Unknown ICMPv4 type"),
    (145, "UNKNOWN_ICMPV6_CODE", "Unknown ICMPv6 code"),
    (146, "UNKNOWN_ICMPV6_TYPE", "Unknown ICMPv6 type"),
    (147, "ERROR_RETRIEVING_TUNNEL_KEY", "Error retrieving tunnel key"),
    (148, "ERROR_RETRIEVING_TUNNEL_OPTIONS", "Error retrieving tunnel options"),
    (149, "INVALID_GENEVE_OPTION", "Invalid Geneve option"),
    (150, "UNKNOWN_L3_TARGET_ADDRESS", "Unknown L3 target address"),
    (151, "STALE_OR_UNROUTABLE_IP", "Stale or unroutable IP"),
    (152, "NO_MATCHING_LOCAL_CONTAINER_FOUND", "No matching local container found"),
    (153, "ERROR_WHILE_CORRECTING_L3_CHECKSUM", "Error while correcting L3 checksum"),
    (154, "ERROR_WHILE_CORRECTING_L4_CHECKSUM", "Error while correcting L4 checksum"),
    (155, "CT_MAP_INSERTION_FAILED", "CT: Map insertion failed"),
    (156, "INVALID_IPV6_EXTENSION_HEADER", "Invalid IPv6 extension header"),
    (157, "IP_FRAGMENTATION_NOT_SUPPORTED", "IP fragmentation not supported"),
    (158, "SERVICE_BACKEND_NOT_FOUND", "Service backend not found"),
    (160, "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT", "No tunnel/encapsulation endpoint (datapath BUG!)"),
    (161, "FAILED_TO_INSERT_INTO_PROXYMAP", "NAT 46/64 not enabled"),
    (162, "REACHED_EDT_RATE_LIMITING_DROP_HORIZON", "Reached EDT rate-limiting drop horizon"),
    (163, "UNKNOWN_CONNECTION_TRACKING_STATE", "Unknown connection tracking state"),
    (164, "LOCAL_HOST_IS_UNREACHABLE", "Local host is unreachable"),
    (
        165,
        "NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION",
        "No configuration available to perform policy decision",
    ),
    (166, "UNSUPPORTED_L2_PROTOCOL", "Unsupported L2 protocol"),
    (167, "NO_MAPPING_FOR_NAT_MASQUERADE", "No mapping for NAT masquerade"),
    (168, "UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE", "Unsupported protocol for NAT masquerade"),
    (169, "FIB_LOOKUP_FAILED", "FIB lookup failed"),
    (170, "ENCAPSULATION_TRAFFIC_IS_PROHIBITED", "Encapsulation traffic is prohibited"),
    (171, "INVALID_IDENTITY", "Invalid identity"),
    (172, "UNKNOWN_SENDER", "Unknown sender"),
    (173, "NAT_NOT_NEEDED", "NAT not needed"),
    (174, "IS_A_CLUSTERIP", "Is a ClusterIP"),
    (175, "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND", "First logical datagram fragment not found"),
    (176, "FORBIDDEN_ICMPV6_MESSAGE", "Forbidden ICMPv6 message"),
    (177, "DENIED_BY_LB_SRC_RANGE_CHECK", "Denied by LB src range check"),
    (178, "SOCKET_LOOKUP_FAILED", "Socket lookup failed"),
    (179, "SOCKET_ASSIGN_FAILED", "Socket assign failed"),
    (180, "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL", "Proxy redirection not supported for protocol"),
    (181, "POLICY_DENY", "Policy denied by denylist"),
    (182, "VLAN_FILTERED", "VLAN traffic disallowed by VLAN filter"),
    (183, "INVALID_VNI", "Incorrect VNI from VTEP"),
    (184, "INVALID_TC_BUFFER", "Failed to update or lookup TC buffer"),
    (185, "NO_SID", "No SID was found for the IP address"),
    (186, "MISSING_SRV6_STATE", "SRv6 state was removed during tail call"),
    (187, "NAT46", "L3 translation from IPv4 to IPv6 failed (NAT46)"),
    (188, "NAT64", "L3 translation from IPv6 to IPv4 failed (NAT64)"),
    (189, "AUTH_REQUIRED", "Authentication required"),
    (190, "CT_NO_MAP_FOUND", "No conntrack map found"),
    (191, "SNAT_NO_MAP_FOUND", "No nat map found"),
    (192, "INVALID_CLUSTER_ID", "Invalid ClusterID"),
    (193, "UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP", "Unsupported packet protocol for DSR encapsulation"),
    (194, "NO_EGRESS_GATEWAY", "No egress gateway found"),
    (195, "UNENCRYPTED_TRAFFIC", "Traffic is unencrypted"),
    (196, "TTL_EXCEEDED", "TTL exceeded"),
    (197, "NO_NODE_ID", "No node ID found"),
    (198, "DROP_RATE_LIMITED", "Rate limited"),
    (199, "IGMP_HANDLED", "IGMP handled"),
    (200, "IGMP_SUBSCRIBED", "IGMP subscribed"),
    (201, "MULTICAST_HANDLED", "Multicast handled"),
    (202, "DROP_HOST_NOT_READY", "Host datapath not ready"),
    (203, "DROP_EP_NOT_READY", "Endpoint policy program not available"),
    (204, "DROP_NO_EGRESS_IP", "No Egress IP configured"),
    (205, "DROP_PUNT_PROXY", "Punt to proxy"),
    (207, "DROP_FRAG_NOT_FOUND_WORLD", ""),
];

/// The `flow.proto` name of a drop reason (`POLICY_DENIED`), if it has one.
pub fn drop_reason_name(code: u32) -> Option<&'static str> {
    DROP_REASONS.iter().find(|(c, _, _)| u32::from(*c) == code).map(|(_, name, _)| *name)
}

/// What `cilium monitor` and Hubble's compact output call a drop reason ("Policy denied"); the
/// number for codes without a text.
pub fn drop_reason_text(code: u32) -> String {
    DROP_REASONS
        .iter()
        .find(|(c, _, text)| u32::from(*c) == code && !text.is_empty())
        .map_or_else(|| code.to_string(), |(_, _, text)| (*text).to_string())
}

/// The drop reason of a `flow.proto` name.
pub fn drop_reason_code(name: &str) -> Option<u32> {
    DROP_REASONS.iter().find(|(_, n, _)| *n == name).map(|(c, _, _)| u32::from(*c))
}

/// What Hubble's compact output calls an observation point (`to-endpoint`).
pub fn observation_point_text(point: u8) -> String {
    let text = match point {
        obs::TO_ENDPOINT => "to-endpoint",
        obs::TO_PROXY => "to-proxy",
        obs::TO_HOST => "to-host",
        obs::TO_STACK => "to-stack",
        obs::TO_OVERLAY => "to-overlay",
        obs::FROM_ENDPOINT => "from-endpoint",
        obs::FROM_PROXY => "from-proxy",
        obs::FROM_HOST => "from-host",
        obs::FROM_STACK => "from-stack",
        obs::FROM_OVERLAY => "from-overlay",
        obs::FROM_NETWORK => "from-network",
        obs::TO_NETWORK => "to-network",
        obs::FROM_CRYPTO => "from-crypto",
        obs::TO_CRYPTO => "to-crypto",
        other => return other.to_string(),
    };
    text.to_string()
}

/// What Hubble's compact output calls a policy match type (`L3-L4`).
pub fn policy_match_text(matched: u32) -> &'static str {
    match u8::try_from(matched).unwrap_or(u8::MAX) {
        match_type::L3_ONLY => "L3-Only",
        match_type::L3_L4 => "L3-L4",
        match_type::L4_ONLY => "L4-Only",
        match_type::ALL => "all",
        match_type::L3_PROTO => "L3-Proto",
        match_type::PROTO_ONLY => "Proto-Only",
        _ => "none",
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    #[default]
    VerdictUnknown,
    Forwarded,
    Dropped,
    Error,
    Audit,
    Redirected,
    Traced,
    Translated,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        f.write_str(&text)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FlowType {
    #[default]
    #[serde(rename = "UNKNOWN_TYPE")]
    Unknown,
    #[serde(rename = "L3_L4")]
    L3L4,
    L7,
    #[serde(rename = "SOCK")]
    Sock,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TrafficDirection {
    #[default]
    #[serde(rename = "TRAFFIC_DIRECTION_UNKNOWN")]
    Unknown,
    #[serde(rename = "INGRESS")]
    Ingress,
    #[serde(rename = "EGRESS")]
    Egress,
}

impl TrafficDirection {
    fn from_datapath(direction: u8) -> TrafficDirection {
        match direction {
            abi::DIR_INGRESS => TrafficDirection::Ingress,
            abi::DIR_EGRESS => TrafficDirection::Egress,
            _ => TrafficDirection::Unknown,
        }
    }

    fn reversed(self) -> TrafficDirection {
        match self {
            TrafficDirection::Ingress => TrafficDirection::Egress,
            TrafficDirection::Egress => TrafficDirection::Ingress,
            TrafficDirection::Unknown => TrafficDirection::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TrafficDirection::Unknown => "TRAFFIC_DIRECTION_UNKNOWN",
            TrafficDirection::Ingress => "INGRESS",
            TrafficDirection::Egress => "EGRESS",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TraceReason {
    #[default]
    TraceReasonUnknown,
    New,
    Established,
    Reply,
    Related,
}

impl TraceReason {
    fn from_ct(status: u8) -> TraceReason {
        match status {
            ct::NEW => TraceReason::New,
            ct::ESTABLISHED => TraceReason::Established,
            ct::REPLY => TraceReason::Reply,
            ct::RELATED => TraceReason::Related,
            _ => TraceReason::TraceReasonUnknown,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpVersion {
    #[default]
    #[serde(rename = "IP_NOT_USED")]
    NotUsed,
    IPv4,
    IPv6,
}

/// A protobuf enum value whose set the datapath does not bound: printed by name when it has one
/// and by number otherwise, as protojson does.
fn serialize_enum<S: Serializer>(value: u32, name: Option<&str>, serializer: S) -> Result<S::Ok, S::Error> {
    match name {
        Some(name) => serializer.serialize_str(name),
        None => serializer.serialize_u32(value),
    }
}

fn deserialize_enum<'de, D: Deserializer<'de>>(
    deserializer: D,
    by_name: fn(&str) -> Option<u32>,
) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NameOrNumber {
        Number(u32),
        Name(String),
    }
    match NameOrNumber::deserialize(deserializer)? {
        NameOrNumber::Number(n) => Ok(n),
        NameOrNumber::Name(name) => {
            by_name(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown enum value `{name}`")))
        }
    }
}

/// `flow.proto`'s `DropReason`: the code, printed by its name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DropReason(pub u32);

impl DropReason {
    pub fn name(self) -> Option<&'static str> {
        if self.0 == 0 { Some("DROP_REASON_UNKNOWN") } else { drop_reason_name(self.0) }
    }
}

impl Serialize for DropReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_enum(self.0, self.name(), serializer)
    }
}

impl<'de> Deserialize<'de> for DropReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_enum(
            deserializer,
            |name| if name == "DROP_REASON_UNKNOWN" { Some(0) } else { drop_reason_code(name) },
        )
        .map(DropReason)
    }
}

/// `flow.proto`'s `TraceObservationPoint` (the datapath's 0, to-endpoint, is 101 there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ObservationPoint(pub u32);

const OBSERVATION_POINTS: &[(u32, &str)] = &[
    (0, "UNKNOWN_POINT"),
    (1, "TO_PROXY"),
    (2, "TO_HOST"),
    (3, "TO_STACK"),
    (4, "TO_OVERLAY"),
    (101, "TO_ENDPOINT"),
    (5, "FROM_ENDPOINT"),
    (6, "FROM_PROXY"),
    (7, "FROM_HOST"),
    (8, "FROM_STACK"),
    (9, "FROM_OVERLAY"),
    (10, "FROM_NETWORK"),
    (11, "TO_NETWORK"),
    (12, "FROM_CRYPTO"),
    (13, "TO_CRYPTO"),
];

impl ObservationPoint {
    pub const TO_ENDPOINT: ObservationPoint = ObservationPoint(101);

    /// The point of a trace event's subtype.
    pub fn from_subtype(subtype: u8) -> ObservationPoint {
        if subtype == obs::TO_ENDPOINT { ObservationPoint::TO_ENDPOINT } else { ObservationPoint(u32::from(subtype)) }
    }

    pub fn name(self) -> Option<&'static str> {
        OBSERVATION_POINTS.iter().find(|(v, _)| *v == self.0).map(|(_, n)| *n)
    }
}

impl Serialize for ObservationPoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_enum(self.0, self.name(), serializer)
    }
}

impl<'de> Deserialize<'de> for ObservationPoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_enum(deserializer, |name| OBSERVATION_POINTS.iter().find(|(_, n)| *n == name).map(|(v, _)| *v))
            .map(ObservationPoint)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ethernet {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ip {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination: String,
    #[serde(rename = "ipVersion", skip_serializing_if = "is_default")]
    pub ip_version: IpVersion,
    #[serde(skip_serializing_if = "is_default")]
    pub encrypted: bool,
    /// A translated reply's source before translation: the backend behind the service address
    /// in `source`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source_xlated: String,
}

/// `Service`: the Kubernetes Service a flow's address belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Service {
    pub name: String,
    pub namespace: String,
}

/// `TCPFlags`: each flag present, and true, only when set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "UPPERCASE")]
pub struct TcpFlags {
    #[serde(skip_serializing_if = "is_default")]
    pub fin: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub syn: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub rst: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub psh: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub ack: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub urg: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub ece: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub cwr: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub ns: bool,
}

impl TcpFlags {
    /// As Hubble's summary lists them: "SYN, ACK".
    pub fn summary(&self) -> String {
        [
            (self.syn, "SYN"),
            (self.ack, "ACK"),
            (self.rst, "RST"),
            (self.fin, "FIN"),
            (self.psh, "PSH"),
            (self.urg, "URG"),
            (self.ece, "ECE"),
            (self.cwr, "CWR"),
            (self.ns, "NS"),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(", ")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tcp {
    #[serde(skip_serializing_if = "is_default")]
    pub source_port: u32,
    #[serde(skip_serializing_if = "is_default")]
    pub destination_port: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<TcpFlags>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Udp {
    #[serde(skip_serializing_if = "is_default")]
    pub source_port: u32,
    #[serde(skip_serializing_if = "is_default")]
    pub destination_port: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Icmp {
    #[serde(rename = "type", skip_serializing_if = "is_default")]
    pub icmp_type: u32,
    #[serde(skip_serializing_if = "is_default")]
    pub code: u32,
}

/// `Layer4`, a oneof: `{"TCP":{...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layer4 {
    #[serde(rename = "TCP")]
    Tcp(Tcp),
    #[serde(rename = "UDP")]
    Udp(Udp),
    #[serde(rename = "ICMPv4")]
    Icmpv4(Icmp),
    #[serde(rename = "ICMPv6")]
    Icmpv6(Icmp),
}

impl Layer4 {
    /// Source and destination port, for TCP and UDP.
    pub fn ports(&self) -> Option<(u32, u32)> {
        match self {
            Layer4::Tcp(t) => Some((t.source_port, t.destination_port)),
            Layer4::Udp(u) => Some((u.source_port, u.destination_port)),
            Layer4::Icmpv4(_) | Layer4::Icmpv6(_) => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Endpoint {
    /// The endpoint ID, for pods on the node that saw the packet.
    #[serde(rename = "ID", skip_serializing_if = "is_default")]
    pub id: u32,
    #[serde(skip_serializing_if = "is_default")]
    pub identity: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cluster_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventType {
    #[serde(rename = "type", skip_serializing_if = "is_default")]
    pub event_type: i32,
    #[serde(skip_serializing_if = "is_default")]
    pub sub_type: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkInterface {
    #[serde(skip_serializing_if = "is_default")]
    pub index: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// One Hubble flow, fields in `flow.proto`'s order, zero values left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Flow {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub time: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uuid: String,
    #[serde(skip_serializing_if = "is_default")]
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "is_default")]
    pub drop_reason: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ethernet: Option<Ethernet>,
    #[serde(rename = "IP", skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ip>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l4: Option<Layer4>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Endpoint>,
    #[serde(rename = "Type", skip_serializing_if = "is_default")]
    pub flow_type: FlowType,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<EventType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_service: Option<Service>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_service: Option<Service>,
    #[serde(skip_serializing_if = "is_default")]
    pub traffic_direction: TrafficDirection,
    #[serde(skip_serializing_if = "is_default")]
    pub policy_match_type: u32,
    #[serde(skip_serializing_if = "is_default")]
    pub trace_observation_point: ObservationPoint,
    #[serde(skip_serializing_if = "is_default")]
    pub trace_reason: TraceReason,
    #[serde(skip_serializing_if = "is_default")]
    pub drop_reason_desc: DropReason,
    /// Absent when unknown (drops), as Hubble's `BoolValue`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_reply: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<NetworkInterface>,
    #[serde(rename = "Summary", skip_serializing_if = "String::is_empty")]
    pub summary: String,
}

/// A flow as `hubble observe -o json` prints it: Hubble's `GetFlowsResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowRecord {
    pub flow: Flow,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub time: String,
}

impl Flow {
    /// The event type (`abi::EVENT_*`).
    pub fn event_type(&self) -> u8 {
        self.event_type.map_or(0, |t| u8::try_from(t.event_type).unwrap_or(0))
    }

    pub fn event_sub_type(&self) -> u8 {
        self.event_type.map_or(0, |t| u8::try_from(t.sub_type).unwrap_or(0))
    }

    /// Source and destination port (TCP and UDP).
    pub fn ports(&self) -> Option<(u32, u32)> {
        self.l4.as_ref().and_then(Layer4::ports)
    }

    /// The flow for golden files: without `time` and `uuid`, keys in `flow.proto`'s order.
    pub fn normalized(&self) -> Flow {
        Flow { time: String::new(), uuid: String::new(), ..self.clone() }
    }

    /// [`Flow::normalized`] as JSON, on one line.
    pub fn normalized_json(&self) -> String {
        serde_json::to_string(&self.normalized()).expect("a flow serialises")
    }

    /// The flow's type as Hubble's compact output prints it: `to-endpoint`, `Policy denied`,
    /// `policy-verdict:L3-L4 INGRESS`.
    pub fn compact_type(&self) -> String {
        match self.event_type() {
            abi::EVENT_TRACE => observation_point_text(self.event_sub_type()),
            abi::EVENT_DROP => drop_reason_text(u32::from(self.event_sub_type())),
            abi::EVENT_POLICY_VERDICT => {
                format!(
                    "policy-verdict:{} {}",
                    policy_match_text(self.policy_match_type),
                    self.traffic_direction.as_str()
                )
            }
            _ => "UNKNOWN".to_string(),
        }
    }

    /// The verdict as Hubble's compact output prints it: policy verdicts are ALLOWED or DENIED.
    pub fn compact_verdict(&self) -> String {
        let policy = self.event_type() == abi::EVENT_POLICY_VERDICT;
        match self.verdict {
            Verdict::Forwarded | Verdict::Redirected if policy => "ALLOWED".into(),
            Verdict::Dropped | Verdict::Error if policy => "DENIED".into(),
            Verdict::Audit if policy => "AUDITED".into(),
            other => other.to_string(),
        }
    }

    /// Hubble's compact line after the timestamp:
    /// `x/a:43210 (ID:1234) -> y/b:80 (ID:5678) to-endpoint FORWARDED (TCP Flags: SYN)`. Replies
    /// are printed from the other side with `<-`, flows not known to be either with `<>`.
    pub fn compact_line(&self, color: bool) -> String {
        let (source_port, destination_port) = self.ports().unwrap_or((0, 0));
        let host = |endpoint: &Option<Endpoint>, ip: Option<&str>, port: u32| -> String {
            let endpoint = endpoint.clone().unwrap_or_default();
            let name = if !endpoint.pod_name.is_empty() {
                if endpoint.namespace.is_empty() {
                    endpoint.pod_name.clone()
                } else {
                    format!("{}/{}", endpoint.namespace, endpoint.pod_name)
                }
            } else {
                ip.unwrap_or_default().to_string()
            };
            match (port, name.contains(':')) {
                (0, _) => name,
                (_, true) => format!("[{name}]:{port}"),
                (_, false) => format!("{name}:{port}"),
            }
        };
        let (mut src, mut dst) = match &self.ip {
            Some(ip) => (
                host(&self.source, Some(&ip.source), source_port),
                host(&self.destination, Some(&ip.destination), destination_port),
            ),
            None => match &self.ethernet {
                Some(eth) => (eth.source.clone(), eth.destination.clone()),
                None => (String::new(), String::new()),
            },
        };
        let identity = |endpoint: &Option<Endpoint>| format_identity(endpoint.as_ref().map_or(0, |e| e.identity));
        let (mut src_id, mut dst_id) = (identity(&self.source), identity(&self.destination));
        let arrow = match self.is_reply {
            None => "<>",
            Some(false) => "->",
            Some(true) => {
                std::mem::swap(&mut src, &mut dst);
                std::mem::swap(&mut src_id, &mut dst_id);
                "<-"
            }
        };
        let verdict = self.compact_verdict();
        let verdict = if !color {
            verdict
        } else {
            let code = match self.verdict {
                Verdict::Forwarded | Verdict::Redirected => "32",
                Verdict::Dropped | Verdict::Error => "31",
                Verdict::Audit => "33",
                _ => "0",
            };
            format!("\x1b[{code}m{verdict}\x1b[0m")
        };
        format!("{src} {src_id} {arrow} {dst} {dst_id} {} {verdict} ({})", self.compact_type(), self.summary)
    }
}

/// `(ID:1234)`, or the name of a reserved identity: `(world)`.
fn format_identity(identity: u32) -> String {
    let reserved = match identity {
        abi::identity::UNKNOWN => "unknown",
        abi::identity::HOST => "host",
        abi::identity::WORLD => "world",
        abi::identity::UNMANAGED => "unmanaged",
        abi::identity::HEALTH => "health",
        abi::identity::INIT => "init",
        abi::identity::REMOTE_NODE => "remote-node",
        abi::identity::KUBE_APISERVER => "kube-apiserver",
        abi::identity::INGRESS => "ingress",
        9 => "world-ipv4",
        10 => "world-ipv6",
        _ => return format!("(ID:{identity})"),
    };
    format!("({reserved})")
}

impl FlowRecord {
    /// Wraps a flow stamped with `time` (and a fresh uuid) as Hubble's `GetFlowsResponse`.
    pub fn new(mut flow: Flow, time: SystemTime) -> FlowRecord {
        flow.time = timestamp(time);
        flow.uuid = new_uuid();
        FlowRecord { node_name: flow.node_name.clone(), time: flow.time.clone(), flow }
    }

    /// One line of `hubble observe -o compact`, timestamp in local time.
    pub fn compact(&self, color: bool) -> String {
        let time = parse_timestamp(&self.time).map_or_else(|| "N/A".to_string(), local_stamp);
        format!("{time}: {}", self.flow.compact_line(color))
    }
}

/// Past this size the flow log moves to `flows.jsonl.1` (replacing the one before) and starts
/// anew, so a lab keeps at most twice this much.
pub const FLOW_LOG_LIMIT: u64 = 64 << 20;

/// Where a flow log's previous part is kept: `flows.jsonl.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".1");
    path.with_file_name(name)
}

/// A file of flows, one [`FlowRecord`] a line as `hubble observe -o json` prints them, kept below
/// a size by rotation.
#[derive(Debug)]
pub struct FlowLog {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    limit: u64,
}

impl FlowLog {
    /// Opens `path` to append to it.
    pub fn open(path: &Path, limit: u64) -> io::Result<FlowLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(FlowLog { path: path.to_path_buf(), out: BufWriter::new(file), size, limit })
    }

    pub fn append(&mut self, record: &FlowRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.limit {
            self.rotate()?;
        }
        self.out.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Writes out what is buffered, so readers see every flow appended so far.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        std::fs::rename(&self.path, rotated_path(&self.path))?;
        let file = OpenOptions::new().create(true).write(true).truncate(true).open(&self.path)?;
        self.out = BufWriter::new(file);
        self.size = 0;
        Ok(())
    }
}

/// What the plan says about one node.
#[derive(Debug, Clone)]
struct NodeInfo {
    name: String,
    /// Interface names by index inside the node's namespace.
    interfaces: HashMap<u32, String>,
}

#[derive(Debug, Clone)]
struct PodInfo {
    node_id: u16,
    endpoint_id: u16,
    identity: u32,
    namespace: String,
    name: String,
}

/// The lookups decoding needs, built once from a plan: nodes by ID, pods and nodes by address,
/// labels by identity.
#[derive(Debug, Clone)]
pub struct FlowContext {
    nodes: HashMap<u16, NodeInfo>,
    pods: HashMap<Ipv4Addr, PodInfo>,
    /// Node addresses (uplink and router) to node ID.
    node_ips: HashMap<Ipv4Addr, u16>,
    /// Sorted label strings of each identity.
    labels: BTreeMap<u32, Vec<String>>,
    /// The service of each frontend, by reverse NAT index.
    services: HashMap<u16, Service>,
}

/// What decoding reads off the sample.
#[derive(Debug, Default)]
struct Packet {
    ethernet: Option<Ethernet>,
    ip: Option<Ip>,
    l4: Option<Layer4>,
    source: Option<IpAddr>,
    destination: Option<IpAddr>,
    summary: String,
}

impl FlowContext {
    pub fn new(plan: &Plan) -> FlowContext {
        let mut nodes: HashMap<u16, NodeInfo> = plan
            .nodes
            .iter()
            .map(|n| {
                let mut interfaces = HashMap::from([
                    (1, "lo".to_string()),
                    (plan::ifindex::UPLINK, plan::UPLINK_NAME.to_string()),
                    (plan::ifindex::VXLAN, plan::VXLAN_NAME.to_string()),
                ]);
                interfaces.extend(n.uplinks.iter().map(|u| (u.index, u.name.clone())));
                (n.id, NodeInfo { name: n.name.clone(), interfaces })
            })
            .collect();
        let mut pods = HashMap::new();
        for pod in &plan.pods {
            let Some(node) = plan.nodes.get(pod.node) else { continue };
            if let Some(info) = nodes.get_mut(&node.id) {
                info.interfaces.insert(pod.host_ifindex, pod.host_ifname.clone());
            }
            pods.insert(
                pod.ip,
                PodInfo {
                    node_id: node.id,
                    endpoint_id: pod.endpoint_id,
                    identity: pod.identity,
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                },
            );
        }
        let node_ips = plan.nodes.iter().flat_map(|n| n.addresses().into_iter().map(|ip| (ip, n.id))).collect();
        let labels = plan
            .identities
            .iter()
            .map(|(id, labels)| {
                let mut strings = labels.to_strings();
                strings.sort();
                (*id, strings)
            })
            .collect();
        FlowContext { nodes, pods, node_ips, labels, services: HashMap::new() }
    }

    /// Names the services of translated traffic.
    pub fn with_services(mut self, services: &crate::services::Services) -> FlowContext {
        self.services = services
            .frontends()
            .map(|(id, s, _)| (id, Service { name: s.name.clone(), namespace: s.namespace.clone() }))
            .collect();
        self
    }

    /// The name of node `id`.
    pub fn node_name(&self, id: u16) -> Option<&str> {
        self.nodes.get(&id).map(|n| n.name.as_str())
    }

    /// The flow of one event, without `time` and `uuid`; `None` for event types that are not
    /// flows.
    pub fn decode(&self, event: &Event) -> Option<Flow> {
        let kind = event.r#type;
        if ![abi::EVENT_DROP, abi::EVENT_TRACE, abi::EVENT_POLICY_VERDICT].contains(&kind) {
            return None;
        }
        let packet = decode_packet(event.sample());
        let mut flow = Flow {
            ethernet: packet.ethernet,
            ip: packet.ip,
            l4: packet.l4,
            source: Some(self.endpoint(packet.source, event.src_identity, event.node_id)),
            destination: Some(self.endpoint(packet.destination, event.dst_identity, event.node_id)),
            flow_type: FlowType::L3L4,
            node_name: self.node_name(event.node_id).unwrap_or_default().to_string(),
            event_type: Some(EventType { event_type: i32::from(kind), sub_type: i32::from(event.subtype) }),
            summary: packet.summary,
            ..Flow::default()
        };
        let direction = TrafficDirection::from_datapath(event.direction);
        let ct_known = (ct::NEW..=ct::RELATED).contains(&event.ct_status);
        let reply = event.ct_status == ct::REPLY || event.is_reply != 0;
        match kind {
            abi::EVENT_DROP => {
                flow.verdict = Verdict::Dropped;
                flow.drop_reason = u32::from(event.subtype);
                // Hubble knows the direction of a drop only at an endpoint.
                if event.endpoint_id != 0 {
                    flow.traffic_direction = direction;
                }
            }
            abi::EVENT_TRACE => {
                flow.verdict = Verdict::Forwarded;
                flow.trace_observation_point = ObservationPoint::from_subtype(event.subtype);
                flow.trace_reason = TraceReason::from_ct(event.ct_status);
                if ct_known {
                    flow.is_reply = Some(reply);
                    // The direction of the connection, not of the packet, as Hubble has it.
                    if event.endpoint_id != 0 {
                        flow.traffic_direction = if reply { direction.reversed() } else { direction };
                    }
                }
            }
            _ => {
                if event.verdict < 0 {
                    flow.verdict = Verdict::Dropped;
                    flow.drop_reason = event.verdict.unsigned_abs();
                } else {
                    flow.verdict = Verdict::Forwarded;
                    // Verdicts are sent for a connection's first packet: never a reply.
                    flow.is_reply = Some(false);
                }
                flow.traffic_direction = direction;
                flow.policy_match_type = u32::from(event.match_type);
            }
        }
        if let Some(service) = self.services.get(&event.rev_nat_index) {
            // A reply translated back to the frontend comes from the service, with the backend
            // it really came from; anything else goes to it.
            if event.orig_ip != 0 {
                flow.source_service = Some(service.clone());
                if let Some(ip) = flow.ip.as_mut() {
                    ip.source_xlated = Ipv4Addr::from(event.orig_ip.to_ne_bytes()).to_string();
                }
            } else {
                flow.destination_service = Some(service.clone());
            }
        }
        flow.drop_reason_desc = DropReason(flow.drop_reason);
        if event.ifindex != 0 {
            let name = self.nodes.get(&event.node_id).and_then(|n| n.interfaces.get(&event.ifindex));
            flow.interface = Some(NetworkInterface { index: event.ifindex, name: name.cloned().unwrap_or_default() });
        }
        Some(flow)
    }

    /// [`FlowContext::decode`], stamped with `time` and a uuid and wrapped as Hubble prints it.
    pub fn record(&self, event: &Event, time: SystemTime) -> Option<FlowRecord> {
        self.decode(event).map(|flow| FlowRecord::new(flow, time))
    }

    /// Who is behind `ip`, as the node `node_id` sees it: a pod (with its endpoint ID when local)
    /// or only an identity. The datapath's identity wins; without one, what the plan knows.
    fn endpoint(&self, ip: Option<IpAddr>, datapath_identity: u32, node_id: u16) -> Endpoint {
        let v4 = match ip {
            Some(IpAddr::V4(v4)) => Some(v4),
            _ => None,
        };
        let pod = v4.and_then(|ip| self.pods.get(&ip));
        let fallback = match (pod, v4.and_then(|ip| self.node_ips.get(&ip))) {
            (Some(pod), _) => pod.identity,
            (None, Some(node)) if *node == node_id => abi::identity::HOST,
            (None, Some(_)) => abi::identity::REMOTE_NODE,
            (None, None) => abi::identity::UNKNOWN,
        };
        let identity = if datapath_identity != 0 { datapath_identity } else { fallback };
        let labels = self.labels.get(&identity).cloned().unwrap_or_default();
        let mut endpoint = Endpoint { identity, ..Endpoint::default() };
        if let Some(pod) = pod {
            // An unmanaged pod is no endpoint of its node.
            if pod.node_id == node_id && pod.identity != abi::identity::UNMANAGED {
                endpoint.id = u32::from(pod.endpoint_id);
            }
            endpoint.namespace = pod.namespace.clone();
            endpoint.pod_name = pod.name.clone();
        }
        endpoint.cluster_name = labels
            .iter()
            .find_map(|l| l.strip_prefix("k8s:io.cilium.k8s.policy.cluster="))
            .unwrap_or_default()
            .to_string();
        endpoint.labels = labels;
        endpoint
    }
}

/// Reads the packet's layers as Hubble's gopacket parser does, tolerating a cut-off sample; the
/// summary names the last layer read.
fn decode_packet(sample: &[u8]) -> Packet {
    let mut packet = Packet::default();
    let Ok(headers) = LaxPacketHeaders::from_ethernet(sample) else { return packet };
    if let Some(LinkHeader::Ethernet2(eth)) = &headers.link {
        packet.ethernet = Some(Ethernet { source: format_mac(eth.source), destination: format_mac(eth.destination) });
        packet.summary = "Ethernet".into();
    }
    match &headers.net {
        Some(NetHeaders::Ipv4(ip, _)) => {
            let (source, destination) = (Ipv4Addr::from(ip.source), Ipv4Addr::from(ip.destination));
            packet.ip = Some(Ip {
                source: source.to_string(),
                destination: destination.to_string(),
                ip_version: IpVersion::IPv4,
                encrypted: false,
                source_xlated: String::new(),
            });
            packet.source = Some(source.into());
            packet.destination = Some(destination.into());
            packet.summary = "IPv4".into();
        }
        Some(NetHeaders::Ipv6(ip, _)) => {
            let (source, destination) = (std::net::Ipv6Addr::from(ip.source), std::net::Ipv6Addr::from(ip.destination));
            packet.ip = Some(Ip {
                source: source.to_string(),
                destination: destination.to_string(),
                ip_version: IpVersion::IPv6,
                encrypted: false,
                source_xlated: String::new(),
            });
            packet.source = Some(source.into());
            packet.destination = Some(destination.into());
            packet.summary = "IPv6".into();
        }
        Some(NetHeaders::Arp(_)) | None => {}
    }
    match &headers.transport {
        Some(TransportHeader::Tcp(tcp)) => {
            let flags = TcpFlags {
                fin: tcp.fin,
                syn: tcp.syn,
                rst: tcp.rst,
                psh: tcp.psh,
                ack: tcp.ack,
                urg: tcp.urg,
                ece: tcp.ece,
                cwr: tcp.cwr,
                ns: tcp.ns,
            };
            packet.summary = format!("TCP Flags: {}", flags.summary());
            packet.l4 = Some(Layer4::Tcp(Tcp {
                source_port: u32::from(tcp.source_port),
                destination_port: u32::from(tcp.destination_port),
                flags: Some(flags),
            }));
        }
        Some(TransportHeader::Udp(udp)) => {
            packet.summary = "UDP".into();
            packet.l4 = Some(Layer4::Udp(Udp {
                source_port: u32::from(udp.source_port),
                destination_port: u32::from(udp.destination_port),
            }));
        }
        Some(TransportHeader::Icmpv4(icmp)) => {
            let bytes = icmp.to_bytes();
            let (icmp_type, code) = (bytes[0], bytes[1]);
            packet.summary = format!("ICMPv4 {}", icmpv4_text(icmp_type, code));
            packet.l4 = Some(Layer4::Icmpv4(Icmp { icmp_type: u32::from(icmp_type), code: u32::from(code) }));
        }
        Some(TransportHeader::Icmpv6(icmp)) => {
            let bytes = icmp.to_bytes();
            let (icmp_type, code) = (bytes[0], bytes[1]);
            packet.summary = format!("ICMPv6 {}", icmpv6_text(icmp_type, code));
            packet.l4 = Some(Layer4::Icmpv6(Icmp { icmp_type: u32::from(icmp_type), code: u32::from(code) }));
        }
        Some(TransportHeader::Igmp(_)) | None => {}
    }
    packet
}

fn format_mac(mac: [u8; 6]) -> String {
    plan::Mac(mac).to_string()
}

/// gopacket's `ICMPv4TypeCode.String()`: "EchoRequest", "DestinationUnreachable(Port)".
fn icmpv4_text(icmp_type: u8, code: u8) -> String {
    let (name, codes): (&str, &[&str]) = match icmp_type {
        0 => ("EchoReply", &[]),
        3 => (
            "DestinationUnreachable",
            &[
                "Net",
                "Host",
                "Protocol",
                "Port",
                "FragmentationNeeded",
                "SourceRoutingFailed",
                "NetUnknown",
                "HostUnknown",
                "SourceIsolated",
                "NetAdminProhibited",
                "HostAdminProhibited",
                "NetTOS",
                "HostTOS",
                "CommAdminProhibited",
                "HostPrecedence",
                "PrecedenceCutoff",
            ],
        ),
        4 => ("SourceQuench", &[]),
        5 => ("Redirect", &["Net", "Host", "TOS+Net", "TOS+Host"]),
        8 => ("EchoRequest", &[]),
        9 => ("RouterAdvertisement", &[]),
        10 => ("RouterSolicitation", &[]),
        11 => ("TimeExceeded", &["TTLExceeded", "FragmentReassemblyTimeExceeded"]),
        12 => ("ParameterProblem", &["PointerIndicatesError", "MissingOption", "BadLength"]),
        13 => ("TimestampRequest", &[]),
        14 => ("TimestampReply", &[]),
        15 => ("InfoRequest", &[]),
        16 => ("InfoReply", &[]),
        17 => ("AddressMaskRequest", &[]),
        18 => ("AddressMaskReply", &[]),
        _ => return format!("{icmp_type}({code})"),
    };
    type_code_text(name, codes, code)
}

/// gopacket's `ICMPv6TypeCode.String()` for the common types.
fn icmpv6_text(icmp_type: u8, code: u8) -> String {
    let (name, codes): (&str, &[&str]) = match icmp_type {
        1 => (
            "DestinationUnreachable",
            &["NoRouteToDst", "AdminProhibited", "BeyondScopeOfSrc", "AddressUnreachable", "PortUnreachable"],
        ),
        2 => ("PacketTooBig", &[]),
        3 => ("TimeExceeded", &["HopLimitExceeded", "FragmentReassemblyTimeExceeded"]),
        4 => ("ParameterProblem", &["ErroneousHeaderField", "UnrecognizedNextHeader", "UnrecognizedIPv6Option"]),
        128 => ("EchoRequest", &[]),
        129 => ("EchoReply", &[]),
        133 => ("RouterSolicitation", &[]),
        134 => ("RouterAdvertisement", &[]),
        135 => ("NeighborSolicitation", &[]),
        136 => ("NeighborAdvertisement", &[]),
        137 => ("Redirect", &[]),
        _ => return format!("{icmp_type}({code})"),
    };
    type_code_text(name, codes, code)
}

fn type_code_text(name: &str, codes: &[&str], code: u8) -> String {
    match (codes.is_empty(), codes.get(usize::from(code))) {
        (true, _) if code == 0 => name.to_string(),
        (false, Some(code)) => format!("{name}({code})"),
        _ => format!("{name}(Code: {code})"),
    }
}

/// Days since 1970-01-01 to a civil date (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A time as protojson writes a `Timestamp`: RFC 3339 in UTC, with 0, 3, 6 or 9 fractional digits.
pub fn timestamp(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, nanos) = (since.as_secs() as i64, since.subsec_nanos());
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let fraction = match nanos {
        0 => String::new(),
        n if n % 1_000_000 == 0 => format!(".{:03}", n / 1_000_000),
        n if n % 1_000 == 0 => format!(".{:06}", n / 1_000),
        n => format!(".{n:09}"),
    };
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Reads back a [`timestamp`] (UTC, `Z`).
pub fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, clock) = text.split_once('T')?;
    let mut date = date.split('-');
    let (year, month, day): (i64, u32, u32) =
        (date.next()?.parse().ok()?, date.next()?.parse().ok()?, date.next()?.parse().ok()?);
    let (clock, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut clock = clock.split(':');
    let (hour, minute, second): (i64, i64, i64) =
        (clock.next()?.parse().ok()?, clock.next()?.parse().ok()?, clock.next()?.parse().ok()?);
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        format!("{fraction:0<9}").parse().ok()?
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

/// Hubble's compact timestamp (Go's `StampMilli`) in local time: `Nov 22 13:40:00.123`.
pub fn local_stamp(time: SystemTime) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as libc::time_t;
    // SAFETY: localtime_r only writes the struct it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return timestamp(time);
    }
    format!(
        "{} {:>2} {:02}:{:02}:{:02}.{:03}",
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        since.subsec_millis()
    )
}

/// A random (version 4) UUID, as Hubble gives each flow.
pub fn new_uuid() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `len` bytes into the buffer.
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if filled != bytes.len() as isize {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let seed = plan::stable_hash(&format!("{since:?}{}", std::process::id()));
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8..].copy_from_slice(&plan::stable_hash(&format!("{seed}")).to_le_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::load_str;
    use etherparse::PacketBuilder;
    use pretty_assertions::assert_eq;
    use serde_json::{Value, json};
    use std::path::Path;

    const TOPOLOGY: &str = "
name: t
nodes: [{name: node-1}, {name: node-2}]
namespaces: [{name: prod, labels: {team: a}}]
pods:
  - {name: client, namespace: prod, node: node-1, labels: {app: client}}
  - {name: web, namespace: prod, node: node-1, labels: {app: web}, ports: [tcp/80]}
  - {name: dns, node: node-2, labels: {app: dns}, ports: [udp/53]}
externals: [{name: inet, address: 203.0.113.10}]
";

    fn plan() -> Plan {
        Plan::new(&load_str(Path::new("t.yaml"), TOPOLOGY).unwrap().topology, "t")
    }

    fn pod<'a>(plan: &'a Plan, name: &str) -> &'a plan::PodPlan {
        plan.pods.iter().find(|p| p.name == name).unwrap()
    }

    fn blank_event() -> Event {
        Event {
            r#type: 0,
            subtype: 0,
            endpoint_id: 0,
            node_id: 1,
            direction: 0,
            ct_status: 0,
            src_identity: 0,
            dst_identity: 0,
            ifindex: 0,
            verdict: 0,
            match_type: 0,
            is_reply: 0,
            sample_len: 0,
            packet_len: 0,
            rev_nat_index: 0,
            pad: 0,
            orig_ip: 0,
            sample: [0; abi::EVENT_SAMPLE],
        }
    }

    fn with_packet(mut event: Event, packet: &[u8]) -> Event {
        let len = packet.len().min(abi::EVENT_SAMPLE);
        event.sample[..len].copy_from_slice(&packet[..len]);
        event.sample_len = len as u16;
        event.packet_len = packet.len() as u32;
        event
    }

    fn tcp_syn(from: &plan::PodPlan, to: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(from.mac.0, from.host_mac.0)
            .ipv4(from.ip.octets(), to.octets(), 64)
            .tcp(sport, dport, 1000, 64240)
            .syn();
        let mut bytes = Vec::new();
        builder.write(&mut bytes, &[]).unwrap();
        bytes
    }

    /// The keys of a JSON object's top level, in the order written.
    fn top_level_keys(text: &str) -> Vec<String> {
        let (mut keys, mut depth, mut in_string, mut escaped, mut current) = (Vec::new(), 0, false, false, None);
        for c in text.chars() {
            if in_string {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => {}
                }
                if let Some(key) = current.as_mut().filter(|_| in_string) {
                    String::push(key, c);
                }
                continue;
            }
            match c {
                '{' | '[' => depth += 1,
                '}' | ']' => depth -= 1,
                '"' => {
                    in_string = true;
                    current = (depth == 1).then(String::new);
                }
                ':' if depth == 1 => keys.extend(current.take()),
                ',' => current = None,
                _ => {}
            }
        }
        keys
    }

    fn json_of(flow: &Flow) -> Value {
        serde_json::to_value(flow).unwrap()
    }

    #[test]
    fn a_tcp_syn_to_an_endpoint_reads_as_hubble_prints_it() {
        let plan = plan();
        let ctx = FlowContext::new(&plan);
        let (client, web) = (pod(&plan, "client"), pod(&plan, "web"));
        let event = Event {
            r#type: abi::EVENT_TRACE,
            subtype: obs::TO_ENDPOINT,
            endpoint_id: web.endpoint_id,
            node_id: 1,
            direction: abi::DIR_INGRESS,
            ct_status: ct::NEW,
            src_identity: client.identity,
            dst_identity: web.identity,
            ifindex: web.host_ifindex,
            ..blank_event()
        };
        let flow = ctx.decode(&with_packet(event, &tcp_syn(client, web.ip, 43210, 80))).unwrap();
        let v = json_of(&flow);
        assert_eq!(v["verdict"], "FORWARDED");
        assert_eq!(v.get("drop_reason"), None);
        assert_eq!(v.get("drop_reason_desc"), None);
        assert_eq!(
            v["ethernet"],
            json!({"source": client.mac.to_string(), "destination": client.host_mac.to_string()})
        );
        assert_eq!(
            v["IP"],
            json!({"source": client.ip.to_string(), "destination": web.ip.to_string(), "ipVersion": "IPv4"})
        );
        assert_eq!(v["l4"], json!({"TCP": {"source_port": 43210, "destination_port": 80, "flags": {"SYN": true}}}));
        assert_eq!(v["source"]["ID"], client.endpoint_id);
        assert_eq!(v["source"]["identity"], client.identity);
        assert_eq!(v["source"]["namespace"], "prod");
        assert_eq!(v["source"]["pod_name"], "client");
        assert_eq!(v["source"]["cluster_name"], "default");
        assert_eq!(
            v["source"]["labels"],
            json!([
                "k8s:app=client",
                "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=prod",
                "k8s:io.cilium.k8s.namespace.labels.team=a",
                "k8s:io.cilium.k8s.policy.cluster=default",
                "k8s:io.cilium.k8s.policy.serviceaccount=default",
                "k8s:io.kubernetes.pod.namespace=prod",
            ])
        );
        assert_eq!(v["destination"]["ID"], web.endpoint_id);
        assert_eq!(v["destination"]["pod_name"], "web");
        assert_eq!(v["Type"], "L3_L4");
        assert_eq!(v["node_name"], "node-1");
        assert_eq!(v["event_type"], json!({"type": 4}));
        assert_eq!(v["traffic_direction"], "INGRESS");
        assert_eq!(v["trace_observation_point"], "TO_ENDPOINT");
        assert_eq!(v["trace_reason"], "NEW");
        assert_eq!(v["is_reply"], false);
        assert_eq!(v.get("policy_match_type"), None);
        assert_eq!(v["interface"], json!({"index": web.host_ifindex, "name": web.host_ifname}));
        assert_eq!(v["Summary"], "TCP Flags: SYN");
        // Keys in flow.proto's order, as Hubble prints them.
        let order = top_level_keys(&flow.normalized_json());
        assert_eq!(
            order,
            [
                "verdict",
                "ethernet",
                "IP",
                "l4",
                "source",
                "destination",
                "Type",
                "node_name",
                "event_type",
                "traffic_direction",
                "trace_observation_point",
                "trace_reason",
                "is_reply",
                "interface",
                "Summary"
            ]
        );
        assert_eq!(
            flow.compact_line(false),
            format!(
                "prod/client:43210 (ID:{}) -> prod/web:80 (ID:{}) to-endpoint FORWARDED (TCP Flags: SYN)",
                client.identity, web.identity
            )
        );
    }

    #[test]
    fn a_reply_is_in_the_connection_direction_and_printed_from_the_client() {
        let plan = plan();
        let ctx = FlowContext::new(&plan);
        let (client, web) = (pod(&plan, "client"), pod(&plan, "web"));
        let builder = PacketBuilder::ethernet2(web.host_mac.0, client.mac.0)
            .ipv4(web.ip.octets(), client.ip.octets(), 64)
            .tcp(80, 43210, 5000, 64240)
            .syn()
            .ack(1001);
        let mut bytes = Vec::new();
        builder.write(&mut bytes, &[]).unwrap();
        let event = Event {
            r#type: abi::EVENT_TRACE,
            subtype: obs::TO_ENDPOINT,
            endpoint_id: client.endpoint_id,
            direction: abi::DIR_INGRESS,
            ct_status: ct::REPLY,
            is_reply: 1,
            src_identity: web.identity,
            dst_identity: client.identity,
            ifindex: client.host_ifindex,
            ..blank_event()
        };
        let flow = ctx.decode(&with_packet(event, &bytes)).unwrap();
        let v = json_of(&flow);
        assert_eq!(v["traffic_direction"], "EGRESS");
        assert_eq!(v["trace_reason"], "REPLY");
        assert_eq!(v["is_reply"], true);
        assert_eq!(v["l4"]["TCP"]["flags"], json!({"SYN": true, "ACK": true}));
        assert_eq!(v["Summary"], "TCP Flags: SYN, ACK");
        assert_eq!(
            flow.compact_line(false),
            format!(
                "prod/client:43210 (ID:{}) <- prod/web:80 (ID:{}) to-endpoint FORWARDED (TCP Flags: SYN, ACK)",
                client.identity, web.identity
            )
        );
    }

    #[test]
    fn a_policy_drop_names_its_reason() {
        let plan = plan();
        let ctx = FlowContext::new(&plan);
        let (client, web) = (pod(&plan, "client"), pod(&plan, "web"));
        let event = Event {
            r#type: abi::EVENT_DROP,
            subtype: 133,
            endpoint_id: client.endpoint_id,
            direction: abi::DIR_EGRESS,
            src_identity: client.identity,
            dst_identity: web.identity,
            ifindex: client.host_ifindex,
            ..blank_event()
        };
        let flow = ctx.decode(&with_packet(event, &tcp_syn(client, web.ip, 38160, 8080))).unwrap();
        let v = json_of(&flow);
        assert_eq!(v["verdict"], "DROPPED");
        assert_eq!(v["drop_reason"], 133);
        assert_eq!(v["drop_reason_desc"], "POLICY_DENIED");
        assert_eq!(v["event_type"], json!({"type": 1, "sub_type": 133}));
        assert_eq!(v["traffic_direction"], "EGRESS");
        assert_eq!(v.get("is_reply"), None);
        assert_eq!(v.get("trace_observation_point"), None);
        assert_eq!(v.get("trace_reason"), None);
        assert_eq!(
            flow.compact_line(false),
            format!(
                "prod/client:38160 (ID:{}) <> prod/web:8080 (ID:{}) Policy denied DROPPED (TCP Flags: SYN)",
                client.identity, web.identity
            )
        );

        let deny = ctx.decode(&Event { subtype: 181, ..event }).unwrap();
        assert_eq!(json_of(&deny)["drop_reason_desc"], "POLICY_DENY");
        assert_eq!(deny.compact_type(), "Policy denied by denylist");
    }

    #[test]
    fn policy_verdicts_carry_match_type_and_verdict() {
        let plan = plan();
        let ctx = FlowContext::new(&plan);
        let (client, web) = (pod(&plan, "client"), pod(&plan, "web"));
        let event = Event {
            r#type: abi::EVENT_POLICY_VERDICT,
            endpoint_id: web.endpoint_id,
            direction: abi::DIR_INGRESS,
            ct_status: ct::NEW,
            src_identity: client.identity,
            dst_identity: web.identity,
            verdict: -181,
            match_type: match_type::L3_L4,
            ifindex: web.host_ifindex,
            ..blank_event()
        };
        let denied = ctx.decode(&with_packet(event, &tcp_syn(client, web.ip, 40000, 80))).unwrap();
        let v = json_of(&denied);
        assert_eq!(v["verdict"], "DROPPED");
        assert_eq!(v["drop_reason"], 181);
        assert_eq!(v["drop_reason_desc"], "POLICY_DENY");
        assert_eq!(v["event_type"], json!({"type": 5}));
        assert_eq!(v["policy_match_type"], 2);
        assert_eq!(v["traffic_direction"], "INGRESS");
        assert_eq!(v.get("is_reply"), None);
        assert!(denied.compact_line(false).ends_with("policy-verdict:L3-L4 INGRESS DENIED (TCP Flags: SYN)"));

        let allowed = ctx.decode(&Event { verdict: 0, match_type: match_type::L4_ONLY, ..event }).unwrap();
        let v = json_of(&allowed);
        assert_eq!(v["verdict"], "FORWARDED");
        assert_eq!(v.get("drop_reason"), None);
        assert_eq!(v["policy_match_type"], 3);
        assert_eq!(v["is_reply"], false);
        assert!(allowed.compact_line(false).contains("policy-verdict:L4-Only INGRESS ALLOWED"));

        let none = ctx.decode(&Event { verdict: -133, match_type: match_type::NONE, ..event }).unwrap();
        assert_eq!(json_of(&none).get("policy_match_type"), None);
        assert_eq!(none.compact_type(), "policy-verdict:none INGRESS");
    }

    #[test]
    fn udp_to_a_remote_pod_has_no_endpoint_id_and_goes_to_stack() {
        let plan = plan();
        let ctx = FlowContext::new(&plan);
        let (client, dns) = (pod(&plan, "client"), pod(&plan, "dns"));
        let builder = PacketBuilder::ethernet2(client.mac.0, client.host_mac.0)
            .ipv4(client.ip.octets(), dns.ip.octets(), 64)
            .udp(53000, 53);
        let mut bytes = Vec::new();
        builder.write(&mut bytes, &[1; 200]).unwrap();
        let event = Event {
            r#type: abi::EVENT_TRACE,
            subtype: obs::TO_STACK,
            endpoint_id: client.endpoint_id,
            direction: abi::DIR_EGRESS,
            ct_status: ct::ESTABLISHED,
            src_identity: client.identity,
            dst_identity: dns.identity,
            ifindex: client.host_ifindex,
            ..blank_event()
        };
        // The sample is cut off at 128 bytes; the headers still read.
        let flow = ctx.decode(&with_packet(event, &bytes)).unwrap();
        let v = json_of(&flow);
        assert_eq!(v["l4"], json!({"UDP": {"source_port": 53000, "destination_port": 53}}));
        assert_eq!(v["Summary"], "UDP");
        assert_eq!(v["trace_observation_point"], "TO_STACK");
        assert_eq!(v["event_type"], json!({"type": 4, "sub_type": 3}));
        assert_eq!(v["trace_reason"], "ESTABLISHED");
        assert_eq!(v["traffic_direction"], "EGRESS");
        assert_eq!(v["destination"]["pod_name"], "dns");
        assert_eq!(v["destination"]["namespace"], "default");
        assert_eq!(v["destination"].get("ID"), None, "dns is on another node");
        assert_eq!(v["destination"]["identity"], dns.identity);
    }

    #[test]
    fn icmp_to_the_world_has_reserved_labels() {
        let plan = plan();
        let ctx = FlowContext::new(&plan);
        let client = pod(&plan, "client");
        let builder = PacketBuilder::ethernet2(client.mac.0, client.host_mac.0)
            .ipv4(client.ip.octets(), [203, 0, 113, 10], 64)
            .icmpv4_echo_request(7, 1);
        let mut bytes = Vec::new();
        builder.write(&mut bytes, &[0; 56]).unwrap();
        let event = Event {
            r#type: abi::EVENT_TRACE,
            subtype: obs::FROM_ENDPOINT,
            endpoint_id: client.endpoint_id,
            direction: abi::DIR_EGRESS,
            src_identity: client.identity,
            dst_identity: abi::identity::WORLD,
            ifindex: client.host_ifindex,
            ..blank_event()
        };
        let flow = ctx.decode(&with_packet(event, &bytes)).unwrap();
        let v = json_of(&flow);
        assert_eq!(v["l4"], json!({"ICMPv4": {"type": 8}}));
        assert_eq!(v["Summary"], "ICMPv4 EchoRequest");
        assert_eq!(v["destination"], json!({"identity": 2, "labels": ["reserved:world"]}));
        assert_eq!(v["trace_observation_point"], "FROM_ENDPOINT");
        // No conntrack result: reply-ness and direction unknown, as Hubble has them.
        assert_eq!(v.get("trace_reason"), None);
        assert_eq!(v.get("is_reply"), None);
        assert_eq!(v.get("traffic_direction"), None);
        assert_eq!(
            flow.compact_line(false),
            format!(
                "prod/client (ID:{}) <> 203.0.113.10 (world) from-endpoint FORWARDED (ICMPv4 EchoRequest)",
                client.identity
            )
        );
    }

    #[test]
    fn every_drop_reason_of_the_datapath_has_its_proto_name_and_text() {
        for (code, name, text) in [
            (132, "INVALID_SOURCE_IP", "Invalid source ip"),
            (133, "POLICY_DENIED", "Policy denied"),
            (134, "INVALID_PACKET_DROPPED", "Invalid packet"),
            (135, "CT_TRUNCATED_OR_INVALID_HEADER", "CT: Truncated or invalid header"),
            (139, "UNSUPPORTED_L3_PROTOCOL", "Unsupported L3 protocol"),
            (142, "UNKNOWN_L4_PROTOCOL", "Unknown L4 protocol"),
            (155, "CT_MAP_INSERTION_FAILED", "CT: Map insertion failed"),
            (157, "IP_FRAGMENTATION_NOT_SUPPORTED", "IP fragmentation not supported"),
            (158, "SERVICE_BACKEND_NOT_FOUND", "Service backend not found"),
            (160, "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT", "No tunnel/encapsulation endpoint (datapath BUG!)"),
            (181, "POLICY_DENY", "Policy denied by denylist"),
            (203, "DROP_EP_NOT_READY", "Endpoint policy program not available"),
        ] {
            assert_eq!(drop_reason_name(code), Some(name), "{code}");
            assert_eq!(drop_reason_text(code), text, "{code}");
            assert_eq!(drop_reason_code(name), Some(code));
        }
        // Codes flow.proto has no name for print as numbers, as protojson does.
        assert_eq!(serde_json::to_value(DropReason(159)).unwrap(), json!(159));
        assert_eq!(drop_reason_text(159), "159");
    }

    #[test]
    fn observation_points_map_to_hubble_names() {
        for (subtype, name, text) in [
            (obs::TO_ENDPOINT, "TO_ENDPOINT", "to-endpoint"),
            (obs::TO_STACK, "TO_STACK", "to-stack"),
            (obs::TO_OVERLAY, "TO_OVERLAY", "to-overlay"),
            (obs::FROM_ENDPOINT, "FROM_ENDPOINT", "from-endpoint"),
            (obs::FROM_OVERLAY, "FROM_OVERLAY", "from-overlay"),
            (obs::FROM_NETWORK, "FROM_NETWORK", "from-network"),
        ] {
            let point = ObservationPoint::from_subtype(subtype);
            assert_eq!(serde_json::to_value(point).unwrap(), json!(name));
            assert_eq!(observation_point_text(subtype), text);
        }
        assert_eq!(ObservationPoint::from_subtype(0).0, 101);
    }

    #[test]
    fn an_event_at_the_host_names_the_node_and_its_interface() {
        let plan = plan();
        let ctx = FlowContext::new(&plan);
        let client = pod(&plan, "client");
        let event = Event {
            r#type: abi::EVENT_DROP,
            subtype: 160,
            endpoint_id: 0,
            node_id: 1,
            direction: abi::DIR_EGRESS,
            src_identity: client.identity,
            dst_identity: abi::identity::WORLD,
            ifindex: plan::ifindex::UPLINK,
            ..blank_event()
        };
        let flow = ctx.decode(&with_packet(event, &tcp_syn(client, Ipv4Addr::new(10, 99, 0, 1), 1234, 80))).unwrap();
        let v = json_of(&flow);
        assert_eq!(v["drop_reason_desc"], "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT");
        assert_eq!(v["interface"], json!({"index": 2, "name": "eth0"}));
        assert_eq!(v.get("traffic_direction"), None, "no endpoint, no direction");
        // The node's own address is the host; another node's a remote node.
        let node2 = &plan.nodes[1];
        let host = ctx.endpoint(Some(IpAddr::V4(plan.nodes[0].router_ip)), 0, 1);
        let remote = ctx.endpoint(Some(IpAddr::V4(node2.ip.addr())), 0, 1);
        assert_eq!((host.identity, host.labels), (1, vec!["reserved:host".to_string()]));
        assert_eq!((remote.identity, remote.labels), (6, vec!["reserved:remote-node".to_string()]));
    }

    #[test]
    fn other_event_types_and_empty_samples() {
        let plan = plan();
        let ctx = FlowContext::new(&plan);
        assert_eq!(ctx.decode(&Event { r#type: 2, ..blank_event() }), None);
        let flow = ctx.decode(&Event { r#type: abi::EVENT_DROP, subtype: 134, ..blank_event() }).unwrap();
        let v = json_of(&flow);
        assert_eq!(v.get("IP"), None);
        assert_eq!(v.get("Summary"), None);
        assert_eq!(v["drop_reason_desc"], "INVALID_PACKET_DROPPED");
    }

    #[test]
    fn records_wrap_flows_as_hubble_observe_prints_them_and_read_back() {
        let plan = plan();
        let ctx = FlowContext::new(&plan);
        let (client, web) = (pod(&plan, "client"), pod(&plan, "web"));
        let event = Event {
            r#type: abi::EVENT_TRACE,
            subtype: obs::TO_ENDPOINT,
            node_id: 1,
            ct_status: ct::NEW,
            ..blank_event()
        };
        let time = UNIX_EPOCH + Duration::new(1_774_492_529, 114_383_229);
        let record = ctx.record(&with_packet(event, &tcp_syn(client, web.ip, 1, 2)), time).unwrap();
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.starts_with("{\"flow\":{\"time\":\"2026-03-26T02:35:29.114383229Z\",\"uuid\":\""), "{text}");
        assert!(text.ends_with("},\"node_name\":\"node-1\",\"time\":\"2026-03-26T02:35:29.114383229Z\"}"), "{text}");
        assert_eq!(record.flow.uuid.len(), 36);
        assert_eq!(&record.flow.uuid[14..15], "4");
        let back: FlowRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.flow.normalized(), ctx.decode(&with_packet(event, &tcp_syn(client, web.ip, 1, 2))).unwrap());
        assert!(!record.flow.normalized_json().contains("time"));
    }

    #[test]
    fn the_flow_log_rotates_past_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let plan = plan();
        let ctx = FlowContext::new(&plan);
        let record = ctx.record(&Event { r#type: abi::EVENT_DROP, subtype: 133, ..blank_event() }, UNIX_EPOCH).unwrap();
        let line = serde_json::to_string(&record).unwrap().len() as u64 + 1;
        let mut log = FlowLog::open(&path, 3 * line).unwrap();
        for _ in 0..4 {
            log.append(&record).unwrap();
        }
        log.flush().unwrap();
        let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!((lines(&rotated_path(&path)), lines(&path)), (3, 1));
        assert_eq!(rotated_path(&path), dir.path().join("flows.jsonl.1"));
        // Reopening appends.
        let mut log = FlowLog::open(&path, 3 * line).unwrap();
        log.append(&record).unwrap();
        log.flush().unwrap();
        assert_eq!(lines(&path), 2);
        let back: FlowRecord =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn timestamps_are_protojson_and_read_back() {
        for (secs, nanos, text) in [
            (0, 0, "1970-01-01T00:00:00Z"),
            (1_774_492_529, 114_000_000, "2026-03-26T02:35:29.114Z"),
            (1_774_492_529, 114_383_000, "2026-03-26T02:35:29.114383Z"),
            (951_782_400, 1, "2000-02-29T00:00:00.000000001Z"),
        ] {
            let time = UNIX_EPOCH + Duration::new(secs, nanos);
            assert_eq!(timestamp(time), text);
            assert_eq!(parse_timestamp(text), Some(time));
        }
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn icmp_summaries_follow_gopacket() {
        assert_eq!(icmpv4_text(0, 0), "EchoReply");
        assert_eq!(icmpv4_text(3, 3), "DestinationUnreachable(Port)");
        assert_eq!(icmpv4_text(3, 99), "DestinationUnreachable(Code: 99)");
        assert_eq!(icmpv4_text(8, 1), "EchoRequest(Code: 1)");
        assert_eq!(icmpv4_text(42, 1), "42(1)");
    }
}
