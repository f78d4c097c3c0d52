/* SPDX-License-Identifier: Apache-2.0 */
/* A classifier that does nothing. `lab up` attaches it to a throwaway namespace's loopback
 * before it builds anything, to learn whether this kernel runs tc programs the way the lab
 * attaches them (lab/src/datapath/features.rs). */

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("classifier")
int probe(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
