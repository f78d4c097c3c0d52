//! A 3-node, 12-pod, 2-external lab, in both routing modes: every pod reaches every other pod and
//! every external over TCP, UDP and ICMP, with real sockets, across nodes too.

mod common;

use common::{Lab, probe_every_pair, topology};

fn every_pair_connects(routing_mode: &str) {
    let text = std::fs::read_to_string(topology("examples/three-nodes.yaml")).unwrap();
    let text = text.replace("routingMode: native", &format!("routingMode: {routing_mode}"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("three-nodes.yaml");
    std::fs::write(&file, text).unwrap();

    let lab = Lab::up(&file, routing_mode);
    let plan = lab.plan();
    assert_eq!((plan.nodes.len(), plan.pods.len(), plan.externals.len()), (3, 12, 2));
    assert_eq!(plan.routing_mode.to_string(), routing_mode);
    let cross_node = plan.pods.iter().any(|a| plan.pods.iter().any(|b| a.node != b.node));
    assert!(cross_node, "the topology must have pods on different nodes");

    let (count, failures) = probe_every_pair(&plan);
    // 12 sources x (11 pods + 2 externals) x (TCP, UDP, ICMP)
    assert_eq!(count, 12 * 13 * 3);
    assert!(failures.is_empty(), "{} of {count} probes failed in {routing_mode} mode:\n{failures:#?}", failures.len());
}

#[test]
fn every_pair_connects_with_native_routing() {
    every_pair_connects("native");
}

#[test]
fn every_pair_connects_through_the_vxlan_tunnel() {
    every_pair_connects("tunnel");
}

/// The tunnel really carries the traffic: in tunnel mode a node has no route to another node's
/// pod CIDR via the underlay, only via the VXLAN device, and the device counts packets.
#[test]
fn tunnel_mode_routes_pod_cidrs_through_vxlan() {
    let text = std::fs::read_to_string(topology("examples/three-nodes.yaml"))
        .unwrap()
        .replace("routingMode: native", "routingMode: tunnel");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tunnel.yaml");
    std::fs::write(&file, text).unwrap();
    let lab = Lab::up(&file, "vxlan");
    let plan = lab.plan();
    let (_, failures) = probe_every_pair(&plan);
    assert!(failures.is_empty(), "{failures:#?}");

    let node = &plan.nodes[0];
    let netns = lab::net::netns::open(&node.netns).unwrap();
    let (routes, vxlan_tx) = lab::net::netns::run_in(&netns, || {
        let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        let tx_packets: u64 = dev
            .lines()
            .find(|l| l.trim_start().starts_with("lab_vxlan:"))
            .map(|l| l.split_whitespace().nth(10).unwrap().parse().unwrap())
            .expect("the node has a lab_vxlan device");
        (routes, tx_packets)
    })
    .unwrap();
    for peer in &plan.nodes[1..] {
        let destination = format!("{:08X}", u32::from_ne_bytes(peer.pod_cidr.network().octets()));
        let line = routes
            .lines()
            .find(|l| l.split('\t').nth(1) == Some(destination.as_str()))
            .expect("a route to the peer's pod CIDR");
        assert!(line.starts_with("lab_vxlan"), "route to {} is not via the tunnel: {line}", peer.pod_cidr);
    }
    assert!(vxlan_tx > 0, "no packet left through the tunnel");
}
