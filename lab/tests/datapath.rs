//! The datapath on real traffic: anti-spoofing, identities, and (with policy) allow and deny by
//! identity and port, conntrack and flows.

mod common;

use common::{Lab, dropped, send_raw_udp, topology, udp_listener};

/// `three-nodes.yaml` with some cluster settings changed, written to a temporary folder.
fn three_nodes_with(settings: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let text = std::fs::read_to_string(topology("examples/three-nodes.yaml")).unwrap();
    let text = text.replace("cluster:\n  routingMode: native\n", &format!("cluster:\n{settings}"));
    assert!(text.contains(settings), "the settings went in");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("three-nodes.yaml");
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

#[test]
fn a_spoofed_source_is_dropped_with_reason_132() {
    spoofed_source_is_dropped(&topology("examples/three-nodes.yaml"));
}

/// The same with the programs attached as TCX links, across the VXLAN tunnel; on a kernel
/// older than TCX (6.6), `lab up` refuses before building anything, naming what is missing.
#[test]
fn a_spoofed_source_is_dropped_with_tcx_attach_and_tunnel() {
    let (_dir, file) = three_nodes_with("  routingMode: tunnel\n  attach: tcx\n");
    if common::kernel_at_least(6, 6) {
        spoofed_source_is_dropped(&file);
    } else {
        common::require_root();
        let name = common::unique_name("tcx-refused");
        let _down = common::DownOnDrop(name.clone());
        let out = common::lab_up(&file, &name);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "lab up with attach: tcx succeeded on a kernel without TCX");
        assert!(
            stderr.contains("TCX links (Linux 6.6 or later, CONFIG_NET_XGRESS), needed by attach: tcx")
                && stderr.contains("`attach: netlink`, the default"),
            "{stderr}"
        );
        assert_eq!(common::remains_of(&name), Vec::<String>::new(), "a refused lab left something behind");
    }
}

/// The kernel probe behind `lab up` and `lab features` finds what the running kernel has: on
/// the kernels the suite runs on, everything, and TCX exactly from 6.6 (told by `uname`, not by
/// the probe under test).
#[test]
fn the_kernel_probe_finds_what_this_kernel_has() {
    use lab::datapath::features::{Status, probe_all};
    common::require_root();
    let report = probe_all();
    assert_eq!(report.results.len(), lab::datapath::features::FEATURES.len());
    for (feature, status) in &report.results {
        let present = feature.name != "TCX links" || common::kernel_at_least(6, 6);
        assert_eq!(*status == Status::Present, present, "{} on {}: {status:?}", feature.name, report.kernel);
    }
}

/// A pod sending from an address not its own is dropped by its own program with reason 132
/// (invalid source IP); the same packet with its true source arrives.
fn spoofed_source_is_dropped(file: &std::path::Path) {
    let lab = Lab::up(file, "spoof");
    let plan = lab.plan();
    let (sender, receiver) = (&plan.pods[0], &plan.pods[1]);
    let sender_ns = lab::net::netns::open(&sender.netns).unwrap();
    let listener = udp_listener(&lab::net::netns::open(&receiver.netns).unwrap(), 7777);
    let mut buffer = [0u8; 64];

    send_raw_udp(&sender_ns, sender.ip, receiver.ip, 7777, b"honest");
    let (len, from) = listener.recv_from(&mut buffer).expect("the honest packet arrives");
    assert_eq!((&buffer[..len], from.ip()), (&b"honest"[..], std::net::IpAddr::V4(sender.ip)));

    let before = dropped(&lab.name, 132);
    let forged = std::net::Ipv4Addr::new(10, 0, 0, 250);
    assert!(plan.pods.iter().all(|p| p.ip != forged));
    send_raw_udp(&sender_ns, forged, receiver.ip, 7777, b"forged");
    assert!(listener.recv_from(&mut buffer).is_err(), "the forged packet arrived");
    assert_eq!(dropped(&lab.name, 132), before + 1, "one drop counted as invalid source IP");
}

/// The same file gives the same identity numbers in two labs at once, and the datapath uses
/// them: every pod's ipcache entry on every node carries its identity.
#[test]
fn identities_are_the_same_across_labs_and_in_the_datapath() {
    let file = topology("examples/three-nodes.yaml");
    let (first, second) = (Lab::up(&file, "id-a"), Lab::up(&file, "id-b"));
    let (a, b) = (first.plan(), second.plan());
    assert_eq!(a.identities, b.identities);
    let pods = |p: &lab::plan::Plan| p.pods.iter().map(|p| (p.id(), p.identity)).collect::<Vec<_>>();
    assert_eq!(pods(&a), pods(&b));
    // 12 pods with distinct labels (pod label x namespace): 12 label sets.
    assert_eq!(a.pods.iter().map(|p| p.identity).collect::<std::collections::BTreeSet<_>>().len(), 12);

    for (node, _) in a.nodes.iter().enumerate() {
        let cache = lab::datapath::maps::read_ipcache(&a, node).unwrap();
        for pod in &a.pods {
            let host = ipnet::Ipv4Net::new(pod.ip, 32).unwrap();
            assert_eq!(cache.get(&host).map(|e| e.identity), Some(pod.identity), "{} on node {node}", pod.id());
        }
    }
}

/// `cluster.identityLabels` decides what makes an identity: only the namespace leaves one
/// identity per namespace.
#[test]
fn identity_labels_change_the_number_of_identities() {
    let (_dir, file) = three_nodes_with("  identityLabels: [k8s:io.kubernetes.pod.namespace]\n");
    let lab = Lab::up(&file, "id-ns");
    let identities: std::collections::BTreeSet<u32> = lab.plan().pods.iter().map(|p| p.identity).collect();
    assert_eq!(identities.len(), 3, "one identity per namespace x, y, z");
}

/// What topologies/datapath/policy-basics.yaml allows (see its comments), as the netpol suite
/// prints truth tables: rows are senders.
const TCP_80: &str = "\
-\tx/a\tx/b\ty/a\ty/c\tz/a\tz/b
x/a\t.\t.\tX\t.\t.\t.
x/b\tX\t.\tX\t.\t.\t.
y/a\t.\tX\t.\tX\tX\tX
y/c\t.\t.\tX\t.\t.\t.
z/a\t.\t.\tX\t.\t.\t.
z/b\tX\tX\tX\t.\t.\t.
";
/// UDP and ICMP: x/a accepts them only from z/a.
const UDP_80_AND_ICMP: &str = "\
-\tx/a\tx/b\ty/a\ty/c\tz/a\tz/b
x/a\t.\t.\tX\t.\t.\t.
x/b\tX\t.\tX\t.\t.\t.
y/a\tX\tX\t.\tX\tX\tX
y/c\tX\t.\tX\t.\t.\t.
z/a\t.\t.\tX\t.\t.\t.
z/b\tX\tX\tX\t.\t.\t.
";

fn policy_is_enforced(settings: &str) {
    use lab::probe::Kind;
    let text = std::fs::read_to_string(topology("datapath/policy-basics.yaml")).unwrap();
    let text = text.replace("cluster:\n  routingMode: native\n", &format!("cluster:\n{settings}"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy-basics.yaml");
    std::fs::write(&file, text).unwrap();
    let lab = Lab::up(&file, "policy");
    let plan = lab.plan();
    let (default_denied, denied) = (dropped(&lab.name, 133), dropped(&lab.name, 181));

    pretty_assertions::assert_eq!(common::probed_matrix(&plan, Kind::Tcp(80)), TCP_80, "TCP/80 ({settings})");
    pretty_assertions::assert_eq!(common::probed_matrix(&plan, Kind::Udp(80)), UDP_80_AND_ICMP, "UDP/80 ({settings})");
    pretty_assertions::assert_eq!(common::probed_matrix(&plan, Kind::Icmp), UDP_80_AND_ICMP, "ICMP ({settings})");
    assert!(dropped(&lab.name, 133) > default_denied, "default-deny drops are counted as 133");
    assert!(dropped(&lab.name, 181) > denied, "z/b's egressDeny drops are counted as 181");
}

/// Allow and deny by identity and port, TCP, UDP and ICMP, same node (y/c and z/b share x/a's
/// node) and across nodes, with native routing.
#[test]
fn policy_allows_and_denies_by_identity_and_port_natively() {
    policy_is_enforced("  routingMode: native\n");
}

/// The same across the VXLAN tunnel, where the sender's identity rides in the VNI.
#[test]
fn policy_allows_and_denies_by_identity_and_port_through_the_tunnel() {
    policy_is_enforced("  routingMode: tunnel\n");
}

/// An established connection is re-checked on every forward packet: removing the allow entry
/// cuts it at its next packet. Its replies were never looked up: y/a's ingress denies
/// everything, yet the replies reached it, and its policy map is empty.
#[test]
fn removing_an_allow_cuts_a_live_connection_whose_replies_were_never_looked_up() {
    use std::io::{Read, Write};
    let lab = Lab::up(&topology("datapath/policy-basics.yaml"), "live");
    let plan = lab.plan();
    let server = plan.pods.iter().position(|p| p.id() == "x/a").unwrap();
    let client = plan.pods.iter().position(|p| p.id() == "y/a").unwrap();
    let client_ns = lab::net::netns::open(&plan.pods[client].netns).unwrap();
    let mut stream = lab::net::netns::run_in(&client_ns, || {
        std::net::TcpStream::connect_timeout(
            &(plan.pods[server].ip, 80).into(),
            lab::probe::scaled(std::time::Duration::from_secs(2)),
        )
    })
    .unwrap()
    .expect("y/a may connect to x/a on TCP/80");
    stream.set_read_timeout(Some(lab::probe::scaled(std::time::Duration::from_millis(500)))).unwrap();
    let mut echo = [0u8; 5];
    stream.write_all(b"hello").unwrap();
    stream.read_exact(&mut echo).expect("the echo (a reply) reaches y/a although its ingress denies all");
    assert_eq!(&echo, b"hello");
    assert!(
        lab::datapath::maps::read_policy(&plan, client).unwrap().keys().all(|k| k.is_egress()),
        "y/a has no ingress entry at all"
    );

    // Remove x/a's allow for namespace y: its map keeps only the allow for z/a.
    let mut entries = lab::datapath::maps::read_policy(&plan, server).unwrap();
    let y_a = plan.pods[client].identity;
    let before = entries.len();
    entries.retain(|key, _| key.identity != y_a);
    assert!(entries.len() < before, "x/a had an entry for y/a's identity");
    lab::datapath::maps::sync_policy(&plan, server, &entries).unwrap();

    let drops = dropped(&lab.name, 133);
    stream.write_all(b"again").unwrap();
    assert!(stream.read_exact(&mut echo).is_err(), "the cut connection still echoed");
    assert!(dropped(&lab.name, 133) > drops, "the next forward packet was dropped as default deny");
}

/// CIDR rules: x/a may reach 203.0.113.0/24 except 203.0.113.10 (toCIDRSet with except). The
/// flows name the CIDR's local identity (0x01000000 | n) as the destination's.
#[test]
fn cidr_rules_with_except_select_external_addresses() {
    let text = std::fs::read_to_string(topology("datapath/policy-basics.yaml")).unwrap();
    let text = text.replace(
        "externals:\n  - {name: web, address: 203.0.113.10, ports: [tcp/443]}\n",
        "externals:\n  - {name: web, address: 203.0.113.10, ports: [tcp/443]}\n  - {name: api, address: 203.0.113.20, ports: [tcp/443]}\n",
    );
    let text = text.replace(
        "resources:\n",
        "resources:\n  - apiVersion: cilium.io/v2\n    kind: CiliumNetworkPolicy\n    metadata: {name: x-a-egress, namespace: x}\n    spec:\n      endpointSelector: {matchLabels: {pod: a}}\n      egress:\n        - toCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.10/32]}]\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cidr.yaml");
    std::fs::write(&file, text).unwrap();
    let lab = Lab::up(&file, "cidr");
    let plan = lab.plan();
    let x_a = plan.pods.iter().find(|p| p.id() == "x/a").unwrap();
    let netns = lab::net::netns::open(&x_a.netns).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let probe = |ip: &str| {
        runtime.block_on(lab::probe::probe(
            &netns,
            ip.parse().unwrap(),
            lab::probe::Kind::Tcp(443),
            lab::probe::scaled(std::time::Duration::from_millis(400)),
        ))
    };
    assert_eq!(probe("203.0.113.20"), lab::probe::Outcome::Connected, "inside the CIDR");
    assert_eq!(probe("203.0.113.10"), lab::probe::Outcome::Timeout, "carved out by except");

    let cache = lab::datapath::maps::read_ipcache(&plan, x_a.node).unwrap();
    let cidr = cache[&"203.0.113.0/24".parse().unwrap()].identity;
    assert_eq!(cidr & 0xff00_0000, 0x0100_0000, "a local CIDR identity");
    assert_ne!(cache[&"203.0.113.10/32".parse().unwrap()].identity, cidr, "the except has its own identity");
}
