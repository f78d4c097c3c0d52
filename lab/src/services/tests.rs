use std::path::Path;

use super::*;
use crate::topology::load_str;

/// Three `app: web` pods (one naming its port 8080 `http`), one other, and `policies`.
fn plan_and_resources(resources: &str) -> (Plan, Vec<Resource>) {
    let text = format!(
        "name: t
nodes: [{{name: a}}, {{name: b}}]
pods:
  - {{name: web-1, node: a, labels: {{app: web}}, ports: [{{name: http, port: 8080, protocol: TCP}}]}}
  - {{name: web-2, node: b, labels: {{app: web}}, ports: [{{name: http, port: 9090, protocol: TCP}}]}}
  - {{name: web-3, node: b, labels: {{app: web}}}}
  - {{name: client, node: a, labels: {{app: client}}}}
resources:
  - inline: |
{}
",
        resources.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n")
    );
    let loaded = load_str(Path::new("t.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    (Plan::new(&loaded.topology, "t"), loaded.resources)
}

fn ip(plan: &Plan, pod: &str) -> Ipv4Addr {
    plan.pods.iter().find(|p| p.name == pod).unwrap().ip
}

const WEB: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: plain, port: 81, targetPort: 80, protocol: UDP}";

#[test]
fn a_selector_gives_the_selected_pods_and_named_target_ports_resolve_per_pod() {
    let (plan, resources) = plan_and_resources(WEB);
    let services = Services::resolve(&plan, &resources).unwrap();
    let web = &services.services[0];
    assert_eq!(web.id(), "default/web");
    assert!(plan.service_cidr.contains(&web.cluster_ip));
    let http = &web.frontends[0];
    let mut expected = vec![
        Backend { address: ip(&plan, "web-1"), port: 8080, state: BackendState::Active },
        Backend { address: ip(&plan, "web-2"), port: 9090, state: BackendState::Active },
    ];
    expected.sort();
    assert_eq!(http.backends, expected, "web-3 has no port named http");
    assert_eq!((http.port, http.protocol, http.address), (80, Protocol::Tcp, web.cluster_ip));
    let plain = &web.frontends[1];
    assert_eq!((plain.protocol, plain.backends.len()), (Protocol::Udp, 3));
    assert!(plain.backends.iter().all(|b| b.port == 80));
    let ids: Vec<u16> = services.frontends().map(|(id, _, _)| id).collect();
    assert!(ids.len() == 2 && ids[0] != ids[1] && !ids.contains(&0), "{ids:?}");
    // The same address in every run.
    let again = Services::resolve(&plan, &resources).unwrap();
    assert_eq!(again.services[0].cluster_ip, web.cluster_ip);
}

#[test]
fn endpoint_slices_replace_the_selector_with_their_conditions() {
    let slice = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - addresses: [10.0.0.200]
    conditions: {ready: true}
  - addresses: [10.0.0.201]
    conditions: {ready: false, serving: true, terminating: true}
  - addresses: [10.0.0.202]
    conditions: {ready: false, serving: false, terminating: true}
  - addresses: [10.0.0.203]";
    let (plan, resources) = plan_and_resources(&format!("{WEB}\n---\n{slice}"));
    let services = Services::resolve(&plan, &resources).unwrap();
    let http = &services.services[0].frontends[0];
    let state = |last: u8| http.backends.iter().find(|b| b.address == Ipv4Addr::new(10, 0, 0, last)).map(|b| b.state);
    assert_eq!(state(200), Some(BackendState::Active));
    assert_eq!(state(201), Some(BackendState::Terminating));
    assert_eq!(state(202), None, "neither ready nor serving");
    assert_eq!(state(203), Some(BackendState::Active), "no conditions: ready");
    assert_eq!(http.backends.last().unwrap().state, BackendState::Terminating, "active ones first");
    assert!(services.services[0].frontends[1].backends.is_empty(), "the slice has no port `plain`");
}

#[test]
fn cluster_ips_given_are_kept_and_checked() {
    let (plan, resources) = plan_and_resources(&WEB.replace("spec:\n", "spec:\n  clusterIP: 172.30.0.10\n"));
    let services = Services::resolve(&plan, &resources).unwrap();
    assert_eq!(services.services[0].cluster_ip, Ipv4Addr::new(172, 30, 0, 10));

    let (plan, resources) = plan_and_resources(&WEB.replace("spec:\n", "spec:\n  clusterIP: 10.1.2.3\n"));
    let errors = Services::resolve(&plan, &resources).unwrap_err();
    assert_eq!(errors[0].field, "spec.clusterIP");
    assert!(errors[0].message.contains("serviceCIDR"), "{}", errors[0].message);

    let headless = WEB.replace("spec:\n", "spec:\n  clusterIP: None\n");
    let (plan, resources) = plan_and_resources(&headless);
    assert!(Services::resolve(&plan, &resources).unwrap().services.is_empty());
}

#[test]
fn bad_fields_are_named_and_unsupported_ones_warned_about() {
    let (plan, resources) = plan_and_resources(&WEB.replace("protocol: UDP", "protocol: SCTP"));
    let errors = Services::resolve(&plan, &resources).unwrap_err();
    assert_eq!(errors[0].field, "spec.ports[1].protocol");
    let (plan, resources) = plan_and_resources(&WEB.replace("  selector:", "  sessionAffinity: Sticky\n  selector:"));
    assert_eq!(Services::resolve(&plan, &resources).unwrap_err()[0].field, "spec.sessionAffinity");
    let (plan, resources) = plan_and_resources(
        &WEB.replace("  ports:\n    - {name: http, port: 80", "  ports:\n    - {name: http, port: x80"),
    );
    let errors = Services::resolve(&plan, &resources).unwrap_err();
    assert!(errors[0].field.starts_with("spec.ports"), "{:?}", errors[0]);

    let (plan, resources) = plan_and_resources(&WEB.replace("spec:\n", "spec:\n  type: LoadBalancer\n"));
    let services = Services::resolve(&plan, &resources).unwrap();
    // No address given: the NodePorts are served, and a warning says why no more.
    assert_eq!(services.warnings[0].field, "spec.loadBalancerIP");
    // NodePorts are served: derived in the range when not given, and checked when given.
    let node_ports: Vec<Option<u16>> = services.services[0].frontends.iter().map(|f| f.node_port).collect();
    assert!(node_ports.iter().all(|p| p.is_some_and(|p| NODE_PORTS.contains(&p))), "{node_ports:?}");
    let given = WEB
        .replace("spec:\n", "spec:\n  type: NodePort\n")
        .replace("targetPort: http}", "targetPort: http, nodePort: 80}");
    let (plan, resources) = plan_and_resources(&given);
    let errors = Services::resolve(&plan, &resources).unwrap_err();
    assert_eq!(errors[0].field, "spec.ports[0].nodePort");
    let local = WEB.replace("spec:\n", "spec:\n  externalTrafficPolicy: Nearby\n");
    let (plan, resources) = plan_and_resources(&local);
    assert_eq!(Services::resolve(&plan, &resources).unwrap_err()[0].field, "spec.externalTrafficPolicy");
    let local = WEB.replace("spec:\n", "spec:\n  internalTrafficPolicy: Nearby\n");
    let (plan, resources) = plan_and_resources(&local);
    assert_eq!(Services::resolve(&plan, &resources).unwrap_err()[0].field, "spec.internalTrafficPolicy");
    let (plan, resources) = plan_and_resources(&WEB.replace("spec:\n", "spec:\n  sessionAffinity: ClientIP\n"));
    assert_eq!(Services::resolve(&plan, &resources).unwrap().services[0].affinity_seconds, Some(10_800));
}

#[test]
fn frontends_and_backends_keep_their_numbers_when_others_come_and_go() {
    let (plan, resources) = plan_and_resources(WEB);
    let before = Services::resolve(&plan, &resources).unwrap();
    let other =
        "apiVersion: v1\nkind: Service\nmetadata: {name: aaa}\nspec:\n  selector: {app: client}\n  ports: [{port: 80}]";
    let (plan, resources) = plan_and_resources(&format!("{other}\n---\n{WEB}"));
    let after = Services::resolve(&plan, &resources).unwrap();
    assert_eq!(after.services.len(), 2);
    let frontends = |s: &Services| -> BTreeMap<(Ipv4Addr, u16), u16> {
        s.frontends().map(|(id, _, f)| ((f.address, f.port), id)).collect()
    };
    let (old, new) = (frontends(&before), frontends(&after));
    assert!(old.iter().all(|(k, id)| new[k] == *id), "{old:?} {new:?}");
    let (old, new) = (before.backend_ids(), after.backend_ids());
    assert!(old.iter().all(|(k, id)| new[k] == *id), "{old:?} {new:?}");
    assert_eq!(new.len(), old.len() + 1, "the client is a backend of aaa");
}

#[test]
fn load_balancer_addresses_and_external_ips_are_frontends_of_their_own() {
    let lb = WEB.replace(
        "spec:\n",
        "spec:\n  type: LoadBalancer\n  loadBalancerIP: 192.0.2.80\n  externalIPs: [192.0.2.90, 192.0.2.80]\n",
    ) + "\nstatus: {loadBalancer: {ingress: [{ip: 192.0.2.81}, {hostname: lb.example}]}}";
    let (plan, resources) = plan_and_resources(&lb);
    let services = Services::resolve(&plan, &resources).unwrap();
    assert_eq!(services.warnings, Vec::new());
    let web = &services.services[0];
    let frontends: Vec<(FrontendKind, String, bool)> =
        web.frontends.iter().map(|f| (f.kind, format!("{}:{}", f.address, f.port), f.node_port.is_some())).collect();
    let cluster_ip = web.cluster_ip;
    assert_eq!(
        frontends,
        vec![
            (FrontendKind::ClusterIp, format!("{cluster_ip}:80"), true),
            (FrontendKind::ClusterIp, format!("{cluster_ip}:81"), true),
            // Each address once, though given twice.
            (FrontendKind::LoadBalancer, "192.0.2.80:80".to_string(), false),
            (FrontendKind::LoadBalancer, "192.0.2.81:80".to_string(), false),
            (FrontendKind::ExternalIp, "192.0.2.90:80".to_string(), false),
            (FrontendKind::LoadBalancer, "192.0.2.80:81".to_string(), false),
            (FrontendKind::LoadBalancer, "192.0.2.81:81".to_string(), false),
            (FrontendKind::ExternalIp, "192.0.2.90:81".to_string(), false),
        ]
    );
    assert!(web.frontends.iter().all(|f| f.backends == web.frontends[0].backends || f.port == 81));
    // Each has its own reverse NAT index, so replies come from the address the client used.
    let ids: BTreeSet<u16> = services.frontends().map(|(id, _, _)| id).collect();
    assert_eq!(ids.len(), 8);
    // Cluster: the first node announces every address.
    let announced: Vec<(Ipv4Addr, usize)> = services.announcements(&plan).into_iter().collect();
    assert_eq!(announced.iter().map(|(_, node)| *node).collect::<Vec<_>>(), vec![0, 0, 0]);
}

#[test]
fn local_addresses_are_announced_by_a_node_with_a_backend_or_none() {
    let local = WEB.replace(
        "spec:\n",
        "spec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  loadBalancerIP: 192.0.2.80\n",
    );
    let (plan, resources) = plan_and_resources(&local);
    let services = Services::resolve(&plan, &resources).unwrap();
    // web-1 on node a serves port 80 (named port `http`), so a announces.
    assert_eq!(services.announcements(&plan), BTreeMap::from([(Ipv4Addr::new(192, 0, 2, 80), 0)]));
    let elsewhere = local.replace("selector: {app: web}", "selector: {app: nowhere}");
    let (plan, resources) = plan_and_resources(&elsewhere);
    let services = Services::resolve(&plan, &resources).unwrap();
    assert_eq!(services.announcements(&plan), BTreeMap::new(), "no backend, no announcement");
}

#[test]
fn outside_addresses_must_be_routable_and_claimed_once() {
    let (plan, _) = plan_and_resources(WEB);
    for (address, why) in [
        (plan.pods[0].ip.to_string(), "a pod CIDR"),
        (plan.nodes[1].ip.addr().to_string(), "the nodes' subnet"),
        (plan.service_cidr.hosts().nth(5).unwrap().to_string(), "serviceCIDR"),
        ("127.0.0.1".to_string(), "cannot be routed"),
        ("web.example".to_string(), "not an IPv4 address"),
    ] {
        let (plan, resources) =
            plan_and_resources(&WEB.replace("spec:\n", &format!("spec:\n  externalIPs: [{address}]\n")));
        let errors = Services::resolve(&plan, &resources).unwrap_err();
        assert_eq!(errors[0].field, "spec.externalIPs[0]", "{address}");
        assert!(errors[0].message.contains(why), "{address}: {}", errors[0].message);
    }
    let other = WEB.replace("name: web}", "name: web-2}");
    let both = format!("{WEB}\n---\n{other}").replace("spec:\n", "spec:\n  externalIPs: [192.0.2.90]\n");
    let (plan, resources) = plan_and_resources(&both);
    let errors = Services::resolve(&plan, &resources).unwrap_err();
    assert_eq!(errors[0].field, "spec.ports[0].port");
    assert!(errors[0].message.contains("already a frontend of Service default/web"), "{}", errors[0].message);
}
