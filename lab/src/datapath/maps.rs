//! What the datapath's maps hold, computed from the plan (pure), and written into a lab's pinned
//! maps.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use anyhow::{Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, Map, MapData};

use super::abi::{self, EndpointInfo, EndpointKey, IpcacheEntry, PolicyEntry, PolicyKey, identity};
use super::pins;
use crate::plan::Plan;

/// An IPv4 address as the datapath stores it (network order in memory).
pub fn ipv4(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The ipcache of node `node` (an index into the plan's nodes): every pod, with the node that
/// hosts it when that is another node; this node's own addresses as `host`, other nodes' as
/// `remote-node`; and the prefixes of CIDR policies with their local identities. A pod's or a
/// node's own /32 is never given to a CIDR, so CIDR rules never match them (as Cilium's); being
/// longer, it also wins every lookup inside a CIDR. Anything else misses, and a miss is `world`.
pub fn ipcache(plan: &Plan, node: usize, cidrs: &BTreeMap<Ipv4Net, u32>) -> BTreeMap<Ipv4Net, IpcacheEntry> {
    let host = |ip: Ipv4Addr| Ipv4Net::new(ip, 32).expect("valid");
    let mut entries = BTreeMap::new();
    for (i, n) in plan.nodes.iter().enumerate() {
        let id = if i == node { identity::HOST } else { identity::REMOTE_NODE };
        entries.insert(host(n.ip.addr()), IpcacheEntry { identity: id, tunnel_endpoint: 0 });
        // A remote node's router IP is in its pod CIDR, which the tunnel carries: its node is the
        // tunnel endpoint, as in Cilium.
        let tunnel_endpoint = if i == node { 0 } else { ipv4(n.ip.addr()) };
        entries.insert(host(n.router_ip), IpcacheEntry { identity: id, tunnel_endpoint });
        for uplink in &n.uplinks {
            entries.insert(host(uplink.address.addr()), IpcacheEntry { identity: id, tunnel_endpoint: 0 });
        }
    }
    for pod in &plan.pods {
        let tunnel_endpoint = if pod.node == node { 0 } else { ipv4(plan.nodes[pod.node].ip.addr()) };
        entries.insert(host(pod.ip), IpcacheEntry { identity: pod.identity, tunnel_endpoint });
    }
    for (prefix, identity) in cidrs {
        entries.entry(*prefix).or_insert(IpcacheEntry { identity: *identity, tunnel_endpoint: 0 });
    }
    entries
}

/// The endpoints of node `node` by address, with their enforcement flags (`flags` of an index
/// into [`super::endpoints`]): its managed pods, and its host endpoint at each of the node's
/// addresses.
pub fn endpoints(plan: &Plan, node: usize, flags: impl Fn(usize) -> u32) -> BTreeMap<Ipv4Addr, EndpointInfo> {
    let node_id = plan.nodes[node].id;
    let pods = plan.pods.iter().enumerate().filter(|(_, pod)| pod.node == node && pod.managed).map(|(i, pod)| {
        let info = EndpointInfo {
            ifindex: pod.host_ifindex,
            endpoint_id: pod.endpoint_id,
            node_id,
            identity: pod.identity,
            flags: flags(i),
        };
        (pod.ip, info)
    });
    let host = EndpointInfo {
        ifindex: 0,
        endpoint_id: abi::HOST_ENDPOINT_ID,
        node_id,
        identity: identity::HOST,
        flags: flags(super::host_endpoint(plan, node)) | abi::ENDPOINT_F_HOST,
    };
    pods.chain(plan.nodes[node].addresses().into_iter().map(|address| (address, host))).collect()
}

pub(super) fn open(path: &std::path::Path) -> Result<MapData> {
    MapData::from_pin(path).with_context(|| format!("opening the pinned map {}", path.display()))
}

/// The bytes of a policy key after its prefix length: what the LPM trie compares.
fn policy_bits(key: &PolicyKey) -> Key<[u8; 8]> {
    let mut bits = [0u8; 8];
    bits[..4].copy_from_slice(&key.identity.to_ne_bytes());
    bits[4] = key.egress;
    bits[5] = key.protocol;
    bits[6..].copy_from_slice(&key.dport.to_ne_bytes());
    Key::new(key.prefixlen, bits)
}

/// Makes every node's ipcache and endpoints hold what `plan` and the policies' CIDRs say:
/// entries written where they differ, stale ones removed. `flags(pod index)` gives each
/// endpoint's enforcement.
pub fn fill_nodes(plan: &Plan, cidrs: &BTreeMap<Ipv4Net, u32>, flags: impl Fn(usize) -> u32) -> Result<()> {
    for (i, node) in plan.nodes.iter().enumerate() {
        let present = read_ipcache(plan, i)?;
        let wanted = ipcache(plan, i, cidrs);
        let mut cache: LpmTrie<MapData, u32, IpcacheEntry> =
            LpmTrie::try_from(Map::LpmTrie(open(&pins::node_map(&plan.lab, &node.name, "lab_ipcache"))?))?;
        let key = |prefix: &Ipv4Net| Key::new(u32::from(prefix.prefix_len()), ipv4(prefix.network()));
        for (prefix, entry) in &wanted {
            if present.get(prefix) != Some(entry) {
                cache.insert(&key(prefix), *entry, 0).with_context(|| format!("ipcache entry for {prefix}"))?;
            }
        }
        for prefix in present.keys().filter(|p| !wanted.contains_key(p)) {
            cache.remove(&key(prefix)).with_context(|| format!("removing ipcache entry {prefix}"))?;
        }
        let mut endpoint_map: HashMap<MapData, EndpointKey, EndpointInfo> =
            HashMap::try_from(Map::HashMap(open(&pins::node_map(&plan.lab, &node.name, "lab_endpoints"))?))?;
        let wanted = endpoints(plan, i, &flags);
        for (ip, info) in &wanted {
            endpoint_map.insert(EndpointKey { ip: ipv4(*ip) }, *info, 0).with_context(|| format!("endpoint {ip}"))?;
        }
        // A removed pod's entry would still claim its address.
        let stale: Vec<EndpointKey> = endpoint_map
            .keys()
            .filter_map(|key| key.ok())
            .filter(|key| !wanted.contains_key(&Ipv4Addr::from(key.ip.to_ne_bytes())))
            .collect();
        for key in stale {
            endpoint_map.remove(&key).context("removing a stale endpoint")?;
        }
    }
    Ok(())
}

/// The ipcache of node `node` as the kernel holds it.
pub fn read_ipcache(plan: &Plan, node: usize) -> Result<BTreeMap<Ipv4Net, IpcacheEntry>> {
    let path = pins::node_map(&plan.lab, &plan.nodes[node].name, "lab_ipcache");
    let cache: LpmTrie<MapData, u32, IpcacheEntry> = LpmTrie::try_from(Map::LpmTrie(open(&path)?))?;
    cache
        .iter()
        .map(|item| {
            let (key, entry) = item?;
            let prefix = Ipv4Net::new(Ipv4Addr::from(key.data().to_ne_bytes()), key.prefix_len() as u8)?;
            Ok((prefix, entry))
        })
        .collect()
}

/// Where the policy map of endpoint `endpoint` is pinned: pods first, then the nodes' host
/// endpoints, as in [`super::endpoints`].
pub fn policy_pin(plan: &Plan, endpoint: usize) -> std::path::PathBuf {
    match plan.pods.get(endpoint) {
        Some(pod) => pins::policy(&plan.lab, &plan.nodes[pod.node].name, pod.endpoint_id),
        None => {
            let node = &plan.nodes[endpoint - plan.pods.len()].name;
            pins::node_map(&plan.lab, node, super::loader::HOST_POLICY_MAP)
        }
    }
}

/// A pod's `namespace/name`, or `host of node NAME`.
fn endpoint_name(plan: &Plan, endpoint: usize) -> String {
    match plan.pods.get(endpoint) {
        Some(pod) => format!("pod {}", pod.id()),
        None => format!("the host endpoint of node {}", plan.nodes[endpoint - plan.pods.len()].name),
    }
}

fn policy_map(plan: &Plan, endpoint: usize) -> Result<LpmTrie<MapData, [u8; 8], PolicyEntry>> {
    Ok(LpmTrie::try_from(Map::LpmTrie(open(&policy_pin(plan, endpoint))?))?)
}

fn policy_key(bits: &Key<[u8; 8]>) -> PolicyKey {
    let data = bits.data();
    PolicyKey {
        prefixlen: bits.prefix_len(),
        identity: u32::from_ne_bytes(data[..4].try_into().expect("4 bytes")),
        egress: data[4],
        protocol: data[5],
        dport: u16::from_ne_bytes([data[6], data[7]]),
    }
}

/// The policy map of endpoint `endpoint` (see [`policy_pin`]) as the kernel holds it, counters
/// included.
pub fn read_policy(plan: &Plan, endpoint: usize) -> Result<BTreeMap<PolicyKey, PolicyEntry>> {
    policy_entries(&policy_map(plan, endpoint)?)
}

fn policy_entries(map: &LpmTrie<MapData, [u8; 8], PolicyEntry>) -> Result<BTreeMap<PolicyKey, PolicyEntry>> {
    map.iter().map(|item| item.map(|(k, e)| (policy_key(&k), e)).map_err(Into::into)).collect()
}

/// Makes the policy map of endpoint `endpoint` (see [`policy_pin`]) hold exactly `entries`: new
/// and changed entries are written, entries no longer wanted removed, unchanged ones (and their
/// counters) kept. Whether anything was written or removed. An unmanaged pod has no policy map:
/// nothing enforces its policy.
pub fn sync_policy(plan: &Plan, endpoint: usize, entries: &BTreeMap<PolicyKey, PolicyEntry>) -> Result<bool> {
    if plan.pods.get(endpoint).is_some_and(|pod| !pod.managed) {
        return Ok(false);
    }
    let mut map = policy_map(plan, endpoint)?;
    let present = policy_entries(&map)?;
    let mut changed = false;
    for (key, entry) in &present {
        if !entries.get(key).is_some_and(|want| same_rule(want, entry)) {
            map.remove(&policy_bits(key))?;
            changed = true;
        }
    }
    for (key, entry) in entries {
        if !present.get(key).is_some_and(|have| same_rule(entry, have)) {
            map.insert(&policy_bits(key), *entry, 0)
                .with_context(|| format!("policy of {}", endpoint_name(plan, endpoint)))?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Equal but for the counter.
fn same_rule(a: &PolicyEntry, b: &PolicyEntry) -> bool {
    (a.deny, a.prefix_length, a.rule) == (b.deny, b.prefix_length, b.rule)
}

/// Sums the per-CPU metrics: (drop reason or 0, direction) → (packets, bytes).
pub fn read_metrics(lab: &str) -> Result<BTreeMap<(u8, u8), abi::MetricsValue>> {
    let map: aya::maps::PerCpuArray<MapData, abi::MetricsValue> =
        aya::maps::PerCpuArray::try_from(Map::PerCpuArray(open(&pins::metrics(lab))?))?;
    let mut sums = BTreeMap::new();
    for index in 0..abi::METRICS_SIZE {
        let per_cpu = map.get(&index, 0)?;
        let (packets, bytes) = per_cpu.iter().fold((0, 0), |(p, b), v| (p + v.packets, b + v.bytes));
        if packets > 0 {
            sums.insert(((index >> 2) as u8, (index & 3) as u8), abi::MetricsValue { packets, bytes });
        }
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::load_str;

    #[test]
    fn the_ipcache_knows_pods_nodes_and_where_remote_pods_live() {
        let text = "name: t\nnodes: [{name: a}, {name: b}]\npods: [{name: x, node: a}, {name: y, node: b}]\n";
        let plan = Plan::new(&load_str(std::path::Path::new("t.yaml"), text).unwrap().topology, "t");
        let host = |ip: Ipv4Addr| Ipv4Net::new(ip, 32).unwrap();
        let (x, y) = (&plan.pods[0], &plan.pods[1]);
        let cidrs = BTreeMap::from([("203.0.113.0/24".parse().unwrap(), 0x0100_0001), (host(x.ip), 0x0100_0002)]);
        let on_a = ipcache(&plan, 0, &cidrs);
        assert_eq!(on_a[&host(x.ip)], IpcacheEntry { identity: x.identity, tunnel_endpoint: 0 }, "a pod keeps its /32");
        assert_eq!(
            on_a[&host(y.ip)],
            IpcacheEntry { identity: y.identity, tunnel_endpoint: ipv4(plan.nodes[1].ip.addr()) }
        );
        assert_eq!(on_a[&host(plan.nodes[0].ip.addr())].identity, identity::HOST);
        let remote_router = on_a[&host(plan.nodes[1].router_ip)];
        assert_eq!(remote_router.identity, identity::REMOTE_NODE);
        assert_eq!(remote_router.tunnel_endpoint, ipv4(plan.nodes[1].ip.addr()), "the tunnel carries it");
        assert_eq!(on_a[&"203.0.113.0/24".parse().unwrap()].identity, 0x0100_0001);
        // Node b's endpoints: its pod, and its host endpoint at both of its addresses.
        let on_b = endpoints(&plan, 1, |endpoint| endpoint as u32);
        assert_eq!(on_b.len(), 3);
        assert_eq!((on_b[&y.ip].endpoint_id, on_b[&y.ip].flags), (y.endpoint_id, 1));
        for address in [plan.nodes[1].ip.addr(), plan.nodes[1].router_ip] {
            let host = on_b[&address];
            assert_eq!((host.endpoint_id, host.identity), (abi::HOST_ENDPOINT_ID, identity::HOST));
            assert_eq!(host.flags, 3 | abi::ENDPOINT_F_HOST, "the flags of endpoint 3, node b's host");
        }
    }
}
