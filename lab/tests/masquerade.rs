//! Masquerade (topologies/services/masquerade.yaml): what an external sees of a pod's
//! connection, with the default native routing CIDR and with one that covers it, and what a
//! wrong native routing CIDR does to pod-to-pod traffic and the policy that judges it.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use common::{Lab, capture, flows, tcp_sources, topology};
use lab::net::netns;
use lab::plan::Plan;
use pretty_assertions::assert_eq;

/// masquerade.yaml with `cluster:` extended by `line`, in a folder that goes with the guard.
fn variant(line: &str) -> (tempfile::TempDir, PathBuf) {
    let text = std::fs::read_to_string(topology("services/masquerade.yaml")).unwrap();
    let text = text.replace("cluster:\n", &format!("cluster:\n  {line}\n"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("masquerade.yaml");
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

/// Connects from `pod` to `address`:`port` (and closes): whether it connected.
fn connects(plan: &Plan, pod: &str, address: Ipv4Addr, port: u16) -> bool {
    let from = netns::open(&plan.pods.iter().find(|p| p.name == pod).unwrap().netns).unwrap();
    let target = SocketAddrV4::new(address, port).into();
    netns::run_in(&from, || TcpStream::connect_timeout(&target, Duration::from_secs(1))).unwrap().is_ok()
}

/// The sources the external `web` saw for TCP to its port 443, while `pod` connected to it.
fn seen_by_web(plan: &Plan, pod: &str) -> Vec<Ipv4Addr> {
    let web = plan.externals.iter().find(|e| e.name == "web").unwrap();
    let socket = capture(&netns::open(&web.netns).unwrap());
    assert!(connects(plan, pod, web.address.addr(), 443), "{pod} reaches web");
    let sources = tcp_sources(&socket, web.address.addr());
    let mut addresses: Vec<Ipv4Addr> = sources.keys().map(|(address, _)| *address).collect();
    addresses.dedup();
    addresses
}

fn addresses(plan: &Plan) -> (Ipv4Addr, Ipv4Addr, Ipv4Addr) {
    let pod = |name: &str| plan.pods.iter().find(|p| p.name == name).unwrap().ip;
    let node_b = plan.nodes.iter().find(|n| n.name == "node-b").unwrap().ip.addr();
    (pod("client"), pod("server"), node_b)
}

#[test]
fn an_external_sees_the_node_unless_the_destination_is_in_the_native_routing_cidr() {
    let lab = Lab::up(&topology("services/masquerade.yaml"), "masq");
    let plan = lab.plan();
    let (client, server, node_b) = addresses(&plan);
    assert_eq!(seen_by_web(&plan, "client"), [node_b], "masqueraded to the client's node");
    assert!(connects(&plan, "client", server, 80), "pod to pod is not masqueraded: the policy allows the client");
    drop(lab);

    let (_dir, file) = variant("nativeRoutingCIDR: 0.0.0.0/0");
    let lab = Lab::up(&file, "masq");
    assert_eq!(seen_by_web(&lab.plan(), "client"), [client], "inside the native routing CIDR");
}

#[test]
fn a_wrong_native_routing_cidr_makes_pods_the_node_and_policy_misses_them() {
    let (_dir, file) = variant("nativeRoutingCIDR: 10.0.1.0/24");
    let lab = Lab::up(&file, "masq");
    let plan = lab.plan();
    let (_, server, node_b) = addresses(&plan);
    assert!(!connects(&plan, "client", server, 80), "the server's policy allows the client, not node-b");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let drop = loop {
        let found = flows(&lab.name)
            .into_iter()
            .find(|f| f["drop_reason"] == 133 && f["IP"]["destination"] == server.to_string().as_str());
        if let Some(flow) = found {
            break flow;
        }
        assert!(std::time::Instant::now() < deadline, "no policy drop at the server");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(drop["IP"]["source"], node_b.to_string().as_str(), "the client's traffic left as node-b");
    assert_eq!(drop["source"]["identity"], 6, "remote-node, not the client's identity");
    assert_eq!(drop["traffic_direction"], "INGRESS");
}
