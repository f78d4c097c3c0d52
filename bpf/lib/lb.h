/* SPDX-License-Identifier: Apache-2.0 */
/* Services, load balanced per packet in the client pod's egress as Cilium's lb4 does without
 * socket LB: a packet to a frontend is given a backend (kept for the connection in a CT_SERVICE
 * conntrack entry, or by session affinity), DNATed to it before policy and conntrack look at it,
 * and the connection's replies are translated back to the frontend at the client's ingress, so
 * the client only ever sees the service's address. */
#pragma once

#include "common.h"
#include "parse.h"
#include "conntrack.h"
#include "nat.h"

#define LB_SERVICES_SIZE 262144
#define LB_BACKENDS_SIZE 262144
#define LB_AFFINITY_SIZE 65536

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, LB_SERVICES_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lab_lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, LB_BACKENDS_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lab_lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, LB_SERVICES_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lab_lb4_reverse_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct maglev_key);
	__type(value, __u32);
	__uint(max_entries, LB_SERVICES_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lab_lb4_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb4_affinity);
	__uint(max_entries, LB_AFFINITY_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lab_lb4_affinity SEC(".maps");

/* The frontend `p` is sent to, if it is one: as a pod sees it (`internal`), or as whoever
 * reaches the node from outside does. */
static __always_inline struct lb4_service *lb4_lookup_service(const struct packet *p, bool internal)
{
	struct lb4_key key = { .address = p->daddr, .dport = p->dport, .proto = p->protocol, .scope = LB_SCOPE_EXT };
	struct lb4_service *svc;

	if (p->protocol != IPPROTO_TCP && p->protocol != IPPROTO_UDP)
		return 0;
	svc = bpf_map_lookup_elem(&lab_lb4_services, &key);
	if (svc && internal && (svc->flags & LB4_F_TWO_SCOPES)) {
		key.scope = LB_SCOPE_INT;
		svc = bpf_map_lookup_elem(&lab_lb4_services, &key);
	}
	return svc;
}

static __always_inline __u32 lb4_slot(const struct packet *p, const struct lb4_service *svc, __u16 slot)
{
	struct lb4_key key = {
		.address = p->daddr,
		.dport = p->dport,
		.backend_slot = slot,
		.proto = p->protocol,
		.scope = (svc->flags & LB4_F_SCOPE_INT) ? LB_SCOPE_INT : LB_SCOPE_EXT,
	};
	struct lb4_service *entry = bpf_map_lookup_elem(&lab_lb4_services, &key);

	return entry ? entry->backend_id : 0;
}

/* Whether backend `id` may take new connections. */
static __always_inline bool lb4_is_active(__u32 id)
{
	struct lb4_backend *backend = bpf_map_lookup_elem(&lab_lb4_backends, &id);

	return backend && backend->state == BE_STATE_ACTIVE;
}

/* A hash of the connection's tuple for Maglev (murmur3's finaliser over its words): the same
 * connection always lands on the same slot, on every node. */
static __always_inline __u32 tuple_hash(const struct packet *p)
{
	__u32 h = p->saddr ^ (p->daddr * 0x9e3779b1) ^ (((__u32)p->sport << 16 | p->dport) * 0x85ebca6b) ^ p->protocol;

	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 lb4_maglev(const struct packet *p, const struct lb4_service *svc)
{
	struct maglev_key key = { .rev_nat_index = svc->rev_nat_index, .slot = tuple_hash(p) % MAGLEV_SIZE };
	__u32 *id = bpf_map_lookup_elem(&lab_lb4_maglev, &key);

	return id ? *id : 0;
}

/* A backend for a new connection from `p->saddr`: the one affinity remembers while it is
 * active, else one of the active ones, at random or by the frontend's Maglev table; 0 when the
 * frontend has none. */
static __always_inline __u32 lb4_select(const struct packet *p, const struct lb4_service *svc, __u64 now)
{
	struct lb4_affinity_key key = { .client = p->saddr, .rev_nat_index = svc->rev_nat_index };
	struct lb4_affinity *remembered, fresh = { .last_used = now };
	__u32 id;

	if (svc->count == 0)
		return 0;
	if (svc->flags & LB4_F_AFFINITY) {
		remembered = bpf_map_lookup_elem(&lab_lb4_affinity, &key);
		if (remembered && remembered->last_used + (__u64)svc->backend_id * SECONDS > now &&
		    lb4_is_active(remembered->backend_id)) {
			remembered->last_used = now;
			return remembered->backend_id;
		}
	}
	id = (svc->flags & LB4_F_MAGLEV) ? lb4_maglev(p, svc) : lb4_slot(p, svc, bpf_get_prandom_u32() % svc->count + 1);
	if (id && (svc->flags & LB4_F_AFFINITY)) {
		fresh.backend_id = id;
		bpf_map_update_elem(&lab_lb4_affinity, &key, &fresh, BPF_ANY);
	}
	return id;
}

/* Load balances `p`, sent by endpoint `endpoint_id` to the frontend `svc`: keeps or picks its
 * backend and DNATs to it. Returns the frontend's reverse NAT index, or a negative drop reason
 * (DROP_NO_SERVICE when the frontend has no backend to give). */
static __always_inline int lb4_local(struct __sk_buff *skb, struct packet *p, const struct lb4_service *svc,
				     __u16 endpoint_id, __u64 now)
{
	struct ct_key key;
	struct ct_entry *entry, fresh = {};
	struct lb4_backend *backend = 0;
	__u32 id = 0;
	bool syn = p->protocol == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;

	ct_key_of(p, CT_SERVICE, endpoint_id, &key);
	entry = bpf_map_lookup_elem(ct_map(p->protocol), &key);
	/* A connection keeps its backend while the backend exists: a terminating one drains its
	 * connections. A new SYN on an old tuple chooses again. */
	if (entry && entry->expires > now && !syn) {
		id = entry->backend_id;
		backend = bpf_map_lookup_elem(&lab_lb4_backends, &id);
	}
	if (!backend) {
		id = lb4_select(p, svc, now);
		backend = id ? bpf_map_lookup_elem(&lab_lb4_backends, &id) : 0;
		if (!backend)
			return -DROP_NO_SERVICE;
		fresh.backend_id = id;
		fresh.rev_nat_index = svc->rev_nat_index;
		fresh.src_identity = 0;
		ct_update(&fresh, p, false, now);
		if (bpf_map_update_elem(ct_map(p->protocol), &key, &fresh, BPF_ANY) < 0)
			return -DROP_CT_CREATE_FAILED;
	} else if (entry) {
		ct_update(entry, p, false, now);
	}
	return nat4_rewrite(skb, p, false, backend->address, backend->port) ?: svc->rev_nat_index;
}

/* Translates a reply of a load-balanced connection back to its frontend. */
static __always_inline int lb4_rev_nat(struct __sk_buff *skb, struct packet *p, __u16 rev_nat_index)
{
	struct lb4_reverse_nat *frontend = bpf_map_lookup_elem(&lab_lb4_reverse_nat, &rev_nat_index);

	if (!frontend)
		return 0;
	return nat4_rewrite(skb, p, true, frontend->address, frontend->port);
}
