/* SPDX-License-Identifier: Apache-2.0 */
/* Which identity an address has, and for a pod on another node, which node hosts it. */
#pragma once

#include "common.h"

#define IPCACHE_SIZE 65536

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_entry);
	__uint(max_entries, IPCACHE_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lab_ipcache SEC(".maps");

static __always_inline struct ipcache_entry *ipcache_lookup(__u32 ip)
{
	struct ipcache_key key = { .prefixlen = 32, .ip = ip };

	return bpf_map_lookup_elem(&lab_ipcache, &key);
}

/* The identity of `ip`: an address the lab does not know is in the world. */
static __always_inline __u32 identity_of(__u32 ip)
{
	struct ipcache_entry *entry = ipcache_lookup(ip);

	return entry ? entry->identity : ID_WORLD;
}

static __always_inline __u32 identity_from_mark(__u32 mark)
{
	return (mark & MARK_MAGIC_MASK) == MARK_MAGIC_IDENTITY ? mark >> 16 : ID_UNKNOWN;
}

static __always_inline void set_identity_mark(struct __sk_buff *skb, __u32 identity)
{
	skb->mark = (identity << 16) | MARK_MAGIC_IDENTITY;
}

/* The sender of a packet arriving at a node's program: the identity a program put in the mark
 * on the way here, else the ipcache's (a packet the node itself sent carries no mark). */
static __always_inline __u32 sender_identity(struct __sk_buff *skb, __u32 saddr)
{
	__u32 identity = identity_from_mark(skb->mark);

	return identity != ID_UNKNOWN ? identity : identity_of(saddr);
}
