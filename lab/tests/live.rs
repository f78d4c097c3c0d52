//! `lab apply` and `lab delete` on a running lab: the probed verdicts follow policies applied and
//! deleted and pods relabelled, only the entries that change are written, and an invalid change
//! leaves everything as it was.

mod common;

use std::time::Duration;

use common::{Lab, lab_change, topology};
use lab::probe::{Kind, Outcome};

fn probe(plan: &lab::plan::Plan, from: &str, to: &str) -> Outcome {
    let pod = |id: &str| plan.pods.iter().find(|p| p.id() == id).unwrap();
    let netns = lab::net::netns::open(&pod(from).netns).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(lab::probe::probe(
        &netns,
        pod(to).ip,
        Kind::Tcp(80),
        lab::probe::scaled(Duration::from_millis(400)),
    ))
}

const ALLOW_X_B: &str = "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: x-a-from-x-b, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
    - fromEndpoints: [{matchLabels: {pod: b}}]
";

#[test]
fn applied_and_deleted_policies_and_relabelled_pods_take_effect() {
    let lab_ = Lab::up(&topology("datapath/policy-basics.yaml"), "live");
    let before = lab_.plan();
    assert_eq!(probe(&before, "x/b", "x/a"), Outcome::Timeout);
    assert_eq!(probe(&before, "z/a", "x/a"), Outcome::Connected);

    let out = lab_change(&lab_.name, "apply", ALLOW_X_B);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(probe(&lab_.plan(), "x/b", "x/a"), Outcome::Connected, "the applied allow takes effect");

    // z/a loses the label x/a's policy allows it by: a new identity, no longer allowed.
    let out = lab_change(
        &lab_.name,
        "apply",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: z, labels: {pod: moved}}\n",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = lab_.plan();
    let identity = |plan: &lab::plan::Plan| plan.pods.iter().find(|p| p.id() == "z/a").unwrap().identity;
    assert_ne!(identity(&after), identity(&before), "relabelling gave z/a a new identity");
    for node in 0..after.nodes.len() {
        let cache = lab::datapath::maps::read_ipcache(&after, node).unwrap();
        let z_a = after.pods.iter().find(|p| p.id() == "z/a").unwrap();
        assert_eq!(
            cache[&ipnet::Ipv4Net::new(z_a.ip, 32).unwrap()].identity,
            identity(&after),
            "node {node}'s ipcache follows"
        );
    }
    assert_eq!(probe(&after, "z/a", "x/a"), Outcome::Timeout, "the relabelled pod is no longer allowed");

    let out = lab_change(&lab_.name, "delete", ALLOW_X_B);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(probe(&lab_.plan(), "x/b", "x/a"), Outcome::Timeout, "the deleted allow no longer applies");
}

/// An invalid policy is refused with its file, line and field, and the running lab keeps its
/// previous policy: every policy map is unchanged.
#[test]
fn an_invalid_change_changes_nothing() {
    let lab_ = Lab::up(&topology("datapath/policy-basics.yaml"), "invalid");
    let plan = lab_.plan();
    let maps = |plan: &lab::plan::Plan| {
        (0..plan.pods.len()).map(|i| lab::datapath::maps::read_policy(plan, i).unwrap()).collect::<Vec<_>>()
    };
    let before = maps(&plan);
    let bad = ALLOW_X_B.replace(
        "fromEndpoints: [{matchLabels: {pod: b}}]",
        "fromEndpoints: [{matchLabels: {pod: b}}]\n      toPorts: [{ports: [{port: \"99999\"}]}]",
    );
    let out = lab_change(&lab_.name, "apply", &bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("change.yaml:") && stderr.contains("toPorts[0].ports[0].port"), "{stderr}");
    assert_eq!(maps(&lab_.plan()), before);
    assert_eq!(lab_.plan(), plan);
}

/// `lab apply` signals the agent (SIGHUP) to reread the plan, possibly microseconds after the lab
/// came up (the conformance runner does): the agent must already handle the signal then, not die
/// of it.
#[test]
fn the_agent_survives_a_reload_signal_right_after_up() {
    common::require_root();
    // SAFETY: set before this test starts any thread that reads the environment.
    unsafe { std::env::set_var("LAB_BINARY", common::lab_binary()) };
    let name = common::unique_name("hup");
    let _down = common::DownOnDrop(name.clone());
    let loaded = lab::topology::load_file(&topology("datapath/policy-basics.yaml")).unwrap();
    let plan = lab::cmd::up::create(&loaded, &name).unwrap();
    lab::agent::reload(&name);
    std::thread::sleep(lab::probe::scaled(Duration::from_millis(300)));
    assert!(common::remains_of(&name).iter().any(|r| r.starts_with("agent process")), "the agent died of SIGHUP");
    assert_eq!(probe(&plan, "y/a", "x/a"), Outcome::Connected, "and it still serves");
}
