/* SPDX-License-Identifier: Apache-2.0 */
/* Reading a packet's IPv4 and L4 headers into one small struct the other headers share. */
#pragma once

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include "common.h"

struct packet {
	__u32 saddr; /* network order */
	__u32 daddr;
	__u16 sport; /* network order; ICMP echo: the identifier (request) */
	__u16 dport; /* network order; ICMP echo: the identifier (reply) */
	__u16 policy_port; /* network order: the destination port, or the ICMP type */
	__u8 protocol;
	__u8 tcp_flags;
	__u32 len;
	__u32 l4; /* offset of the L4 header */
};

/* The ICMP echo header (linux/icmp.h pulls in libc headers a BPF build cannot use). */
struct icmp_echo {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u16 id;
	__u16 sequence;
};

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

/* The ethertype of the frame, in host order, or 0 if it is too short to have one. */
static __always_inline __u16 ethertype(struct __sk_buff *skb)
{
	__u16 proto;

	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, sizeof(proto)) < 0)
		return 0;
	return bpf_ntohs(proto);
}

/* Fills `p` from an IPv4 frame; returns 0 or a negative drop reason. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct packet *p)
{
	struct iphdr ip;
	__u32 l4;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return -DROP_INVALID;
	if (ip.ihl < 5)
		return -DROP_INVALID;
	/* Fragments carry no L4 header after the first one, so they cannot be matched by port. */
	if (ip.frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return -DROP_FRAG_NOSUPPORT;

	__builtin_memset(p, 0, sizeof(*p));
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->protocol = ip.protocol;
	p->len = skb->len;
	l4 = ETH_HLEN + ip.ihl * 4;
	p->l4 = l4;

	switch (ip.protocol) {
	case IPPROTO_TCP: {
		__u8 flags;

		if (bpf_skb_load_bytes(skb, l4, &p->sport, 4) < 0 || bpf_skb_load_bytes(skb, l4 + 13, &flags, 1) < 0)
			return -DROP_CT_INVALID_HDR;
		p->tcp_flags = flags;
		p->policy_port = p->dport;
		break;
	}
	case IPPROTO_UDP:
		if (bpf_skb_load_bytes(skb, l4, &p->sport, 4) < 0)
			return -DROP_CT_INVALID_HDR;
		p->policy_port = p->dport;
		break;
	case IPPROTO_ICMP: {
		struct icmp_echo icmp;

		if (bpf_skb_load_bytes(skb, l4, &icmp, sizeof(icmp)) < 0)
			return -DROP_CT_INVALID_HDR;
		p->policy_port = bpf_htons(icmp.type);
		/* An echo and its reply share the identifier: the request keeps it in the source
		 * slot, the reply in the destination slot, so the reply's tuple is the request's
		 * reversed, as for ports. */
		if (icmp.type == ICMP_ECHO)
			p->sport = icmp.id;
		else if (icmp.type == ICMP_ECHOREPLY)
			p->dport = icmp.id;
		break;
	}
	default:
		break;
	}
	return 0;
}
