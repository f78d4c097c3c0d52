//! Steady load through the real datapath (`lab::load`): counted without a failure while nothing
//! changes, and every failure counted when a policy cuts it.

mod common;

use std::net::SocketAddrV4;
use std::time::Duration;

use common::{Lab, lab_change, topology};
use lab::load::Load;
use lab::net::netns;

#[test]
fn a_load_counts_its_connections_and_every_failure() {
    let lab = Lab::up(&topology("services/backend-churn.yaml"), "load");
    let plan = lab.plan();
    let client = netns::open(&plan.pods.iter().find(|p| p.name == "client").unwrap().netns).unwrap();
    let web = plan.pods.iter().find(|p| p.name == "web-1").unwrap().ip;
    let target = SocketAddrV4::new(web, 8080);

    let load = Load::start(&client, target, 50).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let quiet = load.stop();
    assert_eq!(quiet.failures(), 0, "{quiet:?}");
    assert!(quiet.new_connections >= 10 && quiet.exchanges >= 20, "{quiet:?}");

    // A policy that lets nobody into web-1, applied under the load: the established connection's
    // next exchange and every new connection fail.
    let load = Load::start(&client, target, 50).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let cut = lab_change(
        &lab.name,
        "apply",
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-1-closed, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: nobody}}]
",
    );
    assert!(cut.status.success(), "{}", String::from_utf8_lossy(&cut.stderr));
    std::thread::sleep(Duration::from_millis(1500));
    let report = load.stop();
    assert!(report.failed_exchanges > 0 && report.failed_connections > 0, "{report:?}");
    assert!(report.failed_connections < report.new_connections, "the first ones connected: {report:?}");
}
