/* SPDX-License-Identifier: Apache-2.0 */
/* Packets and bytes by drop reason and direction, for `lab metrics`. An array needs no inserts,
 * so no count is lost to two CPUs creating one entry. */
#pragma once

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct metrics_value);
	__uint(max_entries, METRICS_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lab_metrics SEC(".maps");

/* `reason` 0 counts forwarded packets. */
static __always_inline void count(__u8 reason, __u8 direction, __u32 bytes)
{
	__u32 index = ((__u32)reason << 2) | (direction & 3);
	struct metrics_value *value = bpf_map_lookup_elem(&lab_metrics, &index);

	if (value) {
		value->packets++;
		value->bytes += bytes;
	}
}
