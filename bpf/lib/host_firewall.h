/* SPDX-License-Identifier: Apache-2.0 */
/* Host policies (Cilium's host firewall): the node's own traffic, to and from any of its
 * addresses, is the host endpoint's, enforced by the policy in lab_host_policy wherever it
 * crosses a program: the uplink and the tunnel for other nodes and the world, the pods' veths
 * for the node's own pods. A node no host policy selects skips all of it, conntrack included. */
#pragma once

#include "common.h"
#include "parse.h"
#include "endpoints.h"
#include "enforce.h"

/* The host endpoint's verdict on a packet to (`egress` false: `p->daddr`) or from (`egress`
 * true: `p->saddr`) one of this node's addresses; TC_ACT_UNSPEC to go on, including for packets
 * that are not the node's. */
static __always_inline int host_firewall(struct __sk_buff *skb, const struct packet *p, __u16 node_id, bool egress,
					 __u32 remote_identity)
{
	struct endpoint_info *host = endpoint_lookup(egress ? p->saddr : p->daddr);
	struct event_meta meta = {
		.endpoint_id = HOST_ENDPOINT_ID,
		.node_id = node_id,
		.direction = egress ? DIR_EGRESS : DIR_INGRESS,
		.src_identity = egress ? ID_HOST : remote_identity,
		.dst_identity = egress ? remote_identity : ID_HOST,
	};
	bool report = false;

	if (!host || !(host->flags & ENDPOINT_F_HOST) ||
	    !(host->flags & (ENDPOINT_F_INGRESS_ENFORCED | ENDPOINT_F_EGRESS_ENFORCED)))
		return TC_ACT_UNSPEC;
	return enforce(skb, p, &meta, &lab_host_policy, host->flags, remote_identity, 0, 0, &report);
}
