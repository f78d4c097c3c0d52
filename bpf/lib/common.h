/* SPDX-License-Identifier: Apache-2.0 */
/* Constants and the structs shared with userspace: every map key and value and every event is
 * defined here once. lab/src/datapath/abi.rs mirrors them, and a test compares the two layouts
 * against this object's BTF. Numbers follow Cilium where Cilium has one (identities, drop
 * reasons, observation points), so flows read the same. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define __always_inline inline __attribute__((always_inline))

/* Reserved identities (pkg/identity/numericidentity.go). */
#define ID_UNKNOWN 0
#define ID_HOST 1
#define ID_WORLD 2
#define ID_UNMANAGED 3
#define ID_INIT 5
#define ID_REMOTE_NODE 6

/* Drop reasons (bpf/lib/drop_reasons.h); programs return them negated. */
#define DROP_INVALID_SIP 132
#define DROP_POLICY 133
#define DROP_INVALID 134
#define DROP_CT_INVALID_HDR 135
#define DROP_UNKNOWN_L3 139
#define DROP_UNKNOWN_L4 142
#define DROP_CT_CREATE_FAILED 155
#define DROP_FRAG_NOSUPPORT 157
#define DROP_NO_SERVICE 158
#define DROP_NAT_NO_MAPPING 167
#define DROP_NO_TUNNEL_ENDPOINT 160
#define DROP_POLICY_DENY 181

/* Event types (pkg/monitor/api/types.go). */
#define EVENT_DROP 1
#define EVENT_TRACE 4
#define EVENT_POLICY_VERDICT 5

/* Trace observation points: the event subtype of EVENT_TRACE. */
#define OBS_TO_ENDPOINT 0
#define OBS_TO_STACK 3
#define OBS_TO_OVERLAY 4
#define OBS_FROM_ENDPOINT 5
#define OBS_FROM_OVERLAY 9
#define OBS_FROM_NETWORK 10

/* Conntrack results, as Hubble's trace_reason: NEW 1, ESTABLISHED 2, REPLY 3, RELATED 4. */
#define CT_NEW 1
#define CT_ESTABLISHED 2
#define CT_REPLY 3
#define CT_RELATED 4

/* Traffic direction, from the endpoint's point of view (Hubble: INGRESS 1, EGRESS 2). */
#define DIR_INGRESS 1
#define DIR_EGRESS 2
/* Not a direction: the conntrack scope of a connection to a service, before its DNAT. */
#define CT_SERVICE 4

/* Policy match types of verdict events (Cilium's POLICY_MATCH_*). */
#define MATCH_NONE 0
#define MATCH_L3_ONLY 1
#define MATCH_L3_L4 2
#define MATCH_L4_ONLY 3
#define MATCH_ALL 4
#define MATCH_L3_PROTO 5
#define MATCH_PROTO_ONLY 6

/* The identity travels in skb->mark between programs of one node, as Cilium's
 * MARK_MAGIC_IDENTITY does: the magic in the low 16 bits, the identity above. */
#define MARK_MAGIC_IDENTITY 0x0F00
#define MARK_MAGIC_HAIRPIN 0x0E00 /* a pod's packet to itself through a service */
#define MARK_MAGIC_MASK 0xFFFF

/* The source of a pod's packets to itself through a service (Cilium's IPV4_LOOPBACK): the pod
 * would drop a packet from its own address. Host order. */
#define HAIRPIN_IP 0xA9FE2A01 /* 169.254.42.1 */

/* ipcache: LPM trie from an IPv4 prefix to an identity, and for remote pods the node that hosts
 * them (the tunnel endpoint). A miss means world. */
struct ipcache_key {
	__u32 prefixlen; /* of `ip`, 0..32 */
	__u32 ip; /* network order */
};

struct ipcache_entry {
	__u32 identity;
	__u32 tunnel_endpoint; /* network order; 0 for local or non-pod addresses */
};

/* endpoints: the pods of this node, by IP. */
#define ENDPOINT_F_INGRESS_ENFORCED 1
#define ENDPOINT_F_EGRESS_ENFORCED 2
#define ENDPOINT_F_HOST 4 /* the node itself: one of its addresses */

#define HOST_ENDPOINT_ID 4096

/* The UDP port of the lab's VXLAN overlay (Cilium's). */
#define VXLAN_PORT 8472

struct endpoint_key {
	__u32 ip; /* network order */
};

struct endpoint_info {
	__u32 ifindex; /* the host-side veth */
	__u16 endpoint_id;
	__u16 node_id;
	__u32 identity;
	__u32 flags; /* ENDPOINT_F_* */
};

/* policy: one LPM trie per endpoint, keyed as Cilium's policy map is. The prefix covers, in
 * order, the remote identity and the direction (40 bits, always), the protocol (8) and the
 * destination port (0..16): an entry for "TCP, any port" has prefix 48, a port range is split
 * into aligned blocks. Identity 0 means any identity (an L4-only rule). */
#define POLICY_PREFIX_STATIC 40
#define POLICY_PREFIX_FULL 64

struct policy_key {
	__u32 prefixlen;
	__u32 identity;
	__u8 egress; /* 1 for egress, 0 for ingress */
	__u8 protocol; /* 0 = any, only when the port is any too */
	__u16 dport; /* network order; the ICMP type for ICMP */
};

struct policy_entry {
	__u8 deny;
	__u8 prefix_length; /* of protocol+port, 0..24: longer wins among equals */
	__u16 pad;
	__u32 rule; /* which rule put it there, for `lab policy` */
	__u64 packets; /* how often it decided: proof of lookups */
};

/* conntrack: one entry per connection and direction of an endpoint, keyed by the tuple of the
 * packet that opened it, from that endpoint's point of view. */
struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport; /* network order; the ICMP echo identifier for echo requests */
	__u16 dport;
	__u8 protocol;
	__u8 direction; /* DIR_INGRESS or DIR_EGRESS */
	__u16 endpoint_id;
};

#define CT_F_SEEN_NON_SYN 1
#define CT_F_TX_CLOSING 2
#define CT_F_RX_CLOSING 4

struct ct_entry {
	__u64 expires; /* ktime in ns */
	__u64 packets;
	__u32 src_identity;
	__u8 flags; /* CT_F_* */
	__u8 tx_flags_seen; /* OR of the TCP flags seen in the opening direction */
	__u8 rx_flags_seen; /* and in the reply direction */
	__u8 pad;
	__u32 backend_id; /* CT_SERVICE entries: the backend the connection was given */
	__u16 rev_nat_index; /* the service frontend its replies are translated back to; 0: none */
	__u16 pad2;
};

/* Masquerade: where one direction of a translated connection is translated to. */
struct nat_entry {
	__u32 address; /* network order */
	__u16 port; /* network order; the ICMP echo identifier */
	__u16 pad;
};

/* Services (Cilium's lb4 maps). A frontend (address, port, protocol) has a master entry at slot 0
 * with its backend count, and slots 1..count holding the ids of its active backends, then
 * `terminating` more for backends that only keep their established connections.
 *
 * A frontend that both the outside and the pods reach may have two sets of backends, as in
 * Cilium: the external scope's (externalTrafficPolicy) and the internal scope's
 * (internalTrafficPolicy). Lookups start in the external scope; a master entry flagged
 * LB4_F_TWO_SCOPES sends pods on to the internal one. */
struct lb4_key {
	__u32 address; /* network order */
	__u16 dport; /* network order */
	__u16 backend_slot;
	__u8 proto;
	__u8 scope; /* LB_SCOPE_* */
	__u8 pad[2];
};

#define LB_SCOPE_EXT 0
#define LB_SCOPE_INT 1

#define LB4_F_AFFINITY 1 /* sessionAffinity: ClientIP */
#define LB4_F_NODEPORT 2 /* served at the node's uplink to whoever reaches it: a NodePort, a
			  * LoadBalancer address or an external IP (Cilium's nodeport_lb4) */
#define LB4_F_MAGLEV 4 /* backends chosen by the Maglev table of the frontend, not at random */
#define LB4_F_TWO_SCOPES 8 /* pods use the internal scope's entry of this frontend */
#define LB4_F_SCOPE_INT 16 /* this master entry and its slots are the internal scope's */

/* Maglev: each frontend's lookup table of MAGLEV_SIZE slots (a prime), keyed by its reverse NAT
 * index, filled by userspace with Maglev's permutations over the active backends. */
#define MAGLEV_SIZE 1021

struct maglev_key {
	__u16 rev_nat_index;
	__u16 pad;
	__u32 slot;
};

struct lb4_service {
	__u32 backend_id; /* slots 1..: the backend; slot 0: the affinity timeout in seconds */
	__u16 count; /* slot 0: active backends, which new connections may pick */
	__u16 rev_nat_index;
	__u8 flags; /* LB4_F_* */
	__u8 pad;
	__u16 terminating; /* slot 0: the backends after the active ones */
};

#define BE_STATE_ACTIVE 0
#define BE_STATE_TERMINATING 1

struct lb4_backend {
	__u32 address; /* network order */
	__u16 port; /* network order */
	__u8 proto;
	__u8 state; /* BE_STATE_*: a terminating backend gets no new connection, affinity included */
};

struct lb4_reverse_nat {
	__u32 address; /* network order */
	__u16 port; /* network order */
	__u16 pad;
};

/* sessionAffinity: the backend a client was last given for a frontend. */
struct lb4_affinity_key {
	__u32 client; /* network order */
	__u16 rev_nat_index;
	__u16 pad;
};

struct lb4_affinity {
	__u64 last_used; /* ktime in ns */
	__u32 backend_id;
	__u32 pad;
};

/* metrics: packets and bytes per drop reason (0 for forwarded) and direction, in a per-CPU
 * array at index (reason << 2) | direction. */
#define METRICS_SIZE 1024

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* One event on the ring buffer: a drop, a trace or a policy verdict, with the packet's first
 * bytes for the flow's L3/L4 fields. */
#define EVENT_SAMPLE 128
_Static_assert((EVENT_SAMPLE & (EVENT_SAMPLE - 1)) == 0, "lib/events.h masks sample sizes with EVENT_SAMPLE - 1");

struct event {
	__u8 type; /* EVENT_* */
	__u8 subtype; /* drop reason, or observation point */
	__u16 endpoint_id; /* 0 when not at an endpoint */
	__u16 node_id;
	__u8 direction; /* DIR_* */
	__u8 ct_status; /* CT_* */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 ifindex;
	__s32 verdict; /* policy verdict events: 0 allow, -reason */
	__u8 match_type; /* MATCH_* */
	__u8 is_reply;
	__u16 sample_len;
	__u32 packet_len;
	__u16 rev_nat_index; /* the service frontend of translated traffic; 0: none */
	__u16 pad;
	__u32 orig_ip; /* a reverse-NATed reply's source before translation (the backend) */
	__u8 sample[EVENT_SAMPLE];
};
