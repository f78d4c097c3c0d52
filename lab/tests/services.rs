//! Services through the real datapath (topologies/services/): per-packet load balancing in the
//! client's egress with DNAT, reverse NAT on the replies, session affinity, named target ports,
//! the drop of a service without backends, policy after DNAT, backend churn, NodePorts,
//! LoadBalancer addresses and external IPs from outside, and the traffic policies.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use common::{Lab, capture, flows, tcp_sources, topology};
use lab::net::netns;
use pretty_assertions::assert_eq;

const WEB: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 10);
const STICKY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 11);
const EMPTY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 12);
const ITSELF: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 13);

/// An HTTP GET to `address`:80 from inside `pod`'s namespace: the answering pod (the agent's
/// HTTP answer names it), or the error.
fn get(pod: &std::fs::File, address: Ipv4Addr) -> Result<String, String> {
    let target = SocketAddrV4::new(address, 80).into();
    let stream = netns::run_in(pod, || TcpStream::connect_timeout(&target, Duration::from_secs(1))).unwrap();
    let mut stream = stream.map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(stream.peer_addr().unwrap(), target, "the client's peer is the ClusterIP");
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    answer.lines().last().map(str::to_string).ok_or_else(|| "an empty answer".to_string())
}

#[test]
fn a_cluster_ip_spreads_connections_over_every_backend_and_answers_from_itself() {
    let lab = Lab::up(&topology("services/clusterip.yaml"), "svc");
    let plan = lab.plan();
    let pod = |name: &str| plan.pods.iter().find(|p| p.name == name).unwrap();
    let client = netns::open(&pod("client").netns).unwrap();
    let capture = capture(&client);

    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..300 {
        *served.entry(get(&client, WEB).expect("the service answers")).or_default() += 1;
    }
    // web-3 serves its `http` on 9090, the others on 8080: the name resolved per backend.
    assert_eq!(served.keys().collect::<Vec<_>>(), ["default/web-1", "default/web-2", "default/web-3"]);
    assert!(served.values().all(|&n| n >= 60), "each backend gets at least 20%: {served:?}");

    // The client's own interface saw TCP only from the ClusterIP: every reply was translated.
    let sources = tcp_sources(&capture, pod("client").ip);
    assert_eq!(sources.keys().copied().collect::<Vec<_>>(), [(WEB, 80)], "{sources:?}");
    assert!(sources[&(WEB, 80)] >= 300 * 3, "SYN-ACK, answer and FIN of every connection: {sources:?}");

    // The flows name the service: the way there at the backend's address, the way back from
    // the ClusterIP with the backend it really came from.
    let backends: Vec<String> =
        plan.pods.iter().filter(|p| p.name.starts_with("web-")).map(|p| p.ip.to_string()).collect();
    let web = serde_json::json!({"name": "web", "namespace": "default"});
    let there = wait_for_flow(&lab.name, |f| f["destination_service"] == web);
    assert!(backends.contains(&there["IP"]["destination"].as_str().unwrap().to_string()), "{there}");
    let back = wait_for_flow(&lab.name, |f| f["source_service"] == web);
    assert_eq!(back["IP"]["source"], WEB.to_string().as_str(), "{back}");
    assert!(backends.contains(&back["IP"]["source_xlated"].as_str().unwrap().to_string()), "{back}");
    assert_eq!(back["destination"]["pod_name"], "client");

    // Hairpin: the client reaches itself through its own Service.
    for _ in 0..5 {
        assert_eq!(get(&client, ITSELF).expect("the client answers itself"), "default/client");
    }

    // ClientIP affinity: one backend for every connection.
    let sticky: Vec<String> = (0..50).map(|_| get(&client, STICKY).expect("the service answers")).collect();
    assert!(sticky.iter().all(|b| *b == sticky[0]), "{sticky:?}");
}

#[test]
fn no_backends_drops_with_158_and_policy_applies_to_the_backend() {
    let lab = Lab::up(&topology("services/clusterip.yaml"), "svc");
    let plan = lab.plan();
    let pod = |name: &str| plan.pods.iter().find(|p| p.name == name).unwrap();
    let (client, stranger) = (pod("client"), pod("stranger"));

    assert!(get(&netns::open(&client.netns).unwrap(), EMPTY).is_err());
    let no_service =
        wait_for_flow(&lab.name, |f| f["drop_reason"] == 158 && f["IP"]["destination"] == EMPTY.to_string().as_str());
    assert_eq!(no_service["IP"]["source"], client.ip.to_string().as_str());
    assert_eq!(no_service["drop_reason_desc"], "SERVICE_BACKEND_NOT_FOUND");
    assert_eq!(no_service["destination_service"], serde_json::json!({"name": "empty", "namespace": "default"}));

    // Only `client` may reach the backends: `stranger` cannot, even through the Service, and the
    // drop is at a backend's ingress, for the backend's address: policy ran after DNAT.
    assert!(get(&netns::open(&client.netns).unwrap(), WEB).is_ok());
    assert!(get(&netns::open(&stranger.netns).unwrap(), WEB).is_err());
    let backends: Vec<String> =
        plan.pods.iter().filter(|p| p.name.starts_with("web-")).map(|p| p.ip.to_string()).collect();
    let denied =
        wait_for_flow(&lab.name, |f| f["drop_reason"] == 133 && f["IP"]["source"] == stranger.ip.to_string().as_str());
    assert_eq!(denied["traffic_direction"], "INGRESS");
    let destination = denied["IP"]["destination"].as_str().unwrap().to_string();
    assert!(backends.contains(&destination), "{destination} is not a backend");
}

/// The first flow `matches` accepts, waiting up to 3 s for the agent to record it.
fn wait_for_flow(lab: &str, matches: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(flow) = flows(lab).into_iter().find(|f| matches(f)) {
            return flow;
        }
        assert!(Instant::now() < deadline, "no such flow in {lab}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// web's EndpointSlice with the given endpoints (`address: conditions` flow mappings).
fn slice(endpoints: &[(&str, &str)]) -> String {
    let mut yaml = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
"
    .to_string();
    for (address, conditions) in endpoints {
        yaml.push_str(&format!("  - {{addresses: [{address}], conditions: {conditions}}}\n"));
    }
    yaml
}

/// An open TCP connection through the Service, echoed by its backend.
struct Open(TcpStream);

impl Open {
    fn connect(pod: &std::fs::File) -> Open {
        let target = SocketAddrV4::new(CHURN, 80).into();
        let stream = netns::run_in(pod, || TcpStream::connect_timeout(&target, Duration::from_secs(1))).unwrap();
        let stream = stream.expect("the service answers");
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        Open(stream)
    }

    /// Sends a line and reads it back.
    fn exchange(&mut self, line: &str) -> std::io::Result<()> {
        self.0.write_all(line.as_bytes())?;
        let mut echoed = vec![0u8; line.len()];
        self.0.read_exact(&mut echoed)?;
        assert_eq!(echoed, line.as_bytes());
        Ok(())
    }
}

const CHURN: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 20);

#[test]
fn a_terminating_backend_drains_and_a_deleted_one_resets_its_connections() {
    let lab = Lab::up(&topology("services/backend-churn.yaml"), "churn");
    let plan = lab.plan();
    let client = netns::open(&plan.pods.iter().find(|p| p.name == "client").unwrap().netns).unwrap();
    let apply = |yaml: String| {
        let out = common::lab_change(&lab.name, "apply", &yaml);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };

    // Only web-1 serves: the open connection is web-1's.
    let mut draining = Open::connect(&client);
    draining.exchange("before\n").unwrap();

    apply(slice(&[
        ("10.0.0.101", "{ready: false, serving: true, terminating: true}"),
        ("10.0.1.102", "{ready: true}"),
    ]));
    let listed =
        lab::cmd::services::rows(&lab::live::services(&plan, &lab_sources(&lab.name)).unwrap(), &Default::default());
    let states: Vec<(&str, &str)> = listed[0].backends.iter().map(|b| (b.address.as_str(), b.state)).collect();
    assert_eq!(states, [("10.0.1.102:8080", "active"), ("10.0.0.101:8080", "terminating")]);
    draining.exchange("while terminating\n").expect("a terminating backend keeps its connections");
    let new: Vec<String> = (0..20).map(|_| get(&client, CHURN).expect("web-2 answers")).collect();
    assert!(new.iter().all(|b| b == "default/web-2"), "new connections avoid the terminating backend: {new:?}");

    // web-1 deleted: the connection's next packet goes to web-2, which resets it.
    let mut orphan = Open::connect(&client);
    orphan.exchange("to web-2\n").unwrap();
    apply(slice(&[("10.0.1.102", "{ready: true}")]));
    draining.exchange("after\n").expect_err("the deleted backend's connection is reset");
    orphan.exchange("web-2 stays\n").expect("web-2's connection is unaffected");
    let reset =
        wait_for_flow(&lab.name, |f| f["IP"]["source"] == "10.0.1.102" && f["l4"]["TCP"]["flags"]["RST"] == true);
    assert_eq!(
        reset["IP"]["destination"],
        plan.pods.iter().find(|p| p.name == "client").unwrap().ip.to_string().as_str()
    );
}

fn lab_sources(name: &str) -> Vec<lab::topology::resources::Resource> {
    lab::state::LabDir::of(name).read_sources().unwrap().1
}

/// What the backend `web` saw as the source of an HTTP GET from the external `user` to
/// `node`:`port`: `None` if the GET failed.
fn nodeport_source(plan: &lab::plan::Plan, node: &str, port: u16) -> Option<Ipv4Addr> {
    let node_ip = plan.nodes.iter().find(|n| n.name == node).unwrap().ip.addr();
    source_seen_by_web(plan, node_ip, port)
}

/// What the backend `web` saw as the source of an HTTP GET from the external `user` to
/// `address`:`port`: `None` if the GET failed.
fn source_seen_by_web(plan: &lab::plan::Plan, address: Ipv4Addr, port: u16) -> Option<Ipv4Addr> {
    let web = plan.pods.iter().find(|p| p.name == "web").unwrap();
    let user = netns::open(&plan.externals.iter().find(|e| e.name == "user").unwrap().netns).unwrap();
    let socket = capture(&netns::open(&web.netns).unwrap());
    let target = SocketAddrV4::new(address, port).into();
    let stream = netns::run_in(&user, || TcpStream::connect_timeout(&target, Duration::from_secs(1))).unwrap();
    let mut stream = stream.ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.ends_with("default/web\n"), "{answer}");
    let sources: Vec<Ipv4Addr> = tcp_sources(&socket, web.ip).keys().map(|(address, _)| *address).collect();
    assert_eq!(sources.len(), 1, "{sources:?}");
    Some(sources[0])
}

#[test]
fn node_ports_serve_the_outside_with_either_traffic_policy() {
    node_ports_are_served(&topology("services/nodeport.yaml"));
}

/// The same through the tunnel: node-a sends the translated request to node-b over VXLAN.
#[test]
fn node_ports_serve_the_outside_through_the_tunnel() {
    let (_dir, file) = common::with_tunnel("services/nodeport.yaml");
    node_ports_are_served(&file);
}

fn node_ports_are_served(file: &std::path::Path) {
    let lab = Lab::up(file, "nodeport");
    let plan = lab.plan();
    let node = |name: &str| plan.nodes.iter().find(|n| n.name == name).unwrap().ip.addr();
    let user = plan.externals.iter().find(|e| e.name == "user").unwrap().address.addr();

    // Cluster: through node-a, whose backend is on node-b, the backend sees node-a; through
    // node-b, which runs it, the user.
    assert_eq!(nodeport_source(&plan, "node-a", 30080), Some(node("node-a")));
    assert_eq!(nodeport_source(&plan, "node-b", 30080), Some(user));
    // Local: only node-b serves it, and the user's address arrives.
    assert_eq!(nodeport_source(&plan, "node-b", 30081), Some(user));
    assert_eq!(nodeport_source(&plan, "node-a", 30081), None);
    let dropped = wait_for_flow(&lab.name, |f| f["drop_reason"] == 158 && f["l4"]["TCP"]["destination_port"] == 30081);
    assert_eq!(dropped["destination_service"], serde_json::json!({"name": "web-local", "namespace": "default"}));
    assert_eq!(dropped["node_name"], "node-a");
}

/// An HTTP GET to `address`:80 from `pod`'s namespace and source port `port`, closed with a
/// reset so the port is free again at once: the answering pod.
fn get_from_port(pod: &std::fs::File, address: Ipv4Addr, port: u16) -> String {
    use socket2::{Domain, Socket, Type};
    let socket = netns::run_in(pod, || Socket::new(Domain::IPV4, Type::STREAM, None)).unwrap().unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.set_linger(Some(Duration::ZERO)).unwrap();
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into()).unwrap();
    socket.connect_timeout(&SocketAddrV4::new(address, 80).into(), Duration::from_secs(1)).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.lines().last().unwrap().to_string()
}

/// `loadBalancerAlgorithm: maglev`: a connection's tuple decides its backend, so the same
/// client ports land on the same backends when they connect again (at random, 30 ports would
/// not), and the table still spreads them.
#[test]
fn maglev_gives_a_tuple_the_same_backend_every_time() {
    let text = std::fs::read_to_string(topology("services/clusterip.yaml")).unwrap();
    let text = text.replace("routingMode: native", "routingMode: native\n  loadBalancerAlgorithm: maglev");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("maglev.yaml");
    std::fs::write(&file, text).unwrap();
    let lab = Lab::up(&file, "maglev");
    let plan = lab.plan();
    let client = netns::open(&plan.pods.iter().find(|p| p.name == "client").unwrap().netns).unwrap();
    let round = || -> Vec<String> { (40001..40031).map(|port| get_from_port(&client, WEB, port)).collect() };
    let first = round();
    assert_eq!(round(), first, "the same ports, the same backends");
    let distinct: std::collections::BTreeSet<&String> = first.iter().collect();
    assert!(distinct.len() >= 2, "{first:?}");
}

/// LoadBalancer addresses and external IPs from outside, through the node the fabric routes them
/// to, in both externalTrafficPolicy modes; the same addresses from pods (the internal scope);
/// internalTrafficPolicy Local; and the route following the Service when it changes.
#[test]
fn load_balancer_addresses_and_external_ips_are_served() {
    let lab = Lab::up(&topology("services/loadbalancer.yaml"), "lb");
    let plan = lab.plan();
    let node = |name: &str| plan.nodes.iter().find(|n| n.name == name).unwrap().ip.addr();
    let pod = |name: &str| netns::open(&plan.pods.iter().find(|p| p.name == name).unwrap().netns).unwrap();
    let user = plan.externals.iter().find(|e| e.name == "user").unwrap().address.addr();
    let (cluster, local, external_ip) =
        (Ipv4Addr::new(192, 0, 2, 80), Ipv4Addr::new(192, 0, 2, 81), Ipv4Addr::new(192, 0, 2, 90));

    // Cluster: node-a announces it and has no backend, so web sees node-a.
    assert_eq!(source_seen_by_web(&plan, cluster, 80), Some(node("node-a")));
    assert_eq!(source_seen_by_web(&plan, external_ip, 80), Some(node("node-a")));
    // Local: node-b announces it, and the user's address arrives.
    assert_eq!(source_seen_by_web(&plan, local, 80), Some(user));

    // From pods, the Local address has every backend (the internal scope), and answers from
    // itself (`get` asserts the peer).
    assert_eq!(get(&pod("client"), local), Ok("default/web".to_string()));
    // internalTrafficPolicy Local: node-a has no backend of web-internal, node-b has web.
    let internal = Ipv4Addr::new(172, 30, 0, 20);
    assert!(get(&pod("client"), internal).is_err());
    let dropped =
        wait_for_flow(&lab.name, |f| f["drop_reason"] == 158 && f["destination_service"]["name"] == "web-internal");
    assert_eq!(dropped["node_name"], "node-a");
    assert_eq!(get(&pod("neighbour"), internal), Ok("default/web".to_string()));

    // web-local changed to externalTrafficPolicy Cluster on the running lab: node-a announces
    // its address now, and SNATs.
    let changed = common::lab_change(
        &lab.name,
        "apply",
        "apiVersion: v1
kind: Service
metadata: {name: web-local}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
status:
  loadBalancer:
    ingress: [{ip: 192.0.2.81}]
",
    );
    assert!(changed.status.success(), "{}", String::from_utf8_lossy(&changed.stderr));
    assert_eq!(source_seen_by_web(&plan, local, 80), Some(node("node-a")));
}
