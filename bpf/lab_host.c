/* SPDX-License-Identifier: Apache-2.0 */
/* The node datapath, modelled on Cilium's bpf_host.c and bpf_overlay.c: whatever arrives from
 * outside the node leaves here with its sender's identity in skb->mark, for the pods' programs.
 * The netdev pair runs on the uplink (native routing: the identity comes from the ipcache), the
 * overlay pair on the VXLAN device (tunnel: the identity rides in the VNI, as Cilium's does).
 * Both enforce the node's host policy on the node's own traffic (lib/host_firewall.h). */

#include <linux/if_ether.h>
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/ipcache.h"
#include "lib/host_firewall.h"
#include "lib/nat.h"
#include "lib/lb.h"
#include "lib/events.h"

/* linux/socket.h needs libc; this is its value. */
#define AF_INET 2

volatile const __u16 NODE_ID;
volatile const __u32 NODE_IP; /* network order: the uplink's address, which masquerade uses */
/* Masquerade, and the native routing CIDR it leaves alone (network order). */
volatile const __u8 MASQUERADE;
volatile const __u32 NATIVE_ROUTING_NET;
volatile const __u32 NATIVE_ROUTING_MASK;

/* Whether `p`, sent by `pod`, answers a connection the pod accepted: its ingress conntrack
 * entry exists. */
static __always_inline bool answers_accepted(const struct packet *p, const struct endpoint_info *pod)
{
	struct ct_key key = {
		.saddr = p->daddr,
		.daddr = p->saddr,
		.sport = p->dport,
		.dport = p->sport,
		.protocol = p->protocol,
		.direction = DIR_INGRESS,
		.endpoint_id = pod->endpoint_id,
	};

	return bpf_map_lookup_elem(ct_map(p->protocol), &key) != 0;
}

/* Whether a pod's packet leaves with the node's address: not inside the native routing CIDR,
 * not to a node of the cluster, and not the answer of a connection made to the pod, whose peer
 * expects the pod's address (Cilium's snat_v4_needs_masquerade). */
static __always_inline bool needs_masquerade(const struct packet *p)
{
	struct endpoint_info *pod;
	__u32 destination;

	if (!MASQUERADE || (p->daddr & NATIVE_ROUTING_MASK) == NATIVE_ROUTING_NET || !snat_supported(p))
		return false;
	pod = endpoint_lookup(p->saddr);
	if (!pod || (pod->flags & ENDPOINT_F_HOST))
		return false;
	destination = identity_of(p->daddr);
	return destination != ID_REMOTE_NODE && destination != ID_HOST && !answers_accepted(p, pod);
}

/* The overlay's own packets, VXLAN between nodes: they carry pods' traffic, which the pods'
 * policies judge, so the host policy leaves them be. */
static __always_inline bool is_tunnel_packet(const struct packet *p)
{
	return p->protocol == IPPROTO_UDP && p->dport == bpf_htons(VXLAN_PORT);
}

/* Sends `p` on by the node's routes from here, as Cilium's fib_redirect: a packet translated to
 * leave from the node's own address would be dropped by the stack as a martian (a local source
 * arriving from outside), so it does not go through the stack's forwarding. */
static __always_inline int fib_redirect(struct __sk_buff *skb, const struct packet *p)
{
	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.l4_protocol = p->protocol,
		.ifindex = skb->ifindex,
		.ipv4_src = p->saddr,
		.ipv4_dst = p->daddr,
	};

	if (bpf_fib_lookup(skb, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, 0, fib.dmac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, fib.smac, ETH_ALEN, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(fib.ifindex, 0);
}

/* A backend's answer to a NodePort connection, (backend → client), leaves from the frontend the
 * client connected to: 1 if `p` was one and is rewritten. */
static __always_inline int nodeport_rev_dnat(struct __sk_buff *skb, struct packet *p)
{
	struct nat_entry *frontend;
	struct ct_key key;
	int ret;

	ct_key_of(p, CT_SERVICE, HOST_ENDPOINT_ID, &key);
	frontend = bpf_map_lookup_elem(&lab_snat, &key);
	if (!frontend)
		return 0;
	ret = nat4_rewrite(skb, p, true, frontend->address, frontend->port);
	return ret < 0 ? ret : 1;
}

/* Serves a NodePort to whoever reached it, as Cilium's nodeport_lb4: a backend as for pods
 * (lb4_local, kept per connection), DNAT to it, and for a backend on another node also SNAT to
 * this node, so its answer comes back here to be translated (externalTrafficPolicy Cluster;
 * with Local the frontend has only this node's backends, and the client's address stays). */
static __always_inline int nodeport_lb(struct __sk_buff *skb, struct packet *p, const struct lb4_service *svc,
				       __u32 identity)
{
	struct event_meta meta = {
		.node_id = NODE_ID,
		.direction = DIR_INGRESS,
		.src_identity = identity,
		.dst_identity = ID_WORLD,
		.rev_nat_index = svc->rev_nat_index,
	};
	struct nat_entry frontend = { .address = p->daddr, .port = p->dport };
	__u32 client = p->saddr;
	__u16 client_port = p->sport;
	struct ct_key back;
	int ret;

	ret = lb4_local(skb, p, svc, HOST_ENDPOINT_ID, bpf_ktime_get_ns());
	if (ret < 0)
		return drop(skb, &meta, ret);
	back.saddr = p->daddr;
	back.daddr = client;
	back.sport = p->dport;
	back.dport = client_port;
	back.protocol = p->protocol;
	back.direction = CT_SERVICE;
	back.endpoint_id = HOST_ENDPOINT_ID;
	if (bpf_map_update_elem(&lab_snat, &back, &frontend, BPF_ANY) < 0)
		return drop(skb, &meta, -DROP_NAT_NO_MAPPING);
	set_identity_mark(skb, identity);
	if (is_local_pod(p->daddr))
		return TC_ACT_OK;
	ret = snat_egress(skb, p, NODE_IP);
	if (ret < 0)
		return drop(skb, &meta, ret);
	return fib_redirect(skb, p);
}

SEC("classifier")
int from_netdev(struct __sk_buff *skb)
{
	struct lb4_service *service;
	struct packet p;
	__u32 identity;
	int ret;

	if (ethertype(skb) != ETH_P_IP || parse_ipv4(skb, &p) < 0)
		return TC_ACT_OK;
	identity = identity_of(p.saddr);
	if (p.daddr == NODE_IP) {
		/* A reply to a masqueraded pod, or a remote backend's answer to a NodePort client:
		 * theirs from here on, not the node's. */
		ret = snat_ingress(skb, &p);
		if (ret > 0) {
			set_identity_mark(skb, identity);
			ret = nodeport_rev_dnat(skb, &p);
			if (ret < 0)
				return TC_ACT_SHOT;
			return ret > 0 ? fib_redirect(skb, &p) : TC_ACT_OK;
		}
		if (ret < 0)
			return TC_ACT_SHOT;
	}
	/* A NodePort at the node's address, or a LoadBalancer address or external IP that the
	 * fabric routes to this node. */
	service = lb4_lookup_service(&p, false);
	if (service && (service->flags & LB4_F_NODEPORT))
		return nodeport_lb(skb, &p, service, identity);
	if (!is_tunnel_packet(&p)) {
		ret = host_firewall(skb, &p, NODE_ID, false, identity);
		if (ret != TC_ACT_UNSPEC)
			return ret;
	}
	set_identity_mark(skb, identity);
	return TC_ACT_OK;
}

SEC("classifier")
int to_netdev(struct __sk_buff *skb)
{
	struct packet p;
	int ret;

	if (ethertype(skb) != ETH_P_IP || parse_ipv4(skb, &p) < 0 || is_tunnel_packet(&p))
		return TC_ACT_OK;
	/* A local backend's answer to a NodePort client. */
	ret = nodeport_rev_dnat(skb, &p);
	if (ret != 0)
		return ret < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	if (needs_masquerade(&p)) {
		struct event_meta meta = { .node_id = NODE_ID, .direction = DIR_EGRESS };

		meta.src_identity = identity_of(p.saddr);
		meta.dst_identity = identity_of(p.daddr);
		ret = snat_egress(skb, &p, NODE_IP);
		return ret < 0 ? drop(skb, &meta, ret) : TC_ACT_OK;
	}
	/* What is left with the node's address is the node's own: its host policy judges it. */
	ret = host_firewall(skb, &p, NODE_ID, true, identity_of(p.daddr));
	return ret == TC_ACT_UNSPEC ? TC_ACT_OK : ret;
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
	meta.dst_identity = destination ? destination->identity : ID_WORLD;
	if (!destination || !destination->tunnel_endpoint)
		return drop(skb, &meta, -DROP_NO_TUNNEL_ENDPOINT);
	if (meta.src_identity == ID_HOST) {
		ret = host_firewall(skb, &p, NODE_ID, true, meta.dst_identity);
		if (ret != TC_ACT_UNSPEC)
			return ret;
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
	struct packet p;
	__u32 identity;
	int ret;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return TC_ACT_SHOT;
	identity = key.tunnel_id;
	/* Another node's own traffic is remote-node here. */
	if (identity == ID_HOST)
		identity = ID_REMOTE_NODE;
	if (ethertype(skb) == ETH_P_IP && parse_ipv4(skb, &p) == 0) {
		ret = host_firewall(skb, &p, NODE_ID, false, identity);
		if (ret != TC_ACT_UNSPEC)
			return ret;
	}
	set_identity_mark(skb, identity);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
