/* SPDX-License-Identifier: Apache-2.0 */
/* The endpoints of this node, by address: its pods (where to deliver, whether their policy is
 * enforced) and the node itself (ENDPOINT_F_HOST, at each of its addresses). */
#pragma once

#include "common.h"

#define ENDPOINTS_SIZE 65536

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, ENDPOINTS_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lab_endpoints SEC(".maps");

static __always_inline struct endpoint_info *endpoint_lookup(__u32 ip)
{
	struct endpoint_key key = { .ip = ip };

	return bpf_map_lookup_elem(&lab_endpoints, &key);
}

/* Whether `ip` is a pod of this node (the node's own addresses are endpoints too). */
static __always_inline bool is_local_pod(__u32 ip)
{
	struct endpoint_info *endpoint = endpoint_lookup(ip);

	return endpoint && !(endpoint->flags & ENDPOINT_F_HOST);
}
