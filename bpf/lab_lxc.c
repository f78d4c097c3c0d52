/* SPDX-License-Identifier: Apache-2.0 */
/* The pod datapath, on the node side of each pod's veth, modelled on Cilium's bpf_lxc.c:
 * from_container (tc ingress: what the pod sends) and to_container (tc egress: what it receives).
 * One copy is loaded per pod, with that pod's constants below and its own policy map. */

#include "lib/common.h"
#include "lib/parse.h"
#include "lib/ipcache.h"
#include "lib/endpoints.h"
#include "lib/enforce.h"
#include "lib/host_firewall.h"
#include "lib/lb.h"
#include "lib/nat.h"
#include "lib/events.h"
#include "lib/metrics.h"

/* This pod's own policy; the loader pins each pod's copy under its endpoint ID. */
POLICY_MAP(lab_policy);

/* Set by the loader for each pod. The pod's identity and enforcement are not constants: they
 * live in its endpoints entry, so relabelling a pod or changing its policy is a map write. */
volatile const __u32 ENDPOINT_IP; /* network order */
volatile const __u16 ENDPOINT_ID;
volatile const __u16 NODE_ID;

/* This pod's entry; a pod whose entry is not written yet is treated as not yet known (init). */
static __always_inline struct endpoint_info self_info(void)
{
	struct endpoint_info *self = endpoint_lookup(ENDPOINT_IP);
	struct endpoint_info none = { .identity = ID_INIT };

	return self ? *self : none;
}

/* Hairpin, a pod reaching itself through a service (Cilium's loopback): the way there leaves
 * from HAIRPIN_IP, remembering the frontend for the way back, which then comes from the
 * frontend. As in Cilium, policy is not consulted either way. */
static __always_inline int hairpin(struct __sk_buff *skb, struct packet *p, __u32 frontend, __u16 frontend_port)
{
	struct nat_entry entry = { .address = frontend, .port = frontend_port };
	struct ct_key back = {
		.saddr = ENDPOINT_IP,
		.daddr = bpf_htonl(HAIRPIN_IP),
		.sport = p->dport,
		.dport = p->sport,
		.protocol = p->protocol,
		.direction = CT_SERVICE,
		.endpoint_id = ENDPOINT_ID,
	};
	int ret;

	if (bpf_map_update_elem(&lab_snat, &back, &entry, BPF_ANY) < 0)
		return -DROP_NAT_NO_MAPPING;
	ret = nat4_rewrite(skb, p, true, bpf_htonl(HAIRPIN_IP), p->sport);
	skb->mark = MARK_MAGIC_HAIRPIN;
	return ret;
}

/* The pod's answer to itself through a service: from the frontend, to the pod. */
static __always_inline int hairpin_reply(struct __sk_buff *skb, struct packet *p)
{
	struct nat_entry *frontend;
	struct ct_key key;
	int ret;

	ct_key_of(p, CT_SERVICE, ENDPOINT_ID, &key);
	frontend = bpf_map_lookup_elem(&lab_snat, &key);
	if (!frontend)
		return -DROP_NAT_NO_MAPPING;
	ret = nat4_rewrite(skb, p, false, ENDPOINT_IP, p->dport);
	if (ret == 0)
		ret = nat4_rewrite(skb, p, true, frontend->address, frontend->port);
	skb->mark = MARK_MAGIC_HAIRPIN;
	return ret;
}

/* ARP passes untouched and anything but IPv4 is dropped; an IPv4 packet is parsed into `p`.
 * Returns TC_ACT_UNSPEC to go on, or the verdict. */
static __always_inline int admit_ipv4(struct __sk_buff *skb, struct packet *p, struct event_meta *meta)
{
	__u16 proto = ethertype(skb);
	int ret;

	if (proto == ETH_P_ARP)
		return TC_ACT_OK;
	if (proto != ETH_P_IP)
		return drop(skb, meta, -DROP_UNKNOWN_L3);
	ret = parse_ipv4(skb, p);
	if (ret < 0)
		return drop(skb, meta, ret);
	return TC_ACT_UNSPEC;
}

SEC("classifier")
int from_container(struct __sk_buff *skb)
{
	struct endpoint_info self = self_info();
	struct event_meta meta = {
		.endpoint_id = ENDPOINT_ID,
		.node_id = NODE_ID,
		.direction = DIR_EGRESS,
		.src_identity = self.identity,
	};
	struct lb4_service *service;
	struct packet p;
	bool report = false;
	__u16 rev_nat_index = 0;
	int ret;

	ret = admit_ipv4(skb, &p, &meta);
	if (ret != TC_ACT_UNSPEC)
		return ret;
	/* A pod may only send from its own address. */
	if (p.saddr != ENDPOINT_IP)
		return drop(skb, &meta, -DROP_INVALID_SIP);
	if (p.daddr == bpf_htonl(HAIRPIN_IP)) {
		ret = hairpin_reply(skb, &p);
		return ret < 0 ? drop(skb, &meta, ret) : TC_ACT_OK;
	}

	/* To a service: to a backend from here on, so policy judges the backend's identity. */
	service = lb4_lookup_service(&p, true);
	if (service) {
		__u32 frontend = p.daddr;
		__u16 frontend_port = p.dport;

		ret = lb4_local(skb, &p, service, ENDPOINT_ID, bpf_ktime_get_ns());
		if (ret < 0) {
			meta.rev_nat_index = service->rev_nat_index;
			meta.dst_identity = ID_WORLD;
			return drop(skb, &meta, ret);
		}
		rev_nat_index = ret;
		meta.rev_nat_index = rev_nat_index;
		if (p.daddr == ENDPOINT_IP) {
			ret = hairpin(skb, &p, frontend, frontend_port);
			return ret < 0 ? drop(skb, &meta, ret) : TC_ACT_OK;
		}
	}

	meta.dst_identity = identity_of(p.daddr);
	ret = enforce(skb, &p, &meta, &lab_policy, self.flags, meta.dst_identity, rev_nat_index, 0, &report);
	if (ret != TC_ACT_UNSPEC)
		return ret;
	/* To the node itself: its host policy too. */
	ret = host_firewall(skb, &p, NODE_ID, false, self.identity);
	if (ret != TC_ACT_UNSPEC)
		return ret;

	/* A local pod traces its delivery in its own to_container. */
	if (report && !is_local_pod(p.daddr))
		trace(skb, &meta, OBS_TO_STACK);
	set_identity_mark(skb, self.identity);
	count(0, DIR_EGRESS, skb->len);
	return TC_ACT_OK;
}

SEC("classifier")
int to_container(struct __sk_buff *skb)
{
	struct endpoint_info self = self_info();
	struct event_meta meta = {
		.endpoint_id = ENDPOINT_ID,
		.node_id = NODE_ID,
		.direction = DIR_INGRESS,
		.dst_identity = self.identity,
	};
	struct packet p;
	bool report = false;
	__u16 rev_nat_index = 0;
	int ret;

	ret = admit_ipv4(skb, &p, &meta);
	if (ret != TC_ACT_UNSPEC)
		return ret;
	/* This pod's own packet to itself through a service (hairpin): no policy, as in Cilium. */
	if ((skb->mark & MARK_MAGIC_MASK) == MARK_MAGIC_HAIRPIN) {
		skb->mark = 0;
		return TC_ACT_OK;
	}
	/* The sender's identity came with the packet (its pod's program, or the node's uplink or
	 * tunnel, marked it); unmarked traffic was sent by this node itself. */
	meta.src_identity = sender_identity(skb, p.saddr);
	skb->mark = 0;

	/* From the node itself: its host policy first, as the packet leaves the host. */
	if (meta.src_identity == ID_HOST) {
		ret = host_firewall(skb, &p, NODE_ID, true, self.identity);
		if (ret != TC_ACT_UNSPEC)
			return ret;
	}
	ret = enforce(skb, &p, &meta, &lab_policy, self.flags, meta.src_identity, 0, &rev_nat_index, &report);
	if (ret != TC_ACT_UNSPEC)
		return ret;
	/* A service's reply: from the frontend the pod connected to, not the backend. */
	if (rev_nat_index) {
		meta.rev_nat_index = rev_nat_index;
		meta.orig_ip = p.saddr;
		ret = lb4_rev_nat(skb, &p, rev_nat_index);
		if (ret < 0)
			return drop(skb, &meta, ret);
	}

	if (report)
		trace(skb, &meta, OBS_TO_ENDPOINT);
	count(0, DIR_INGRESS, skb->len);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
