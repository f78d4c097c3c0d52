/* SPDX-License-Identifier: Apache-2.0 */
/* Address translation: rewriting a packet's source or destination (services' DNAT and reverse
 * NAT use it), and masquerade, Cilium's BPF SNAT of pod traffic leaving the node for outside the
 * native routing CIDR: the packet leaves with the node's address and a port of the node's, and
 * the node's uplink program translates the replies back (snat_v4_* in Cilium's bpf/lib/nat.h). */
#pragma once

#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "common.h"
#include "parse.h"
#include "conntrack.h"

#define NAT_SIZE 131072
/* The ports masquerade hands out, outside the kernel's default ephemeral range (32768-60999)
 * so they never meet the node's own connections. */
#define NAT_PORT_MIN 61000
#define NAT_PORT_COUNT 4000
#define NAT_PORT_TRIES 32

#define IP_DADDR_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define IP_SADDR_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))

/* Both directions of each masqueraded connection: the pod's tuple (direction DIR_EGRESS) to the
 * node's address and port it leaves with, and the reply's tuple to the node (DIR_INGRESS) back
 * to the pod's. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct nat_entry);
	__uint(max_entries, NAT_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lab_snat SEC(".maps");

/* Rewrites the destination (`snat` false) or the source of `p` to `address`:`port`, with the
 * checksums, and updates `p`. ICMP echo has no ports: its identifier is rewritten instead. */
static __always_inline int nat4_rewrite(struct __sk_buff *skb, struct packet *p, bool snat, __u32 address, __u16 port)
{
	__u32 old_address = snat ? p->saddr : p->daddr;
	__u16 old_port = snat ? p->sport : p->dport;
	__u32 port_off = p->l4 + (snat ? 0 : 2);
	__u32 csum_off = p->protocol == IPPROTO_TCP ? p->l4 + offsetof(struct tcphdr, check)
						    : p->l4 + offsetof(struct udphdr, check);
	__u64 csum_flags = p->protocol == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	bool pseudo = p->protocol != IPPROTO_ICMP; /* ICMP's checksum covers no pseudo header */

	if (p->protocol == IPPROTO_ICMP) {
		/* struct icmp_echo: type, code, checksum, id. */
		port_off = p->l4 + 4;
		csum_off = p->l4 + 2;
	}
	if (bpf_skb_store_bytes(skb, snat ? IP_SADDR_OFF : IP_DADDR_OFF, &address, 4, 0) < 0 ||
	    bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_address, address, 4) < 0)
		return -DROP_INVALID;
	if (pseudo && bpf_l4_csum_replace(skb, csum_off, old_address, address, csum_flags | BPF_F_PSEUDO_HDR | 4) < 0)
		return -DROP_INVALID;
	if (old_port != port &&
	    (bpf_skb_store_bytes(skb, port_off, &port, 2, 0) < 0 ||
	     bpf_l4_csum_replace(skb, csum_off, old_port, port, csum_flags | 2) < 0))
		return -DROP_INVALID;
	if (snat) {
		p->saddr = address;
		p->sport = port;
	} else {
		p->daddr = address;
		p->dport = port;
		if (p->protocol != IPPROTO_ICMP)
			p->policy_port = port;
	}
	return 0;
}

/* Whether masquerade can translate `p`: TCP, UDP and ICMP echo requests (by their identifier). */
static __always_inline bool snat_supported(const struct packet *p)
{
	return p->protocol == IPPROTO_TCP || p->protocol == IPPROTO_UDP ||
	       (p->protocol == IPPROTO_ICMP && p->policy_port == bpf_htons(ICMP_ECHO));
}

/* Masquerades `p`, a pod's packet leaving the node, to `node_ip`: the connection's port if it
 * has one, else the pod's own port if the node has it free, else a free one of NAT_PORT_*. */
static __always_inline int snat_egress(struct __sk_buff *skb, struct packet *p, __u32 node_ip)
{
	struct ct_key out, back;
	struct nat_entry *found, to_node = { .address = node_ip }, to_pod = { .address = p->saddr, .port = p->sport };
	__u16 port = p->sport;

	ct_key_of(p, DIR_EGRESS, 0, &out);
	found = bpf_map_lookup_elem(&lab_snat, &out);
	if (found)
		return nat4_rewrite(skb, p, true, found->address, found->port);

	/* The reply's tuple; an ICMP echo reply carries the identifier as its destination port, and
	 * an echo request has none, so this holds for ICMP too (parse.h). */
	back.saddr = p->daddr;
	back.daddr = node_ip;
	back.sport = p->dport;
	back.protocol = p->protocol;
	back.direction = DIR_INGRESS;
	back.endpoint_id = 0;
	for (int i = 0; i < NAT_PORT_TRIES; i++) {
		back.dport = port;
		if (!bpf_map_lookup_elem(&lab_snat, &back))
			break;
		port = bpf_htons(NAT_PORT_MIN + bpf_get_prandom_u32() % NAT_PORT_COUNT);
		if (i == NAT_PORT_TRIES - 1)
			return -DROP_NAT_NO_MAPPING;
	}
	to_node.port = port;
	if (bpf_map_update_elem(&lab_snat, &back, &to_pod, BPF_ANY) < 0 ||
	    bpf_map_update_elem(&lab_snat, &out, &to_node, BPF_ANY) < 0)
		return -DROP_NAT_NO_MAPPING;
	return nat4_rewrite(skb, p, true, node_ip, port);
}

/* Translates a reply to a masqueraded connection back to its pod; 1 if it was one, 0 if not. */
static __always_inline int snat_ingress(struct __sk_buff *skb, struct packet *p)
{
	struct ct_key key;
	struct nat_entry *to_pod;
	int ret;

	ct_key_of(p, DIR_INGRESS, 0, &key);
	to_pod = bpf_map_lookup_elem(&lab_snat, &key);
	if (!to_pod)
		return 0;
	ret = nat4_rewrite(skb, p, false, to_pod->address, to_pod->port);
	return ret < 0 ? ret : 1;
}
