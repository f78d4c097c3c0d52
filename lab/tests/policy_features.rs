//! Policy features on real traffic, one small topology each (`topologies/policy/`, whose comments
//! give the matrices asserted here): clusterwide denies, enforcement modes, NetworkPolicy and
//! CiliumNetworkPolicy together, entities, port ranges and named ports, deny precedence and
//! matchExpressions. Where it matters, the drop reason is read from the flows: 133 for default
//! deny (nothing allows the packet), 181 for an explicit deny.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{Lab, dropped, flows, probed_matrix, topology, with_tunnel};
use lab::plan::{Plan, PodPlan};
use lab::probe::{Kind, Outcome};
use pretty_assertions::assert_eq;
use serde_json::Value;

const POLICY_DENIED: u64 = 133;
const POLICY_DENY: u64 = 181;

fn pod<'a>(plan: &'a Plan, id: &str) -> &'a PodPlan {
    plan.pods.iter().find(|p| p.id() == id).unwrap_or_else(|| panic!("no pod {id}"))
}

/// Somewhere probes start from or go to: a pod, a node or an external.
#[derive(Clone)]
struct Peer {
    name: String,
    netns: String,
    ip: Ipv4Addr,
}

impl Peer {
    fn pod(plan: &Plan, id: &str) -> Peer {
        let p = pod(plan, id);
        Peer { name: p.id(), netns: p.netns.clone(), ip: p.ip }
    }

    fn node(plan: &Plan, name: &str) -> Peer {
        let n = plan.nodes.iter().find(|n| n.name == name).unwrap();
        Peer { name: n.name.clone(), netns: n.netns.clone(), ip: n.ip.addr() }
    }

    fn external(plan: &Plan, name: &str) -> Peer {
        let e = plan.externals.iter().find(|e| e.name == name).unwrap();
        Peer { name: e.name.clone(), netns: e.netns.clone(), ip: e.address.addr() }
    }
}

/// Runs every probe (from, to, kind) at once, with real sockets inside `from`'s namespace.
fn probe_all(probes: &[(&Peer, &Peer, Kind)]) -> Vec<Outcome> {
    use futures::StreamExt;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let opened: Vec<(std::fs::File, Ipv4Addr, Kind)> =
        probes.iter().map(|(from, to, kind)| (lab::net::netns::open(&from.netns).unwrap(), to.ip, *kind)).collect();
    let mut outcomes: Vec<(usize, Outcome)> = runtime.block_on(
        futures::stream::iter(opened.iter().enumerate())
            .map(|(i, (netns, ip, kind))| async move {
                (i, lab::probe::probe(netns, *ip, *kind, lab::probe::scaled(Duration::from_millis(500))).await)
            })
            .buffer_unordered(64)
            .collect(),
    );
    outcomes.sort_by_key(|(i, _)| *i);
    outcomes.into_iter().map(|(_, o)| o).collect()
}

/// A tab-separated table as the netpol suite prints truth tables: a header of columns, then one
/// line per row.
fn render(columns: &[String], rows: &[(String, Vec<String>)]) -> String {
    let mut out = format!("-\t{}\n", columns.join("\t"));
    for (name, cells) in rows {
        out.push_str(&format!("{name}\t{}\n", cells.join("\t")));
    }
    out
}

/// A table of probes, one per cell: `probes` holds (from, to, kind) row by row. `.` where the
/// probe connected, `X` where it did not.
fn table(rows: &[String], columns: &[String], probes: &[(&Peer, &Peer, Kind)]) -> String {
    assert_eq!(probes.len(), rows.len() * columns.len());
    let outcomes = probe_all(probes);
    let mut cells = outcomes.iter().map(|o| if *o == Outcome::Connected { "." } else { "X" }.to_string());
    let rendered: Vec<(String, Vec<String>)> =
        rows.iter().map(|r| (r.clone(), cells.by_ref().take(columns.len()).collect())).collect();
    render(columns, &rendered)
}

fn names(peers: &[Peer]) -> Vec<String> {
    peers.iter().map(|p| p.name.clone()).collect()
}

/// Probes from every row to every column on `kind`.
fn reach(rows: &[Peer], columns: &[Peer], kind: Kind) -> String {
    let probes: Vec<(&Peer, &Peer, Kind)> =
        rows.iter().flat_map(|r| columns.iter().map(move |c| (r, c, kind))).collect();
    table(&names(rows), &names(columns), &probes)
}

/// Whether `flow` is a drop of a packet from `from` to `to` of `kind`.
fn is_drop_of(flow: &Value, from: Ipv4Addr, to: Ipv4Addr, kind: Kind) -> bool {
    let l4 = &flow["l4"];
    flow["event_type"]["type"] == 1
        && flow["IP"]["source"] == from.to_string().as_str()
        && flow["IP"]["destination"] == to.to_string().as_str()
        && match kind {
            Kind::Tcp(port) => l4["TCP"]["destination_port"] == port,
            Kind::Udp(port) => l4["UDP"]["destination_port"] == port,
            Kind::Icmp => l4.get("ICMPv4").is_some(),
        }
}

/// The drop flows of packets from `from` to `to` of `kind`, waiting up to 3 s for the first.
fn drop_flows(lab: &str, from: &Peer, to: &Peer, kind: Kind) -> Vec<Value> {
    let deadline = Instant::now() + lab::probe::scaled(Duration::from_secs(3));
    loop {
        let found: Vec<Value> = flows(lab).into_iter().filter(|f| is_drop_of(f, from.ip, to.ip, kind)).collect();
        if !found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Probes from every row to every column on `kind`: `.` where it connected, otherwise the drop
/// reason of its drop flows (`133`, `181`; `X` if the datapath recorded no drop).
fn verdicts(lab: &str, rows: &[Peer], columns: &[Peer], kind: Kind) -> String {
    let probes: Vec<(&Peer, &Peer, Kind)> =
        rows.iter().flat_map(|r| columns.iter().map(move |c| (r, c, kind))).collect();
    let outcomes = probe_all(&probes);
    let cells: Vec<String> = probes
        .iter()
        .zip(&outcomes)
        .map(|((from, to, kind), outcome)| {
            if *outcome == Outcome::Connected {
                return ".".to_string();
            }
            let mut reasons: Vec<u64> =
                drop_flows(lab, from, to, *kind).iter().filter_map(|f| f["drop_reason"].as_u64()).collect();
            reasons.sort_unstable();
            reasons.dedup();
            match reasons[..] {
                [] => "X".to_string(),
                _ => reasons.iter().map(u64::to_string).collect::<Vec<_>>().join("+"),
            }
        })
        .collect();
    let mut cells = cells.into_iter();
    let rendered: Vec<(String, Vec<String>)> =
        rows.iter().map(|r| (r.name.clone(), cells.by_ref().take(columns.len()).collect())).collect();
    render(&names(columns), &rendered)
}

/// The direction of the drop of `from` → `to` (`INGRESS` or `EGRESS`), and its reason.
fn drop_of(lab: &str, from: &Peer, to: &Peer, kind: Kind) -> (String, u64) {
    let found = drop_flows(lab, from, to, kind);
    let flow = found.first().unwrap_or_else(|| panic!("no drop flow {} -> {} {kind}", from.name, to.name));
    (flow["traffic_direction"].as_str().unwrap_or_default().to_string(), flow["drop_reason"].as_u64().unwrap())
}

const CLUSTERWIDE: &str = "\
-\tx/a\tx/b\ty/a\tz/a
x/a\t.\t.\t.\t.
x/b\t.\t.\t.\t.
y/a\tX\tX\t.\t.
z/a\tX\tX\tX\t.
";

/// A CiliumClusterwideNetworkPolicy's ingressDeny and egressDeny win over every allow of the
/// namespaced policies, `fromEntities: all` and an L3-L4 allow naming the denied namespace
/// included: the drops are explicit denies (181), never default deny.
#[test]
fn a_clusterwide_deny_beats_every_namespaced_allow() {
    let lab = Lab::up(&topology("policy/clusterwide-deny.yaml"), "ccnp");
    let plan = lab.plan();
    let default_denied = dropped(&lab.name, 133);

    assert_eq!(probed_matrix(&plan, Kind::Tcp(80)), CLUSTERWIDE, "TCP/80");
    assert_eq!(probed_matrix(&plan, Kind::Icmp), CLUSTERWIDE, "ICMP");

    let p = |id| Peer::pod(&plan, id);
    for (from, to, direction) in
        [("y/a", "x/a", "INGRESS"), ("y/a", "x/b", "INGRESS"), ("z/a", "x/a", "EGRESS"), ("z/a", "y/a", "EGRESS")]
    {
        for kind in [Kind::Tcp(80), Kind::Icmp] {
            assert_eq!(
                drop_of(&lab.name, &p(from), &p(to), kind),
                (direction.to_string(), POLICY_DENY),
                "{from} -> {to} {kind}"
            );
        }
    }
    assert_eq!(dropped(&lab.name, 133), default_denied, "nothing was dropped as default deny");
}

const ALWAYS_TCP_80: &str = "\
-\tdefault/a\tdefault/b\tdefault/c
default/a\t.\t.\tX
default/b\tX\t.\tX
default/c\tX\tX\t.
";
const ALWAYS_ICMP: &str = "\
-\tdefault/a\tdefault/b\tdefault/c
default/a\t.\tX\tX
default/b\tX\t.\tX
default/c\tX\tX\t.
";

/// `policyEnforcement: always`: c, which no policy selects, is default deny both ways (its own
/// egress drops what it sends, its own ingress what it is sent); a, selected only at egress, is
/// default deny at ingress too; the world reaches no pod.
#[test]
fn enforcement_always_puts_pods_without_policy_in_default_deny_both_ways() {
    let lab = Lab::up(&topology("policy/enforcement-always.yaml"), "always");
    let plan = lab.plan();
    assert_eq!(probed_matrix(&plan, Kind::Tcp(80)), ALWAYS_TCP_80, "TCP/80");
    assert_eq!(probed_matrix(&plan, Kind::Icmp), ALWAYS_ICMP, "ICMP");

    let p = |id| Peer::pod(&plan, id);
    let tcp = Kind::Tcp(80);
    assert_eq!(drop_of(&lab.name, &p("default/c"), &p("default/b"), tcp), ("EGRESS".into(), POLICY_DENIED));
    assert_eq!(drop_of(&lab.name, &p("default/b"), &p("default/c"), tcp), ("INGRESS".into(), POLICY_DENIED));
    assert_eq!(drop_of(&lab.name, &p("default/b"), &p("default/a"), tcp), ("INGRESS".into(), POLICY_DENIED));

    let web = Peer::external(&plan, "web");
    let pods: Vec<Peer> = plan.pods.iter().map(|q| Peer::pod(&plan, &q.id())).collect();
    let expected = "-\tdefault/a\tdefault/b\tdefault/c\nweb\tX\tX\tX\n";
    assert_eq!(reach(std::slice::from_ref(&web), &pods, tcp), expected, "the world reaches no pod");
    assert_eq!(drop_of(&lab.name, &web, &p("default/c"), tcp), ("INGRESS".into(), POLICY_DENIED));
}

const NEVER: &str = "\
-\tdefault/a\tdefault/b\tdefault/c
default/a\t.\t.\t.
default/b\t.\t.\t.
default/c\t.\t.\t.
";

/// `policyEnforcement: never`: default denies, explicit denies and a clusterwide deny of
/// everything are all present, and nothing is enforced: every pod reaches every pod, the world
/// reaches every pod, and no packet is dropped by policy.
#[test]
fn enforcement_never_enforces_no_policy() {
    let lab = Lab::up(&topology("policy/enforcement-never.yaml"), "never");
    let plan = lab.plan();
    assert_eq!(probed_matrix(&plan, Kind::Tcp(80)), NEVER, "TCP/80");
    assert_eq!(probed_matrix(&plan, Kind::Icmp), NEVER, "ICMP");
    let web = Peer::external(&plan, "web");
    let pods: Vec<Peer> = plan.pods.iter().map(|q| Peer::pod(&plan, &q.id())).collect();
    let expected = "-\tdefault/a\tdefault/b\tdefault/c\nweb\t.\t.\t.\n";
    assert_eq!(reach(std::slice::from_ref(&web), &pods, Kind::Tcp(80)), expected, "the world reaches every pod");
    assert_eq!((dropped(&lab.name, 133), dropped(&lab.name, 181)), (0, 0), "no policy drop at all");
    for (pod, _) in plan.pods.iter().enumerate() {
        assert!(lab::datapath::maps::read_policy(&plan, pod).unwrap().is_empty(), "pod {pod}'s policy map is empty");
    }
}

const UNION_TCP_80: &str = "\
-\tdefault/server\tdefault/k8s-client\tdefault/cilium-client\tdefault/both\tdefault/other
default/server\t.\t.\t.\t.\t.
default/k8s-client\t.\t.\t.\t.\t.
default/cilium-client\tX\t.\t.\t.\t.
default/both\t.\t.\t.\t.\t.
default/other\tX\t.\t.\t.\t.
";
const UNION_TCP_8080: &str = "\
-\tdefault/server\tdefault/k8s-client\tdefault/cilium-client\tdefault/both\tdefault/other
default/server\t.\t.\t.\t.\t.
default/k8s-client\tX\t.\t.\t.\t.
default/cilium-client\t.\t.\t.\t.\t.
default/both\t.\t.\t.\t.\t.
default/other\tX\t.\t.\t.\t.
";

/// A NetworkPolicy (TCP/80) and a CiliumNetworkPolicy (TCP/8080) select the same pod: it accepts
/// what either allows and nothing else.
#[test]
fn a_network_policy_and_a_cilium_policy_on_one_pod_allow_their_union() {
    let lab = Lab::up(&topology("policy/knp-and-cnp.yaml"), "union");
    let plan = lab.plan();
    assert_eq!(probed_matrix(&plan, Kind::Tcp(80)), UNION_TCP_80, "TCP/80");
    assert_eq!(probed_matrix(&plan, Kind::Tcp(8080)), UNION_TCP_8080, "TCP/8080");
    let p = |id| Peer::pod(&plan, id);
    assert_eq!(
        drop_of(&lab.name, &p("default/other"), &p("default/server"), Kind::Tcp(80)),
        ("INGRESS".into(), POLICY_DENIED)
    );
}

/// Rows are the peers, columns the pods that allow one entity each (entities.yaml).
const ENTITIES: &str = "\
-\tdefault/world\tdefault/cluster\tdefault/host\tdefault/remote-node\tdefault/all
default/client\tX\t.\tX\tX\t.
node-a\tX\t.\t.\tX\t.
node-b\tX\t.\tX\t.\t.
web\t.\tX\tX\tX\t.
";

/// `fromEntities` and `toEntities` with world (an external), cluster, host (the pod's own node),
/// remote-node (another node) and all, at ingress (TCP/80 from the peer) and at egress (TCP/80
/// to the client pod, ICMP to the nodes' addresses, TCP/443 to the external).
#[test]
fn entities_select_the_world_the_cluster_the_host_and_remote_nodes() {
    entities_are_enforced(&topology("policy/entities.yaml"));
}

/// The entities again with the tunnel: node-b's connection to a pod on node-a leaves from its
/// router IP (its route into the tunnel) and arrives as remote-node; the pod's reply goes back
/// through the tunnel because node-a's ipcache gives node-b's router IP its node as tunnel
/// endpoint, as Cilium's does. (Without it the reply was dropped with 160,
/// NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT; this test found that.) The node-b row reads `X . X . .`.
#[test]
fn entities_select_remote_nodes_through_the_tunnel() {
    let (_dir, file) = with_tunnel("policy/entities.yaml");
    entities_are_enforced(&file);
}

fn entities_are_enforced(file: &std::path::Path) {
    let lab = Lab::up(file, "entities");
    let plan = lab.plan();
    let servers: Vec<Peer> = ["world", "cluster", "host", "remote-node", "all"]
        .iter()
        .map(|name| Peer::pod(&plan, &format!("default/{name}")))
        .collect();
    assert!(plan.pods.iter().filter(|p| p.name != "client").all(|p| plan.nodes[p.node].name == "node-a"));
    let peers = [
        Peer::pod(&plan, "default/client"),
        Peer::node(&plan, "node-a"),
        Peer::node(&plan, "node-b"),
        Peer::external(&plan, "web"),
    ];
    let default_denied = dropped(&lab.name, 133);
    assert_eq!(reach(&peers, &servers, Kind::Tcp(80)), ENTITIES, "ingress, from the peers");
    assert!(dropped(&lab.name, 133) > default_denied, "what no entity allows is default deny");

    // Egress: the same table, each cell probed from the pod (column) to the peer (row).
    let kind = |peer: &Peer| match peer.name.as_str() {
        "default/client" => Kind::Tcp(80),
        "web" => Kind::Tcp(443),
        _ => Kind::Icmp,
    };
    let probes: Vec<(&Peer, &Peer, Kind)> =
        peers.iter().flat_map(|peer| servers.iter().map(move |server| (server, peer, kind(peer)))).collect();
    assert_eq!(table(&names(&peers), &names(&servers), &probes), ENTITIES, "egress, to the peers");
    let (web, world) = (Peer::external(&plan, "web"), &servers[0]);
    assert_eq!(drop_of(&lab.name, world, &peers[0], Kind::Tcp(80)), ("EGRESS".into(), POLICY_DENIED));
    assert_eq!(drop_of(&lab.name, &web, &servers[1], Kind::Tcp(80)), ("INGRESS".into(), POLICY_DENIED));
}

/// Rows are what is probed, columns the servers, every cell from `client` (ports.yaml).
const PORTS: &str = "\
-\tdefault/range\tdefault/any\tdefault/web-1\tdefault/web-2
tcp/8079\tX\t.\tX\tX
tcp/8080\t.\t.\t.\tX
tcp/8087\t.\t.\tX\tX
tcp/8088\t.\t.\tX\tX
tcp/8089\t.\t.\tX\tX
tcp/8090\tX\t.\tX\tX
tcp/9090\tX\t.\tX\t.
udp/8080\t.\t.\tX\tX
udp/8090\tX\t.\tX\tX
icmp\tX\tX\tX\tX
";

/// A port range with protocol ANY (TCP and UDP 8080-8089, across the split of the range into
/// prefix blocks), protocol ANY without a port (every TCP and UDP port, no ICMP), and a
/// NetworkPolicy's named port resolved per selected pod, which give the name different numbers;
/// at egress, where the name stands for two numbers, Cilium 1.18 skips it (and the lab warns).
#[test]
fn port_ranges_protocol_any_and_named_ports() {
    let lab = Lab::up(&topology("policy/ports.yaml"), "ports");
    let plan = lab.plan();
    let client = Peer::pod(&plan, "default/client");
    let servers: Vec<Peer> =
        ["range", "any", "web-1", "web-2"].iter().map(|s| Peer::pod(&plan, &format!("default/{s}"))).collect();
    let kinds = [
        Kind::Tcp(8079),
        Kind::Tcp(8080),
        Kind::Tcp(8087),
        Kind::Tcp(8088),
        Kind::Tcp(8089),
        Kind::Tcp(8090),
        Kind::Tcp(9090),
        Kind::Udp(8080),
        Kind::Udp(8090),
        Kind::Icmp,
    ];
    let rows: Vec<String> = kinds.iter().map(Kind::to_string).collect();
    let probes: Vec<(&Peer, &Peer, Kind)> =
        kinds.iter().flat_map(|kind| servers.iter().map(|server| (&client, server, *kind))).collect();
    assert_eq!(table(&rows, &names(&servers), &probes), PORTS);
    // A port the server does not serve would be refused, allowed or not: every one is served, so
    // every X is a drop.
    for (outcome, (_, server, kind)) in probe_all(&probes).iter().zip(&probes) {
        assert!(matches!(outcome, Outcome::Connected | Outcome::Timeout), "{} {kind}: {outcome}", server.name);
    }
    assert_eq!(
        drop_of(&lab.name, &client, &servers[3], Kind::Tcp(8080)),
        ("INGRESS".into(), POLICY_DENIED),
        "web-2's `web` is 9090, so 8080 is not allowed"
    );

    // At egress, Cilium 1.18 skips a name that stands for several ports: egress-client's egress
    // allows nothing, and its drops are its own egress's default deny.
    let egress_client = Peer::pod(&plan, "default/egress-client");
    let web = [servers[2].clone(), servers[3].clone()];
    let kinds = [Kind::Tcp(8080), Kind::Tcp(9090)];
    let rows: Vec<String> = kinds.iter().map(Kind::to_string).collect();
    let probes: Vec<(&Peer, &Peer, Kind)> =
        kinds.iter().flat_map(|kind| web.iter().map(|server| (&egress_client, server, *kind))).collect();
    assert_eq!(table(&rows, &names(&web), &probes), EGRESS_NAMED_PORT);
    assert_eq!(drop_of(&lab.name, &egress_client, &web[0], Kind::Tcp(8080)), ("EGRESS".into(), POLICY_DENIED));
    let (_, resources) = lab::state::LabDir::of(&lab.name).read_sources().unwrap();
    let warnings = lab::live::compile(&plan, &resources).unwrap().warnings;
    assert!(
        warnings.iter().any(|w| w.to_string().contains("egress-client") && w.to_string().contains("8080, 9090")),
        "the lab warns that the name is skipped: {warnings:#?}"
    );
}

/// egress-client to web-1 and web-2 (ports.yaml): Kubernetes would allow web-1 tcp/8080 and web-2
/// tcp/9090.
const EGRESS_NAMED_PORT: &str = "\
-\tdefault/web-1\tdefault/web-2
tcp/8080\tX\tX
tcp/9090\tX\tX
";

const PRECEDENCE_TCP_80: &str = "\
-\tdefault/l3-deny-l4-allow\tdefault/l3-deny-l3l4-allow\tdefault/l3l4-deny-l4-allow\tdefault/l4-deny-l3-allow
default/a\t181\t181\t181\t181
default/b\t.\t.\t.\t181
";
const PRECEDENCE_UDP_80: &str = "\
-\tdefault/l3-deny-l4-allow\tdefault/l3-deny-l3l4-allow\tdefault/l3l4-deny-l4-allow\tdefault/l4-deny-l3-allow
default/a\t181\t181\t133\t.
default/b\t133\t133\t133\t.
";

/// An L3 deny beats an L4-only allow and an L3-L4 allow; an identity-specific deny (L3-L4)
/// overrides an L4-only allow of any identity; an L4-only deny beats an L3 allow. Each deny drops
/// with 181, and what nothing allows with 133.
#[test]
fn denies_take_precedence_over_allows_at_every_layer() {
    let lab = Lab::up(&topology("policy/deny-precedence.yaml"), "deny");
    let plan = lab.plan();
    let clients = [Peer::pod(&plan, "default/a"), Peer::pod(&plan, "default/b")];
    let servers: Vec<Peer> = ["l3-deny-l4-allow", "l3-deny-l3l4-allow", "l3l4-deny-l4-allow", "l4-deny-l3-allow"]
        .iter()
        .map(|s| Peer::pod(&plan, &format!("default/{s}")))
        .collect();
    assert_eq!(verdicts(&lab.name, &clients, &servers, Kind::Tcp(80)), PRECEDENCE_TCP_80, "TCP/80");
    assert_eq!(verdicts(&lab.name, &clients, &servers, Kind::Udp(80)), PRECEDENCE_UDP_80, "UDP/80");
}

const EXPRESSIONS: &str = "\
-\tprod/fe\tdev/be\tsrv/pod-in\tsrv/pod-notin\tsrv/pod-exists\tsrv/pod-absent\tsrv/ns-in\tsrv/ns-notin\tsrv/ns-exists\tsrv/ns-absent
prod/fe\t.\t.\t.\tX\t.\tX\t.\tX\t.\tX
dev/be\t.\t.\t.\t.\t.\tX\tX\t.\t.\tX
srv/pod-in\t.\t.\t.\t.\tX\t.\tX\t.\tX\t.
srv/pod-notin\t.\t.\tX\t.\tX\t.\tX\t.\tX\t.
srv/pod-exists\t.\t.\tX\t.\t.\t.\tX\t.\tX\t.
srv/pod-absent\t.\t.\tX\t.\tX\t.\tX\t.\tX\t.
srv/ns-in\t.\t.\tX\t.\tX\t.\t.\t.\tX\t.
srv/ns-notin\t.\t.\tX\t.\tX\t.\tX\t.\tX\t.
srv/ns-exists\t.\t.\tX\t.\tX\t.\tX\t.\t.\t.
srv/ns-absent\t.\t.\tX\t.\tX\t.\tX\t.\tX\t.
";

/// In, NotIn, Exists and DoesNotExist on pods' labels (clusterwide policies) and on namespaces'
/// labels (NetworkPolicy namespaceSelector, and a CiliumNetworkPolicy on the namespace labels
/// Cilium puts on pods); NotIn and DoesNotExist match pods and namespaces without the label.
#[test]
fn match_expressions_select_pods_and_namespaces() {
    let lab = Lab::up(&topology("policy/match-expressions.yaml"), "exprs");
    assert_eq!(probed_matrix(&lab.plan(), Kind::Tcp(80)), EXPRESSIONS);
}

/// Rows are senders, columns node-a's ports (host-policy.yaml).
const HOST_INGRESS: &str = "\
-\ttcp/22\ttcp/10250
admin\t.\tX
web\tX\tX
default/client\tX\t.
default/local\tX\tX
node-b\t.\t.
";

/// From node-a (the row) to each peer: TCP/443 to the externals, TCP/80 to the pods, TCP/22 to
/// node-b.
const HOST_EGRESS: &str = "\
-\tadmin\tweb\tdefault/client\tdefault/local\tnode-b
node-a\t.\tX\t.\t.\t.
";

/// A CiliumClusterwideNetworkPolicy with a nodeSelector is node-a's host policy, enforced on its
/// own traffic wherever it crosses a program: from the world and other nodes on the uplink, from
/// its own pods at their veths, and on the way out. node-b, which the selector does not match,
/// stays open; replies of allowed connections pass both ways; the drops are default deny (133)
/// at node-a's host endpoint.
#[test]
fn a_node_selector_makes_a_host_policy() {
    host_policy_is_enforced(&topology("policy/host-policy.yaml"));
}

/// The same with the tunnel: node-a's own connections to pods on node-b go through it.
#[test]
fn a_host_policy_holds_through_the_tunnel() {
    let (_dir, file) = with_tunnel("policy/host-policy.yaml");
    host_policy_is_enforced(&file);
}

fn host_policy_is_enforced(file: &std::path::Path) {
    let lab = Lab::up(file, "hostfw");
    let plan = lab.plan();
    let (node_a, node_b) = (Peer::node(&plan, "node-a"), Peer::node(&plan, "node-b"));
    let (admin, web) = (Peer::external(&plan, "admin"), Peer::external(&plan, "web"));
    let (client, local) = (Peer::pod(&plan, "default/client"), Peer::pod(&plan, "default/local"));
    let senders = [admin.clone(), web.clone(), client.clone(), local.clone(), node_b.clone()];
    let ports = [Kind::Tcp(22), Kind::Tcp(10250)];

    fn to<'a>(senders: &'a [Peer], ports: &[Kind], node: &'a Peer) -> Vec<(&'a Peer, &'a Peer, Kind)> {
        let pairs = senders.iter().filter(|s| s.name != node.name);
        pairs.flat_map(|s| ports.iter().map(move |&kind| (s, node, kind))).collect()
    }
    let columns: Vec<String> = ports.iter().map(ToString::to_string).collect();
    assert_eq!(table(&names(&senders), &columns, &to(&senders, &ports, &node_a)), HOST_INGRESS, "to node-a");
    let to_node_b: Vec<Outcome> = probe_all(&to(&senders, &ports, &node_b));
    assert!(to_node_b.iter().all(|o| *o == Outcome::Connected), "node-b has no host policy: {to_node_b:?}");

    let peers = [admin.clone(), web.clone(), client.clone(), local.clone(), node_b.clone()];
    let kind = |peer: &Peer| match peer.name.as_str() {
        "admin" | "web" => Kind::Tcp(443),
        "node-b" => Kind::Tcp(22),
        _ => Kind::Tcp(80),
    };
    let egress: Vec<(&Peer, &Peer, Kind)> = peers.iter().map(|peer| (&node_a, peer, kind(peer))).collect();
    assert_eq!(table(&["node-a".to_string()], &names(&peers), &egress), HOST_EGRESS, "from node-a");
    assert_eq!(probe_all(&[(&node_b, &web, Kind::Tcp(443))]), [Outcome::Connected], "node-b is not selected");

    assert_eq!(drop_of(&lab.name, &web, &node_a, Kind::Tcp(22)), ("INGRESS".into(), POLICY_DENIED));
    assert_eq!(drop_of(&lab.name, &local, &node_a, Kind::Tcp(22)), ("INGRESS".into(), POLICY_DENIED));
    assert_eq!(drop_of(&lab.name, &node_a, &web, Kind::Tcp(443)), ("EGRESS".into(), POLICY_DENIED));
}

const UNMANAGED: &str = "\
-\tdefault/client\tdefault/legacy\tdefault/db
default/client\t.\t.\t.
default/legacy\t.\t.\t133
default/db\t.\t.\t.
";

/// An unmanaged pod: its own policy is not enforced, and others see it as identity `unmanaged`,
/// so the label that would let it in does not.
#[test]
fn an_unmanaged_pod_is_not_enforced_and_is_seen_as_unmanaged() {
    let lab = Lab::up(&topology("policy/unmanaged.yaml"), "unmanaged");
    let plan = lab.plan();
    let pods: Vec<Peer> = plan.pods.iter().map(|q| Peer::pod(&plan, &q.id())).collect();
    assert_eq!(verdicts(&lab.name, &pods, &pods, Kind::Tcp(5432)), UNMANAGED);
    let legacy = pod(&plan, "default/legacy");
    assert_eq!(legacy.identity, lab::datapath::abi::identity::UNMANAGED);
    let drop = drop_flows(&lab.name, &pods[1], &pods[2], Kind::Tcp(5432)).remove(0);
    assert_eq!(drop["source"]["identity"], 3, "{drop}");
    assert_eq!(drop["source"]["labels"], serde_json::json!(["reserved:unmanaged"]), "{drop}");
    assert_eq!(drop["source"].get("ID"), None, "an unmanaged pod is no endpoint: {drop}");
    // Its veth carries no program: no flow was recorded on it.
    let on_its_veth = flows(&lab.name).into_iter().filter(|f| f["interface"]["name"] == legacy.host_ifname.as_str());
    assert_eq!(on_its_veth.count(), 0);
}
