/* SPDX-License-Identifier: Apache-2.0 */
/* Conntrack and policy for one packet in one direction of one endpoint (a pod, or a node's host
 * endpoint), in Cilium's order: replies of a connection pass without a policy lookup; everything
 * else, established connections included, is checked on every packet, so a removed allow cuts a
 * live connection at its next packet. A verdict event goes out for every drop and every new
 * connection; a denied packet creates no conntrack entry. */
#pragma once

#include "common.h"
#include "parse.h"
#include "conntrack.h"
#include "policy.h"
#include "events.h"

/* Returns TC_ACT_UNSPEC to go on (with `report` set when a trace is due), or the verdict.
 * `meta` names the endpoint and direction; `policy` is the endpoint's map and `flags` its
 * ENDPOINT_F_* enforcement. A connection to a service is recorded with its frontend's
 * `rev_nat_index`; a reply gets its connection's in `reply_rev_nat` (when not null). */
static __always_inline int enforce(struct __sk_buff *skb, const struct packet *p, struct event_meta *meta,
				   void *policy, __u32 flags, __u32 remote_identity, __u16 rev_nat_index,
				   __u16 *reply_rev_nat, bool *report)
{
	bool egress = meta->direction == DIR_EGRESS;
	__u32 enforced = egress ? ENDPOINT_F_EGRESS_ENFORCED : ENDPOINT_F_INGRESS_ENFORCED;
	struct ct_entry *entry;
	__u8 matched = MATCH_NONE;
	__u64 now = bpf_ktime_get_ns();
	int ret, status;

	status = ct_lookup(p, meta->direction, meta->endpoint_id, now, &entry, report);
	meta->ct_status = status;
	meta->is_reply = status == CT_REPLY;
	if (status == CT_REPLY) {
		if (reply_rev_nat)
			*reply_rev_nat = entry->rev_nat_index;
		return TC_ACT_UNSPEC;
	}

	if (flags & enforced) {
		ret = policy_lookup(policy, remote_identity, egress, p->protocol, p->policy_port, &matched);
		if (ret < 0 || status == CT_NEW)
			policy_verdict(skb, meta, ret, matched);
		if (ret < 0)
			return drop(skb, meta, ret);
	}
	if (status == CT_NEW) {
		ret = ct_create(p, meta->direction, meta->endpoint_id, meta->src_identity, rev_nat_index, now);
		if (ret < 0)
			return drop(skb, meta, ret);
	} else {
		*report = ct_update(entry, p, false, now);
		entry->rev_nat_index = rev_nat_index;
	}
	return TC_ACT_UNSPEC;
}
