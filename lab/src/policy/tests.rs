//! The policy engine end to end: YAML policies → entries → decisions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;
use serde_yaml::Value;

use super::*;
use crate::datapath::abi::identity as reserved;
use crate::identity::{LabelFilter, pod_labels, reserved_identities};
use crate::topology::resources::Resource;
use crate::topology::source::Location;

pub(super) const WEB: u32 = 1000; // namespace a, app=web (endpoint 0, 10.0.0.10)
pub(super) const CLIENT_A: u32 = 1001; // namespace a, app=client (endpoint 1, 10.0.0.11)
pub(super) const CLIENT_B: u32 = 1002; // namespace b, app=client (endpoint 2, 10.0.1.12)
pub(super) const DB_B: u32 = 1003; // namespace b, app=db (endpoint 3, 10.0.1.13)
pub(super) const PODS: [u32; 4] = [WEB, CLIENT_A, CLIENT_B, DB_B];
pub(super) const TCP: u8 = 6;
pub(super) const UDP: u8 = 17;

pub(super) struct Lab {
    pub endpoints: Vec<Endpoint>,
    pub identities: BTreeMap<u32, Labels>,
}

/// Namespaces a (team red, pods in 10.0.0.0/24) and b (team blue, pods in 10.0.1.0/24).
pub(super) fn lab() -> Lab {
    let pods = [
        ("a", "web", WEB, 10, vec![("http", 8080, Protocol::Tcp)]),
        ("a", "client", CLIENT_A, 11, vec![]),
        ("b", "client", CLIENT_B, 12, vec![]),
        ("b", "db", DB_B, 13, vec![("sql", 5432, Protocol::Tcp), ("http", 8080, Protocol::Tcp)]),
    ];
    let mut identities = reserved_identities();
    let mut endpoints = Vec::new();
    for (namespace, app, identity, id, ports) in pods {
        let team = if namespace == "a" { "red" } else { "blue" };
        let labels = pod_labels(
            namespace,
            &BTreeMap::from([("team".to_string(), team.to_string())]),
            &BTreeMap::from([
                ("app".to_string(), app.to_string()),
                ("pod-template-hash".to_string(), "abc".to_string()),
            ]),
            "default",
        );
        identities.insert(identity, LabelFilter::default().relevant(&labels));
        let subnet = if namespace == "a" { 0 } else { 1 };
        endpoints.push(Endpoint {
            id,
            identity,
            labels,
            namespace: namespace.to_string(),
            ip: std::net::Ipv4Addr::new(10, 0, subnet, id as u8),
            named_ports: ports.into_iter().map(|(n, p, proto)| (n.to_string(), p, proto)).collect(),
            host: false,
        });
    }
    Lab { endpoints, identities }
}

/// The objects of a multi-document YAML text, as the topology loader makes them.
pub(super) fn resources(yaml: &str) -> Vec<Resource> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).expect("test YAML parses"))
        .filter(|object| !object.is_null())
        .enumerate()
        .map(|(i, object)| {
            let text = |path: &[&str]| {
                let mut v = &object;
                for key in path {
                    v = v.get(key)?;
                }
                v.as_str().map(str::to_string)
            };
            let kind = text(&["kind"]).unwrap();
            let namespaced = kind != "CiliumClusterwideNetworkPolicy";
            Resource {
                api_version: text(&["apiVersion"]).unwrap(),
                namespace: namespaced.then(|| text(&["metadata", "namespace"]).unwrap_or_else(|| "default".into())),
                kind,
                name: text(&["metadata", "name"]).unwrap(),
                file: PathBuf::from("policies.yaml"),
                location: Some(Location { line: 10 * i + 3, column: 9 }),
                object,
            }
        })
        .collect()
}

/// A CNP in namespace `ns` with the given spec (YAML flow or block, indented for `spec:`).
pub(super) fn cnp(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

pub(super) fn compile_in(lab: &Lab, yaml: &str, options: &Options) -> Result<Compiled, PolicyError> {
    compile(&resources(yaml), &lab.endpoints, &lab.identities, options)
}

pub(super) fn compiled(yaml: &str) -> Compiled {
    compile_in(&lab(), yaml, &Options::default()).unwrap_or_else(|e| panic!("{e}"))
}

pub(super) fn invalid(yaml: &str) -> Diagnostic {
    match compile_in(&lab(), yaml, &Options::default()) {
        Err(PolicyError::Invalid(mut diagnostics)) => {
            assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
            diagnostics.remove(0)
        }
        other => panic!("expected an invalid policy, got {other:?}"),
    }
}

/// An entry, readable: (key prefix, identity, egress, protocol, host-order port, deny, entry prefix).
pub(super) type Row = (u32, u32, u8, u8, u16, u8, u8);

pub(super) fn rows(policy: &EndpointPolicy) -> Vec<Row> {
    policy
        .entries
        .iter()
        .map(|(k, e)| (k.prefixlen, k.identity, k.egress, k.protocol, u16::from_be(k.dport), e.deny, e.prefix_length))
        .collect()
}

pub(super) fn identities_of(policy: &EndpointPolicy, egress: u8) -> BTreeSet<u32> {
    policy.entries.keys().filter(|k| k.egress == egress).map(|k| k.identity).collect()
}

pub(super) fn verdict(policy: &EndpointPolicy, identity: u32, egress: bool, protocol: u8, port: u16) -> Verdict {
    lookup(policy, identity, egress, protocol, port).verdict
}

/// No allow may be covered by a deny of the same direction, identity or 0, and a containing
/// protocol/port prefix: the invariant bpf/lib/policy.h relies on.
pub(super) fn assert_no_covered_allow(policy: &EndpointPolicy) {
    for (allow, entry) in policy.entries.iter().filter(|(_, e)| e.deny == 0) {
        for (deny, _) in policy.entries.iter().filter(|(_, e)| e.deny != 0) {
            let same_identity = deny.identity == allow.identity || deny.identity == 0;
            let probe = PolicyKey { identity: deny.identity, ..*allow };
            let covers = deny.egress == allow.egress
                && same_identity
                && deny.prefixlen <= allow.prefixlen
                && prefix_matches(deny, &probe);
            assert!(!covers, "allow {allow:?} {entry:?} is covered by deny {deny:?}");
        }
    }
}

#[test]
fn cnp_selectors_are_limited_to_the_policy_namespace() {
    let c = compiled(&cnp(
        "a",
        "web",
        "{endpointSelector: {}, ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}], \
         egress: [{toEndpoints: [{}]}, {toEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': b}}]}]}",
    ));
    // the subject: every endpoint of namespace a, none of b
    let selected: Vec<bool> = c.endpoints.iter().map(|p| p.ingress_enforced).collect();
    assert_eq!(selected, [true, true, false, false]);
    assert_eq!(identities_of(&c.endpoints[0], 0), BTreeSet::from([CLIENT_A]), "app=client of namespace a only");
    // `{}` is every pod of namespace a, not world; naming namespace b reaches b
    assert_eq!(identities_of(&c.endpoints[0], 1), BTreeSet::from([WEB, CLIENT_A, CLIENT_B, DB_B]));
    assert!(!identities_of(&c.endpoints[0], 1).contains(&reserved::WORLD));
    assert_eq!(c.endpoints[2], EndpointPolicy::default());

    // the subject of a CNP stays in its namespace even if it names another one
    let c = compiled(&cnp(
        "b",
        "p",
        "{endpointSelector: {matchLabels: {'k8s:io.kubernetes.pod.namespace': a}}, ingress: [{}]}",
    ));
    assert_eq!(c.endpoints.iter().map(|p| p.ingress_enforced).collect::<Vec<_>>(), [false, false, true, true]);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);

    // selecting on namespace labels lifts the restriction (Cilium's getEndpointSelector)
    let c = compiled(&cnp(
        "a",
        "p",
        "{endpointSelector: {matchLabels: {app: web}}, \
         ingress: [{fromEndpoints: [{matchLabels: {'io.cilium.k8s.namespace.labels.team': blue}}]}]}",
    ));
    assert_eq!(identities_of(&c.endpoints[0], 0), BTreeSet::from([CLIENT_B, DB_B]));

    // a clusterwide policy's `{}` is every pod of every namespace, still not the reserved ones
    let c = compiled(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: all}\n\
         spec: {endpointSelector: {matchLabels: {app: db}}, ingress: [{fromEndpoints: [{}]}]}\n",
    );
    assert_eq!(c.endpoints.iter().map(|p| p.ingress_enforced).collect::<Vec<_>>(), [false, false, false, true]);
    assert_eq!(identities_of(&c.endpoints[3], 0), BTreeSet::from(PODS));
}

#[test]
fn match_expressions_select_subjects_and_peers() {
    let c = compiled(&cnp(
        "b",
        "p",
        "{endpointSelector: {matchExpressions: [{key: app, operator: In, values: [db, cache]}]}, \
         ingress: [{fromEndpoints: [{matchExpressions: [{key: 'k8s:app', operator: NotIn, values: [db]}, \
                                                       {key: io.kubernetes.pod.namespace, operator: Exists}]}]}], \
         egress: [{toEndpoints: [{matchExpressions: [{key: app, operator: DoesNotExist}]}]}]}",
    ));
    assert_eq!(c.endpoints.iter().map(|p| p.ingress_enforced).collect::<Vec<_>>(), [false, false, false, true]);
    // NotIn db across namespaces (the selector names the namespace key, so no restriction)
    assert_eq!(identities_of(&c.endpoints[3], 0), BTreeSet::from([WEB, CLIENT_A, CLIENT_B]));
    // every pod has an app label: nothing in namespace b lacks one
    assert!(c.endpoints[3].egress_enforced);
    assert!(identities_of(&c.endpoints[3], 1).iter().all(|id| *id == 0), "only the implicit entries, if any");
    assert_eq!(verdict(&c.endpoints[3], CLIENT_B, true, TCP, 80), Verdict::DefaultDenied);

    // a selector on a label the identity leaves out never matches (pod-template-hash)
    let c = compiled(&cnp("a", "p", "{endpointSelector: {matchLabels: {pod-template-hash: abc}}, ingress: [{}]}"));
    assert!(c.endpoints.iter().all(|p| !p.ingress_enforced));
}

#[test]
fn entities_resolve_to_reserved_identities() {
    let entity = |name: &str| {
        let c = compiled(&cnp(
            "a",
            "p",
            &format!("{{endpointSelector: {{matchLabels: {{app: web}}}}, ingress: [{{fromEntities: [{name}]}}]}}"),
        ));
        c.endpoints[0].clone()
    };
    assert_eq!(identities_of(&entity("world"), 0), BTreeSet::from([reserved::WORLD]));
    assert_eq!(identities_of(&entity("host"), 0), BTreeSet::from([reserved::HOST]));
    assert_eq!(identities_of(&entity("remote-node"), 0), BTreeSet::from([reserved::REMOTE_NODE]));
    assert_eq!(identities_of(&entity("kube-apiserver"), 0), BTreeSet::from([reserved::KUBE_APISERVER]));
    assert_eq!(identities_of(&entity("health"), 0), BTreeSet::from([reserved::HEALTH]));
    let cluster = identities_of(&entity("cluster"), 0);
    let expected: BTreeSet<u32> = [1, 3, 4, 5, 6, 7, 8].into_iter().chain(PODS).collect();
    assert_eq!(cluster, expected, "cluster: reserved ones but world, and every pod of the cluster");
    // all: the wildcard, an L4-less entry for identity 0 that world matches too
    let all = entity("all");
    assert_eq!(rows(&all), vec![(40, 0, 0, 0, 0, 0, 0)]);
    assert!(verdict(&all, reserved::WORLD, false, TCP, 1).is_allowed());
    // none: enforced, nothing allowed
    let none = entity("none");
    assert!(none.ingress_enforced && none.entries.is_empty());
    assert_eq!(verdict(&none, reserved::WORLD, false, TCP, 1), Verdict::DefaultDenied);
    // a `reserved:` selector is not restricted to the namespace and selects by label
    let c = compiled(&cnp(
        "a",
        "p",
        "{endpointSelector: {matchLabels: {app: web}}, ingress: [{fromEndpoints: [{matchLabels: {'reserved:host': ''}}]}]}",
    ));
    assert_eq!(identities_of(&c.endpoints[0], 0), BTreeSet::from([reserved::HOST]));
}

#[test]
fn l3_l4_and_l3l4_entries_have_cilium_prefixes() {
    let c = compiled(&cnp(
        "a",
        "p",
        "{endpointSelector: {matchLabels: {app: web}}, ingress: [\
           {fromEndpoints: [{matchLabels: {app: client}}]},\
           {toPorts: [{ports: [{port: '80', protocol: TCP}]}]},\
           {fromEntities: [host], toPorts: [{ports: [{port: 8443, protocol: TCP}, {protocol: UDP}, {port: '0', protocol: TCP}]}]}]}",
    ));
    let web = &c.endpoints[0];
    assert_eq!(
        rows(web),
        vec![
            (40, CLIENT_A, 0, 0, 0, 0, 0),         // L3-only: any protocol and port
            (48, reserved::HOST, 0, TCP, 0, 0, 8), // a protocol, any port
            (48, reserved::HOST, 0, UDP, 0, 0, 8),
            (64, 0, 0, TCP, 80, 0, 24),                // L4-only: identity 0
            (64, reserved::HOST, 0, TCP, 8443, 0, 24), // L3L4
        ]
    );
    assert_eq!(web.entries.keys().nth(3).unwrap().dport, 80u16.to_be(), "dport in network order");
    assert!(!web.egress_enforced);

    let decide = |id, proto, port| lookup(web, id, false, proto, port);
    let d = decide(CLIENT_A, UDP, 5353);
    assert_eq!((d.verdict, d.match_type), (Verdict::Allowed, match_type::L3_ONLY));
    let d = decide(reserved::WORLD, TCP, 80);
    assert_eq!((d.verdict, d.match_type), (Verdict::Allowed, match_type::L4_ONLY));
    assert!(!d.matched.unwrap().l3);
    let d = decide(reserved::HOST, TCP, 8443);
    assert_eq!((d.verdict, d.match_type), (Verdict::Allowed, match_type::L3_L4));
    let d = decide(reserved::HOST, TCP, 9);
    assert_eq!((d.verdict, d.match_type), (Verdict::Allowed, match_type::L3_PROTO));
    let d = decide(reserved::HOST, TCP, 80);
    assert_eq!(d.match_type, match_type::L4_ONLY, "the longer prefix wins over the L3 entry");
    let d = decide(reserved::WORLD, TCP, 81);
    assert_eq!((d.verdict, d.matched, d.match_type), (Verdict::DefaultDenied, None, match_type::NONE));
    assert_eq!(d.verdict.drop_reason(), Some(DROP_POLICY));
    // egress is not enforced: allowed without a lookup
    let d = lookup(web, reserved::WORLD, true, TCP, 81);
    assert_eq!((d.verdict, d.enforced, d.matched), (Verdict::Allowed, false, None));
}

#[test]
fn any_protocol_is_tcp_and_udp() {
    let c = compiled(&cnp(
        "a",
        "p",
        "{endpointSelector: {matchLabels: {app: web}}, ingress: [\
           {toPorts: [{ports: [{port: '53', protocol: ANY}, {port: '54'}]}]},\
           {fromEntities: [world], toPorts: [{ports: [{protocol: ANY}]}]}]}",
    ));
    let web = &c.endpoints[0];
    assert_eq!(
        rows(web),
        vec![
            (48, reserved::WORLD, 0, TCP, 0, 0, 8),
            (48, reserved::WORLD, 0, UDP, 0, 0, 8),
            (64, 0, 0, TCP, 53, 0, 24),
            (64, 0, 0, TCP, 54, 0, 24),
            (64, 0, 0, UDP, 53, 0, 24),
            (64, 0, 0, UDP, 54, 0, 24),
        ]
    );
    assert!(verdict(web, CLIENT_A, false, UDP, 53).is_allowed());
    assert!(verdict(web, CLIENT_A, false, TCP, 53).is_allowed());
    assert_eq!(verdict(web, CLIENT_A, false, 132, 53), Verdict::DefaultDenied, "ANY is TCP and UDP, not SCTP");
    assert!(verdict(web, reserved::WORLD, false, UDP, 9).is_allowed());
    assert_eq!(verdict(web, reserved::WORLD, false, 1, 0), Verdict::DefaultDenied, "ANY without a port: not ICMP");
    // only an item without ports covers every protocol
    let c =
        compiled(&cnp("a", "p", "{endpointSelector: {matchLabels: {app: web}}, ingress: [{fromEntities: [world]}]}"));
    assert!(verdict(&c.endpoints[0], reserved::WORLD, false, 1, 0).is_allowed());
}

#[test]
fn port_ranges_split_into_aligned_blocks() {
    let c = compiled(&cnp(
        "a",
        "p",
        "{endpointSelector: {matchLabels: {app: web}}, ingress: [\
           {fromEntities: [world], toPorts: [{ports: [{port: '8080', endPort: 8090, protocol: TCP}]}]}], \
         egress: [{toPorts: [{ports: [{port: 1024, endPort: 65535, protocol: UDP}]}]}]}",
    ));
    let web = &c.endpoints[0];
    let ingress: Vec<Row> = rows(web).into_iter().filter(|r| r.2 == 0).collect();
    assert_eq!(
        ingress,
        vec![
            (61, reserved::WORLD, 0, TCP, 8080, 0, 21),
            (63, reserved::WORLD, 0, TCP, 8088, 0, 23),
            (64, reserved::WORLD, 0, TCP, 8090, 0, 24),
        ]
    );
    let egress: Vec<(u32, u16)> = rows(web).into_iter().filter(|r| r.2 == 1).map(|r| (r.0, r.4)).collect();
    assert_eq!(egress, vec![(49, 32768), (50, 16384), (51, 8192), (52, 4096), (53, 2048), (54, 1024)]);
    for port in [8079u16, 8080, 8085, 8087, 8088, 8089, 8090, 8091] {
        let expected = (8080..=8090).contains(&port);
        assert_eq!(verdict(web, reserved::WORLD, false, TCP, port).is_allowed(), expected, "{port}");
    }
    for port in [1, 1023, 1024, 2047, 2048, 40000, 65535] {
        assert_eq!(verdict(web, reserved::WORLD, true, UDP, port).is_allowed(), port >= 1024, "{port}");
    }
}

#[test]
fn denies_shadow_allows() {
    let c = compiled(&cnp(
        "a",
        "p",
        "{endpointSelector: {matchLabels: {app: web}}, \
         ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: '80', protocol: TCP}]}]},\
                   {toPorts: [{ports: [{port: '443', protocol: TCP}]}]},\
                   {fromEntities: [world]}], \
         ingressDeny: [{toPorts: [{ports: [{protocol: TCP}]}]}]}",
    ));
    let web = &c.endpoints[0];
    assert_no_covered_allow(web);
    let deny_cookie = c.rules.iter().position(|r| r.deny).unwrap() as u32 + 1;
    // the L3L4 and L4 allows became denies at their own keys, carrying the deny's cookie
    for (identity, port) in [(CLIENT_A, 80), (0, 443)] {
        let key = web.entries.keys().find(|k| k.identity == identity && u16::from_be(k.dport) == port).unwrap();
        assert_eq!(
            (web.entries[key].deny, web.entries[key].rule, web.entries[key].prefix_length),
            (1, deny_cookie, 24)
        );
    }
    let d = lookup(web, CLIENT_A, false, TCP, 80);
    assert_eq!((d.verdict, d.verdict.drop_reason()), (Verdict::Denied, Some(DROP_POLICY_DENY)));
    assert_eq!(c.rule(d.matched.unwrap().entry.rule).unwrap().path, "spec.ingressDeny[0]");
    assert_eq!(verdict(web, reserved::WORLD, false, TCP, 443), Verdict::Denied);
    assert_eq!(verdict(web, reserved::WORLD, false, UDP, 443), Verdict::Allowed, "the L3 allow of world, UDP");
    assert_eq!(verdict(web, CLIENT_A, false, UDP, 80), Verdict::DefaultDenied);
    // an L3 deny beats an L4-only allow
    let c = compiled(&cnp(
        "a",
        "p",
        "{endpointSelector: {matchLabels: {app: web}}, ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}]}]}], \
         ingressDeny: [{fromEndpoints: [{matchLabels: {app: client}}]}]}",
    ));
    assert_eq!(verdict(&c.endpoints[0], CLIENT_A, false, TCP, 80), Verdict::Denied);
    assert_eq!(verdict(&c.endpoints[0], WEB, false, TCP, 80), Verdict::Allowed);
}

#[test]
fn enforcement_follows_sections_and_enable_default_deny() {
    let flags = |spec: &str| {
        let c = compiled(&cnp("a", "p", spec));
        (c.endpoints[0].ingress_enforced, c.endpoints[0].egress_enforced)
    };
    assert_eq!(compiled("").endpoints.iter().map(EndpointPolicy::flags).collect::<Vec<_>>(), [0, 0, 0, 0]);
    assert_eq!(flags("{endpointSelector: {}, ingress: [{}]}"), (true, false));
    assert_eq!(flags("{endpointSelector: {}, ingress: []}"), (false, false), "an empty section is no section");
    assert_eq!(flags("{endpointSelector: {}, egressDeny: [{toEntities: [world]}]}"), (false, true));
    assert_eq!(flags("{endpointSelector: {}, egress: [{toEntities: [world]}], ingressDeny: [{}]}"), (true, true));
    assert_eq!(flags("{endpointSelector: {}, enableDefaultDeny: {ingress: true}}"), (true, false));

    // `ingress: [{}]` enforces and allows nothing
    let c = compiled(&cnp("a", "p", "{endpointSelector: {}, ingress: [{}]}"));
    assert!(c.endpoints[0].entries.is_empty());
    assert_eq!(verdict(&c.endpoints[0], CLIENT_A, false, TCP, 80), Verdict::DefaultDenied);
    assert_eq!(c.endpoints[0].flags(), crate::datapath::abi::ENDPOINT_F_INGRESS_ENFORCED);

    // without default deny the direction allows all but still applies its denies
    let c = compiled(&cnp(
        "a",
        "p",
        "{endpointSelector: {matchLabels: {app: web}}, enableDefaultDeny: {ingress: false}, \
         ingressDeny: [{fromEntities: [world], toPorts: [{ports: [{port: '22', protocol: TCP}]}]}]}",
    ));
    let web = &c.endpoints[0];
    assert!(web.ingress_enforced);
    assert_eq!(verdict(web, reserved::WORLD, false, TCP, 22), Verdict::Denied);
    let d = lookup(web, reserved::WORLD, false, TCP, 80);
    assert_eq!((d.verdict, d.matched.unwrap().entry.rule, c.rule(0)), (Verdict::Allowed, 0, None));
    // ... unless another rule selecting the endpoint asks for default deny
    let both = format!(
        "{}---\n{}",
        cnp("a", "a", "{endpointSelector: {}, ingress: [{}]}"),
        cnp("a", "b", "{endpointSelector: {}, enableDefaultDeny: {ingress: false}, ingress: [{fromEntities: [host]}]}")
    );
    let c = compiled(&both);
    assert_eq!(verdict(&c.endpoints[0], reserved::WORLD, false, TCP, 80), Verdict::DefaultDenied);
    assert_eq!(verdict(&c.endpoints[0], reserved::HOST, false, TCP, 80), Verdict::Allowed);
}

#[test]
fn named_ports_resolve_per_endpoint_at_ingress_and_across_endpoints_at_egress() {
    let c = compiled(&cnp(
        "a",
        "p",
        "{endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: http, protocol: TCP}]}]}], \
         egress: [{toPorts: [{ports: [{port: sql}, {port: http, protocol: UDP}]}]}]}",
    ));
    // web has http=8080/TCP; client has no named ports
    assert_eq!(
        rows(&c.endpoints[0]).into_iter().filter(|r| r.2 == 0).collect::<Vec<_>>(),
        vec![(64, 0, 0, TCP, 8080, 0, 24)]
    );
    assert!(c.endpoints[1].ingress_enforced && identities_of(&c.endpoints[1], 0).is_empty());
    // sql (db's, TCP) resolves for every endpoint at egress; http is not a UDP port anywhere
    assert_eq!(rows(&c.endpoints[1]), vec![(64, 0, 1, TCP, 5432, 0, 24)]);

    // a name that means different ports on different endpoints is skipped with a warning
    let mut lab = lab();
    lab.endpoints[1].named_ports.push(("sql".into(), 3306, Protocol::Tcp));
    let c = compile_in(
        &lab,
        &cnp("a", "p", "{endpointSelector: {}, egress: [{toPorts: [{ports: [{port: sql}]}]}]}"),
        &Options::default(),
    )
    .unwrap();
    assert!(c.endpoints[0].entries.is_empty());
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].message.contains("several ports (3306, 5432)"), "{}", c.warnings[0]);
}

#[test]
fn rule_cookies_name_their_items() {
    let yaml = format!(
        "{}---\n{}",
        cnp("a", "first", "{endpointSelector: {}, ingress: [{}, {fromEntities: [host]}]}"),
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: second, namespace: a}\n\
         specs: [{endpointSelector: {}, egressDeny: [{toEntities: [world]}]}, {endpointSelector: {}, egress: [{toEntities: [host]}]}]\n"
    );
    let c = compiled(&yaml);
    let described: Vec<String> = c.rules.iter().map(ToString::to_string).collect();
    assert_eq!(
        described,
        [
            "CiliumNetworkPolicy a/first spec.ingress[0] (ingress allow)",
            "CiliumNetworkPolicy a/first spec.ingress[1] (ingress allow)",
            "CiliumNetworkPolicy a/second specs[0].egressDeny[0] (egress deny)",
            "CiliumNetworkPolicy a/second specs[1].egress[0] (egress allow)",
        ]
    );
    assert_eq!(
        (c.rules[2].spec, c.rules[2].file.to_str(), c.rules[2].location.unwrap().line),
        (Some(0), Some("policies.yaml"), 13)
    );
    let web = &c.endpoints[0];
    let cookie =
        |id: u32, egress: u8| web.entries.iter().find(|(k, _)| k.identity == id && k.egress == egress).unwrap().1.rule;
    assert_eq!((cookie(reserved::HOST, 0), cookie(reserved::WORLD, 1), cookie(reserved::HOST, 1)), (2, 3, 4));
    // duplicates merge to the lowest cookie, deterministically
    let twice = format!(
        "{}---\n{}",
        cnp("a", "x", "{endpointSelector: {}, ingress: [{fromEntities: [host]}]}"),
        cnp("a", "y", "{endpointSelector: {}, ingress: [{fromEntities: [host, cluster]}]}")
    );
    let c = compiled(&twice);
    assert_eq!(c.endpoints[0].entries.values().find(|e| e.rule == 1).map(|e| e.prefix_length), Some(0));
    assert_eq!(c, compiled(&twice));
}

#[test]
fn too_many_entries_is_an_error_naming_endpoint_and_policies() {
    let yaml = format!(
        "{}---\n{}",
        cnp(
            "a",
            "wide",
            "{endpointSelector: {matchLabels: {app: web}}, ingress: [{toPorts: [{ports: [{port: 1, endPort: 65535}]}]}]}"
        ),
        cnp("a", "narrow", "{endpointSelector: {}, ingress: [{fromEntities: [host]}]}"),
    );
    let lab = lab();
    // 16 blocks for TCP and for UDP, plus host: 33 entries for web, 1 for the client
    assert_eq!(
        compile_in(&lab, &yaml, &Options { max_entries: 33, ..Options::default() }).unwrap().endpoints[0].entries.len(),
        33
    );
    let Err(PolicyError::Capacity(errors)) =
        compile_in(&lab, &yaml, &Options { max_entries: 32, ..Options::default() })
    else {
        panic!("expected a capacity error");
    };
    assert_eq!(errors.len(), 1);
    let e = &errors[0];
    assert_eq!((e.endpoint, e.endpoint_id, e.identity, e.entries, e.max_entries), (0, 10, WEB, 33, 32));
    assert_eq!(e.policies, ["CiliumNetworkPolicy a/wide", "CiliumNetworkPolicy a/narrow"]);
    let text = PolicyError::Capacity(errors).to_string();
    assert!(text.contains("endpoint 10") && text.contains("a/wide") && text.contains("32"), "{text}");
    assert_eq!(Options::default().max_entries, 16384);
}

#[test]
fn invalid_policies_name_file_location_and_field() {
    let web = "endpointSelector: {matchLabels: {app: web}}";
    let cases = [
        (format!("{{{web}, ingres: [{{}}]}}"), "spec.ingres", "unknown field `ingres`"),
        (
            format!("{{{web}, ingress: [{{toPorts: [{{ports: [{{port: '80', prot: TCP}}]}}]}}]}}"),
            "spec.ingress[0].toPorts[0].ports[0].prot",
            "unknown field `prot`",
        ),
        (
            "{endpointSelector: {matchExpressions: [{key: app, operator: Equal, values: [web]}]}, ingress: [{}]}"
                .into(),
            "spec.endpointSelector.matchExpressions[0].operator",
            "unknown operator `Equal`",
        ),
        (
            format!("{{{web}, ingress: [{{fromEndpoints: [{{matchExpressions: [{{key: app, operator: In}}]}}]}}]}}"),
            "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values",
            "needs at least one value",
        ),
        (
            format!("{{{web}, ingress: [{{toPorts: [{{ports: [{{port: '70000', protocol: TCP}}]}}]}}]}}"),
            "spec.ingress[0].toPorts[0].ports[0].port",
            "out of range",
        ),
        (
            format!("{{{web}, egress: [{{toPorts: [{{ports: [{{port: 90, endPort: 80, protocol: TCP}}]}}]}}]}}"),
            "spec.egress[0].toPorts[0].ports[0].endPort",
            "below port 90",
        ),
        (
            format!("{{{web}, ingress: [{{fromEntities: [internet]}}]}}"),
            "spec.ingress[0].fromEntities[0]",
            "unknown entity `internet`",
        ),
        (
            format!("{{{web}, ingressDeny: [{{toPorts: [{{ports: [{{port: '80', protocol: ICMP}}]}}]}}]}}"),
            "spec.ingressDeny[0].toPorts[0].ports[0].protocol",
            "unknown protocol `ICMP`",
        ),
        (
            format!("{{{web}, ingress: [{{toPorts: [{{ports: [{{port: '80', protocol: tcp}}]}}]}}]}}"),
            "spec.ingress[0].toPorts[0].ports[0].protocol",
            "upper case",
        ),
        (
            format!("{{{web}, ingress: [{{toPorts: [{{ports: [{{port: 'HTTP!', protocol: TCP}}]}}]}}]}}"),
            "spec.ingress[0].toPorts[0].ports[0].port",
            "neither a port number nor a port name",
        ),
        (
            format!("{{{web}, egress: [{{toCIDRSet: [{{cidrGroupRef: office}}]}}]}}"),
            "spec.egress[0].toCIDRSet[0].cidrGroupRef",
            "not supported",
        ),
        (format!("{{{web}, egress: [{{toCIDR: [10.0.0.0/33]}}]}}"), "spec.egress[0].toCIDR[0]", "not a CIDR"),
        (
            format!("{{{web}, ingress: [{{fromCIDRSet: [{{cidr: 10.0.0.0/8, except: [nope]}}]}}]}}"),
            "spec.ingress[0].fromCIDRSet[0].except[0]",
            "not a CIDR",
        ),
        (
            format!("{{{web}, egress: [{{toEndpoints: [{{}}], toCIDR: [10.0.0.0/8]}}]}}"),
            "spec.egress[0].toCIDR",
            "combining `toEndpoints` and `toCIDR`",
        ),
        (format!("{{{web}, ingress: [{{icmps: [{{fields: [{{type: 8}}]}}]}}]}}"), "spec.ingress[0].icmps", "ICMP"),
        (
            format!("{{{web}, ingressDeny: [{{toPorts: [{{ports: [{{port: '80'}}], rules: {{http: [{{}}]}}}}]}}]}}"),
            "spec.ingressDeny[0].toPorts[0].rules",
            "not allowed in a deny rule",
        ),
        ("{ingress: [{}]}".into(), "spec", "needs an `endpointSelector`"),
        (
            "{endpointSelector: {matchLabels: {'cidr:app': web}}}".into(),
            "spec.endpointSelector.matchLabels.cidr:app",
            "source",
        ),
        (
            format!("{{{web}, ingress: [{{toPorts: [{{ports: [{{port: [80]}}]}}]}}]}}"),
            "spec.ingress[0].toPorts[0].ports[0].port",
            "expected a port number or name",
        ),
    ];
    for (spec, field, message) in cases {
        let d = invalid(&cnp("a", "bad", &spec));
        assert_eq!(d.field, field, "{spec}: {d}");
        assert!(d.message.contains(message), "{spec}: {d}");
        assert!(d.message.starts_with("CiliumNetworkPolicy a/bad: "), "{d}");
        assert_eq!((d.file.to_str(), d.location), (Some("policies.yaml"), Some(Location { line: 3, column: 9 })));
    }
    let d = invalid("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: empty}\n");
    assert_eq!(d.field, "spec");
    let d = invalid(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: bad}\nspecs: [{endpointSelector: {}}, {endpointSelector: {}, egress: [{toPorts: [{ports: [{port: -1}]}]}]}]\n",
    );
    assert_eq!(d.field, "specs[1].egress[0].toPorts[0].ports[0].port");
    assert!(d.to_string().starts_with("policies.yaml:3:9: specs[1].egress[0]"), "{d}");
    // every invalid policy is reported, not only the first
    let two =
        format!("{}---\n{}", cnp("a", "x", "{ingress: [{}]}"), cnp("a", "y", "{endpointSelector: {}, egres: []}"));
    let Err(PolicyError::Invalid(all)) = compile_in(&lab(), &two, &Options::default()) else { panic!() };
    assert_eq!(all.iter().map(|d| d.location.unwrap().line).collect::<Vec<_>>(), [3, 13]);
    // kinds that are not policies are skipped
    assert!(compiled("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {nonsense: 1}\n").rules.is_empty());
}

#[test]
fn l7_rules_and_fqdns_are_accepted_with_warnings() {
    let c = compiled(&cnp(
        "a",
        "p",
        "{endpointSelector: {matchLabels: {app: web}}, \
         ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET}]}}]}], \
         egress: [{toFQDNs: [{matchName: example.com}], toPorts: [{ports: [{port: '443', protocol: TCP}]}]}], \
         labels: [{key: a, value: b}], description: test}",
    ));
    let fields: Vec<&str> = c.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(fields, ["spec.ingress[0].toPorts[0].rules", "spec.egress[0].toFQDNs"]);
    let web = &c.endpoints[0];
    assert!(verdict(web, reserved::WORLD, false, TCP, 80).is_allowed(), "L7 rules: allowed at L4");
    assert!(web.egress_enforced);
    assert_eq!(verdict(web, reserved::WORLD, true, TCP, 443), Verdict::DefaultDenied, "toFQDNs selects nothing");
}

/// Cilium's distillery_test in miniature: every combination of nine ingress rule kinds for the
/// web endpoint, compiled from YAML, looked up as the datapath would, against an expectation
/// written from the semantics alone: a matching deny drops (181), else a matching allow passes,
/// else default deny (133); no rule at all leaves the direction unenforced.
#[test]
fn truth_table_of_rule_combinations() {
    struct Kind {
        deny: bool,
        item: &'static str,
        /// identity, protocol, port → whether the kind matches.
        matches: fn(u32, u8, u16) -> bool,
    }
    let client = "fromEndpoints: [{matchLabels: {app: client}}]";
    let kinds = [
        Kind { deny: false, item: "{FROM}", matches: |id, _, _| id == CLIENT_A },
        Kind {
            deny: false,
            item: "{toPorts: [{ports: [{port: '80', protocol: TCP}]}]}",
            matches: |_, p, n| p == TCP && n == 80,
        },
        Kind {
            deny: false,
            item: "{FROM, toPorts: [{ports: [{port: '80', protocol: TCP}]}]}",
            matches: |id, p, n| id == CLIENT_A && p == TCP && n == 80,
        },
        Kind {
            deny: false,
            item: "{FROM, toPorts: [{ports: [{protocol: UDP}]}]}",
            matches: |id, p, _| id == CLIENT_A && p == UDP,
        },
        Kind {
            deny: false,
            item: "{toPorts: [{ports: [{port: '80', endPort: 81, protocol: TCP}]}]}",
            matches: |_, p, n| p == TCP && (80..=81).contains(&n),
        },
        Kind { deny: true, item: "{FROM}", matches: |id, _, _| id == CLIENT_A },
        Kind {
            deny: true,
            item: "{toPorts: [{ports: [{port: '80', protocol: TCP}]}]}",
            matches: |_, p, n| p == TCP && n == 80,
        },
        Kind {
            deny: true,
            item: "{FROM, toPorts: [{ports: [{port: '80', protocol: TCP}]}]}",
            matches: |id, p, n| id == CLIENT_A && p == TCP && n == 80,
        },
        Kind {
            deny: true,
            item: "{toPorts: [{ports: [{port: '81', endPort: 82, protocol: ANY}]}]}",
            matches: |_, p, n| (p == TCP || p == UDP) && (81..=82).contains(&n),
        },
    ];
    let flows: Vec<(u32, u8, u16)> = [CLIENT_A, CLIENT_B, reserved::WORLD]
        .into_iter()
        .flat_map(|id| {
            [(TCP, 80), (TCP, 81), (TCP, 82), (TCP, 83), (UDP, 80), (UDP, 82), (UDP, 53), (1, 0)]
                .map(|(p, n)| (id, p, n))
        })
        .collect();
    let lab = lab();
    let set_of = |yaml: &str| PolicySet::parse(&resources(yaml)).unwrap();
    let mut checked = 0;
    for mask in 0u32..1 << kinds.len() {
        let chosen: Vec<&Kind> =
            kinds.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, k)| k).collect();
        let items = |deny: bool| {
            chosen
                .iter()
                .filter(|k| k.deny == deny)
                .map(|k| k.item.replace("FROM", client))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let spec = format!(
            "{{endpointSelector: {{matchLabels: {{app: web}}}}, ingress: [{}], ingressDeny: [{}]}}",
            items(false),
            items(true)
        );
        let set = set_of(&cnp("a", "t", &spec));
        let c = set.compile(&lab.endpoints, &lab.identities, &Options::default()).unwrap();
        let web = &c.endpoints[0];
        assert_no_covered_allow(web);
        for &(id, protocol, port) in &flows {
            let expected = if chosen.is_empty() {
                Verdict::Allowed
            } else if chosen.iter().any(|k| k.deny && (k.matches)(id, protocol, port)) {
                Verdict::Denied
            } else if chosen.iter().any(|k| !k.deny && (k.matches)(id, protocol, port)) {
                Verdict::Allowed
            } else {
                Verdict::DefaultDenied
            };
            let d = lookup(web, id, false, protocol, port);
            assert_eq!(
                d.verdict, expected,
                "kinds {mask:09b}, identity {id}, protocol {protocol}, port {port}: {:?}",
                d.matched
            );
            // the deciding entry names a rule of the right verdict that matches the flow
            if let Some(m) = d.matched {
                let info = c.rule(m.entry.rule).unwrap();
                assert_eq!(info.deny, d.verdict == Verdict::Denied);
                assert_eq!(m.entry.deny != 0, info.deny);
                let index: usize = info.path.trim_end_matches(']').rsplit('[').next().unwrap().parse().unwrap();
                let kind = chosen.iter().filter(|k| k.deny == info.deny).nth(index).unwrap();
                assert!((kind.matches)(id, protocol, port), "cookie {} does not match the flow", m.entry.rule);
            }
            assert!(lookup(web, id, true, protocol, port).verdict.is_allowed(), "egress stays unenforced");
            checked += 1;
        }
    }
    assert_eq!(checked, 512 * 24);
}

/// The lookup's precedence on hand-made maps, case by case as bpf/lib/policy.h reads.
#[test]
fn lookup_precedence_mirrors_the_datapath() {
    let key = |identity, protocol, port: u16, prefixlen| PolicyKey {
        prefixlen,
        identity,
        egress: 0,
        protocol,
        dport: port.to_be(),
    };
    let entry =
        |deny: bool, prefix_length, rule| PolicyEntry { deny: u8::from(deny), prefix_length, pad: 0, rule, packets: 0 };
    let policy = |entries: Vec<(PolicyKey, PolicyEntry)>| EndpointPolicy {
        ingress_enforced: true,
        egress_enforced: false,
        entries: entries.into_iter().collect(),
    };
    let chosen = |p: &EndpointPolicy| {
        let d = lookup(p, 300, false, TCP, 80);
        (d.verdict, d.matched.map(|m| (m.entry.rule, m.l3)), d.match_type)
    };
    // equal prefix: the identity-specific entry
    let p = policy(vec![(key(300, TCP, 80, 64), entry(false, 24, 1)), (key(0, TCP, 80, 64), entry(false, 24, 2))]);
    assert_eq!(chosen(&p), (Verdict::Allowed, Some((1, true)), match_type::L3_L4));
    // a longer L4-only prefix beats the L3 entry
    let p = policy(vec![(key(300, 0, 0, 40), entry(false, 0, 1)), (key(0, TCP, 0, 48), entry(false, 8, 2))]);
    assert_eq!(chosen(&p), (Verdict::Allowed, Some((2, false)), match_type::PROTO_ONLY));
    // an L3 deny wins at once, even against a longer L4 allow
    let p = policy(vec![(key(300, 0, 0, 40), entry(true, 0, 1)), (key(0, TCP, 80, 64), entry(false, 24, 2))]);
    assert_eq!(chosen(&p), (Verdict::Denied, Some((1, true)), match_type::L3_ONLY));
    // an L4 deny wins against a longer L3 allow
    let p = policy(vec![(key(300, TCP, 80, 64), entry(false, 24, 1)), (key(0, 0, 0, 40), entry(true, 0, 2))]);
    assert_eq!(chosen(&p), (Verdict::Denied, Some((2, false)), match_type::ALL));
    // within one lookup the longest prefix hides a shorter deny: why compile keeps the invariant
    let p = policy(vec![(key(300, TCP, 0, 48), entry(true, 8, 1)), (key(300, TCP, 80, 64), entry(false, 24, 2))]);
    assert_eq!(chosen(&p), (Verdict::Allowed, Some((2, true)), match_type::L3_L4));
    let mut fixed = p.clone();
    compile::apply_denies(&mut fixed.entries);
    assert_eq!(chosen(&fixed), (Verdict::Denied, Some((1, true)), match_type::L3_L4));
    // nothing: default deny; the identity 0 lookup alone
    assert_eq!(chosen(&policy(vec![])), (Verdict::DefaultDenied, None, match_type::NONE));
    let p = policy(vec![(key(0, TCP, 80, 64), entry(false, 24, 7))]);
    assert_eq!(chosen(&p), (Verdict::Allowed, Some((7, false)), match_type::L4_ONLY));
}

/// The test lab with two nodes' host endpoints after the pods: `worker` (labelled
/// `firewall: on`) at index 4 and `edge` at 5.
fn lab_with_hosts() -> Lab {
    let mut lab = lab();
    for (node, labels) in [("worker", vec![("firewall", "on")]), ("edge", vec![])] {
        let labels: BTreeMap<String, String> = labels.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        lab.endpoints.push(Endpoint {
            id: crate::datapath::abi::HOST_ENDPOINT_ID,
            identity: reserved::HOST,
            labels: crate::identity::host_labels(node, &labels),
            namespace: String::new(),
            ip: std::net::Ipv4Addr::UNSPECIFIED,
            named_ports: Vec::new(),
            host: true,
        });
    }
    lab
}

const HOST_POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: host-fw}
spec:
  nodeSelector: {matchLabels: {firewall: on}}
  ingress:
    - fromEntities: [remote-node]
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: '22', protocol: TCP}]}]
";

#[test]
fn a_node_selector_selects_host_endpoints_by_node_labels_and_nothing_else() {
    let lab = lab_with_hosts();
    let compiled = compile_in(&lab, HOST_POLICY, &Options::default()).unwrap();
    let (worker, edge) = (&compiled.endpoints[4], &compiled.endpoints[5]);
    assert!(worker.ingress_enforced && !worker.egress_enforced);
    assert_eq!(edge.flags(), 0, "edge's labels do not match");
    assert!(compiled.endpoints[..4].iter().all(|pod| pod.flags() == 0), "a nodeSelector never selects pods");
    let verdict = |identity, port| lookup(worker, identity, false, TCP, port).verdict;
    assert_eq!(verdict(reserved::REMOTE_NODE, 10250), Verdict::Allowed);
    // A CCNP's peer selector without a namespace selects pods of every namespace.
    assert_eq!(verdict(CLIENT_A, 22), Verdict::Allowed);
    assert_eq!(verdict(CLIENT_B, 22), Verdict::Allowed);
    assert_ne!(verdict(CLIENT_B, 10250), Verdict::Allowed);
    assert_ne!(verdict(WEB, 22), Verdict::Allowed);
    assert_ne!(verdict(reserved::WORLD, 22), Verdict::Allowed);
    // The node's hostname label selects it too.
    let by_name = HOST_POLICY.replace("{firewall: on}", "{kubernetes.io/hostname: edge}");
    let compiled = compile_in(&lab, &by_name, &Options::default()).unwrap();
    assert_eq!((compiled.endpoints[4].flags(), compiled.endpoints[5].ingress_enforced), (0, true));
}

#[test]
fn endpoint_selectors_and_enforcement_always_leave_host_endpoints_alone() {
    let lab = lab_with_hosts();
    let everything = "apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: all-pods}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [world]}]
";
    let compiled = compile_in(&lab, everything, &Options::default()).unwrap();
    assert!(compiled.endpoints[..4].iter().all(|pod| pod.ingress_enforced));
    assert!(compiled.endpoints[4..].iter().all(|host| host.flags() == 0 && host.entries.is_empty()));
    let always = Options { enforcement: PolicyEnforcement::Always, ..Options::default() };
    let compiled = compile_in(&lab, "", &always).unwrap();
    assert!(compiled.endpoints[..4].iter().all(|pod| pod.ingress_enforced && pod.egress_enforced));
    assert!(compiled.endpoints[4..].iter().all(|host| host.flags() == 0));
}

#[test]
fn node_selectors_belong_to_clusterwide_rules_without_an_endpoint_selector() {
    let namespaced = invalid(&cnp("a", "fw", "{nodeSelector: {matchLabels: {firewall: on}}, ingress: [{}]}"));
    assert_eq!(namespaced.field, "spec.nodeSelector");
    assert!(namespaced.message.contains("CiliumClusterwideNetworkPolicy"), "{}", namespaced.message);
    let both = invalid(&HOST_POLICY.replace("  nodeSelector:", "  endpointSelector: {}\n  nodeSelector:"));
    assert_eq!(both.field, "spec.nodeSelector");
    assert!(both.message.contains("not both"), "{}", both.message);
    let bad = invalid(
        &HOST_POLICY.replace("{matchLabels: {firewall: on}}", "{matchExpressions: [{key: a, operator: Near}]}"),
    );
    assert_eq!(bad.field, "spec.nodeSelector.matchExpressions[0].operator");
}
