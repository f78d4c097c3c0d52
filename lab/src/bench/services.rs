//! `lab bench services`: new connections per second through a ClusterIP as the number of
//! services grows, translated by the datapath's service maps and by kube-proxy's iptables rules.
//!
//! One lab: one node, a client pod and a server pod (serving TCP on [`traffic::PORT`], from this
//! process, pinned to the second core as `lab bench datapath`'s server is). For each service
//! count N (10, 10,000 and 50,000 by default), N Services of one port each ([`service_objects`]):
//! N - 1 fillers and the measured one, `default/web`, each a ClusterIP of its own and one backend,
//! the server, resolved by [`Services::resolve`] as `lab up` resolves a topology's Services. The
//! client connects to the measured ClusterIP, sends a byte, reads the answer and closes with a
//! reset, over and over ([`traffic::new_connections`], TCP_CRR), in two setups:
//!
//! - BPF: the datapath as `lab up` installs it, the N services written into the node's service
//!   maps with [`lb::sync`] (from empty maps: that write is what is timed). The client's
//!   `from_container` picks the backend and DNATs; no netfilter rule exists in the node.
//! - iptables: the client's and server's programs detached (bare veths), and the rules kube-proxy's
//!   iptables mode writes for the same services ([`kube_proxy_rules`]) loaded by `iptables-restore`
//!   run inside the node's namespace (timed, from no rules). The node's `PREROUTING` jumps to
//!   `KUBE-SERVICES`, which holds one rule per service; netfilter evaluates them in order for the
//!   first packet of every connection. kube-proxy writes that chain in Go map order, i.e. any
//!   order; here it is namespace/name order, and `default/web` sorts after every `svc-NNNNN`
//!   filler, so the measured service is the chain's last service rule: each new connection walks
//!   all N rules before it matches, the worst case, and the one kube-proxy's cost is quoted for.
//!
//! Each connection is checked to reach the server (which counts what it served). Only a
//! translation makes the ClusterIP reachable (the node would route it out to the fabric, which
//! has no route for it), so a BPF run that succeeds went through the datapath; an iptables run
//! must also have made the measured service's DNAT rule count its connections (nearly all: one
//! that reuses the ports of a connection conntrack still holds may reuse its NAT). When the rules
//! go, the whole `nat` table goes with them (with the nf_tables backend an empty table unhooks,
//! so conntrack tracks nothing in the node during BPF runs) and the node is checked to hold no
//! rule.
//!
//! The setups take turns as in `lab bench datapath`: each of [`ROUNDS`] rounds measures every
//! (translation, N) once, a translation's runs at every N back to back (BPF's with only a map
//! write between them: its curve, which the target is about, compares runs seconds apart), and
//! the medians are kept; ratios are medians of ratios within a round. The order is the same every
//! round, BPF from fewest to most, then iptables from most to fewest: rather than reversing it
//! every other round, as `lab bench datapath` does, because the kernel frees a removed rule table
//! in the background, for seconds at 250,000 rules, and a reversed round would put BPF's largest
//! count right after the largest removal (three runs measured it 0.41-0.94 of BPF at 10 in every
//! such round, 0.45-2.31 in the others). Here only the 58-rule table is removed before BPF runs;
//! the large ones before smaller iptables runs, after a longer quiet ([`settle`]). The first run
//! after a change of translation is a [`WARM_UP`], not counted: BPF's first count is not the
//! one that pays for programs just attached again. Rules live in the lab's node namespace and go with it:
//! the lab is recorded and removed as the other benchmarks' labs are, however the run ends.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ipnet::Ipv4Net;
use nix::sched::{CloneFlags, setns};
use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::Signal;
use serde_json::json;

use super::datapath::{CpuLoad, cpu_ticks, median, paired_ratio, spread, thousands};
use super::traffic::{self, Server};
use super::{Interrupt, RecordedLab, synthetic_topology, time_build};
use crate::datapath::lb::{self, LbMaps};
use crate::datapath::{self, loader};
use crate::net::netns;
use crate::plan::Plan;
use crate::realise;
use crate::services::{BackendState, Services};
use crate::state;
use crate::topology::resources::Resource;
use crate::topology::{Protocol, Topology};

/// The service counts measured by default.
pub const SERVICE_COUNTS: [usize; 3] = [10, 10_000, 50_000];
/// The most services a run may define: the service CIDR is a /16, and the measured service
/// takes its last address.
pub const MAX_SERVICES: usize = 65_000;
/// Rounds of runs, one run of each (setup, N) per round; the median is kept.
pub const ROUNDS: usize = 7;
/// The port every service serves; its backend is the server's [`traffic::PORT`].
pub const SERVICE_PORT: u16 = 80;
const PORT_NAME: &str = "http";
const NAMESPACE: &str = "default";
/// The service the client connects to: after every filler (`svc-NNNNN`) in namespace/name order.
pub const MEASURED: &str = "web";
/// The pods, in plan order.
const CLIENT: usize = 0;
const SERVER: usize = 1;
/// kube-proxy's masquerade mark (`--iptables-masquerade-bit` 14).
const MASQUERADE_MARK: &str = "0x4000";
/// An uncounted run after every change of translation, before the first counted one.
pub const WARM_UP: Duration = Duration::from_secs(1);
/// How long the lab is left alone after its maps or rules changed, before the next run.
pub const SETTLE: Duration = Duration::from_secs(2);
/// The least share of an iptables run's connections the measured service's DNAT rule must count.
const MIN_COUNTED: f64 = 0.9;
/// What `iptables-restore` reads to remove every rule of the `nat` table.
const NO_RULES: &str = "*nat\nCOMMIT\n";
/// Where [`NO_RULES`] is written in the lab's record.
const NO_RULES_FILE: &str = "iptables-none.rules";

/// Who translates the ClusterIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Translation {
    /// The datapath's service maps, in the client's `from_container`.
    Bpf,
    /// kube-proxy's rules in the node's `nat` table.
    Iptables,
}

impl std::fmt::Display for Translation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Translation::Bpf => "BPF",
            Translation::Iptables => "iptables",
        })
    }
}

/// One measured setup: who translates, with how many services defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub translation: Translation,
    pub services: usize,
}

impl std::fmt::Display for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, {} services", self.translation, thousands(self.services))
    }
}

/// One setup's measurements.
#[derive(Debug, Clone)]
pub struct Row {
    pub setup: Setup,
    /// New connections per second, one per round.
    pub rates: Vec<f64>,
    /// How long making the translation hold the N services took, each time it was done from
    /// nothing: writing the service maps (BPF) or loading the rules (iptables).
    pub loads: Vec<Duration>,
    /// How many cores other processes kept busy, on average, during the runs.
    pub other_load: f64,
}

impl Row {
    fn new(setup: Setup) -> Row {
        Row { setup, rates: Vec::new(), loads: Vec::new(), other_load: 0.0 }
    }

    /// The median rate, in connections per second.
    pub fn rate(&self) -> f64 {
        median(&self.rates)
    }

    /// (max - min) / median of the rates.
    pub fn spread(&self) -> f64 {
        spread(&self.rates)
    }

    /// The median time to write the maps or load the rules.
    pub fn load(&self) -> Option<Duration> {
        let mut loads = self.loads.clone();
        loads.sort();
        (!loads.is_empty()).then(|| loads[loads.len() / 2])
    }
}

/// What `lab bench services` measured.
#[derive(Debug, Clone)]
pub struct ServicesResult {
    pub seconds: Duration,
    /// The service counts, fewest first.
    pub counts: Vec<usize>,
    /// Every (translation, count), BPF's first.
    pub rows: Vec<Row>,
    /// `iptables-restore --version`: which iptables, and which backend (nf_tables or legacy).
    pub iptables: String,
    /// How many rules kube-proxy's tables hold at each count.
    pub rules: Vec<usize>,
    /// The ClusterIP:port the client connected to.
    pub frontend: SocketAddrV4,
    /// The server, its only backend.
    pub backend: SocketAddrV4,
    /// Connections the measured service's DNAT rule counted over the iptables runs.
    pub dnat_counted: u64,
    /// Connections made over the iptables runs.
    pub iptables_connections: u64,
}

impl ServicesResult {
    pub fn row(&self, translation: Translation, services: usize) -> &Row {
        self.rows.iter().find(|row| row.setup == Setup { translation, services }).expect("every setup has a row")
    }

    /// A row's rate over its translation's rate at the fewest services, paired by round.
    pub fn vs_fewest(&self, row: &Row) -> f64 {
        paired_ratio(&row.rates, &self.row(row.setup.translation, self.counts[0]).rates)
    }

    /// The ratios [`Self::vs_fewest`] takes the median of, one per round.
    pub fn vs_fewest_by_round(&self, row: &Row) -> Vec<f64> {
        let fewest = &self.row(row.setup.translation, self.counts[0]).rates;
        row.rates.iter().zip(fewest).map(|(a, b)| a / b).collect()
    }

    /// iptables' rate over BPF's at `services`, paired by round (measured back to back).
    pub fn iptables_vs_bpf(&self, services: usize) -> f64 {
        paired_ratio(&self.row(Translation::Iptables, services).rates, &self.row(Translation::Bpf, services).rates)
    }

    pub fn as_json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|row| {
                let index = self.counts.iter().position(|n| *n == row.setup.services).expect("a counted row");
                json!({
                    "translation": row.setup.translation.to_string(), "services": row.setup.services,
                    "connectionsPerSec": row.rate(), "samples": row.rates, "spread": row.spread(),
                    "vsFewest": self.vs_fewest(row), "vsFewestByRound": self.vs_fewest_by_round(row),
                    "loadMs": row.load().map(ms), "loadSamplesMs": row.loads.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                    "rules": (row.setup.translation == Translation::Iptables).then_some(self.rules[index]),
                    "otherProcessesCores": row.other_load,
                })
            })
            .collect();
        let ratios: Vec<_> =
            self.counts.iter().map(|n| json!({"services": n, "iptablesVsBpf": self.iptables_vs_bpf(*n)})).collect();
        json!({
            "seconds": self.seconds.as_secs_f64(), "rounds": ROUNDS, "settleSeconds": SETTLE.as_secs_f64(),
            "warmUpSeconds": WARM_UP.as_secs_f64(),
            "iptables": self.iptables,
            "frontend": self.frontend.to_string(), "backend": self.backend.to_string(),
            "measuredService": format!("{NAMESPACE}/{MEASURED}"),
            "dnatCounted": self.dnat_counted, "iptablesConnections": self.iptables_connections,
            "rows": rows, "iptablesVsBpf": ratios,
        })
    }
}

/// What the benchmark reports as it goes.
pub enum Progress {
    /// The services, maps and rules of every count are computed.
    Prepared { took: Duration },
    /// The lab is up with its datapath.
    LabUp { took: Duration },
    /// The translation now holds `setup.services` services; it took this long.
    Loaded { setup: Setup, took: Duration },
    /// One run.
    Sample { round: usize, setup: Setup, rate: f64 },
}

/// The setups in the order every round measures them: BPF at every count, fewest first, then
/// iptables at every count, most first. A translation's runs are back to back, and the BPF runs
/// follow the removal of the smallest rule table.
pub fn round_order(counts: &[usize]) -> Vec<Setup> {
    let bpf = counts.iter().map(|&services| Setup { translation: Translation::Bpf, services });
    let iptables = counts.iter().rev().map(|&services| Setup { translation: Translation::Iptables, services });
    bpf.chain(iptables).collect()
}

/// How long to leave the lab alone after a change, before the next run: [`SETTLE`], and 40 µs
/// more per rule removed (10 s more after 250,000). The kernel frees a removed nf_tables table
/// in a worker after `iptables-restore` has returned.
pub fn settle(rules_removed: usize) -> Duration {
    SETTLE + Duration::from_micros(40) * rules_removed as u32
}

/// Measures every count through both translations, `seconds` per run, over [`ROUNDS`] rounds.
pub fn run(counts: &[usize], seconds: Duration, mut progress: impl FnMut(Progress)) -> Result<ServicesResult> {
    ensure!(!seconds.is_zero(), "each measurement needs some time");
    let mut counts = counts.to_vec();
    counts.sort_unstable();
    counts.dedup();
    ensure!(!counts.is_empty(), "no service count to measure");
    ensure!(
        counts[0] >= 1 && counts[counts.len() - 1] <= MAX_SERVICES,
        "service counts must be 1 to {}",
        thousands(MAX_SERVICES)
    );
    let iptables = iptables_version()?;
    let interrupt = Interrupt::listen()?;
    let name = format!("bench-{}-svc", std::process::id());
    let topology = client_and_server(&name);
    super::check_synthetic(&topology)?;
    let plan = Plan::new(&topology, &name);
    let compiled = crate::live::compile(&plan, &[]).context("compiling the lab's (empty) policy")?;

    // Everything each count needs, computed before anything is created.
    let started = Instant::now();
    let mut prepared = Vec::new();
    for &count in &counts {
        interrupt.check()?;
        let objects = service_objects(count, plan.service_cidr)?;
        let services = crate::live::services(&plan, &objects).context("resolving the benchmark's services")?;
        let last = services.services.last().context("no service")?;
        ensure!(
            last.id() == format!("{NAMESPACE}/{MEASURED}") && last.frontends[0].backends.len() == 1,
            "the measured service must come last, with one backend"
        );
        let rules = kube_proxy_rules(&services, topology.cluster.pod_cidr);
        let maps = (0..plan.nodes.len()).map(|node| lb::lb_maps(&services, &plan, node)).collect();
        prepared.push(Prepared { maps, rule_count: rule_count(&rules), rules });
    }
    let measured = &service_objects(1, plan.service_cidr)?[0];
    let frontend = SocketAddrV4::new(cluster_ip(measured)?, SERVICE_PORT);
    let backend = SocketAddrV4::new(plan.pods[SERVER].ip, traffic::PORT);
    let dnat_chain = endpoint_chain(&service_port_name(NAMESPACE, MEASURED, Some(PORT_NAME)), "tcp", backend);
    progress(Progress::Prepared { took: started.elapsed() });

    let lab = RecordedLab::create(plan)?;
    // The rules go into the lab's record, removed with it; iptables-restore reads them from there.
    let record = Path::new(state::RUN_DIR).join(&lab.dir.name);
    let no_rules = write_rules(&record.join(NO_RULES_FILE), NO_RULES)?;
    let rule_files = prepared
        .iter_mut()
        .zip(&counts)
        .map(|(prepared, count)| {
            write_rules(&record.join(format!("iptables-{count}.rules")), &std::mem::take(&mut prepared.rules))
        })
        .collect::<Result<Vec<PathBuf>>>()?;
    let started = Instant::now();
    time_build(&lab.plan).context("building the lab")?;
    interrupt.check()?;
    datapath::install(&lab.plan, &compiled, &Services::default()).context("installing the datapath")?;
    progress(Progress::LabUp { took: started.elapsed() });
    let node = netns::open(&lab.plan.nodes[lab.plan.pods[CLIENT].node].netns)?;
    // Fails here, before any measurement, if the kernel has no netfilter NAT for iptables.
    restore(&node, &no_rules).context(
        "iptables cannot use the node's nat table: the kernel needs nf_tables (or legacy xtables) with NAT \
         (CONFIG_NF_TABLES, CONFIG_NFT_NAT, CONFIG_NFT_COMPAT, CONFIG_NETFILTER_XT_NAT)",
    )?;
    let mut bench = Bench {
        interrupt: &interrupt,
        plan: &lab.plan,
        client: netns::open(&lab.plan.pods[CLIENT].netns)?,
        server: Server::listen(&netns::open(&lab.plan.pods[SERVER].netns)?, *backend.ip())?,
        node,
        prepared: &prepared,
        rule_files: &rule_files,
        no_rules: &no_rules,
        counts: &counts,
        current: None,
        dnat_chain,
        dnat_counted: 0,
        iptables_connections: 0,
    };

    let mut rows: Vec<Row> = round_order(&counts).into_iter().map(Row::new).collect();
    rows.sort_by_key(|row| (row.setup.translation, row.setup.services));
    let mut loads: Vec<CpuLoad> = rows.iter().map(|_| CpuLoad::default()).collect();
    for round in 0..ROUNDS {
        for setup in round_order(&counts) {
            let at = rows.iter().position(|row| row.setup == setup).expect("every setup has a row");
            let translation_changed = bench.current.map(|s| s.translation) != Some(setup.translation);
            if let Some(took) = bench.switch_to(setup)? {
                rows[at].loads.push(took);
                progress(Progress::Loaded { setup, took });
            }
            if translation_changed {
                // Whatever the first connections after a change of translation pay (programs
                // just attached, conntrack of the node just unhooked), no counted run pays it.
                bench.measure(frontend, WARM_UP, &mut CpuLoad::default())?;
            }
            let rate = bench.measure(frontend, seconds, &mut loads[at])?;
            rows[at].rates.push(rate);
            progress(Progress::Sample { round, setup, rate });
        }
    }
    for (row, load) in rows.iter_mut().zip(&loads) {
        row.other_load = load.cores();
    }
    let (dnat_counted, iptables_connections) = (bench.dnat_counted, bench.iptables_connections);
    drop(bench);
    realise::teardown(&lab.dir)?;
    Ok(ServicesResult {
        seconds,
        rules: prepared.iter().map(|p| p.rule_count).collect(),
        counts,
        rows,
        iptables,
        frontend,
        backend,
        dnat_counted,
        iptables_connections,
    })
}

/// What one service count needs: its service maps, and kube-proxy's rules for it.
struct Prepared {
    /// Each node's service maps.
    maps: Vec<LbMaps>,
    /// Until written to a file.
    rules: String,
    rule_count: usize,
}

fn write_rules(path: &Path, rules: &str) -> Result<PathBuf> {
    std::fs::write(path, rules).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}

/// One node, a client and a server pod with labels of their own (the services select the server).
fn client_and_server(name: &str) -> Topology {
    let mut topology = synthetic_topology(name, 2, 1);
    for (pod, app) in topology.pods.iter_mut().zip(["client", "server"]) {
        pod.name = app.to_string();
        pod.labels.insert("app".to_string(), app.to_string());
    }
    topology
}

/// `count` Services in the default namespace, one TCP port each ([`SERVICE_PORT`], named
/// `http`, to the server's [`traffic::PORT`]), selecting the server pod (`app: server`), with
/// ClusterIPs given in order from the start of `service_cidr`: `count - 1` fillers `svc-00001`,
/// `svc-00002`, ..., and the measured [`MEASURED`] on the CIDR's last address, so it is the same
/// frontend at every count, and last in namespace/name order.
pub fn service_objects(count: usize, service_cidr: Ipv4Net) -> Result<Vec<Resource>> {
    ensure!((1..=MAX_SERVICES).contains(&count), "{count} services: the benchmark defines 1 to {MAX_SERVICES}");
    let hosts = service_cidr.hosts().count();
    ensure!(hosts > count, "serviceCIDR `{service_cidr}` has room for {} services, not {count}", hosts - 1);
    let first = u32::from(service_cidr.network()) + 1;
    let last = Ipv4Addr::from(u32::from(service_cidr.broadcast()) - 1);
    let fillers = (1..count).map(|i| (format!("svc-{i:05}"), Ipv4Addr::from(first + i as u32 - 1)));
    Ok(fillers.chain(std::iter::once((MEASURED.to_string(), last))).map(|(name, ip)| service(&name, ip)).collect())
}

fn service(name: &str, cluster_ip: Ipv4Addr) -> Resource {
    let object = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "clusterIP": cluster_ip.to_string(),
            "selector": {"app": "server"},
            "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": traffic::PORT, "protocol": "TCP"}],
        },
    });
    Resource {
        api_version: "v1".to_string(),
        kind: "Service".to_string(),
        namespace: Some(NAMESPACE.to_string()),
        name: name.to_string(),
        file: PathBuf::from("lab bench services"),
        location: None,
        object: serde_yaml::to_value(object).expect("JSON converts to YAML"),
    }
}

fn cluster_ip(service: &Resource) -> Result<Ipv4Addr> {
    let ip = service.object["spec"]["clusterIP"].as_str().context("a service without a clusterIP")?;
    Ok(ip.parse()?)
}

/// kube-proxy's name of a service port: `namespace/name:port`, or `namespace/name` for an unnamed
/// port (`ServicePortName.String()`).
fn service_port_name(namespace: &str, name: &str, port: Option<&str>) -> String {
    match port {
        Some(port) if !port.is_empty() => format!("{namespace}/{name}:{port}"),
        _ => format!("{namespace}/{name}"),
    }
}

/// A chain name as kube-proxy makes one: a prefix and 16 base32 characters of a hash of what
/// identifies the chain. kube-proxy hashes with SHA-256; any hash serves as well here, so this is
/// 80 bits of two FNV-1a hashes: only the names' shape and uniqueness matter.
fn chain_name(prefix: &str, identity: &str) -> String {
    const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let high = crate::plan::stable_hash(identity);
    let low = crate::plan::stable_hash(&format!("{identity}\u{0}")) & 0xffff;
    let bits = (u128::from(high) << 16) | u128::from(low);
    let encoded: String = (0..16).map(|i| BASE32[((bits >> (75 - 5 * i)) & 31) as usize] as char).collect();
    format!("{prefix}{encoded}")
}

/// kube-proxy's `KUBE-SVC-` chain of a service port.
fn service_chain(port_name: &str, protocol: &str) -> String {
    chain_name("KUBE-SVC-", &format!("{port_name}{protocol}"))
}

/// kube-proxy's `KUBE-SEP-` chain of one endpoint of a service port.
fn endpoint_chain(port_name: &str, protocol: &str, endpoint: SocketAddrV4) -> String {
    chain_name("KUBE-SEP-", &format!("{port_name}{protocol}{endpoint}"))
}

/// The `nat` table kube-proxy's iptables mode writes for `services` (its `iptables-restore`
/// input, without the `filter` table, which holds nothing per service that has endpoints):
/// `PREROUTING` and `OUTPUT` jump to `KUBE-SERVICES`, which has one rule per service port,
/// `-d ClusterIP/32 -p proto --dport port -j KUBE-SVC-…`, in `services`' order, then the NodePort
/// rule last; each `KUBE-SVC-…` marks traffic from outside `cluster_cidr` for masquerade and
/// jumps to one `KUBE-SEP-…` per ready endpoint (with `-m statistic` picking among several),
/// each of which DNATs to its endpoint. Frontends without a ready endpoint get no rule here
/// (kube-proxy rejects them in the `filter` table).
pub fn kube_proxy_rules(services: &Services, cluster_cidr: Ipv4Net) -> String {
    let mut chains = vec![
        "KUBE-SERVICES".to_string(),
        "KUBE-NODEPORTS".to_string(),
        "KUBE-POSTROUTING".to_string(),
        "KUBE-MARK-MASQ".to_string(),
    ];
    let mut rules = vec![
        r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#.to_string(),
        r#"-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#.to_string(),
        r#"-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING"#.to_string(),
        format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQUERADE_MARK}"),
        format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQUERADE_MARK}/{MASQUERADE_MARK} -j RETURN"),
        format!("-A KUBE-POSTROUTING -j MARK --xor-mark {MASQUERADE_MARK}"),
        r#"-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully"#
            .to_string(),
    ];
    let mut per_service = Vec::new();
    for service in &services.services {
        for frontend in &service.frontends {
            let ready: Vec<_> = frontend.backends.iter().filter(|b| b.state == BackendState::Active).collect();
            if ready.is_empty() {
                continue;
            }
            let protocol = match frontend.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            let port_name = service_port_name(&service.namespace, &service.name, frontend.name.as_deref());
            let svc_chain = service_chain(&port_name, protocol);
            let matches = format!(
                r#"-m comment --comment "{port_name} cluster IP" -m {protocol} -p {protocol} -d {}/32 --dport {}"#,
                frontend.address, frontend.port
            );
            rules.push(format!("-A KUBE-SERVICES {matches} -j {svc_chain}"));
            per_service.push(format!("-A {svc_chain} {matches} ! -s {cluster_cidr} -j KUBE-MARK-MASQ"));
            chains.push(svc_chain.clone());
            for (i, backend) in ready.iter().enumerate() {
                let endpoint = SocketAddrV4::new(backend.address, backend.port);
                let sep_chain = endpoint_chain(&port_name, protocol, endpoint);
                let probability = match ready.len() - i {
                    1 => String::new(),
                    left => format!(" -m statistic --mode random --probability {:.10}", 1.0 / left as f64),
                };
                per_service.push(format!(
                    r#"-A {svc_chain} -m comment --comment "{port_name} -> {endpoint}"{probability} -j {sep_chain}"#
                ));
                per_service.push(format!(
                    r#"-A {sep_chain} -m comment --comment "{port_name}" -s {}/32 -j KUBE-MARK-MASQ"#,
                    backend.address
                ));
                per_service.push(format!(
                    r#"-A {sep_chain} -m comment --comment "{port_name}" -m {protocol} -p {protocol} -j DNAT --to-destination {endpoint}"#
                ));
                chains.push(sep_chain);
            }
        }
    }
    rules.push(
        r#"-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"#
            .to_string(),
    );
    let mut text = String::from("*nat\n");
    for chain in &chains {
        text.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in rules.iter().chain(&per_service) {
        text.push_str(rule);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    text
}

/// How many rules an `iptables-restore` input appends.
fn rule_count(rules: &str) -> usize {
    rules.lines().filter(|line| line.starts_with("-A ")).count()
}

/// `iptables-restore --version`; an error says where iptables comes from if it is missing.
fn iptables_version() -> Result<String> {
    let output = Command::new("iptables-restore").arg("--version").output();
    let output = match output {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "iptables-restore is not installed: the iptables baseline needs Debian's `iptables` package (scripts/setup installs it)"
            )
        }
        other => other.context("running iptables-restore --version")?,
    };
    ensure!(output.status.success(), "iptables-restore --version failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Runs `program` with `args` inside `netns` (entered between fork and exec, so the program never
/// runs in this process's namespace), reading the file `input` if any; returns its standard
/// output. (A file rather than a pipe: a program that stops reading cannot kill this process
/// with SIGPIPE and leave the lab behind.)
fn run_in_netns(netns: &File, program: &str, args: &[&str], input: Option<&Path>) -> Result<String> {
    let stdin = match input {
        Some(path) => Stdio::from(File::open(path).with_context(|| format!("opening {}", path.display()))?),
        None => Stdio::null(),
    };
    let mut command = Command::new(program);
    command.args(args).stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
    let fd = netns.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls (prctl, setns), on a descriptor
    // that `netns` keeps open until the child has been spawned.
    unsafe {
        command.pre_exec(move || {
            // Killed with the benchmark: never left loading rules into a lab being removed.
            set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            setns(BorrowedFd::borrow_raw(fd), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    let output = command.output().with_context(|| format!("running {program}"))?;
    ensure!(
        output.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Replaces the `nat` table of `netns` with the rules in the file `rules`, as kube-proxy does.
fn restore(netns: &File, rules: &Path) -> Result<()> {
    run_in_netns(netns, "iptables-restore", &[], Some(rules)).map(drop)
}

/// The lab and its two pods, while the benchmark runs.
struct Bench<'a> {
    interrupt: &'a Interrupt,
    plan: &'a Plan,
    client: File,
    server: Server,
    /// The client's node, where kube-proxy's rules go.
    node: File,
    /// What each of `counts` needs, and the file of its rules.
    prepared: &'a [Prepared],
    rule_files: &'a [PathBuf],
    no_rules: &'a Path,
    counts: &'a [usize],
    /// What the client's connections cross now; `None` before the first setup.
    current: Option<Setup>,
    /// The measured service's `KUBE-SEP-` chain, whose DNAT rule counts its connections.
    dnat_chain: String,
    dnat_counted: u64,
    iptables_connections: u64,
}

impl Bench<'_> {
    /// Puts the lab in `setup`; returns how long writing the maps or loading the rules took, if
    /// they had to be.
    fn switch_to(&mut self, setup: Setup) -> Result<Option<Duration>> {
        self.interrupt.check()?;
        if self.current == Some(setup) {
            return Ok(None);
        }
        let index = self.counts.iter().position(|n| *n == setup.services).expect("a count");
        let was = self.current.map(|s| s.translation);
        let mut removed = 0;
        if let Some(Setup { translation: Translation::Iptables, services }) = self.current {
            removed = self.prepared[self.counts.iter().position(|n| *n == services).expect("a count")].rule_count;
            restore(&self.node, self.no_rules).context("removing kube-proxy's rules")?;
            let left = run_in_netns(&self.node, "iptables-save", &["-t", "nat"], None)?;
            ensure!(rule_count(&left) == 0, "the node still holds rules after they were removed:\n{left}");
        }
        let started;
        match setup.translation {
            Translation::Bpf => {
                if was == Some(Translation::Iptables) {
                    loader::attach_pods(self.plan, &[CLIENT, SERVER]).context("attaching the datapath again")?;
                }
                let empty = vec![LbMaps::default(); self.plan.nodes.len()];
                lb::write(self.plan, &empty).context("emptying the service maps")?;
                started = Instant::now();
                lb::write(self.plan, &self.prepared[index].maps).context("writing the service maps")?;
            }
            Translation::Iptables => {
                if was != Some(Translation::Iptables) {
                    loader::detach_pods(self.plan, &[CLIENT, SERVER]).context("detaching the datapath")?;
                }
                started = Instant::now();
                restore(&self.node, &self.rule_files[index]).context("loading kube-proxy's rules")?;
            }
        }
        let took = started.elapsed();
        // The kernel frees what was removed (a whole nat table, map entries) after the call
        // returns, in workers and RCU callbacks: let that finish before the next run, or the run
        // after the largest change would pay for it.
        std::thread::sleep(settle(removed));
        self.interrupt.check()?;
        self.current = Some(setup);
        Ok(Some(took))
    }

    /// One run in the current setup: connections per second. `load` adds what other processes
    /// took of the CPUs meanwhile.
    fn measure(&mut self, frontend: SocketAddrV4, seconds: Duration, load: &mut CpuLoad) -> Result<f64> {
        let iptables = self.current.map(|s| s.translation) == Some(Translation::Iptables);
        let before = if iptables { self.dnat_count()? } else { 0 };
        let (started, ticks) = (Instant::now(), cpu_ticks()?);
        let (rate, connections) =
            traffic::new_connections(&self.client, &self.server, frontend, seconds, self.interrupt)?;
        load.add(started.elapsed(), ticks, cpu_ticks()?);
        self.interrupt.check()?;
        if iptables {
            // The run's connections and the one that ended it. A connection whose ports repeat
            // those of one conntrack still holds may take over its entry, and its NAT, without
            // crossing the rules again: nearly every connection, not every one, is counted.
            let made = connections + 1;
            let counted = self.dnat_count()? - before;
            ensure!(
                counted as f64 >= MIN_COUNTED * made as f64,
                "the measured service's DNAT rule counted {counted} of {made} connections: they did not cross the rules"
            );
            self.dnat_counted += counted;
            self.iptables_connections += made;
        }
        Ok(rate)
    }

    /// The packets (one per new connection) the measured service's DNAT rule has counted.
    fn dnat_count(&self) -> Result<u64> {
        let listing =
            run_in_netns(&self.node, "iptables", &["-t", "nat", "-L", &self.dnat_chain, "-n", "-v", "-x"], None)?;
        dnat_packets(&listing).with_context(|| format!("no DNAT rule in {}:\n{listing}", self.dnat_chain))
    }
}

/// The packet counter of the DNAT rule in an `iptables -L -v -x` listing of one chain.
fn dnat_packets(listing: &str) -> Option<u64> {
    listing
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&"DNAT"))
        .and_then(|fields| fields[0].parse().ok())
}

/// Every chain and rule of an `iptables-restore` input, for tests: chain → its rules, in order.
#[cfg(test)]
fn parse_rules(text: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut chains = std::collections::BTreeMap::<String, Vec<String>>::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix(':') {
            chains.entry(declared.split(' ').next().unwrap().to_string()).or_default();
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, rest) = rule.split_once(' ').unwrap();
            chains.entry(chain.to_string()).or_default().push(rest.to_string());
        }
    }
    chains
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The synthetic topology's pod CIDR pool, kube-proxy's `--cluster-cidr`.
    const CLUSTER_CIDR: &str = "10.0.0.0/8";

    fn plan() -> Plan {
        Plan::new(&client_and_server("bench-1-svc"), "bench-1-svc")
    }

    fn resolved(count: usize) -> (Plan, Services) {
        let plan = plan();
        let objects = service_objects(count, plan.service_cidr).unwrap();
        let services = Services::resolve(&plan, &objects).unwrap();
        (plan, services)
    }

    #[test]
    fn the_services_have_one_backend_each_and_the_measured_one_comes_last() {
        let (plan, services) = resolved(1_000);
        assert!(crate::topology::validate::check(&client_and_server("bench-1-svc")).is_empty());
        assert_eq!(services.services.len(), 1_000);
        assert!(services.warnings.is_empty());
        let server = SocketAddrV4::new(plan.pods[SERVER].ip, traffic::PORT);
        for service in &services.services {
            assert_eq!(service.frontends.len(), 1);
            let frontend = &service.frontends[0];
            assert_eq!((frontend.port, frontend.protocol, frontend.address), (80, Protocol::Tcp, service.cluster_ip));
            let backends: Vec<_> = frontend.backends.iter().map(|b| SocketAddrV4::new(b.address, b.port)).collect();
            assert_eq!(backends, [server], "{}", service.id());
        }
        let ips: BTreeSet<Ipv4Addr> = services.services.iter().map(|s| s.cluster_ip).collect();
        assert_eq!(ips.len(), 1_000, "every ClusterIP is its own");
        assert_eq!(services.services[0].id(), "default/svc-00001");
        assert_eq!(services.services[0].cluster_ip, Ipv4Addr::new(172, 30, 0, 1));
        let last = services.services.last().unwrap();
        assert_eq!((last.id().as_str(), last.cluster_ip), ("default/web", Ipv4Addr::new(172, 30, 255, 254)));
        // The same frontend at every count.
        let (_, few) = resolved(1);
        assert_eq!(few.services[0], *last);
        // The service maps: a master entry and one slot per frontend, one backend for all.
        let maps = lb::lb_maps(&services, &plan, 0);
        assert_eq!((maps.services.len(), maps.backends.len(), maps.reverse_nat.len()), (2_000, 1, 1_000));
    }

    #[test]
    fn the_counts_fit_the_service_cidr() {
        let cidr: Ipv4Net = "172.30.0.0/16".parse().unwrap();
        assert_eq!(cidr, plan().service_cidr);
        assert!(cidr.hosts().count() > MAX_SERVICES);
        assert!(service_objects(0, cidr).is_err());
        assert!(service_objects(MAX_SERVICES + 1, cidr).is_err());
        // A /20 has 4,094 addresses: 4,093 services and the measured one's on the last.
        let small: Ipv4Net = "172.30.0.0/20".parse().unwrap();
        let objects = service_objects(4_093, small).unwrap();
        assert_eq!(cluster_ip(&objects[4_091]).unwrap(), Ipv4Addr::new(172, 30, 15, 252));
        assert_eq!(cluster_ip(&objects[4_092]).unwrap(), Ipv4Addr::new(172, 30, 15, 254));
        assert!(service_objects(4_094, small).is_err());
        let objects = service_objects(3, cidr).unwrap();
        let names: Vec<&str> = objects.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["svc-00001", "svc-00002", "web"]);
        assert_eq!(objects[2].object["spec"]["ports"][0]["targetPort"], serde_yaml::Value::from(traffic::PORT));
    }

    #[test]
    fn kube_proxy_rules_walk_every_service_before_the_measured_one() {
        let (plan, services) = resolved(10);
        let text = kube_proxy_rules(&services, CLUSTER_CIDR.parse().unwrap());
        assert!(text.starts_with("*nat\n") && text.ends_with("COMMIT\n"));
        let chains = parse_rules(&text);
        // 7 fixed rules, the NodePort rule, and per service one in KUBE-SERVICES, two in its
        // KUBE-SVC chain and two in its KUBE-SEP chain.
        assert_eq!(rule_count(&text), 8 + 5 * 10);
        assert_eq!(chains.len(), 4 + 3 + 2 * 10, "declared: the kube chains, the built-in ones used, 2 per service");
        assert_eq!(chains["PREROUTING"], [r#"-m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#]);

        let portals = &chains["KUBE-SERVICES"];
        assert_eq!(portals.len(), 11);
        assert!(portals[10].contains("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"), "NodePorts stay last");
        let web_chain = service_chain("default/web:http", "tcp");
        assert_eq!(
            portals[9],
            format!(
                r#"-m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d 172.30.255.254/32 --dport 80 -j {web_chain}"#
            ),
            "the measured service is the last service rule"
        );
        assert!(portals[0].contains("-d 172.30.0.1/32") && portals[0].contains("default/svc-00001:http"));

        let server = SocketAddrV4::new(plan.pods[SERVER].ip, traffic::PORT);
        let sep = endpoint_chain("default/web:http", "tcp", server);
        assert_eq!(
            chains[&web_chain],
            [
                r#"-m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d 172.30.255.254/32 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"#
                    .to_string(),
                format!(r#"-m comment --comment "default/web:http -> {server}" -j {sep}"#),
            ]
        );
        assert_eq!(
            chains[&sep],
            [
                format!(r#"-m comment --comment "default/web:http" -s {}/32 -j KUBE-MARK-MASQ"#, server.ip()),
                format!(r#"-m comment --comment "default/web:http" -m tcp -p tcp -j DNAT --to-destination {server}"#),
            ]
        );
        assert_eq!(
            dnat_packets(
                "Chain X (1 references)\n    pkts      bytes target     prot opt in     out     source               destination\n\
                 \x20      0        0 KUBE-MARK-MASQ  0    --  *      *       10.0.0.5             0.0.0.0/0\n\
                 \x20  12345   740700 DNAT       6    --  *      *       0.0.0.0/0            0.0.0.0/0            tcp to:10.0.0.5:5201\n"
            ),
            Some(12_345)
        );
    }

    #[test]
    fn several_endpoints_are_picked_at_random_and_terminating_ones_not_at_all() {
        use crate::services::{Backend, Frontend, FrontendKind, Service};
        let backend = |last: u8, state| Backend { address: Ipv4Addr::new(10, 0, 0, last), port: 8080, state };
        let services = Services {
            services: vec![Service {
                namespace: "ns".to_string(),
                name: "many".to_string(),
                cluster_ip: Ipv4Addr::new(172, 30, 0, 9),
                affinity_seconds: None,
                external_local: false,
                internal_local: false,
                frontends: vec![
                    Frontend {
                        name: None,
                        kind: FrontendKind::ClusterIp,
                        address: Ipv4Addr::new(172, 30, 0, 9),
                        port: 53,
                        protocol: Protocol::Udp,
                        node_port: None,
                        backends: vec![
                            backend(1, BackendState::Active),
                            backend(2, BackendState::Active),
                            backend(3, BackendState::Active),
                            backend(4, BackendState::Terminating),
                        ],
                    },
                    Frontend {
                        name: Some("none".to_string()),
                        kind: FrontendKind::ClusterIp,
                        address: Ipv4Addr::new(172, 30, 0, 9),
                        port: 54,
                        protocol: Protocol::Tcp,
                        node_port: None,
                        backends: vec![backend(5, BackendState::Terminating)],
                    },
                ],
            }],
            warnings: Vec::new(),
        };
        let chains = parse_rules(&kube_proxy_rules(&services, "10.0.0.0/8".parse().unwrap()));
        let svc = &chains[&service_chain("ns/many", "udp")];
        assert_eq!(svc.len(), 4);
        assert!(svc[1].contains("-m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-"), "{svc:?}");
        assert!(svc[2].contains("-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-"), "{svc:?}");
        assert!(!svc[3].contains("statistic"), "the last endpoint takes what is left: {svc:?}");
        assert!(!chains.keys().any(|c| c.contains(&endpoint_chain(
            "ns/many",
            "udp",
            "10.0.0.4:8080".parse().unwrap()
        ))));
        assert!(chains["KUBE-SERVICES"][0].contains("-m udp -p udp -d 172.30.0.9/32 --dport 53"));
        assert_eq!(chains["KUBE-SERVICES"].len(), 2, "no endpoint, no rule: only the NodePort rule follows");
    }

    #[test]
    fn chain_names_are_shaped_like_kube_proxy_s_and_unique() {
        let name = service_chain("default/web:http", "tcp");
        assert_eq!(name.len(), "KUBE-SVC-".len() + 16);
        assert!(name.len() <= 28, "iptables' limit on chain names");
        assert!(name["KUBE-SVC-".len()..].bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
        assert_eq!(name, service_chain("default/web:http", "tcp"), "the same in every run");
        // Every chain of the largest run is its own.
        let server: SocketAddrV4 = "10.0.0.5:5201".parse().unwrap();
        let names: BTreeSet<String> = (1..=SERVICE_COUNTS[2])
            .map(|i| service_port_name(NAMESPACE, &format!("svc-{i:05}"), Some(PORT_NAME)))
            .chain(std::iter::once(service_port_name(NAMESPACE, MEASURED, Some(PORT_NAME))))
            .flat_map(|port| [service_chain(&port, "tcp"), endpoint_chain(&port, "tcp", server)])
            .collect();
        assert_eq!(names.len(), 2 * (SERVICE_COUNTS[2] + 1));
        // The rules of a resolved set of services declare them all, once.
        let (_, services) = resolved(2_000);
        let text = kube_proxy_rules(&services, CLUSTER_CIDR.parse().unwrap());
        let declared: Vec<&str> = text.lines().filter(|l| l.starts_with(':')).collect();
        let distinct: BTreeSet<&str> = declared.iter().copied().collect();
        assert_eq!((declared.len(), distinct.len()), (4 + 4_000, 4 + 4_000));
        assert_eq!(rule_count(&text), 8 + 5 * 2_000);
    }

    #[test]
    fn a_translation_s_runs_are_back_to_back_and_bpf_follows_the_smallest_rule_table() {
        let counts = SERVICE_COUNTS;
        let order = round_order(&counts);
        assert_eq!(order.len(), 6);
        for half in order.chunks(3) {
            assert!(half.iter().all(|setup| setup.translation == half[0].translation), "{order:?}");
            let mut services: Vec<usize> = half.iter().map(|setup| setup.services).collect();
            services.sort_unstable();
            assert_eq!(services, counts);
        }
        // Rounds follow one another: the BPF runs come after the 10-service rules go.
        assert_eq!(order[5], Setup { translation: Translation::Iptables, services: 10 });
        assert_eq!(order[0], Setup { translation: Translation::Bpf, services: 10 });
        assert_eq!(order[3], Setup { translation: Translation::Iptables, services: 50_000 });
        assert_eq!(settle(0), SETTLE);
        assert_eq!(settle(250_008), SETTLE + Duration::from_micros(40 * 250_008));
        assert_eq!(
            Setup { translation: Translation::Iptables, services: 50_000 }.to_string(),
            "iptables, 50,000 services"
        );
    }
}
