/* SPDX-License-Identifier: Apache-2.0 */
/* Connection tracking per endpoint and direction, as Cilium's: replies are recognised by the
 * reversed tuple of an entry the other direction created, established packets by their own. */
#pragma once

#include "common.h"
#include "parse.h"

#define CT_SIZE_TCP 524288
#define CT_SIZE_ANY 262144

#define SECONDS 1000000000ULL
/* Cilium's defaults: a connection that only saw a SYN, an established TCP connection, one
 * closing, and anything that is not TCP. */
#define CT_LIFETIME_SYN (60 * SECONDS)
#define CT_LIFETIME_TCP (8000 * SECONDS)
#define CT_LIFETIME_CLOSE (10 * SECONDS)
#define CT_LIFETIME_ANY (60 * SECONDS)

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, CT_SIZE_TCP);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lab_ct_tcp SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, CT_SIZE_ANY);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lab_ct_any SEC(".maps");

static __always_inline void *ct_map(__u8 protocol)
{
	return protocol == IPPROTO_TCP ? (void *)&lab_ct_tcp : (void *)&lab_ct_any;
}

static __always_inline void ct_key_of(const struct packet *p, __u8 direction, __u16 endpoint_id, struct ct_key *key)
{
	key->saddr = p->saddr;
	key->daddr = p->daddr;
	key->sport = p->sport;
	key->dport = p->dport;
	key->protocol = p->protocol;
	key->direction = direction;
	key->endpoint_id = endpoint_id;
}

static __always_inline __u64 ct_lifetime(const struct ct_entry *entry, __u8 protocol)
{
	if (protocol != IPPROTO_TCP)
		return CT_LIFETIME_ANY;
	if ((entry->flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING)) == (CT_F_TX_CLOSING | CT_F_RX_CLOSING))
		return CT_LIFETIME_CLOSE;
	return (entry->flags & CT_F_SEEN_NON_SYN) ? CT_LIFETIME_TCP : CT_LIFETIME_SYN;
}

/* Refreshes an entry with a packet seen in the opening direction (`reply` 0) or the other;
 * returns whether a trace is due: the OR of the TCP flags in that direction changed, Cilium's
 * "medium" monitor aggregation. */
static __always_inline bool ct_update(struct ct_entry *entry, const struct packet *p, bool reply, __u64 now)
{
	__u8 *seen = reply ? &entry->rx_flags_seen : &entry->tx_flags_seen;
	bool report = (*seen | p->tcp_flags) != *seen;

	*seen |= p->tcp_flags;
	if (p->protocol == IPPROTO_TCP) {
		if (!(p->tcp_flags & TCP_SYN))
			entry->flags |= CT_F_SEEN_NON_SYN;
		if (p->tcp_flags & (TCP_FIN | TCP_RST))
			entry->flags |= reply ? CT_F_RX_CLOSING : CT_F_TX_CLOSING;
		if (p->tcp_flags & TCP_RST)
			entry->flags |= CT_F_RX_CLOSING | CT_F_TX_CLOSING;
	}
	entry->packets++;
	entry->expires = now + ct_lifetime(entry, p->protocol);
	return report;
}

/* Looks `p` up for the endpoint `endpoint_id` in `direction`: CT_REPLY, CT_ESTABLISHED or CT_NEW,
 * with the entry found (if any) and whether a trace is due. `now` is the packet's time, read once
 * per packet: the clock is a fifth of the programs' cost. */
static __always_inline int ct_lookup(const struct packet *p, __u8 direction, __u16 endpoint_id, __u64 now,
				     struct ct_entry **found, bool *report)
{
	struct ct_key key;
	struct ct_entry *entry;

	key.saddr = p->daddr;
	key.daddr = p->saddr;
	key.sport = p->dport;
	key.dport = p->sport;
	key.protocol = p->protocol;
	key.direction = direction == DIR_INGRESS ? DIR_EGRESS : DIR_INGRESS;
	key.endpoint_id = endpoint_id;
	entry = bpf_map_lookup_elem(ct_map(p->protocol), &key);
	if (entry && entry->expires > now) {
		*found = entry;
		*report = ct_update(entry, p, true, now);
		return CT_REPLY;
	}

	ct_key_of(p, direction, endpoint_id, &key);
	entry = bpf_map_lookup_elem(ct_map(p->protocol), &key);
	if (entry && entry->expires > now) {
		*found = entry;
		return CT_ESTABLISHED;
	}
	*found = 0;
	*report = true;
	return CT_NEW;
}

/* Records a new connection once policy allowed its first packet; `rev_nat_index` names the
 * service frontend its replies are translated back to (0: none). */
static __always_inline int ct_create(const struct packet *p, __u8 direction, __u16 endpoint_id, __u32 src_identity,
				     __u16 rev_nat_index, __u64 now)
{
	struct ct_key key;
	struct ct_entry entry = { .src_identity = src_identity, .rev_nat_index = rev_nat_index };

	ct_key_of(p, direction, endpoint_id, &key);
	ct_update(&entry, p, false, now);
	if (bpf_map_update_elem(ct_map(p->protocol), &key, &entry, BPF_ANY) < 0)
		return -DROP_CT_CREATE_FAILED;
	return 0;
}
