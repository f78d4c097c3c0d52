/* SPDX-License-Identifier: Apache-2.0 */
/* The node datapath, modelled on Cilium's bpf_host.c and bpf_overlay.c: whatever arrives from
 * outside the node leaves here with its sender's identity in skb->mark, for the pods' programs.
 * from_netdev runs on the uplink (native routing: the identity comes from the ipcache), the
 * overlay pair on the VXLAN device (tunnel: the identity rides in the VNI, as Cilium's does). */

#include <linux/if_ether.h>
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/ipcache.h"
#include "lib/events.h"

volatile const __u16 NODE_ID;

SEC("classifier")
int from_netdev(struct __sk_buff *skb)
{
	struct packet p;

	if (ethertype(skb) != ETH_P_IP || parse_ipv4(skb, &p) < 0)
		return TC_ACT_OK;
	set_identity_mark(skb, identity_of(p.saddr));
	return TC_ACT_OK;
}

SEC("classifier")
int to_overlay(struct __sk_buff *skb)
{
	struct event_meta meta = { .node_id = NODE_ID, .direction = DIR_EGRESS };
	struct bpf_tunnel_key key = {};
	struct ipcache_entry *destination;
	struct packet p;
	int ret;

	if (ethertype(skb) != ETH_P_IP)
		return TC_ACT_OK;
	ret = parse_ipv4(skb, &p);
	if (ret < 0)
		return drop(skb, &meta, ret);

	/* A pod's program marked its packets; the node's own carry the host identity. */
	meta.src_identity = sender_identity(skb, p.saddr);
	destination = ipcache_lookup(p.daddr);
	if (!destination || !destination->tunnel_endpoint) {
		meta.dst_identity = destination ? destination->identity : ID_WORLD;
		return drop(skb, &meta, -DROP_NO_TUNNEL_ENDPOINT);
	}
	key.remote_ipv4 = bpf_ntohl(destination->tunnel_endpoint);
	key.tunnel_id = meta.src_identity;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return drop(skb, &meta, -DROP_NO_TUNNEL_ENDPOINT);
	return TC_ACT_OK;
}

SEC("classifier")
int from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	__u32 identity;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return TC_ACT_SHOT;
	identity = key.tunnel_id;
	/* Another node's own traffic is remote-node here. */
	if (identity == ID_HOST)
		identity = ID_REMOTE_NODE;
	set_identity_mark(skb, identity);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
