/* SPDX-License-Identifier: Apache-2.0 */
/* An endpoint's policy, looked up as Cilium's is: once for the remote identity, once for any
 * identity; a deny wins, then the longer protocol/port prefix, then the identity-specific entry.
 * Userspace keeps each map such that no allow is covered by a deny, so a longest-prefix match
 * can never hide a deny behind a narrower allow. */
#pragma once

#include "common.h"

#define POLICY_SIZE 16384

#define POLICY_MAP(name)                                          \
	struct {                                                  \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);              \
		__type(key, struct policy_key);                   \
		__type(value, struct policy_entry);               \
		__uint(max_entries, POLICY_SIZE);                 \
		__uint(map_flags, BPF_F_NO_PREALLOC);             \
		__uint(pinning, LIBBPF_PIN_BY_NAME);              \
	} name SEC(".maps")

/* The node's host endpoint's (host policies, by nodeSelector): one per node, shared by the
 * node's program and every pod program of the node. */
POLICY_MAP(lab_host_policy);

static __always_inline __u8 match_type(const struct policy_entry *entry, bool l3)
{
	if (l3)
		return entry->prefix_length > 8 ? MATCH_L3_L4 : entry->prefix_length > 0 ? MATCH_L3_PROTO : MATCH_L3_ONLY;
	return entry->prefix_length == 0 ? MATCH_ALL : entry->prefix_length <= 8 ? MATCH_PROTO_ONLY : MATCH_L4_ONLY;
}

/* 0 to allow, or -DROP_POLICY (no entry: default deny) / -DROP_POLICY_DENY; sets the match
 * type for the verdict event. */
static __always_inline int policy_lookup(void *policy, __u32 remote_identity, bool egress, __u8 protocol,
					 __u16 port, __u8 *matched)
{
	struct policy_key key = {
		.prefixlen = POLICY_PREFIX_FULL,
		.identity = remote_identity,
		.egress = egress,
		.protocol = protocol,
		.dport = port,
	};
	struct policy_entry *l3, *l4, *chosen;

	l3 = bpf_map_lookup_elem(policy, &key);
	key.identity = 0;
	l4 = bpf_map_lookup_elem(policy, &key);

	/* Nested tests: clang would otherwise combine the two null checks into a pointer OR,
	 * which the verifier refuses. */
	if (!l3) {
		if (!l4) {
			*matched = MATCH_NONE;
			return -DROP_POLICY;
		}
		chosen = l4;
	} else if (!l4 || l3->deny) {
		chosen = l3;
	} else if (l4->deny || l4->prefix_length > l3->prefix_length) {
		chosen = l4;
	} else {
		chosen = l3;
	}

	__sync_fetch_and_add(&chosen->packets, 1);
	*matched = match_type(chosen, chosen == l3);
	return chosen->deny ? -DROP_POLICY_DENY : 0;
}
