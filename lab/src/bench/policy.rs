//! `lab bench policy`: what policy costs the control plane.
//!
//! 1. Compile: [`RULES`] synthetic policies (CiliumNetworkPolicy and NetworkPolicy, one rule each:
//!    L3-L4 allows, cross-namespace port ranges, egress to pods and to the world, denies, CIDR
//!    sets, NetworkPolicy peers with namespace selectors) over [`IDENTITIES`] identities, one
//!    endpoint each, parsed and compiled by [`policy`] as `lab up` does. Pure: no kernel, no root.
//!    Taken [`REPEATS`] times, the median kept.
//! 2. Apply: a lab of [`ENDPOINTS`] pods that one CiliumNetworkPolicy rule selects, plus a prober
//!    pod it does not. The rule allows the prober on TCP/80 only, so the prober's ping to the
//!    pods is dropped; the rule is changed to allow the prober at L3 and applied with
//!    [`live::apply`], as `lab apply` does: every one of the [`ENDPOINTS`] policy maps changes.
//!    Timed until `apply` returns (every map written) and until a ping from the prober to the
//!    pod whose map is written last gets through (enforced), probing all along. Taken [`REPEATS`]
//!    times (the rule is changed back between runs, untimed), the median kept. After each run,
//!    every map is checked to hold the new entry.
//! 3. Memory: the process's peak resident set (VmHWM) after the compile and at the end, and the
//!    memory the kernel charges for the lab's pinned maps (`memlock` of each map, as bpftool shows
//!    it), policy maps apart.
//!
//! The lab is recorded in `/run/lab` before anything is created and removed however the
//! benchmark ends, as the other benchmarks' labs are.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use aya::maps::MapData;

use super::{Interrupt, RecordedLab, synthetic_topology, time_build};
use crate::datapath::abi::{POLICY_PREFIX_STATIC, identity};
use crate::datapath::{self, maps};
use crate::identity::{LabelFilter, Labels, pod_labels, reserved_identities};
use crate::live::{self, Change};
use crate::net::netns;
use crate::plan::Plan;
use crate::policy::{Endpoint, Options, PolicySet};
use crate::probe::{self, Kind, Outcome};
use crate::realise;
use crate::state::Status;
use crate::topology::Topology;
use crate::topology::resources::Resource;

/// The compile benchmark's size.
pub const RULES: usize = 10_000;
pub const IDENTITIES: usize = 5_000;
/// Identities are `app` × namespace; namespaces carry a `team` label.
const NAMESPACES: usize = 50;
const APPS: usize = IDENTITIES / NAMESPACES;
const TEAMS: usize = 10;
const TIERS: [&str; 4] = ["web", "api", "db", "cache"];

/// The apply benchmark's size: the endpoints the changed rule selects.
pub const ENDPOINTS: usize = 1_000;
/// Each endpoint's policy map holds one entry here: the smallest size a lab allows.
pub const POLICY_MAP_SIZE: u32 = 256;
/// Runs per measurement; the median is kept.
pub const REPEATS: usize = 3;
/// How long one ping of the prober waits before it tries again: the resolution of "enforced".
const PROBE_INTERVAL: Duration = Duration::from_millis(2);
/// How long a change may take to be enforced before the benchmark gives up.
const ENFORCE_TIMEOUT: Duration = Duration::from_secs(10);
const NODES: usize = 2;
/// The prober is the plan's first pod; the selected pods follow it.
const PROBER: usize = 0;

/// What the compile benchmark measured.
#[derive(Debug, Clone)]
pub struct CompileResult {
    pub rules: usize,
    /// Rule items (`ingress[0]`, `egressDeny[1]`, ...): one cookie each.
    pub items: usize,
    pub identities: usize,
    pub endpoints: usize,
    /// Local CIDR identities the rules' CIDRs add.
    pub cidr_identities: usize,
    /// Policy map entries over all endpoints, and the most one endpoint has.
    pub entries: usize,
    pub max_entries: usize,
    /// Per run: parsing (checking and translating), then parsing and compiling.
    pub parse: Vec<Duration>,
    pub total: Vec<Duration>,
    /// Per run: the CPU time the compiling thread used for `total` (the engine runs on one
    /// thread); less than `total` when other processes took the core.
    pub cpu: Vec<Duration>,
    /// VmHWM after the runs, in bytes.
    pub peak_rss: u64,
}

impl CompileResult {
    pub fn median(&self) -> Duration {
        median(&self.total)
    }

    pub fn median_parse(&self) -> Duration {
        median(&self.parse)
    }

    pub fn median_cpu(&self) -> Duration {
        median(&self.cpu)
    }
}

/// What the apply benchmark measured.
#[derive(Debug, Clone)]
pub struct ApplyResult {
    /// Endpoints the rule selects, and the pods of the lab (the prober too).
    pub endpoints: usize,
    pub pods: usize,
    pub nodes: usize,
    /// Building the lab and installing its datapath, once.
    pub lab_up: Duration,
    /// Per run: until [`live::apply`] returned, every map written.
    pub applied: Vec<Duration>,
    /// Per run: until the prober's ping to the last endpoint written got through.
    pub enforced: Vec<Duration>,
    /// Endpoints whose map `apply` rewrote, in each run.
    pub changed: Vec<usize>,
    /// Pings the prober sent per run until one got through.
    pub pings: Vec<usize>,
    /// The lab's pinned maps: how many, and the memory the kernel charges for them, in bytes.
    pub maps: usize,
    pub maps_memlock: u64,
    /// Of which the endpoints' policy maps.
    pub policy_maps: usize,
    pub policy_maps_memlock: u64,
    /// The same by map (`lab_ct_tcp`, `policy_<id>`, ...), summed over nodes and endpoints:
    /// name → (maps, bytes).
    pub maps_by_name: BTreeMap<String, (usize, u64)>,
}

impl ApplyResult {
    pub fn median_applied(&self) -> Duration {
        median(&self.applied)
    }

    pub fn median_enforced(&self) -> Duration {
        median(&self.enforced)
    }
}

/// Everything `lab bench policy` measured.
#[derive(Debug, Clone)]
pub struct PolicyResult {
    pub compile: CompileResult,
    pub apply: ApplyResult,
    /// VmHWM at the end, in bytes.
    pub peak_rss: u64,
}

/// Which part is done, for progress lines.
#[derive(Debug, Clone)]
pub enum Step<'a> {
    Compiled(&'a CompileResult),
    LabUp(Duration),
    Applied { run: usize, applied: Duration, enforced: Duration },
}

pub fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}

/// Runs both benchmarks; `on_step` sees each part as soon as it is measured.
pub fn run(mut on_step: impl FnMut(Step)) -> Result<PolicyResult> {
    let interrupt = Interrupt::listen()?;
    let compile = compile_benchmark(&interrupt).context("benchmarking the compiler")?;
    on_step(Step::Compiled(&compile));
    let apply = apply_benchmark(&interrupt, &mut on_step).context("benchmarking a change to a running lab")?;
    // VmHWM never falls, but the kernel's RSS counters are approximate: keep the larger reading.
    let peak_rss = peak_rss()?.max(compile.peak_rss);
    Ok(PolicyResult { compile, apply, peak_rss })
}

/// The synthetic cluster the compiler is measured on.
pub struct Synthetic {
    pub resources: Vec<Resource>,
    pub endpoints: Vec<Endpoint>,
    pub identities: BTreeMap<u32, Labels>,
}

fn namespace(j: usize) -> String {
    format!("ns-{j:02}")
}

fn app(k: usize) -> String {
    format!("app-{:03}", k % APPS)
}

/// [`IDENTITIES`] endpoints, one per identity: app `k` in namespace `j`, of tier `k % 4`; and
/// [`RULES`] policies, rule `i` selecting app `(i / NAMESPACES) % APPS` in namespace
/// `i % NAMESPACES`, so each identity is the subject of two rules.
pub fn synthetic() -> Synthetic {
    let mut identities = reserved_identities();
    let mut endpoints = Vec::with_capacity(IDENTITIES);
    for n in 0..IDENTITIES {
        let (j, k) = (n % NAMESPACES, n / NAMESPACES);
        let labels = pod_labels(
            &namespace(j),
            &BTreeMap::from([("team".to_string(), format!("team-{}", j % TEAMS))]),
            &BTreeMap::from([("app".to_string(), app(k)), ("tier".to_string(), TIERS[k % TIERS.len()].to_string())]),
            "default",
        );
        let id = identity::FIRST_LOCAL + n as u32;
        identities.insert(id, LabelFilter::default().relevant(&labels));
        endpoints.push(Endpoint {
            id: n as u16 + 1,
            identity: id,
            labels,
            namespace: namespace(j),
            ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 2)) + n as u32),
            named_ports: Vec::new(),
            host: false,
        });
    }
    let resources = (0..RULES).map(synthetic_rule).collect();
    Synthetic { resources, endpoints, identities }
}

/// Rule `i`: one of ten shapes, by `(i / 7) % 10`.
fn synthetic_rule(i: usize) -> Resource {
    let (j, k) = (i % NAMESPACES, (i / NAMESPACES) % APPS);
    let (subject, team) = (app(k), format!("team-{}", (j + 1) % TEAMS));
    let cnp = |spec: String| ("cilium.io/v2", "CiliumNetworkPolicy", spec);
    let (api_version, kind, text) = match (i / 7) % 10 {
        // L3-L4 allows from two apps of the namespace.
        0..=3 => cnp(format!(
            "spec:
  endpointSelector: {{matchLabels: {{app: {subject}}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: {}}}}}, {{matchLabels: {{app: {}}}}}]
      toPorts: [{{ports: [{{port: \"8080\", protocol: TCP}}]}}]
",
            app(k + 1),
            app(k + 2)
        )),
        // A port range from one app of every namespace of another team.
        4 => cnp(format!(
            "spec:
  endpointSelector: {{matchLabels: {{app: {subject}}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{io.cilium.k8s.namespace.labels.team: {team}, app: {}}}}}]
      toPorts: [{{ports: [{{port: \"8000\", endPort: 8099, protocol: TCP}}]}}]
",
            app(k + 7)
        )),
        // Egress to DNS on another app, and to the world on TCP/443.
        5 => cnp(format!(
            "spec:
  endpointSelector: {{matchLabels: {{app: {subject}}}}}
  egress:
    - toEndpoints: [{{matchLabels: {{app: {}}}}}]
      toPorts: [{{ports: [{{port: \"53\", protocol: UDP}}]}}]
    - toEntities: [world]
      toPorts: [{{ports: [{{port: \"443\", protocol: TCP}}]}}]
",
            app(k + 3)
        )),
        // Everything from the namespace but its cache tier.
        6 => cnp(format!(
            "spec:
  endpointSelector: {{matchLabels: {{app: {subject}}}}}
  ingress:
    - fromEndpoints: [{{}}]
  ingressDeny:
    - fromEndpoints: [{{matchExpressions: [{{key: tier, operator: In, values: [cache]}}]}}]
"
        )),
        // A CIDR set with an except.
        7 => cnp(format!(
            "spec:
  endpointSelector: {{matchLabels: {{app: {subject}}}}}
  egress:
    - toCIDRSet: [{{cidr: 198.51.100.0/24, except: [198.51.100.{}/32]}}]
      toPorts: [{{ports: [{{port: \"443\", protocol: TCP}}]}}]
",
            i % 256
        )),
        // A NetworkPolicy: one app of every namespace of another team.
        8 => (
            "networking.k8s.io/v1",
            "NetworkPolicy",
            format!(
                "spec:
  podSelector: {{matchLabels: {{app: {subject}}}}}
  ingress:
    - from: [{{namespaceSelector: {{matchLabels: {{team: {team}}}}}, podSelector: {{matchLabels: {{app: {}}}}}}}]
      ports: [{{port: 80, protocol: TCP}}]
",
                app(k + 9)
            ),
        ),
        // A NetworkPolicy both ways: one app in, DNS of one namespace out.
        _ => (
            "networking.k8s.io/v1",
            "NetworkPolicy",
            format!(
                "spec:
  podSelector: {{matchLabels: {{app: {subject}}}}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from: [{{podSelector: {{matchLabels: {{app: {}}}}}}}]
  egress:
    - to: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {}}}}}}}]
      ports: [{{port: 53, protocol: UDP}}, {{port: 53, protocol: TCP}}]
",
                app(k + 5),
                namespace((j + 1) % NAMESPACES)
            ),
        ),
    };
    Resource {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        namespace: Some(namespace(j)),
        name: format!("rule-{i:05}"),
        file: PathBuf::from("lab bench policy"),
        location: None,
        object: serde_yaml::from_str(&text).expect("the synthetic rule is valid YAML"),
    }
}

fn compile_benchmark(interrupt: &Interrupt) -> Result<CompileResult> {
    let input = synthetic();
    let options = Options::default();
    let (mut parse, mut total, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..REPEATS {
        interrupt.check()?;
        let cpu_before = thread_cpu_time()?;
        let started = Instant::now();
        let set = PolicySet::parse(&input.resources)
            .map_err(|e| anyhow::anyhow!("the synthetic rules are invalid: {}", e[0]))?;
        parse.push(started.elapsed());
        let compiled = set
            .compile(&input.endpoints, &input.identities, &options)
            .map_err(|e| anyhow::anyhow!("the synthetic rules do not fit: {}", e[0]))?;
        total.push(started.elapsed());
        cpu.push(thread_cpu_time()?.saturating_sub(cpu_before));
        last = Some((set.rules().len(), compiled));
    }
    let (items, compiled) = last.expect("at least one run");
    let sizes = compiled.endpoints.iter().map(|e| e.entries.len());
    Ok(CompileResult {
        rules: input.resources.len(),
        items,
        identities: input.identities.keys().filter(|id| **id >= identity::FIRST_LOCAL).count(),
        endpoints: input.endpoints.len(),
        cidr_identities: compiled.cidr_identities.len(),
        entries: sizes.clone().sum(),
        max_entries: sizes.max().unwrap_or(0),
        parse,
        total,
        cpu,
        peak_rss: peak_rss()?,
    })
}

/// [`ENDPOINTS`] pods labelled `app: bench` and, first, a prober labelled `role: prober`, over
/// [`NODES`] nodes, with the smallest policy maps.
fn apply_topology(name: &str) -> Topology {
    let mut topology = synthetic_topology(name, ENDPOINTS + 1, NODES);
    topology.cluster.policy_map_size = POLICY_MAP_SIZE;
    for (i, pod) in topology.pods.iter_mut().enumerate() {
        let (key, value) = if i == PROBER { ("role", "prober") } else { ("app", "bench") };
        pod.labels.insert(key.to_string(), value.to_string());
    }
    topology.pods[PROBER].name = "prober".to_string();
    topology
}

/// The rule every `app: bench` pod is selected by: the prober may reach them on TCP/80 only
/// (`l3_only: false`, so its pings are dropped), or with anything (`l3_only: true`).
fn bench_rule(l3_only: bool) -> Resource {
    let ports = if l3_only { "" } else { "\n      toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]" };
    let text = format!(
        "spec:
  endpointSelector: {{matchLabels: {{app: bench}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{role: prober}}}}]{ports}
"
    );
    Resource {
        api_version: "cilium.io/v2".to_string(),
        kind: "CiliumNetworkPolicy".to_string(),
        namespace: Some("default".to_string()),
        name: "bench-rule".to_string(),
        file: PathBuf::from("lab bench policy"),
        location: None,
        object: serde_yaml::from_str(&text).expect("the rule is valid YAML"),
    }
}

fn apply_benchmark(interrupt: &Interrupt, on_step: &mut impl FnMut(Step)) -> Result<ApplyResult> {
    interrupt.check()?;
    let name = format!("bench-{}-policy", std::process::id());
    let topology = apply_topology(&name);
    super::check_synthetic(&topology)?;
    let plan = Plan::new(&topology, &name);
    let resources = vec![bench_rule(false)];
    // Compiled before anything is created, as `lab up` does.
    let compiled = live::compile(&plan, &resources).context("compiling the benchmark's rule")?;

    let lab = RecordedLab::create(plan)?;
    // `lab apply` works from the record of what the lab was built from.
    lab.dir.write_sources(&topology, &resources)?;
    let started = Instant::now();
    time_build(&lab.plan).context("building the lab")?;
    interrupt.check()?;
    datapath::install(&lab.plan, &compiled, &Default::default()).context("installing the datapath")?;
    lab.dir.set_status(Status::Ready)?;
    let lab_up = started.elapsed();
    on_step(Step::LabUp(lab_up));

    let plan = &lab.plan;
    let last = plan.pods.len() - 1;
    let prober = netns::open(&plan.pods[PROBER].netns)?;
    let target = plan.pods[last].ip;
    let l3_key = |pod: usize| {
        maps::read_policy(plan, pod).map(|entries| {
            entries.keys().any(|k| k.identity == plan.pods[PROBER].identity && k.prefixlen == POLICY_PREFIX_STATIC)
        })
    };

    let mut result = ApplyResult {
        endpoints: ENDPOINTS,
        pods: plan.pods.len(),
        nodes: plan.nodes.len(),
        lab_up,
        applied: Vec::new(),
        enforced: Vec::new(),
        changed: Vec::new(),
        pings: Vec::new(),
        maps: 0,
        maps_memlock: 0,
        policy_maps: 0,
        policy_maps_memlock: 0,
        maps_by_name: BTreeMap::new(),
    };
    for run in 1..=REPEATS {
        interrupt.check()?;
        let outcome = ping(&prober, target, Duration::from_millis(200))?;
        ensure!(outcome == Outcome::Timeout, "before the change, the prober's ping was not dropped: {outcome}");

        let change = Change { apply: vec![bench_rule(true)], ..Change::default() };
        let (applied, changed, enforced, pings) = std::thread::scope(|scope| -> Result<_> {
            let (started_tx, started_rx) = std::sync::mpsc::channel::<Instant>();
            let prober = &prober;
            let probing = scope.spawn(move || -> Result<(Instant, usize)> {
                // Pings until one gets through; the first is sent before the change starts.
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let mut pings = 0;
                let mut deadline = None;
                loop {
                    pings += 1;
                    if runtime.block_on(probe::probe(prober, target, Kind::Icmp, PROBE_INTERVAL)) == Outcome::Connected
                    {
                        return Ok((Instant::now(), pings));
                    }
                    if deadline.is_none() {
                        deadline = started_rx.try_recv().ok().map(|t| t + ENFORCE_TIMEOUT);
                    }
                    if deadline.is_some_and(|d| Instant::now() > d) {
                        bail!("the change was not enforced after {} s", ENFORCE_TIMEOUT.as_secs());
                    }
                }
            });
            let started = Instant::now();
            let _ = started_tx.send(started);
            let applied = live::apply(&name, &change);
            let applied_at = started.elapsed();
            let applied = applied.context("applying the changed rule")?;
            let (through, pings) = probing.join().expect("the prober does not panic")?;
            Ok((applied_at, applied.endpoints, through.saturating_duration_since(started), pings))
        })?;
        on_step(Step::Applied { run, applied, enforced });
        // Untimed: every selected endpoint holds the new entry.
        for pod in (0..plan.pods.len()).filter(|&p| p != PROBER) {
            ensure!(l3_key(pod)?, "after the change, {} has no L3 entry for the prober", plan.pods[pod].id());
        }
        result.applied.push(applied);
        result.enforced.push(enforced);
        result.changed.push(changed);
        result.pings.push(pings);

        // Back as it was, untimed.
        live::apply(&name, &Change { apply: vec![bench_rule(false)], ..Change::default() })
            .context("changing the rule back")?;
        ensure!(!l3_key(last)?, "changing the rule back left the L3 entry in place");
    }

    let memory = pinned_maps_memory(&crate::state::LabDir::of(&name).bpffs_path())?;
    result.maps = memory.len();
    result.maps_memlock = memory.iter().map(|(_, bytes)| bytes).sum();
    let policy: Vec<&(PathBuf, u64)> = memory.iter().filter(|(path, _)| is_policy_map(path)).collect();
    result.policy_maps = policy.len();
    result.policy_maps_memlock = policy.iter().map(|(_, bytes)| bytes).sum();
    for (path, bytes) in &memory {
        let name = if is_policy_map(path) {
            "policy_<id>".to_string()
        } else {
            path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        };
        let (count, total) = result.maps_by_name.entry(name).or_default();
        *count += 1;
        *total += bytes;
    }
    ensure!(
        result.policy_maps == plan.pods.len(),
        "found {} policy maps for {} pods",
        result.policy_maps,
        plan.pods.len()
    );

    drop(prober);
    realise::teardown(&lab.dir)?;
    Ok(result)
}

fn ping(from: &std::fs::File, to: Ipv4Addr, wait: Duration) -> Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(runtime.block_on(probe::probe(from, to, Kind::Icmp, wait)))
}

fn is_policy_map(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("policy_"))
}

/// Every map pinned under `dir` (links and folders skipped) with the memory the kernel charges
/// for it: the `memlock` of its fdinfo, as `bpftool map show` prints it.
pub fn pinned_maps_memory(dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).with_context(|| format!("listing {}", folder.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            // Pinned links are not maps.
            let Ok(map) = MapData::from_pin(&path) else { continue };
            let fdinfo = format!("/proc/self/fdinfo/{}", map.fd().as_fd().as_raw_fd());
            let text = std::fs::read_to_string(&fdinfo).with_context(|| format!("reading {fdinfo}"))?;
            let memlock = text
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no memlock in {fdinfo} ({})", path.display()))?;
            found.push((path, memlock));
        }
    }
    found.sort();
    Ok(found)
}

/// The CPU time (user and system) the calling thread has used.
fn thread_cpu_time() -> Result<Duration> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage");
    }
    // SAFETY: initialised by the successful call (and zeroed before).
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(time(usage.ru_utime) + time(usage.ru_stime))
}

/// The process's peak resident set (VmHWM), in bytes.
pub fn peak_rss() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::pins;
    use crate::policy::{Verdict, lookup};

    /// A policy map's pin, as [`is_policy_map`] recognises it.
    fn policy_pin(plan: &Plan, pod: usize) -> PathBuf {
        let p = &plan.pods[pod];
        pins::policy(&plan.lab, &plan.nodes[p.node].name, p.endpoint_id)
    }

    #[test]
    fn the_synthetic_rules_are_valid_and_select_every_identity() {
        let input = synthetic();
        assert_eq!((input.resources.len(), input.endpoints.len()), (RULES, IDENTITIES));
        let identities: std::collections::BTreeSet<&Labels> =
            input.identities.iter().filter(|(id, _)| **id >= identity::FIRST_LOCAL).map(|(_, l)| l).collect();
        assert_eq!(identities.len(), IDENTITIES, "every endpoint has an identity of its own");
        // A slice of the rules, so the test stays quick: every shape is among the first 70.
        let set = PolicySet::parse(&input.resources[..70]).unwrap();
        let compiled = set.compile(&input.endpoints, &input.identities, &Options::default()).unwrap();
        assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
        assert!(compiled.cidr_identities.len() > 1);
        // Rule 0 (app-000 in ns-00) allows app-001 of ns-00 on TCP/8080.
        let (subject, peer) = (&compiled.endpoints[0], input.endpoints[NAMESPACES].identity);
        assert_eq!(lookup(subject, peer, false, 6, 8080).verdict, Verdict::Allowed);
        assert_eq!(lookup(subject, peer, false, 6, 8081).verdict, Verdict::DefaultDenied);
        let kinds: std::collections::BTreeSet<&str> = input.resources.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds.len(), 2);
    }

    #[test]
    fn the_apply_lab_selects_every_pod_but_the_prober() {
        let topology = apply_topology("bench-1-policy");
        assert!(crate::topology::validate::check(&topology).is_empty());
        let plan = Plan::new(&topology, "bench-1-policy");
        assert_eq!(plan.pods.len(), ENDPOINTS + 1);
        assert_eq!(plan.pods[PROBER].name, "prober");
        assert!(is_policy_map(&policy_pin(&plan, 1)));
        assert!(!is_policy_map(&pins::node_map(&plan.lab, "node-1", "lab_ipcache")));
        let prober = plan.pods[PROBER].identity;
        for l3_only in [false, true] {
            let compiled = live::compile(&plan, &[bench_rule(l3_only)]).unwrap();
            let selected = compiled.endpoints.iter().filter(|e| e.ingress_enforced).count();
            assert_eq!(selected, ENDPOINTS);
            assert!(!compiled.endpoints[PROBER].ingress_enforced);
            let last = &compiled.endpoints[ENDPOINTS];
            // ICMP is looked up with its type as the port: 8, an echo request.
            assert_eq!(lookup(last, prober, false, 1, 8).verdict.is_allowed(), l3_only, "ICMP");
            assert!(lookup(last, prober, false, 6, 80).verdict.is_allowed());
        }
    }

    #[test]
    fn medians_of_durations() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(median(&[ms(4), ms(1), ms(2), ms(3)]), Duration::from_micros(2500));
        assert_eq!(median(&[]), Duration::ZERO);
    }

    #[test]
    fn the_peak_resident_set_is_read() {
        assert!(peak_rss().unwrap() > 0);
    }
}
