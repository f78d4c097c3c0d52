/* SPDX-License-Identifier: Apache-2.0 */
/* Drops, traces and policy verdicts for userspace, which turns them into Hubble-style flows. */
#pragma once

#include "common.h"
#include "metrics.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lab_events SEC(".maps");

/* BTF records only the types a global or a function names. This names struct event, so the
 * layout test can hold lab/src/datapath/abi.rs against it; it costs eight bytes of .rodata. */
const volatile struct event *const event_btf_anchor = 0;

/* What an event says besides the packet. */
struct event_meta {
	__u8 type;
	__u8 subtype;
	__u16 endpoint_id;
	__u16 node_id;
	__u8 direction;
	__u8 ct_status;
	__u32 src_identity;
	__u32 dst_identity;
	__s32 verdict;
	__u8 match_type;
	__u8 is_reply;
	__u16 rev_nat_index;
	__u32 orig_ip;
};

static __always_inline void emit(struct __sk_buff *skb, const struct event_meta *meta)
{
	struct event *e = bpf_ringbuf_reserve(&lab_events, sizeof(*e), 0);
	__u32 len = skb->len;

	if (!e)
		return;
	e->type = meta->type;
	e->subtype = meta->subtype;
	e->endpoint_id = meta->endpoint_id;
	e->node_id = meta->node_id;
	e->direction = meta->direction;
	e->ct_status = meta->ct_status;
	e->src_identity = meta->src_identity;
	e->dst_identity = meta->dst_identity;
	e->ifindex = skb->ifindex;
	e->verdict = meta->verdict;
	e->match_type = meta->match_type;
	e->is_reply = meta->is_reply;
	e->rev_nat_index = meta->rev_nat_index;
	e->pad = 0;
	e->orig_ip = meta->orig_ip;
	e->packet_len = len;
	e->sample_len = 0;
	if (len > 0) {
		__u32 size = (len > EVENT_SAMPLE ? EVENT_SAMPLE : len) - 1;

		/* The size's bounds must be in its own register: clang makes `len != 0` of a
		 * `len < 1` check, and Linux 6.1's verifier learns no lower bound from that
		 * ("invalid access to memory ... size=0"), later ones (6.12) do. Past the barrier clang
		 * cannot see that the mask changes nothing, so it stays, and every verifier reads
		 * [1, EVENT_SAMPLE] off it. */
		asm volatile("" : "+r"(size));
		size = (size & (EVENT_SAMPLE - 1)) + 1;
		if (bpf_skb_load_bytes(skb, 0, e->sample, size) == 0)
			e->sample_len = size;
	}
	bpf_ringbuf_submit(e, 0);
}

/* Drops the packet: a drop event, a count, and TC_ACT_SHOT. */
static __always_inline int drop(struct __sk_buff *skb, struct event_meta *meta, int reason)
{
	meta->type = EVENT_DROP;
	meta->subtype = (__u8)(-reason);
	emit(skb, meta);
	count((__u8)(-reason), meta->direction, skb->len);
	return TC_ACT_SHOT;
}

static __always_inline void trace(struct __sk_buff *skb, struct event_meta *meta, __u8 point)
{
	meta->type = EVENT_TRACE;
	meta->subtype = point;
	emit(skb, meta);
}

static __always_inline void policy_verdict(struct __sk_buff *skb, struct event_meta *meta, int verdict, __u8 matched)
{
	meta->type = EVENT_POLICY_VERDICT;
	meta->subtype = 0;
	meta->verdict = verdict;
	meta->match_type = matched;
	emit(skb, meta);
	meta->verdict = 0;
	meta->match_type = MATCH_NONE;
}
