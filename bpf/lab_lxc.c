/* SPDX-License-Identifier: Apache-2.0 */
/* The pod datapath, on the node side of each pod's veth, modelled on Cilium's bpf_lxc.c:
 * from_container (tc ingress: what the pod sends) and to_container (tc egress: what it receives).
 * One copy is loaded per pod, with that pod's constants below and its own policy map. */

#include "lib/common.h"
#include "lib/parse.h"
#include "lib/ipcache.h"
#include "lib/endpoints.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/events.h"
#include "lib/metrics.h"

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

/* Conntrack and policy for one packet in one direction of this endpoint, Cilium's order:
 * replies of a connection pass without a policy lookup; everything else, established
 * connections included, is checked on every packet, so a removed allow cuts a live connection
 * at its next packet. A verdict event goes out for every drop and every new connection; a
 * denied packet creates no conntrack entry. Returns TC_ACT_UNSPEC to go on (with `report` set
 * when a trace is due), or the verdict. */
static __always_inline int enforce(struct __sk_buff *skb, const struct packet *p, struct event_meta *meta,
				   __u32 flags, __u32 remote_identity, bool *report)
{
	bool egress = meta->direction == DIR_EGRESS;
	__u32 enforced = egress ? ENDPOINT_F_EGRESS_ENFORCED : ENDPOINT_F_INGRESS_ENFORCED;
	struct ct_entry *entry;
	__u8 matched = MATCH_NONE;
	__u64 now = bpf_ktime_get_ns();
	int ret, status;

	status = ct_lookup(p, meta->direction, ENDPOINT_ID, now, &entry, report);
	meta->ct_status = status;
	meta->is_reply = status == CT_REPLY;
	if (status == CT_REPLY)
		return TC_ACT_UNSPEC;

	if (flags & enforced) {
		ret = policy_lookup(remote_identity, egress, p->protocol, p->policy_port, &matched);
		if (ret < 0 || status == CT_NEW)
			policy_verdict(skb, meta, ret, matched);
		if (ret < 0)
			return drop(skb, meta, ret);
	}
	if (status == CT_NEW) {
		ret = ct_create(p, meta->direction, ENDPOINT_ID, meta->src_identity, now);
		if (ret < 0)
			return drop(skb, meta, ret);
	} else {
		*report = ct_update(entry, p, false, now);
	}
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
	struct packet p;
	bool report = false;
	int ret;

	ret = admit_ipv4(skb, &p, &meta);
	if (ret != TC_ACT_UNSPEC)
		return ret;
	/* A pod may only send from its own address. */
	if (p.saddr != ENDPOINT_IP)
		return drop(skb, &meta, -DROP_INVALID_SIP);

	meta.dst_identity = identity_of(p.daddr);
	ret = enforce(skb, &p, &meta, self.flags, meta.dst_identity, &report);
	if (ret != TC_ACT_UNSPEC)
		return ret;

	/* A local destination traces its delivery in its own to_container. */
	if (report && !endpoint_lookup(p.daddr))
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
	int ret;

	ret = admit_ipv4(skb, &p, &meta);
	if (ret != TC_ACT_UNSPEC)
		return ret;
	/* The sender's identity came with the packet (its pod's program, or the node's uplink or
	 * tunnel, marked it); unmarked traffic was sent by this node itself. */
	meta.src_identity = sender_identity(skb, p.saddr);
	skb->mark = 0;

	ret = enforce(skb, &p, &meta, self.flags, meta.src_identity, &report);
	if (ret != TC_ACT_UNSPEC)
		return ret;

	if (report)
		trace(skb, &meta, OBS_TO_ENDPOINT);
	count(0, DIR_INGRESS, skb->len);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
