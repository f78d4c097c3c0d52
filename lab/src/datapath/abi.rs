//! The structs the datapath shares with userspace, mirrored from `bpf/lib/common.h` (the one
//! definition). `tests/abi.rs` checks every size and field offset against the compiled object's
//! BTF, so the two cannot drift apart.

#![allow(clippy::pub_underscore_fields)]

/// Reserved identities (Cilium's numbers).
pub mod identity {
    pub const UNKNOWN: u32 = 0;
    pub const HOST: u32 = 1;
    pub const WORLD: u32 = 2;
    pub const UNMANAGED: u32 = 3;
    pub const HEALTH: u32 = 4;
    pub const INIT: u32 = 5;
    pub const REMOTE_NODE: u32 = 6;
    pub const KUBE_APISERVER: u32 = 7;
    pub const INGRESS: u32 = 8;
    /// The first identity for label sets.
    pub const FIRST_LOCAL: u32 = 256;
}

/// Drop reasons the datapath gives (Cilium's numbers).
pub mod drop {
    pub const INVALID_SOURCE_IP: u8 = 132;
    pub const POLICY: u8 = 133;
    pub const INVALID_PACKET: u8 = 134;
    pub const NO_SERVICE: u8 = 158;
    pub const NAT_NO_MAPPING: u8 = 167;
    pub const NO_TUNNEL_ENDPOINT: u8 = 160;
    pub const POLICY_DENY: u8 = 181;
}

/// Trace observation points: the subtype of trace events (Cilium's `pkg/monitor/api`).
pub mod obs {
    pub const TO_ENDPOINT: u8 = 0;
    pub const TO_PROXY: u8 = 1;
    pub const TO_HOST: u8 = 2;
    pub const TO_STACK: u8 = 3;
    pub const TO_OVERLAY: u8 = 4;
    pub const FROM_ENDPOINT: u8 = 5;
    pub const FROM_PROXY: u8 = 6;
    pub const FROM_HOST: u8 = 7;
    pub const FROM_STACK: u8 = 8;
    pub const FROM_OVERLAY: u8 = 9;
    pub const FROM_NETWORK: u8 = 10;
    pub const TO_NETWORK: u8 = 11;
    pub const FROM_CRYPTO: u8 = 12;
    pub const TO_CRYPTO: u8 = 13;
}

/// Conntrack results of an event, numbered as Hubble's `TraceReason`.
pub mod ct {
    pub const NEW: u8 = 1;
    pub const ESTABLISHED: u8 = 2;
    pub const REPLY: u8 = 3;
    pub const RELATED: u8 = 4;
}

/// Policy match types of verdict events (Cilium's `POLICY_MATCH_*`).
pub mod match_type {
    pub const NONE: u8 = 0;
    pub const L3_ONLY: u8 = 1;
    pub const L3_L4: u8 = 2;
    pub const L4_ONLY: u8 = 3;
    pub const ALL: u8 = 4;
    pub const L3_PROTO: u8 = 5;
    pub const PROTO_ONLY: u8 = 6;
}

pub const ENDPOINT_F_INGRESS_ENFORCED: u32 = 1;
pub const ENDPOINT_F_EGRESS_ENFORCED: u32 = 2;
pub const ENDPOINT_F_HOST: u32 = 4;

/// The endpoint ID of every node's host endpoint: beyond the pods' 1..=4095, so never theirs.
pub const HOST_ENDPOINT_ID: u16 = 4096;

/// The UDP port of the lab's VXLAN overlay (Cilium's).
pub const VXLAN_PORT: u16 = 8472;

pub const POLICY_PREFIX_STATIC: u32 = 40;
pub const POLICY_PREFIX_FULL: u32 = 64;

pub const EVENT_DROP: u8 = 1;
pub const EVENT_TRACE: u8 = 4;
pub const EVENT_POLICY_VERDICT: u8 = 5;

pub const DIR_INGRESS: u8 = 1;
pub const DIR_EGRESS: u8 = 2;

pub const EVENT_SAMPLE: usize = 128;
pub const METRICS_SIZE: u32 = 1024;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpcacheKey {
    pub prefixlen: u32,
    /// Network order.
    pub ip: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpcacheEntry {
    pub identity: u32,
    /// Network order; 0 for local or non-pod addresses.
    pub tunnel_endpoint: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointKey {
    pub ip: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    pub ifindex: u32,
    pub endpoint_id: u16,
    pub node_id: u16,
    pub identity: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub prefixlen: u32,
    pub identity: u32,
    pub egress: u8,
    pub protocol: u8,
    /// Network order.
    pub dport: u16,
}

impl PolicyKey {
    pub fn is_egress(&self) -> bool {
        self.egress != 0
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyEntry {
    pub deny: u8,
    pub prefix_length: u8,
    pub pad: u16,
    pub rule: u32,
    pub packets: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub direction: u8,
    pub endpoint_id: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub expires: u64,
    pub packets: u64,
    pub src_identity: u32,
    pub flags: u8,
    pub tx_flags_seen: u8,
    pub rx_flags_seen: u8,
    pub pad: u8,
    /// `CT_SERVICE` entries: the backend the connection was given.
    pub backend_id: u32,
    /// The service frontend its replies are translated back to; 0: none.
    pub rev_nat_index: u16,
    pub pad2: u16,
}

/// The conntrack scope of a connection to a service, before its DNAT (`ct_key.direction`).
pub const CT_SERVICE: u8 = 4;

/// Masquerade: where one direction of a translated connection is translated to.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatEntry {
    /// Network order.
    pub address: u32,
    /// Network order; the ICMP echo identifier.
    pub port: u16,
    pub pad: u16,
}

/// A service frontend's slot: 0 is the master entry, 1.. its backends.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4Key {
    /// Network order.
    pub address: u32,
    /// Network order.
    pub dport: u16,
    pub backend_slot: u16,
    pub proto: u8,
    /// `LB_SCOPE_*`.
    pub scope: u8,
    pub pad: [u8; 2],
}

/// The backends of whoever reaches the frontend from outside (externalTrafficPolicy).
pub const LB_SCOPE_EXT: u8 = 0;
/// The backends pods reach (internalTrafficPolicy), where they differ from the external ones.
pub const LB_SCOPE_INT: u8 = 1;

pub const LB4_F_AFFINITY: u8 = 1;
pub const LB4_F_NODEPORT: u8 = 2;
pub const LB4_F_MAGLEV: u8 = 4;
pub const LB4_F_TWO_SCOPES: u8 = 8;
pub const LB4_F_SCOPE_INT: u8 = 16;
/// Slots of each frontend's Maglev table (a prime).
pub const MAGLEV_SIZE: u32 = 1021;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    pub rev_nat_index: u16,
    pub pad: u16,
    pub slot: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lb4Service {
    /// Slots 1..: the backend; slot 0: the affinity timeout in seconds.
    pub backend_id: u32,
    /// Slot 0: the active backends, which new connections may pick.
    pub count: u16,
    pub rev_nat_index: u16,
    pub flags: u8,
    pub pad: u8,
    /// Slot 0: the backends after the active ones, kept for their established connections.
    pub terminating: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4Backend {
    /// Network order.
    pub address: u32,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    /// `BE_STATE_*`.
    pub state: u8,
}

pub const BE_STATE_ACTIVE: u8 = 0;
pub const BE_STATE_TERMINATING: u8 = 1;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lb4ReverseNat {
    /// Network order.
    pub address: u32,
    /// Network order.
    pub port: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lb4AffinityKey {
    /// Network order.
    pub client: u32,
    pub rev_nat_index: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lb4Affinity {
    pub last_used: u64,
    pub backend_id: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsValue {
    pub packets: u64,
    pub bytes: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub r#type: u8,
    pub subtype: u8,
    pub endpoint_id: u16,
    pub node_id: u16,
    pub direction: u8,
    pub ct_status: u8,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub ifindex: u32,
    pub verdict: i32,
    pub match_type: u8,
    pub is_reply: u8,
    pub sample_len: u16,
    pub packet_len: u32,
    /// The service frontend of translated traffic; 0: none.
    pub rev_nat_index: u16,
    pub pad: u16,
    /// A reverse-NATed reply's source before translation (the backend), network order.
    pub orig_ip: u32,
    pub sample: [u8; EVENT_SAMPLE],
}

impl Event {
    /// Reads an event from the ring buffer's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Event> {
        (bytes.len() >= std::mem::size_of::<Event>())
            // SAFETY: Event is plain old data of that size; the read is unaligned-safe.
            .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
    }

    /// The packet's first bytes, from its Ethernet header on.
    pub fn sample(&self) -> &[u8] {
        &self.sample[..usize::from(self.sample_len).min(EVENT_SAMPLE)]
    }
}

// SAFETY: all of these are repr(C) plain old data with no padding the kernel could leave
// uninitialised that userspace reads as anything but bytes.
unsafe impl aya::Pod for IpcacheKey {}
unsafe impl aya::Pod for IpcacheEntry {}
unsafe impl aya::Pod for EndpointKey {}
unsafe impl aya::Pod for EndpointInfo {}
unsafe impl aya::Pod for PolicyKey {}
unsafe impl aya::Pod for PolicyEntry {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtEntry {}
unsafe impl aya::Pod for MetricsValue {}
unsafe impl aya::Pod for Lb4Key {}
unsafe impl aya::Pod for MaglevKey {}
unsafe impl aya::Pod for Lb4Service {}
unsafe impl aya::Pod for Lb4Backend {}
unsafe impl aya::Pod for Lb4ReverseNat {}

/// The Rust mirrors against the C definitions, as clang laid them out: read back from the `.BTF`
/// section of the compiled objects.
#[cfg(test)]
mod layout {
    use std::collections::HashMap;
    use std::mem::{offset_of, size_of};

    use object::{Object, ObjectSection};

    use super::*;

    /// A struct in BTF: its size and its members' byte offsets.
    #[derive(Debug)]
    struct BtfStruct {
        size: usize,
        members: HashMap<String, usize>,
    }

    /// The named structs of an object's BTF (<https://docs.kernel.org/bpf/btf.html>).
    fn btf_structs(object_bytes: &[u8]) -> HashMap<String, BtfStruct> {
        let file = object::File::parse(object_bytes).expect("an ELF object");
        let btf = file.section_by_name(".BTF").expect("built with -g").data().expect("readable").to_vec();
        let u32_at = |at: usize| u32::from_le_bytes(btf[at..at + 4].try_into().expect("4 bytes"));
        assert_eq!(u16::from_le_bytes([btf[0], btf[1]]), 0xeb9f, "BTF magic");
        let header = u32_at(4) as usize;
        let (types, types_len) = (header + u32_at(8) as usize, u32_at(12) as usize);
        let strings = header + u32_at(16) as usize;
        let name = |offset: u32| {
            let start = strings + offset as usize;
            let end = btf[start..].iter().position(|b| *b == 0).expect("terminated") + start;
            String::from_utf8_lossy(&btf[start..end]).into_owned()
        };

        let mut structs = HashMap::new();
        let mut at = types;
        while at < types + types_len {
            let (name_offset, info, size) = (u32_at(at), u32_at(at + 4), u32_at(at + 8));
            let (kind, vlen, kflag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31);
            at += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                4 | 5 | 15 | 19 => 12 * vlen,
                6 | 13 => 8 * vlen,
                _ => 0,
            };
            if kind == 4 && name_offset != 0 {
                let members = (0..vlen)
                    .map(|m| {
                        let member = at + 12 * m;
                        let bits = u32_at(member + 8);
                        let bits = if kflag == 1 { bits & 0x00ff_ffff } else { bits };
                        (name(u32_at(member)), (bits / 8) as usize)
                    })
                    .collect();
                structs.insert(name(name_offset), BtfStruct { size: size as usize, members });
            }
            at += extra;
        }
        structs
    }

    macro_rules! check {
        ($structs:expr, $c_name:literal, $rust:ty, [$($field:ident),+ $(,)?]) => {{
            let c = $structs.get($c_name).unwrap_or_else(|| panic!("struct {} is not in the object", $c_name));
            assert_eq!(c.size, size_of::<$rust>(), "size of struct {}", $c_name);
            $(
                let field = stringify!($field).trim_start_matches("r#");
                assert_eq!(c.members.get(field), Some(&offset_of!($rust, $field)), "offset of {}.{}", $c_name, field);
            )+
            assert_eq!(c.members.len(), [$(stringify!($field)),+].len(), "fields of struct {}", $c_name);
        }};
    }

    #[test]
    fn rust_mirrors_match_the_compiled_c_structs() {
        let structs = btf_structs(crate::datapath::loader::LXC_OBJECT);
        check!(structs, "ipcache_key", IpcacheKey, [prefixlen, ip]);
        check!(structs, "ipcache_entry", IpcacheEntry, [identity, tunnel_endpoint]);
        check!(structs, "endpoint_key", EndpointKey, [ip]);
        check!(structs, "endpoint_info", EndpointInfo, [ifindex, endpoint_id, node_id, identity, flags]);
        check!(structs, "policy_key", PolicyKey, [prefixlen, identity, egress, protocol, dport]);
        check!(structs, "policy_entry", PolicyEntry, [deny, prefix_length, pad, rule, packets]);
        check!(structs, "ct_key", CtKey, [saddr, daddr, sport, dport, protocol, direction, endpoint_id]);
        check!(
            structs,
            "ct_entry",
            CtEntry,
            [expires, packets, src_identity, flags, tx_flags_seen, rx_flags_seen, pad, backend_id, rev_nat_index, pad2]
        );
        check!(structs, "lb4_key", Lb4Key, [address, dport, backend_slot, proto, scope, pad]);
        check!(structs, "lb4_service", Lb4Service, [backend_id, count, rev_nat_index, flags, pad, terminating]);
        check!(structs, "lb4_backend", Lb4Backend, [address, port, proto, state]);
        check!(structs, "lb4_reverse_nat", Lb4ReverseNat, [address, port, pad]);
        check!(structs, "lb4_affinity_key", Lb4AffinityKey, [client, rev_nat_index, pad]);
        check!(structs, "lb4_affinity", Lb4Affinity, [last_used, backend_id, pad]);
        check!(structs, "maglev_key", MaglevKey, [rev_nat_index, pad, slot]);
        check!(structs, "metrics_value", MetricsValue, [packets, bytes]);
        check!(
            structs,
            "event",
            Event,
            [
                r#type,
                subtype,
                endpoint_id,
                node_id,
                direction,
                ct_status,
                src_identity,
                dst_identity,
                ifindex,
                verdict,
                match_type,
                is_reply,
                sample_len,
                packet_len,
                rev_nat_index,
                pad,
                orig_ip,
                sample
            ]
        );
        // The node object shares the maps, so it must agree too.
        let host = btf_structs(crate::datapath::loader::HOST_OBJECT);
        check!(host, "ipcache_entry", IpcacheEntry, [identity, tunnel_endpoint]);
        check!(host, "nat_entry", NatEntry, [address, port, pad]);
    }
}
