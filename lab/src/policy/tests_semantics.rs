//! NetworkPolicy, CIDR peers, enforcement modes and the two semantics, end to end: YAML policies
//! → entries → decisions, on the lab of [`super::tests`] (namespace a: web 10.0.0.10 and client
//! 10.0.0.11; namespace b: client 10.0.1.12 and db 10.0.1.13).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::tests::*;
use super::*;
use crate::datapath::abi::identity as reserved;

/// A NetworkPolicy in namespace `ns` with the given spec (YAML flow).
fn knp(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

fn options(semantics: PolicySemantics, enforcement: PolicyEnforcement) -> Options {
    Options { semantics, enforcement, ..Options::default() }
}

fn compiled_with(yaml: &str, options: &Options) -> Compiled {
    compile_in(&lab(), yaml, options).unwrap_or_else(|e| panic!("{e}"))
}

fn kubernetes() -> Options {
    options(PolicySemantics::Kubernetes, PolicyEnforcement::Default)
}

fn net(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

/// The CIDR identity number `n` (1-based position in the sorted prefixes).
fn cidr_id(n: u32) -> u32 {
    LOCAL_IDENTITY_FLAG | n
}

fn flags(c: &Compiled) -> Vec<(bool, bool)> {
    c.endpoints.iter().map(|p| (p.ingress_enforced, p.egress_enforced)).collect()
}

fn invalid_knp(spec: &str) -> Diagnostic {
    invalid(&knp("a", "bad", spec))
}

#[test]
fn knp_pod_selectors_select_in_the_policy_namespace() {
    let c = compiled(&knp(
        "a",
        "web",
        "{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]}",
    ));
    // the subject: web only; the peer: the client of namespace a, not the one of b
    assert_eq!(flags(&c), [(true, false), (false, false), (false, false), (false, false)]);
    assert_eq!(identities_of(&c.endpoints[0], 0), BTreeSet::from([CLIENT_A]));
    assert!(verdict(&c.endpoints[0], CLIENT_A, false, TCP, 1).is_allowed());
    assert_eq!(verdict(&c.endpoints[0], CLIENT_B, false, TCP, 1), Verdict::DefaultDenied);
    let info = &c.rules[0];
    assert_eq!(info.to_string(), "NetworkPolicy a/web spec.ingress[0] (ingress allow)");

    // `podSelector: {}` is every pod of the namespace (the subject and a peer alike), and a
    // namespace the selector names is overwritten, as Cilium does
    let c = compiled(&knp(
        "b",
        "all",
        "{podSelector: {matchLabels: {io.kubernetes.pod.namespace: a}}, ingress: [{from: [{podSelector: {}}]}]}",
    ));
    assert_eq!(flags(&c), [(false, false), (false, false), (true, false), (true, false)]);
    assert_eq!(identities_of(&c.endpoints[2], 0), BTreeSet::from([CLIENT_B, DB_B]));
    // keys are Kubernetes label keys of source k8s: a Cilium source prefix is not one
    let d = invalid_knp("{podSelector: {matchLabels: {'k8s:app': web}}}");
    assert_eq!(d.field, "spec.podSelector.matchLabels.k8s:app");
}

#[test]
fn knp_namespace_selectors_select_by_namespace_labels() {
    let peers = |peer: &str| {
        let c = compiled(&knp(
            "a",
            "p",
            &format!("{{podSelector: {{matchLabels: {{app: web}}}}, ingress: [{{from: [{peer}]}}]}}"),
        ));
        identities_of(&c.endpoints[0], 0)
    };
    // alone: the namespace's labels, re-prefixed, whatever the pod
    assert_eq!(peers("{namespaceSelector: {matchLabels: {team: blue}}}"), BTreeSet::from([CLIENT_B, DB_B]));
    assert_eq!(
        peers("{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: a}}}"),
        BTreeSet::from([WEB, CLIENT_A])
    );
    // `{}`: every namespace, pods only (no reserved identity, no world)
    assert_eq!(peers("{namespaceSelector: {}}"), BTreeSet::from(PODS));
    // NotIn and DoesNotExist select pods of other namespaces, never reserved identities
    assert_eq!(
        peers("{namespaceSelector: {matchExpressions: [{key: team, operator: NotIn, values: [red]}]}}"),
        BTreeSet::from([CLIENT_B, DB_B])
    );
    assert_eq!(
        peers("{namespaceSelector: {matchExpressions: [{key: team, operator: DoesNotExist}]}}"),
        BTreeSet::new()
    );
    // both: AND, across namespaces
    assert_eq!(
        peers("{namespaceSelector: {matchLabels: {team: blue}}, podSelector: {matchLabels: {app: client}}}"),
        BTreeSet::from([CLIENT_B])
    );
    assert_eq!(
        peers("{namespaceSelector: {}, podSelector: {matchLabels: {app: client}}}"),
        BTreeSet::from([CLIENT_A, CLIENT_B])
    );
    // two peers: their union
    assert_eq!(
        peers(
            "{podSelector: {matchLabels: {app: client}}}, {namespaceSelector: {matchLabels: {team: blue}}, podSelector: {matchLabels: {app: db}}}"
        ),
        BTreeSet::from([CLIENT_A, DB_B])
    );
}

#[test]
fn knp_empty_or_missing_peers_are_the_wildcard_including_world() {
    for ingress in ["[{}]", "[{from: []}]", "[{from: null, ports: []}]"] {
        let c =
            compiled(&knp("a", "p", &format!("{{podSelector: {{matchLabels: {{app: web}}}}, ingress: {ingress}}}")));
        assert_eq!(rows(&c.endpoints[0]), vec![(40, 0, 0, 0, 0, 0, 0)], "{ingress}");
        assert!(verdict(&c.endpoints[0], reserved::WORLD, false, 1, 0).is_allowed(), "{ingress}: world, any protocol");
    }
    let c = compiled(&knp("a", "p", "{podSelector: {matchLabels: {app: web}}, ingress: [{ports: [{port: 80}]}]}"));
    assert_eq!(rows(&c.endpoints[0]), vec![(64, 0, 0, TCP, 80, 0, 24)], "protocol defaults to TCP");
    assert!(verdict(&c.endpoints[0], reserved::WORLD, false, TCP, 80).is_allowed());
    assert_eq!(verdict(&c.endpoints[0], reserved::WORLD, false, UDP, 80), Verdict::DefaultDenied);
    // a protocol without a port: every port of it
    let c = compiled(&knp("a", "p", "{podSelector: {matchLabels: {app: web}}, egress: [{ports: [{protocol: UDP}]}]}"));
    assert_eq!(rows(&c.endpoints[0]), vec![(48, 0, 1, UDP, 0, 0, 8)]);
    assert_eq!(flags(&c)[0], (true, true), "Ingress by default, Egress since there are egress rules");
}

#[test]
fn knp_policy_types_default_like_the_apiserver() {
    let web = |spec: &str| {
        let c = compiled(&knp("a", "p", &format!("{{podSelector: {{matchLabels: {{app: web}}}}{spec}}}")));
        flags(&c)[0]
    };
    assert_eq!(web(""), (true, false), "no policyTypes, no rules: deny all ingress");
    assert_eq!(web(", policyTypes: []"), (true, false), "an empty list is defaulted too");
    assert_eq!(web(", egress: [{}]"), (true, true), "egress rules add Egress");
    assert_eq!(web(", egress: []"), (true, false), "no egress rules: Ingress only");
    assert_eq!(web(", policyTypes: [Egress]"), (false, true));
    assert_eq!(web(", policyTypes: [Ingress, Egress]"), (true, true));
    assert_eq!(web(", policyTypes: [Ingress], ingress: [{}]"), (true, false));
    // default deny, nothing allowed
    let c = compiled(&knp("a", "deny", "{podSelector: {}, policyTypes: [Ingress, Egress]}"));
    assert_eq!(flags(&c), [(true, true), (true, true), (false, false), (false, false)]);
    assert!(c.endpoints[0].entries.is_empty() && c.rules.is_empty());
    assert_eq!(verdict(&c.endpoints[0], CLIENT_A, false, TCP, 80), Verdict::DefaultDenied);
    assert_eq!(verdict(&c.endpoints[0], CLIENT_A, true, TCP, 80), Verdict::DefaultDenied);
    // the same under Kubernetes semantics: defaulting is the apiserver's, not Cilium's
    assert_eq!(
        flags(&compiled_with(&knp("a", "p", "{podSelector: {}, egress: [{}]}"), &kubernetes()))[0],
        (true, true)
    );
}

#[test]
fn knp_rules_outside_policy_types_follow_the_semantics() {
    let yaml = knp(
        "a",
        "p",
        "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], \
         ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}], \
         egress: [{to: [{namespaceSelector: {matchLabels: {team: blue}}}]}]}",
    );
    // Cilium 1.18 (cilium/cilium#48703): the ingress rules isolate and allow all the same
    let c = compiled(&yaml);
    assert_eq!(flags(&c)[0], (true, true));
    assert_eq!(identities_of(&c.endpoints[0], 0), BTreeSet::from([CLIENT_A]));
    assert_eq!(verdict(&c.endpoints[0], CLIENT_B, false, TCP, 80), Verdict::DefaultDenied);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert_eq!(c.warnings[0].field, "spec.ingress");
    assert!(c.warnings[0].message.contains("Cilium 1.18 enforces them"), "{}", c.warnings[0]);
    // Kubernetes: an unlisted direction is unaffected
    let k = compiled_with(&yaml, &kubernetes());
    assert_eq!(flags(&k)[0], (false, true));
    assert_eq!(identities_of(&k.endpoints[0], 0), BTreeSet::new());
    assert!(verdict(&k.endpoints[0], CLIENT_B, false, TCP, 80).is_allowed());
    assert_eq!(identities_of(&k.endpoints[0], 1), BTreeSet::from([CLIENT_B, DB_B]));
    assert!(k.warnings[0].message.contains("ignored, as Kubernetes specifies"), "{}", k.warnings[0]);
    // the same the other way round, egress rules with policyTypes [Ingress]
    let yaml = knp(
        "a",
        "p",
        "{podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress], egress: [{to: [{podSelector: {}}]}]}",
    );
    assert_eq!(flags(&compiled(&yaml))[0], (true, true));
    assert_eq!(flags(&compiled_with(&yaml, &kubernetes()))[0], (true, false));
    // ... but another policy listing the direction still isolates it under Kubernetes semantics
    let both = format!("{yaml}---\n{}", knp("a", "q", "{podSelector: {}, policyTypes: [Egress]}"));
    let k = compiled_with(&both, &kubernetes());
    assert_eq!(flags(&k)[0], (true, true));
    assert!(k.endpoints[0].entries.is_empty(), "the skipped egress rules allow nothing");
}

#[test]
fn ip_blocks_with_except_under_both_semantics() {
    let yaml = knp(
        "a",
        "p",
        "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], \
         egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}}]}]}",
    );
    let c = compiled(&yaml);
    assert_eq!(
        c.cidr_identities.iter().map(|(p, id)| (*p, *id)).collect::<Vec<_>>(),
        [(net("10.0.0.0/16"), cidr_id(1)), (net("10.0.1.0/24"), cidr_id(2))]
    );
    // Cilium: the block's own identity only; pods keep their identities and are not selected
    let web = &c.endpoints[0];
    assert_eq!(identities_of(web, 1), BTreeSet::from([cidr_id(1)]));
    assert!(verdict(web, cidr_id(1), true, TCP, 80).is_allowed(), "10.0.2.1 resolves to 10.0.0.0/16");
    assert_eq!(verdict(web, cidr_id(2), true, TCP, 80), Verdict::DefaultDenied, "the except is carved out");
    assert_eq!(verdict(web, CLIENT_A, true, TCP, 80), Verdict::DefaultDenied, "a pod inside the block");
    assert_eq!(verdict(web, reserved::WORLD, true, TCP, 80), Verdict::DefaultDenied);
    // ... with a warning naming the pods in the block (a's, not b's, which are in the except)
    let w: Vec<&Diagnostic> = c.warnings.iter().filter(|w| w.field == "spec.egress[0].to[0].ipBlock").collect();
    assert_eq!(w.len(), 1, "{:?}", c.warnings);
    assert!(w[0].message.contains("10.0.0.10 (a), 10.0.0.11 (a):"), "{}", w[0]);
    assert!(w[0].message.contains("cilium/cilium#9998"), "{}", w[0]);

    // Kubernetes: also the pods whose address is in the block and outside the except
    let k = compiled_with(&yaml, &kubernetes());
    let web = &k.endpoints[0];
    assert_eq!(identities_of(web, 1), BTreeSet::from([cidr_id(1), WEB, CLIENT_A]));
    assert!(verdict(web, CLIENT_A, true, TCP, 80).is_allowed());
    assert_eq!(verdict(web, CLIENT_B, true, TCP, 80), Verdict::DefaultDenied, "10.0.1.12 is in the except");
    assert_eq!(verdict(web, cidr_id(2), true, TCP, 80), Verdict::DefaultDenied);
    assert!(k.warnings.is_empty(), "{:?}", k.warnings);
    assert_eq!(k.cidr_identities, c.cidr_identities, "the numbering does not depend on the semantics");

    // at ingress the same, and a CNP's CIDR rules follow the semantics too
    let cnp_yaml = cnp(
        "b",
        "p",
        "{endpointSelector: {matchLabels: {app: db}}, ingress: [{fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.0.0.11/32]}]}]}",
    );
    let db = |o: &Options| identities_of(&compiled_with(&cnp_yaml, o).endpoints[3], 0);
    assert_eq!(db(&Options::default()), BTreeSet::from([cidr_id(1)]));
    assert_eq!(db(&kubernetes()), BTreeSet::from([cidr_id(1), WEB, CLIENT_B, DB_B]));
    assert!(compiled(&cnp_yaml).warnings.is_empty(), "Cilium documents this for its own policies: no warning");
}

#[test]
fn pods_sharing_an_identity_with_pods_outside_a_block_are_selected_with_a_warning() {
    let mut lab = lab();
    // a second web pod, same identity, outside the block
    let mut other = lab.endpoints[0].clone();
    other.id = 20;
    other.ip = Ipv4Addr::new(192, 168, 0, 20);
    lab.endpoints.push(other);
    let yaml =
        knp("b", "p", "{podSelector: {matchLabels: {app: db}}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.10/32}}]}]}");
    let k = compile_in(&lab, &yaml, &kubernetes()).unwrap();
    assert_eq!(identities_of(&k.endpoints[3], 0), BTreeSet::from([cidr_id(1), WEB]));
    assert_eq!(k.warnings.len(), 1, "{:?}", k.warnings);
    assert!(k.warnings[0].message.contains("pods 192.168.0.20 (a) share an identity"), "{}", k.warnings[0]);
    // an endpoint without an address is in no block
    lab.endpoints[0].ip = Ipv4Addr::UNSPECIFIED;
    lab.endpoints.pop();
    let k = compile_in(&lab, &yaml, &kubernetes()).unwrap();
    assert_eq!(identities_of(&k.endpoints[3], 0), BTreeSet::from([cidr_id(1)]));
}

#[test]
fn cidr_identities_are_numbered_over_every_prefix_of_every_rule() {
    let yaml = format!(
        "{}---\n{}",
        cnp(
            "a",
            "c",
            "{endpointSelector: {matchLabels: {app: web}}, egress: [{toCIDR: [192.168.1.7, 10.0.0.0/8]}, \
             {toCIDRSet: [{cidr: 0.0.0.0/0, except: [10.0.0.0/8, 172.16.0.0/12]}]}], \
             egressDeny: [{toCIDR: [10.1.2.3/16]}]}"
        ),
        // a policy selecting no endpoint still numbers its prefixes
        knp("b", "k", "{podSelector: {matchLabels: {app: none}}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/24}}]}]}"),
    );
    let c = compiled(&yaml);
    let expected = [
        ("10.0.0.0/8", 1),
        ("10.0.0.0/24", 2),
        ("10.1.0.0/16", 3), // host bits cleared
        ("172.16.0.0/12", 4),
        ("192.168.1.7/32", 5), // a bare address is its /32
    ];
    let expected: BTreeMap<Ipv4Net, u32> = expected.iter().map(|(p, n)| (net(p), cidr_id(*n))).collect();
    assert_eq!(c.cidr_identities, expected, "0.0.0.0/0 is world, not a CIDR identity");
    assert_eq!(c.cidr_identities, compiled(&yaml).cidr_identities, "deterministic");
    assert_eq!(PolicySet::parse(&resources(&yaml)).unwrap().cidr_identities(), expected);
    assert!(compiled("").cidr_identities.is_empty());
}

#[test]
fn cidr_peers_select_prefixes_inside_minus_excepts_and_world_for_the_default_route() {
    let c = compiled(&cnp(
        "a",
        "c",
        "{endpointSelector: {matchLabels: {app: web}}, \
         egress: [{toCIDRSet: [{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}]}, {toCIDR: [10.0.0.0/8]}, \
                  {toCIDR: [10.1.0.0/16, 192.168.0.0/16]}, {toEntities: [world]}]}",
    ));
    // 10.0.0.0/8 → 1, 10.1.0.0/16 → 2, 192.168.0.0/16 → 3
    let (ten, ten_one, private) = (cidr_id(1), cidr_id(2), cidr_id(3));
    let web = &c.endpoints[0];
    let selected = |cookie: u32| -> BTreeSet<u32> {
        web.entries.iter().filter(|(_, e)| e.rule == cookie).map(|(k, _)| k.identity).collect()
    };
    // rule 1: world and what is outside 10/8 (192.168/16), not 10/8 nor 10.1/16 inside it
    assert_eq!(selected(1), BTreeSet::from([reserved::WORLD, private]));
    // rule 2: 10/8 and the narrower 10.1/16 inside it (10.1.x resolves to the /16)
    // (10.1/16 is also rule 3's; merged entries keep the lowest cookie)
    assert_eq!(selected(2), BTreeSet::from([ten, ten_one]));
    // the world entity selects every CIDR identity too: they carry the world label
    assert_eq!(identities_of(web, 1), BTreeSet::from([reserved::WORLD, ten, ten_one, private]));
    let c = compiled(&cnp(
        "a",
        "c",
        "{endpointSelector: {matchLabels: {app: web}}, egress: [{toCIDR: [10.1.0.0/16]}], \
         ingress: [{fromEntities: [world]}, {fromEntities: [cluster]}]}",
    ));
    let web = &c.endpoints[0];
    assert_eq!(identities_of(web, 1), BTreeSet::from([cidr_id(1)]), "a narrower prefix does not select world");
    assert!(verdict(web, cidr_id(1), false, TCP, 1).is_allowed(), "world selects a CIDR identity");
    // cookies: ingress[0] world 1, ingress[1] cluster 2, egress[0] 3
    let cluster: BTreeSet<u32> =
        web.entries.iter().filter(|(k, e)| e.rule == 2 && k.egress == 0).map(|(k, _)| k.identity).collect();
    assert!(cluster.contains(&reserved::HOST) && cluster.contains(&WEB));
    assert!(!cluster.contains(&cidr_id(1)) && !cluster.contains(&reserved::WORLD), "cluster is not world");
    // CIDR identities are not pods: selectors restricted to a namespace never match them
    let c = compiled(&cnp(
        "a",
        "c",
        "{endpointSelector: {matchLabels: {app: web}}, egress: [{toCIDR: [10.1.0.0/16]}], ingress: [{fromEndpoints: [{}]}]}",
    ));
    assert_eq!(identities_of(&c.endpoints[0], 0), BTreeSet::from([WEB, CLIENT_A]));
    // an except outside the cidr is ignored with a warning; IPv6 matches nothing
    let c = compiled(&cnp(
        "a",
        "c",
        "{endpointSelector: {matchLabels: {app: web}}, \
         egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]}, {toCIDR: ['2001:db8::/32']}]}",
    ));
    assert_eq!(c.cidr_identities.keys().copied().collect::<Vec<_>>(), [net("10.0.0.0/8")]);
    let fields: Vec<&str> = c.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(fields, ["spec.egress[0].toCIDRSet[0].except[0]", "spec.egress[1].toCIDR[0]"]);
    assert_eq!(identities_of(&c.endpoints[0], 1), BTreeSet::from([cidr_id(1)]));
    // CIDR denies carve out of broader allows
    let c = compiled(&cnp(
        "a",
        "c",
        "{endpointSelector: {matchLabels: {app: web}}, egress: [{toCIDR: [0.0.0.0/0]}], egressDeny: [{toCIDR: [10.0.0.0/8]}]}",
    ));
    let web = &c.endpoints[0];
    assert_no_covered_allow(web);
    assert!(verdict(web, reserved::WORLD, true, TCP, 80).is_allowed());
    assert_eq!(verdict(web, cidr_id(1), true, TCP, 80), Verdict::Denied);
}

#[test]
fn knp_named_ports_resolve_at_the_endpoint_for_ingress_and_at_peers_for_egress() {
    let c = compiled(&knp(
        "a",
        "p",
        "{podSelector: {}, ingress: [{ports: [{port: http}]}], \
         egress: [{to: [{namespaceSelector: {}}], ports: [{port: sql}, {port: http, protocol: UDP}]}]}",
    ));
    // web has http = 8080/TCP, the client of a has no named port: enforced, nothing allowed
    assert_eq!(
        rows(&c.endpoints[0]).into_iter().filter(|r| r.2 == 0).collect::<Vec<_>>(),
        [(64, 0, 0, TCP, 8080, 0, 24)]
    );
    assert!(c.endpoints[1].ingress_enforced && identities_of(&c.endpoints[1], 0).is_empty());
    // sql is db's 5432/TCP, for every peer; http is no pod's UDP port
    let egress: BTreeSet<(u8, u16)> =
        rows(&c.endpoints[1]).into_iter().filter(|r| r.2 == 1).map(|r| (r.3, r.4)).collect();
    assert_eq!(egress, BTreeSet::from([(TCP, 5432)]));
    assert!(verdict(&c.endpoints[1], DB_B, true, TCP, 5432).is_allowed());
    assert_eq!(verdict(&c.endpoints[1], DB_B, true, UDP, 8080), Verdict::DefaultDenied);
}

#[test]
fn knp_end_port_makes_ranges() {
    let c = compiled(&knp(
        "a",
        "p",
        "{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}], \
         ports: [{port: 8080, endPort: 8090}, {protocol: UDP, port: 53, endPort: 53}]}]}",
    ));
    let web = &c.endpoints[0];
    let blocks: Vec<(u32, u8, u16)> =
        rows(web).into_iter().filter(|r| r.1 == CLIENT_B).map(|r| (r.0, r.3, r.4)).collect();
    assert_eq!(blocks, [(61, TCP, 8080), (63, TCP, 8088), (64, TCP, 8090), (64, UDP, 53)]);
    for port in [8079u16, 8080, 8087, 8088, 8090, 8091] {
        assert_eq!(verdict(web, DB_B, false, TCP, port).is_allowed(), (8080..=8090).contains(&port), "{port}");
    }
    assert!(verdict(web, CLIENT_B, false, UDP, 53).is_allowed());
    assert_eq!(verdict(web, CLIENT_A, false, TCP, 8080), Verdict::DefaultDenied);
}

#[test]
fn enforcement_always_denies_by_default_and_never_enforces_nothing() {
    let always = options(PolicySemantics::Cilium, PolicyEnforcement::Always);
    let never = options(PolicySemantics::Cilium, PolicyEnforcement::Never);
    // no policy at all: always enforces every endpoint both ways, with nothing allowed
    let c = compiled_with("", &always);
    assert_eq!(flags(&c), [(true, true); 4]);
    for p in &c.endpoints {
        assert!(p.entries.is_empty());
        assert_eq!(verdict(p, reserved::HOST, false, TCP, 80), Verdict::DefaultDenied, "host too, unless allowed");
        assert_eq!(verdict(p, reserved::HEALTH, false, TCP, 4240), Verdict::DefaultDenied, "health too");
        assert_eq!(verdict(p, CLIENT_A, true, UDP, 53), Verdict::DefaultDenied);
    }
    // an ingress-only policy: egress still default deny; no implicit allow-all even where a rule
    // turns default deny off
    let yaml = cnp(
        "a",
        "p",
        "{endpointSelector: {matchLabels: {app: web}}, enableDefaultDeny: {ingress: false}, \
         ingress: [{fromEntities: [host]}], ingressDeny: [{fromEntities: [world]}]}",
    );
    let c = compiled_with(&yaml, &always);
    let web = &c.endpoints[0];
    assert_eq!(flags(&c)[0], (true, true));
    assert!(verdict(web, reserved::HOST, false, TCP, 80).is_allowed());
    assert_eq!(verdict(web, CLIENT_A, false, TCP, 80), Verdict::DefaultDenied);
    assert_eq!(verdict(web, reserved::WORLD, false, TCP, 80), Verdict::Denied);
    assert_eq!(verdict(web, CLIENT_A, true, TCP, 80), Verdict::DefaultDenied);
    // by default the same policy allows all but world at ingress and leaves egress alone
    let d = compiled(&yaml);
    assert_eq!(flags(&d)[0], (true, false));
    assert!(verdict(&d.endpoints[0], CLIENT_A, false, TCP, 80).is_allowed());

    // never: nothing enforced, no entries, whatever the policies; they are still checked
    let yaml = format!(
        "{yaml}---\n{}",
        knp(
            "a",
            "k",
            "{podSelector: {}, policyTypes: [Ingress, Egress], egress: [{to: [{ipBlock: {cidr: 10.9.0.0/16}}]}]}"
        )
    );
    let c = compiled_with(&yaml, &never);
    assert_eq!(c.endpoints, vec![EndpointPolicy::default(); 4]);
    assert!(c.endpoints.iter().all(|p| p.flags() == 0));
    assert!(verdict(&c.endpoints[0], reserved::WORLD, false, TCP, 80).is_allowed());
    assert_eq!(c.rules.len(), 3);
    assert_eq!(c.cidr_identities.keys().copied().collect::<Vec<_>>(), [net("10.9.0.0/16")]);
    assert!(matches!(compile_in(&lab(), &knp("a", "k", "{}"), &never), Err(PolicyError::Invalid(_))));
    // never cannot overflow a map
    let tight = Options { max_entries: 0, ..never };
    assert!(compile_in(&lab(), &yaml, &tight).is_ok());
}

#[test]
fn a_knp_and_a_cnp_on_one_pod_allow_the_union_of_their_allows() {
    let yaml = format!(
        "{}---\n{}",
        knp(
            "a",
            "k",
            "{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]}"
        ),
        cnp(
            "a",
            "c",
            "{endpointSelector: {matchLabels: {app: web}}, ingress: [{fromEntities: [world], toPorts: [{ports: [{port: '443', protocol: TCP}]}]}]}"
        ),
    );
    let c = compiled(&yaml);
    let web = &c.endpoints[0];
    assert_eq!(flags(&c)[0], (true, false));
    assert!(verdict(web, CLIENT_A, false, TCP, 80).is_allowed());
    assert!(verdict(web, reserved::WORLD, false, TCP, 443).is_allowed());
    assert_eq!(verdict(web, CLIENT_A, false, TCP, 443), Verdict::DefaultDenied);
    assert_eq!(verdict(web, reserved::WORLD, false, TCP, 80), Verdict::DefaultDenied);
    assert_eq!(verdict(web, CLIENT_B, false, TCP, 80), Verdict::DefaultDenied);
    // each entry names the policy that allowed it
    let by = |id, port| c.rule(lookup(web, id, false, TCP, port).matched.unwrap().entry.rule).unwrap().policy();
    assert_eq!(by(CLIENT_A, 80), "NetworkPolicy a/k");
    assert_eq!(by(reserved::WORLD, 443), "CiliumNetworkPolicy a/c");
}

#[test]
fn a_clusterwide_deny_is_not_overridden_by_namespaced_allows() {
    let yaml = format!(
        "{}---\n{}---\n{}",
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: no-clients}\n\
         spec: {endpointSelector: {matchLabels: {app: web}}, ingressDeny: [{fromEndpoints: [{matchLabels: {app: client}}]}]}\n",
        cnp(
            "a",
            "allow-client",
            "{endpointSelector: {matchLabels: {app: web}}, ingress: [{fromEndpoints: [{matchLabels: {app: client}}], \
             toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]}"
        ),
        knp("a", "allow-all", "{podSelector: {}, ingress: [{}]}"),
    );
    let c = compiled(&yaml);
    let web = &c.endpoints[0];
    assert_no_covered_allow(web);
    for (id, port) in [(CLIENT_A, 80), (CLIENT_A, 22), (CLIENT_B, 80)] {
        let d = lookup(web, id, false, TCP, port);
        assert_eq!((d.verdict, d.verdict.drop_reason()), (Verdict::Denied, Some(DROP_POLICY_DENY)), "{id} {port}");
        assert_eq!(
            c.rule(d.matched.unwrap().entry.rule).unwrap().policy(),
            "CiliumClusterwideNetworkPolicy no-clients"
        );
    }
    assert!(verdict(web, reserved::WORLD, false, TCP, 80).is_allowed(), "the KNP allows the rest");
    assert!(verdict(web, DB_B, false, UDP, 53).is_allowed());
    // the client of namespace a is not web: the KNP alone applies there
    assert!(verdict(&c.endpoints[1], CLIENT_A, false, TCP, 80).is_allowed());
}

#[test]
fn invalid_network_policies_name_their_field() {
    let web = "podSelector: {matchLabels: {app: web}}";
    let cases = [
        ("{ingress: [{}]}".to_string(), "spec.podSelector", "is required"),
        (format!("{{{web}, ingres: [{{}}]}}"), "spec.ingres", "unknown field `ingres`"),
        (format!("{{{web}, policyTypes: [ingress]}}"), "spec.policyTypes[0]", "unknown policy type `ingress`"),
        (format!("{{{web}, ingress: [{{from: [{{}}]}}]}}"), "spec.ingress[0].from[0]", "needs `podSelector`"),
        (
            format!("{{{web}, egress: [{{to: [{{podSelector: {{}}, ipBlock: {{cidr: 10.0.0.0/8}}}}]}}]}}"),
            "spec.egress[0].to[0]",
            "not both",
        ),
        (
            format!("{{{web}, egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.1}}}}]}}]}}"),
            "spec.egress[0].to[0].ipBlock.cidr",
            "10.0.0.1/32",
        ),
        (
            format!("{{{web}, egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}}}]}}]}}"),
            "spec.egress[0].to[0].ipBlock.except[0]",
            "strict subset",
        ),
        (
            format!("{{{web}, egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}}}]}}]}}"),
            "spec.egress[0].to[0].ipBlock.except[0]",
            "strict subset",
        ),
        (
            format!("{{{web}, ingress: [{{from: [{{ipBlock: {{except: [10.0.0.0/9]}}}}]}}]}}"),
            "spec.ingress[0].from[0].ipBlock",
            "missing field `cidr`",
        ),
        (format!("{{{web}, ingress: [{{ports: [{{port: 0}}]}}]}}"), "spec.ingress[0].ports[0].port", "out of range"),
        (format!("{{{web}, ingress: [{{ports: [{{port: '80'}}]}}]}}"), "spec.ingress[0].ports[0].port", "unquoted"),
        (
            format!("{{{web}, ingress: [{{ports: [{{protocol: tcp}}]}}]}}"),
            "spec.ingress[0].ports[0].protocol",
            "upper case",
        ),
        (
            format!("{{{web}, ingress: [{{ports: [{{protocol: ANY}}]}}]}}"),
            "spec.ingress[0].ports[0].protocol",
            "expected TCP, UDP or SCTP",
        ),
        (format!("{{{web}, ingress: [{{ports: [{{endPort: 90}}]}}]}}"), "spec.ingress[0].ports[0].endPort", "numeric"),
        (
            format!("{{{web}, ingress: [{{ports: [{{port: http, endPort: 90}}]}}]}}"),
            "spec.ingress[0].ports[0].endPort",
            "numeric",
        ),
        (
            format!("{{{web}, ingress: [{{ports: [{{port: 90, endPort: 80}}]}}]}}"),
            "spec.ingress[0].ports[0].endPort",
            "between port 90 and 65535",
        ),
        (
            format!(
                "{{{web}, ingress: [{{from: [{{namespaceSelector: {{matchExpressions: [{{key: a, operator: In}}]}}}}]}}]}}"
            ),
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
            "needs at least one value",
        ),
    ];
    for (spec, field, message) in cases {
        let d = invalid_knp(&spec);
        assert_eq!(d.field, field, "{spec}: {d}");
        assert!(d.message.contains(message), "{spec}: {d}");
        assert!(d.message.starts_with("NetworkPolicy a/bad: "), "{d}");
    }
    let d = invalid("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: empty}\n");
    assert_eq!(d.field, "spec");
    // an IPv6 block is accepted, matches nothing, and says so
    let c = compiled(&knp(
        "a",
        "v6",
        &format!("{{{web}, egress: [{{to: [{{ipBlock: {{cidr: '2001:db8::/32', except: ['2001:db8::/48']}}}}]}}]}}"),
    ));
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].field, "spec.egress[0].to[0].ipBlock.cidr");
    assert!(c.endpoints[0].egress_enforced && c.endpoints[0].entries.is_empty());
}
