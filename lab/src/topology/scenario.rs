//! The `scenario:` section of a topology file: ordered, named steps that change a running lab
//! (policies, labels, pods, faults) and send traffic through it with asserted outcomes. `lab test`
//! runs them (see [`crate::scenario`]) and compares what each step saw with golden files.
//!
//! A scenario may also live apart from its topology, in a file of its own with `topology:` and
//! `steps:` ([`ScenarioFile`]): the NetworkPolicy conformance cases share one cluster that way.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Pod, ResourceEntry, Scalar};

/// What happens to a running lab, step by step.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scenario {
    /// Interfaces captured during every step, kept as pcaps and compared as text: a pod or an
    /// external (its `eth0`), a node (its uplink `eth0`), or `TARGET/INTERFACE`
    /// (`node-1/lxc77a019b5f165`).
    #[serde(default)]
    pub capture: Vec<String>,
    /// The steps, run in order; what a step changes stays for the next ones.
    pub steps: Vec<Step>,
}

/// A scenario in a file of its own, run on the topology it names.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScenarioFile {
    /// What the scenario is about (for the conformance cases: upstream's test name).
    pub name: String,
    /// The topology file it runs on, relative to this file.
    pub topology: String,
    #[serde(default)]
    pub capture: Vec<String>,
    pub steps: Vec<Step>,
}

/// One step. Its parts run in a fixed order, whatever order they are written in: changes
/// (`apply`, `delete`, labels, pods, backends), then faults (`restart`, `sysctls`, `linkDown`,
/// `linkUp`), then traffic (`probes` in order, `exec` in order, then `expect` matrices).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    /// Names the step in reports and its golden files' folder; unique in the scenario. Default:
    /// `step N`.
    #[serde(default)]
    pub name: Option<String>,
    /// Objects to create or replace, written as under `resources:`.
    #[serde(default)]
    pub apply: Vec<ResourceEntry>,
    /// Objects to remove: `Kind namespace/name`, or `Kind name` for cluster-scoped kinds.
    #[serde(default)]
    pub delete: Vec<String>,
    /// Pods' whole new label sets, by `namespace/name`.
    #[serde(default)]
    pub pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Namespaces' whole new label sets.
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Pods to remove, by `namespace/name` (or a name only one pod has): their namespace, veth,
    /// datapath and maps' entries go, as when a kubelet deletes a pod.
    #[serde(default)]
    pub remove_pods: Vec<String>,
    /// Pods to add, written as under `pods:`. A pod removed in an earlier step may come back
    /// under the same name, and so at the same address (not in the step that removes it: the
    /// lab would see one pod still running, not a new one).
    #[serde(default)]
    pub add_pods: Vec<Pod>,
    /// Backends to take out of their service: the address is removed from every EndpointSlice of
    /// the service.
    #[serde(default)]
    pub delete_backends: Vec<Backend>,
    /// Restart the lab's agent (a cilium-agent restart: a new process, its programs loaded again
    /// and replaced on every interface, on the pinned maps, so conntrack and established
    /// connections survive) or only replace the datapath's programs.
    #[serde(default)]
    pub restart: Option<Restart>,
    /// `net.*` sysctls to write, by node, pod or external.
    #[serde(default)]
    pub sysctls: BTreeMap<String, BTreeMap<String, Scalar>>,
    /// Wires to cut: `TARGET`, a node's or external's port on the fabric or a pod's `lxc` on its
    /// node (the target's `eth0` loses its carrier and keeps its routes), or an interface's own
    /// state, `TARGET/INTERFACE`.
    #[serde(default)]
    pub link_down: Vec<String>,
    /// Wires to mend (a pod's node gets its route to the pod back), or interfaces to bring up.
    #[serde(default)]
    pub link_up: Vec<String>,
    /// Traffic, one probe at a time, each with its expected outcome.
    #[serde(default)]
    pub probes: Vec<Probe>,
    /// Real commands run inside a pod, node or external, each with its expected exit status.
    #[serde(default)]
    pub exec: Vec<Exec>,
    /// Reachability matrices: every pod to every pod on one port, compared with a netpol-style
    /// `.`/`X` table.
    #[serde(default)]
    pub expect: Vec<Expectation>,
    /// The step's changes must be refused (an invalid object, a policy that does not fit its
    /// map): the refusal is recorded, and the lab is left as it was.
    #[serde(default)]
    pub refused: bool,
    /// Steady loads to start before anything else in the step: new connections at a rate and
    /// one established connection, running until a later `stopLoad`.
    #[serde(default)]
    pub start_load: Vec<LoadStart>,
    /// Loads to stop after the step's traffic, each with what it should have seen.
    #[serde(default)]
    pub stop_load: Vec<LoadStop>,
}

/// A steady load ([`crate::load`]) from a pod, node or external to a TCP echo port.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadStart {
    /// Names it for `stopLoad`.
    pub name: String,
    pub from: String,
    /// A pod, node, external, `service/NAMESPACE/NAME` or an IPv4 address.
    pub to: String,
    /// `tcp/PORT`.
    pub port: String,
    /// New connections a second.
    #[serde(default = "LoadStart::default_rate")]
    pub rate: u32,
}

impl LoadStart {
    fn default_rate() -> u32 {
        50
    }
}

/// `{name: steady}`, or `{name: steady, expect: lossy}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadStop {
    pub name: String,
    #[serde(default)]
    pub expect: LoadOutcome,
}

/// What a load saw between its start and its stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LoadOutcome {
    /// Every new connection and every exchange on the established one succeeded.
    #[default]
    Lossless,
    /// Some failed.
    Lossy,
}

impl fmt::Display for LoadOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoadOutcome::Lossless => "lossless",
            LoadOutcome::Lossy => "lossy",
        })
    }
}

impl Step {
    /// The step's name, or `step N` (1-based) without one.
    pub fn title(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("step {}", index + 1))
    }

    /// Whether the step changes only policies, services and labels: what a lab shared by several
    /// scenarios can be reset from.
    pub fn only_resources_and_labels(&self) -> bool {
        self.remove_pods.is_empty()
            && self.add_pods.is_empty()
            && self.delete_backends.is_empty()
            && self.restart.is_none()
            && self.sysctls.is_empty()
            && self.link_down.is_empty()
            && self.link_up.is_empty()
            && self.start_load.is_empty()
            && self.stop_load.is_empty()
    }
}

/// `{service: namespace/name, address: 10.0.0.5}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// The service, `namespace/name` (or `name` in `default`).
    pub service: String,
    #[schemars(with = "String")]
    pub address: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Restart {
    /// The agent restarts: a new process takes over its servers' sockets, loads the datapath's
    /// programs again and replaces them on every interface, and goes on recording flows.
    Agent,
    /// Only the datapath's programs are loaded again and replaced, as a datapath upgrade.
    Datapath,
    /// The pods' programs are taken off, then loaded and attached again a second
    /// later, as an upgrade that tears down before it sets up: in between, pods' packets cross
    /// bare veths, neither load balanced nor checked.
    Reattach,
}

/// What a probe is expected to see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Expected {
    /// The exchange completed: the echo (or the HTTP, DNS answer) came back.
    #[default]
    Connected,
    /// Nothing came back, and the datapath dropped the probe's packets (a `DROPPED` flow).
    Blocked,
    /// The peer refused or reset the connection (TCP RST, an ICMP unreachable).
    Reset,
    /// Nothing came back, and the datapath dropped nothing.
    Timeout,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expected::Connected => "connected",
            Expected::Blocked => "blocked",
            Expected::Reset => "reset",
            Expected::Timeout => "timeout",
        })
    }
}

/// One probe: from a pod, node or external to a pod, node, external, service or address; or
/// another exchange on a connection an earlier probe kept open.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Probe {
    /// Names the probe in reports; default: `FROM -> TO PORT`.
    #[serde(default)]
    pub name: Option<String>,
    /// The sender: a pod (`namespace/name`, or a name only one pod has), node or external.
    #[serde(default)]
    pub from: Option<String>,
    /// The receiver: a pod, node, external, `service/NAMESPACE/NAME` (its ClusterIP) or an IPv4
    /// address.
    #[serde(default)]
    pub to: Option<String>,
    /// `tcp/80`, `udp/53` or `icmp`. Default: `tcp/80` for `http`, `udp/53` for `dns`.
    #[serde(default)]
    pub port: Option<String>,
    /// An HTTP GET of this path; connected when the answer is `200 OK`.
    #[serde(default)]
    pub http: Option<String>,
    /// A DNS query (type A) for this name; connected when an answer to it comes back.
    #[serde(default)]
    pub dns: Option<String>,
    /// The expected outcome.
    #[serde(default)]
    pub expect: Expected,
    /// TCP only: keep the connection open under this name, for later probes' `connection`.
    #[serde(default)]
    pub keep: Option<String>,
    /// Exchange again on the connection an earlier probe kept under this name.
    #[serde(default)]
    pub connection: Option<String>,
    /// With `connection`: close it after this exchange.
    #[serde(default)]
    pub close: bool,
    /// How long to wait for an answer (`800ms`, `2s`); default 800 ms, under TCP's first
    /// retransmission, so a capture never holds a retransmitted SYN. Stretched under emulation
    /// (`LAB_TIME_SCALE`); the default wait of a probe expected to fail only up to 950 ms.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// A real command inside a pod, node or external.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Exec {
    /// Where: a pod, node or external.
    #[serde(rename = "in")]
    pub target: String,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// The exit status expected.
    #[serde(default)]
    pub status: i32,
    /// How long it may run (default 10s); then it is killed and the step fails.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// A reachability matrix, as the NetworkPolicy e2e suite writes one.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expectation {
    /// `tcp/80`, `udp/81`, ...
    pub probe: String,
    /// Rows are senders, columns receivers: `.` reaches, `X` does not; tab-separated.
    pub matrix: String,
    /// Where Cilium's semantics give another matrix (`policySemantics: cilium`).
    #[serde(default)]
    pub cilium: Option<String>,
    /// Why they differ.
    #[serde(default)]
    pub cilium_why: Option<String>,
}

impl Expectation {
    /// The matrix expected under `semantics`.
    pub fn expected(&self, semantics: super::PolicySemantics) -> &str {
        match (semantics, &self.cilium) {
            (super::PolicySemantics::Cilium, Some(cilium)) => cilium,
            _ => &self.matrix,
        }
    }
}

/// `Kind namespace/name` or `Kind name`.
pub fn parse_delete(text: &str) -> Result<(String, Option<String>, String), String> {
    let (kind, rest) = text.split_once(' ').ok_or_else(|| format!("`{text}`: expected `Kind namespace/name`"))?;
    let rest = rest.trim();
    if kind.is_empty() || rest.is_empty() || rest.contains(' ') {
        return Err(format!("`{text}`: expected `Kind namespace/name`"));
    }
    Ok(match rest.split_once('/') {
        Some((namespace, name)) => (kind.to_string(), Some(namespace.to_string()), name.to_string()),
        None => (kind.to_string(), None, rest.to_string()),
    })
}

/// Every problem with the steps of a scenario for `topology`, by field: `prefix` is where the
/// scenario stands in its file (`scenario.` in a topology, empty in a scenario file). Names are
/// checked against the lab as each step leaves it (a pod added in step 2 can be probed in step 3).
pub fn check(topology: &super::Topology, capture: &[String], steps: &[Step], prefix: &str) -> Vec<Finding> {
    let mut findings = Findings::default();
    let mut lab = topology.clone();
    lab.scenario = None;
    for (i, target) in capture.iter().enumerate() {
        check_interface(&mut findings, &format!("{prefix}capture[{i}]"), &lab, target);
    }
    let mut names = std::collections::HashSet::new();
    let mut kept = std::collections::HashSet::new();
    let mut loads = std::collections::BTreeSet::new();
    for (i, step) in steps.iter().enumerate() {
        let field = |f: &str| format!("{prefix}steps[{i}].{f}");
        let title = step.title(i);
        if title.trim().is_empty() {
            findings.error(field("name"), "a step's name must not be empty");
        } else if !names.insert(slug(&title)) {
            findings.error(field("name"), format!("two steps are named `{title}`; step names must differ"));
        }
        for (j, text) in step.delete.iter().enumerate() {
            if let Err(e) = parse_delete(text) {
                findings.error(field(&format!("delete[{j}]")), e);
            }
        }
        for (pod, labels) in &step.pod_labels {
            let at = field(&format!("podLabels.{pod}"));
            if pod_index(&lab, pod).is_none() || !pod.contains('/') {
                findings.error(&at, format!("no pod `{pod}`; name it namespace/name"));
            }
            validate::check_labels(&mut findings, &at, labels);
        }
        for (namespace, labels) in &step.namespace_labels {
            let at = field(&format!("namespaceLabels.{namespace}"));
            if namespace != "default" && !lab.namespaces.iter().any(|n| &n.name == namespace) {
                findings.error(&at, format!("no namespace `{namespace}`"));
            }
            validate::check_labels(&mut findings, &at, labels);
        }
        for start in &step.start_load {
            if !loads.insert(start.name.clone()) {
                findings.error(field("startLoad"), format!("a load named `{}` is already running", start.name));
            }
        }
        for stop in &step.stop_load {
            if !loads.remove(&stop.name) {
                findings.error(field("stopLoad"), format!("no load named `{}` is running", stop.name));
            }
        }
        let mut removed_here = Vec::new();
        for (j, pod) in step.remove_pods.iter().enumerate() {
            match pod_index(&lab, pod) {
                Some(index) => {
                    let gone = lab.pods.remove(index);
                    removed_here.push((gone.namespace, gone.name));
                }
                None => findings.error(field(&format!("removePods[{j}]")), format!("no pod `{pod}` to remove")),
            }
        }
        for (j, pod) in step.add_pods.iter().enumerate() {
            if removed_here.iter().any(|(namespace, name)| *namespace == pod.namespace && *name == pod.name) {
                findings.error(
                    field(&format!("addPods[{j}].name")),
                    format!(
                        "`{}/{}` is removed in this step; add it again in a later step to re-create it",
                        pod.namespace, pod.name
                    ),
                );
            }
        }
        if !step.add_pods.is_empty() {
            let first = lab.pods.len();
            lab.pods.extend(step.add_pods.iter().cloned());
            for finding in validate::check(&lab) {
                if let Some(rest) = finding.field.strip_prefix("pods[")
                    && let Some((index, rest)) = rest.split_once(']')
                    && let Some(index) = index.parse::<usize>().ok().filter(|index| *index >= first)
                {
                    let at = field(&format!("addPods[{}]{rest}", index - first));
                    match finding.severity {
                        Severity::Error => findings.error(at, finding.message),
                        Severity::Warning => findings.warning(at, finding.message),
                    }
                }
            }
        }
        for (j, backend) in step.delete_backends.iter().enumerate() {
            if backend.service.is_empty() || backend.service.split('/').count() > 2 {
                findings.error(field(&format!("deleteBackends[{j}].service")), "name the service as namespace/name");
            }
        }
        for (target, sysctls) in &step.sysctls {
            let at = field(&format!("sysctls.{target}"));
            if target_kind(&lab, target).is_none() {
                findings.error(&at, format!("no pod, node or external `{target}`"));
            }
            validate::check_sysctls(&mut findings, &at, sysctls);
        }
        for (list, name) in [(&step.link_down, "linkDown"), (&step.link_up, "linkUp")] {
            for (j, target) in list.iter().enumerate() {
                check_interface(&mut findings, &field(&format!("{name}[{j}]")), &lab, target);
            }
        }
        for (j, probe) in step.probes.iter().enumerate() {
            check_probe(&mut findings, &field(&format!("probes[{j}]")), &lab, probe, &mut kept);
        }
        for (j, exec) in step.exec.iter().enumerate() {
            let at = field(&format!("exec[{j}]"));
            if target_kind(&lab, &exec.target).is_none() {
                findings.error(format!("{at}.in"), format!("no pod, node or external `{}`", exec.target));
            }
            if exec.command.is_empty() || exec.command[0].is_empty() {
                findings.error(format!("{at}.command"), "name a program to run");
            }
            if let Some(Err(e)) = exec.timeout.as_deref().map(crate::cmd::probe::parse_duration) {
                findings.error(format!("{at}.timeout"), e);
            }
        }
        for (j, expectation) in step.expect.iter().enumerate() {
            let at = field(&format!("expect[{j}]"));
            if let Err(e) = crate::cmd::probe::parse_kind(&expectation.probe) {
                findings.error(format!("{at}.probe"), e);
            }
        }
        for (j, start) in step.start_load.iter().enumerate() {
            let at = field(&format!("startLoad[{j}]"));
            if target_kind(&lab, &start.from).is_none() {
                findings.error(format!("{at}.from"), format!("no pod, node or external `{}`", start.from));
            }
            if !matches!(crate::cmd::probe::parse_kind(&start.port), Ok(crate::probe::Kind::Tcp(_))) {
                findings.error(format!("{at}.port"), format!("`{}`: a load runs over TCP, `tcp/PORT`", start.port));
            }
            if start.rate == 0 || start.rate > 1000 {
                findings.error(format!("{at}.rate"), format!("{} is out of range 1-1000", start.rate));
            }
        }
    }
    for name in loads {
        findings.error(format!("{prefix}steps"), format!("the load `{name}` is never stopped"));
    }
    findings.0
}

use super::validate::{self, Finding, Findings, Severity};

/// A step's folder among its scenario's golden files: its name in lowercase, runs of anything
/// but letters and digits made one `-`.
pub fn slug(title: &str) -> String {
    let mut slug = String::new();
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').to_string()
}

/// The index of the pod `target` names: `namespace/name`, or a name only one pod has.
fn pod_index(topology: &super::Topology, target: &str) -> Option<usize> {
    if let Some((namespace, name)) = target.split_once('/') {
        return topology.pods.iter().position(|p| p.namespace == namespace && p.name == name);
    }
    let mut matches = topology.pods.iter().enumerate().filter(|(_, p)| p.name == target);
    match (matches.next(), matches.next()) {
        (Some((index, _)), None) => Some(index),
        _ => None,
    }
}

/// What `target` names in `topology`, if anything: `pod`, `node` or `external`.
fn target_kind(topology: &super::Topology, target: &str) -> Option<&'static str> {
    if pod_index(topology, target).is_some() {
        Some("pod")
    } else if topology.nodes.iter().any(|n| n.name == target) {
        Some("node")
    } else if topology.externals.iter().any(|e| e.name == target) {
        Some("external")
    } else {
        None
    }
}

/// `TARGET/INTERFACE` split at its last `/` (a pod's `namespace/name` holds one of its own).
pub fn split_interface(target: &str) -> (&str, Option<&str>) {
    match target.rsplit_once('/') {
        Some((head, interface)) => (head, Some(interface)),
        None => (target, None),
    }
}

fn check_interface(findings: &mut Findings, field: &str, topology: &super::Topology, target: &str) {
    // A pod named `namespace/name` has a `/` of its own; try the whole first.
    if target_kind(topology, target).is_some() {
        return;
    }
    let (head, interface) = split_interface(target);
    let well_formed = interface.is_some_and(|i| !i.is_empty() && i.len() <= validate::MAX_IFNAME);
    if target_kind(topology, head).is_none() || !well_formed {
        findings.error(field, format!("`{target}` names no pod, node or external (write TARGET or TARGET/INTERFACE)"));
    }
}

fn check_probe(
    findings: &mut Findings,
    at: &str,
    topology: &super::Topology,
    probe: &Probe,
    kept: &mut std::collections::HashSet<String>,
) {
    if let Some(connection) = &probe.connection {
        if probe.from.is_some() || probe.to.is_some() || probe.port.is_some() || probe.http.is_some() {
            findings.error(at, "a probe on a kept `connection` names no `from`, `to`, `port` or `http`");
        }
        if !kept.contains(connection) {
            findings.error(format!("{at}.connection"), format!("no earlier probe keeps a connection `{connection}`"));
        } else if probe.close {
            kept.remove(connection);
        }
    } else {
        match &probe.from {
            None => findings.error(at, "a probe needs `from` and `to` (or a kept `connection`)"),
            Some(from) if target_kind(topology, from).is_none() => {
                findings.error(format!("{at}.from"), format!("no pod, node or external `{from}`"))
            }
            Some(_) => {}
        }
        match &probe.to {
            None => findings.error(at, "a probe needs `from` and `to` (or a kept `connection`)"),
            Some(to) => {
                let known = target_kind(topology, to).is_some()
                    || to.parse::<Ipv4Addr>().is_ok()
                    || to.strip_prefix("service/").is_some_and(|s| !s.is_empty() && s.split('/').count() <= 2);
                if !known {
                    findings.error(
                        format!("{at}.to"),
                        format!("no pod, node or external `{to}` (a service is `service/NAMESPACE/NAME`)"),
                    );
                }
            }
        }
        if probe.http.is_some() && probe.dns.is_some() {
            findings.error(at, "a probe is an HTTP GET or a DNS query, not both");
        }
        match probe.port.as_deref().map(crate::cmd::probe::parse_kind) {
            Some(Err(e)) => findings.error(format!("{at}.port"), e),
            Some(Ok(crate::probe::Kind::Tcp(_))) if probe.dns.is_some() => {
                findings.error(format!("{at}.port"), "the lab's DNS queries go over UDP")
            }
            Some(Ok(kind)) if probe.http.is_some() && !matches!(kind, crate::probe::Kind::Tcp(_)) => {
                findings.error(format!("{at}.port"), "an HTTP GET goes over TCP")
            }
            Some(Ok(kind)) if probe.keep.is_some() && !matches!(kind, crate::probe::Kind::Tcp(_)) => {
                findings.error(format!("{at}.keep"), "only TCP connections can be kept")
            }
            None if probe.http.is_none() && probe.dns.is_none() => {
                findings.error(at, "a probe needs a `port` (tcp/80, udp/53 or icmp), `http` or `dns`")
            }
            _ => {}
        }
        if let Some(name) = &probe.keep
            && !kept.insert(name.clone())
        {
            findings.error(format!("{at}.keep"), format!("a connection `{name}` is already kept"));
        }
    }
    if let Some(Err(e)) = probe.timeout.as_deref().map(crate::cmd::probe::parse_duration) {
        findings.error(format!("{at}.timeout"), e);
    }
}
