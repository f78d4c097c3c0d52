//! Flow records of real connections through the datapath, as `hubble observe -o json` prints
//! them, asserted field by field: allowed and denied, on one node and across nodes; and the drop
//! counters agree with the drop flows.

mod common;

use std::time::{Duration, Instant};

use common::{Lab, topology};
use lab::plan::{Plan, PodPlan};
use lab::probe::{Kind, Outcome};
use serde_json::Value;

fn pod<'a>(plan: &'a Plan, id: &str) -> &'a PodPlan {
    plan.pods.iter().find(|p| p.id() == id).unwrap()
}

fn probe(plan: &Plan, from: &str, to: &str, kind: Kind) -> Outcome {
    let netns = lab::net::netns::open(&pod(plan, from).netns).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(lab::probe::probe(&netns, pod(plan, to).ip, kind, lab::probe::scaled(Duration::from_millis(500))))
}

/// Every flow the agent recorded, as JSON (the `flow` of each line).
fn flows(lab: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(lab::state::LabDir::of(lab).flows_path()).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["flow"].clone()).collect()
}

/// Waits until a flow from `from` to `to` on TCP `port` matches `wanted`, and returns it.
fn flow_where(lab: &str, plan: &Plan, from: &str, to: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let (source, destination) = (pod(plan, from).ip.to_string(), pod(plan, to).ip.to_string());
    let deadline = Instant::now() + lab::probe::scaled(Duration::from_secs(3));
    loop {
        let found = flows(lab).into_iter().find(|f| {
            f["IP"]["source"] == source.as_str() && f["IP"]["destination"] == destination.as_str() && wanted(f)
        });
        if let Some(flow) = found {
            return flow;
        }
        assert!(Instant::now() < deadline, "no such flow {from} -> {to} in {:#?}", flows(lab));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is(flow: &Value, event: u64, sub_type: Option<u64>) -> bool {
    flow["event_type"]["type"] == event && flow["event_type"]["sub_type"].as_u64() == sub_type
}

/// The endpoint fields Hubble gives a local pod.
fn assert_endpoint(endpoint: &Value, pod: &PodPlan, local: bool) {
    assert_eq!(endpoint["identity"], pod.identity, "{endpoint}");
    assert_eq!(endpoint["namespace"], pod.namespace.as_str());
    assert_eq!(endpoint["pod_name"], pod.name.as_str());
    let labels: Vec<&str> = endpoint["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(labels.contains(&format!("k8s:io.kubernetes.pod.namespace={}", pod.namespace).as_str()), "{labels:?}");
    assert_eq!(endpoint["ID"].as_u64(), local.then_some(u64::from(pod.endpoint_id)), "{endpoint}");
}

fn assert_tcp_syn(flow: &Value, port: u64) {
    assert_eq!(flow["l4"]["TCP"]["destination_port"], port);
    assert_eq!(flow["l4"]["TCP"]["flags"]["SYN"], true);
    assert_eq!(flow["IP"]["ipVersion"], "IPv4");
    assert_eq!(flow["Type"], "L3_L4");
}

#[test]
fn allowed_and_denied_connections_make_hubble_flows() {
    let lab = Lab::up(&topology("datapath/policy-basics.yaml"), "flows");
    let plan = lab.plan();
    let (x_a, x_b, y_a, y_c, z_b) =
        (pod(&plan, "x/a"), pod(&plan, "x/b"), pod(&plan, "y/a"), pod(&plan, "y/c"), pod(&plan, "z/b"));
    assert_eq!(plan.nodes[x_a.node].name, "node-a");
    assert_eq!((x_a.node, y_c.node, z_b.node), (x_a.node, x_a.node, x_a.node), "same node as x/a");
    assert_ne!(y_a.node, x_a.node, "across nodes");
    assert_ne!(x_b.node, x_a.node, "across nodes");

    // Allowed, same node: y/c -> x/a TCP/80.
    assert_eq!(probe(&plan, "y/c", "x/a", Kind::Tcp(80)), Outcome::Connected);
    let verdict = flow_where(&lab.name, &plan, "y/c", "x/a", |f| is(f, 5, None));
    assert_eq!(verdict["verdict"], "FORWARDED");
    assert_eq!(verdict["traffic_direction"], "INGRESS");
    assert_eq!(verdict["policy_match_type"], 2, "L3_L4: an identity and a port");
    assert_eq!(verdict["node_name"], "node-a");
    assert_endpoint(&verdict["source"], y_c, true); // y/c is local to node-a too
    assert_endpoint(&verdict["destination"], x_a, true);
    assert_tcp_syn(&verdict, 80);
    let delivered =
        flow_where(&lab.name, &plan, "y/c", "x/a", |f| is(f, 4, None) && f["l4"]["TCP"]["flags"]["SYN"] == true);
    assert_eq!(delivered["verdict"], "FORWARDED");
    assert_eq!(delivered["trace_observation_point"], "TO_ENDPOINT");
    assert_eq!(delivered["trace_reason"], "NEW");
    assert_eq!(delivered["is_reply"], false);
    assert_eq!(delivered["interface"]["name"], x_a.host_ifname.as_str());
    assert_endpoint(&delivered["destination"], x_a, true);
    assert!(delivered.get("drop_reason").is_none(), "forwarded flows carry no drop reason");

    // Allowed, across nodes: y/a -> x/a TCP/80, allowed at y/a's egress on node-b too.
    assert_eq!(probe(&plan, "y/a", "x/a", Kind::Tcp(80)), Outcome::Connected);
    let egress = flow_where(&lab.name, &plan, "y/a", "x/a", |f| is(f, 5, None) && f["traffic_direction"] == "EGRESS");
    assert_eq!((&egress["verdict"], &egress["node_name"]), (&Value::from("FORWARDED"), &Value::from("node-b")));
    assert_endpoint(&egress["source"], y_a, true);
    assert_endpoint(&egress["destination"], x_a, false);
    let ingress = flow_where(&lab.name, &plan, "y/a", "x/a", |f| is(f, 5, None) && f["traffic_direction"] == "INGRESS");
    assert_eq!((&ingress["verdict"], &ingress["node_name"]), (&Value::from("FORWARDED"), &Value::from("node-a")));
    assert_endpoint(&ingress["source"], y_a, false);
    assert_endpoint(&ingress["destination"], x_a, true);

    // Denied, across nodes, by x/a's default deny: x/b -> x/a, dropped at node-a with 133.
    assert_eq!(probe(&plan, "x/b", "x/a", Kind::Tcp(80)), Outcome::Timeout);
    let drop = flow_where(&lab.name, &plan, "x/b", "x/a", |f| is(f, 1, Some(133)));
    assert_eq!(drop["verdict"], "DROPPED");
    assert_eq!(drop["drop_reason"], 133);
    assert_eq!(drop["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(drop["traffic_direction"], "INGRESS");
    assert_eq!(drop["node_name"], "node-a");
    assert_endpoint(&drop["source"], x_b, false);
    assert_endpoint(&drop["destination"], x_a, true);
    assert_tcp_syn(&drop, 80);
    let denied = flow_where(&lab.name, &plan, "x/b", "x/a", |f| is(f, 5, None));
    assert_eq!((&denied["verdict"], &denied["policy_match_type"]), (&Value::from("DROPPED"), &Value::Null));

    // Denied, same node, by z/b's egressDeny: 181, at egress.
    assert_eq!(probe(&plan, "z/b", "x/a", Kind::Tcp(80)), Outcome::Timeout);
    let drop = flow_where(&lab.name, &plan, "z/b", "x/a", |f| is(f, 1, Some(181)));
    assert_eq!(drop["verdict"], "DROPPED");
    assert_eq!(drop["drop_reason_desc"], "POLICY_DENY");
    assert_eq!(drop["traffic_direction"], "EGRESS");
    assert_eq!(drop["node_name"], "node-a");
    assert_endpoint(&drop["source"], z_b, true);
    assert_endpoint(&drop["destination"], x_a, true); // local to node-a as well
}

/// Every drop the datapath counts is a drop flow, reason by reason.
#[test]
fn drop_counters_agree_with_drop_flows() {
    let lab = Lab::up(&topology("datapath/policy-basics.yaml"), "count");
    let plan = lab.plan();
    for (from, to, kind) in [
        ("x/b", "x/a", Kind::Tcp(80)),
        ("x/b", "x/a", Kind::Udp(80)),
        ("y/a", "x/a", Kind::Icmp),
        ("y/c", "x/a", Kind::Udp(80)),
        ("z/b", "x/a", Kind::Tcp(80)),
        ("z/b", "x/b", Kind::Icmp),
        ("z/a", "x/a", Kind::Icmp),
    ] {
        probe(&plan, from, to, kind);
    }
    let counted = || -> std::collections::BTreeMap<u64, u64> {
        let mut by_reason = std::collections::BTreeMap::new();
        for ((reason, _), value) in lab::datapath::maps::read_metrics(&lab.name).unwrap() {
            if reason != 0 {
                *by_reason.entry(u64::from(reason)).or_default() += value.packets;
            }
        }
        by_reason
    };
    let flowed = || -> std::collections::BTreeMap<u64, u64> {
        let mut by_reason = std::collections::BTreeMap::new();
        for flow in flows(&lab.name).iter().filter(|f| f["event_type"]["type"] == 1) {
            *by_reason.entry(flow["drop_reason"].as_u64().unwrap()).or_default() += 1;
        }
        by_reason
    };
    let deadline = Instant::now() + lab::probe::scaled(Duration::from_secs(3));
    while flowed() != counted() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let counts = counted();
    assert!(counts.get(&133).copied().unwrap_or(0) >= 4 && counts.get(&181).copied().unwrap_or(0) >= 2, "{counts:?}");
    assert_eq!(flowed(), counts);
}

/// Traffic from a node is `host` (1) to the pods on that node and `remote-node` (6) to pods on
/// other nodes; from outside the cluster it is `world` (2). x/a allows none of them, so each
/// leaves a drop flow naming the identity it was judged by.
#[test]
fn nodes_and_the_world_have_reserved_identities() {
    let lab = Lab::up(&topology("datapath/policy-basics.yaml"), "reserved");
    let plan = lab.plan();
    let x_a = pod(&plan, "x/a");
    let own_node = &plan.nodes[x_a.node];
    let other_node = plan.nodes.iter().find(|n| n.name != own_node.name).unwrap();
    let external = &plan.externals[0];
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for (netns, expected) in [(&own_node.netns, 1), (&other_node.netns, 6), (&external.netns, 2)] {
        let file = lab::net::netns::open(netns).unwrap();
        let outcome = runtime.block_on(lab::probe::probe(
            &file,
            x_a.ip,
            Kind::Tcp(80),
            lab::probe::scaled(Duration::from_millis(300)),
        ));
        assert_eq!(outcome, Outcome::Timeout, "x/a does not accept {netns}");
        let deadline = Instant::now() + lab::probe::scaled(Duration::from_secs(3));
        while !flows(&lab.name).iter().any(|f| is(f, 1, Some(133)) && f["source"]["identity"] == expected) {
            assert!(
                Instant::now() < deadline,
                "no drop flow from identity {expected} ({netns}): {:#?}",
                flows(&lab.name)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
