//! `lab bench datapath`: what the datapath costs TCP traffic between two pods on one node.
//!
//! One lab, two pods (client and server), measured in three setups:
//! 1. bare: no program on the pods' veths, as [`realise::build`] leaves them;
//! 2. the datapath as `lab up` installs it ([`datapath::install`]), the server's ingress enforced
//!    by a CiliumNetworkPolicy that allows the client on TCP to the server's port, its policy map
//!    holding that allow and 9 entries for identities that do not exist;
//! 3. the same with the server's map grown to 65,536 entries (the allow among them).
//!
//! The setups take turns: each of [`ROUNDS`] rounds measures all three, in an order that reverses
//! every round, the programs detached and attached again between them, and the median of each
//! setup's runs is kept. A machine that speeds up or slows down over the benchmark (another
//! tenant, a CPU's clock) then shifts every setup alike instead of the one measured at that time.
//! On the datapath, every run must go through the allow entry (its counter counts policy lookups,
//! and established forward packets are looked up again), or the benchmark fails: a run that
//! missed the programs measures nothing. After the rounds, one more request/response run per
//! datapath setup with the kernel's BPF statistics on gives what each program run costs; it is
//! kept apart because the statistics slow every program down.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use aya::maps::MapInfo;
use aya::programs::loaded_programs;
use aya::sys::{Stats, enable_stats};

use super::traffic::{self, Server};
use super::{Interrupt, RecordedLab, synthetic_topology, time_build};
use crate::datapath::abi::{POLICY_PREFIX_FULL, identity};
use crate::datapath::{self, maps, pins};
use crate::net::netns;
use crate::plan::Plan;
use crate::policy::{self, PolicyEntry, PolicyKey};
use crate::realise;
use crate::topology::Topology;
use crate::topology::resources::Resource;

/// The two map sizes compared: a small policy, and the largest map a lab allows.
pub const SMALL_MAP: usize = 10;
pub const LARGE_MAP: usize = 65_536;
/// Rounds of runs, one run of each setup per round; the median is kept.
pub const ROUNDS: usize = 7;
/// The pods, in plan order.
const CLIENT: usize = 0;
const SERVER: usize = 1;
const TCP: u8 = 6;
/// Ports of the filler entries after the server's own: a server allowing many identities.
const FILLER_PORTS: [u16; 3] = [80, 443, 8080];

/// What a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    RequestResponse,
    Bulk,
}

/// Which datapath the traffic crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// No program attached.
    Bare,
    /// The datapath, with this many entries in the server's policy map.
    Datapath { entries: usize },
}

impl std::fmt::Display for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Setup::Bare => f.write_str("bare"),
            Setup::Datapath { entries } => write!(f, "datapath ({} entries)", thousands(*entries)),
        }
    }
}

/// `65536` as `65,536`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// What the programs cost per run, from the kernel's BPF statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgramCost {
    /// Both programs a packet crosses (the sender's `from_container`, the receiver's
    /// `to_container`), in ns: total run time over half the runs.
    pub per_packet_ns: f64,
    /// The server's `to_container`, the program that looks its policy up, in ns per run.
    pub policy_program_ns: f64,
}

/// One setup's measurements.
#[derive(Debug, Clone)]
pub struct Row {
    pub setup: Setup,
    /// Request/response transactions per second, one per run.
    pub rr: Vec<f64>,
    /// Bulk throughput in Gbit/s, one per run; empty where not measured.
    pub bulk: Vec<f64>,
    /// How many policy lookups the allow entry counted over the timed runs; 0 on bare.
    pub policy_lookups: u64,
    /// How many cores other processes kept busy, on average, during the timed runs: whatever
    /// competes with the benchmark for the CPUs skews its rates.
    pub other_load: f64,
    pub cost: Option<ProgramCost>,
}

impl Row {
    fn new(setup: Setup) -> Row {
        Row { setup, rr: Vec::new(), bulk: Vec::new(), policy_lookups: 0, other_load: 0.0, cost: None }
    }

    pub fn rr(&self) -> f64 {
        median(&self.rr)
    }

    pub fn bulk(&self) -> Option<f64> {
        (!self.bulk.is_empty()).then(|| median(&self.bulk))
    }

    /// How far apart the request/response runs were: (max - min) / median.
    pub fn rr_spread(&self) -> f64 {
        spread(&self.rr)
    }

    pub fn bulk_spread(&self) -> Option<f64> {
        (!self.bulk.is_empty()).then(|| spread(&self.bulk))
    }

    /// Microseconds per request/response transaction, at the median rate.
    pub fn us_per_transaction(&self) -> f64 {
        1e6 / self.rr()
    }
}

/// What `lab bench datapath` measured.
#[derive(Debug, Clone)]
pub struct DatapathResult {
    pub seconds: Duration,
    pub bare: Row,
    pub small: Row,
    pub large: Row,
}

impl DatapathResult {
    pub fn rows(&self) -> [&Row; 3] {
        [&self.bare, &self.small, &self.large]
    }

    /// `row`'s request rate over bare's: the median of the ratios within each round, whose runs
    /// were taken one right after the other, so what slows the machine over minutes cancels out.
    pub fn rr_vs_bare(&self, row: &Row) -> f64 {
        paired_ratio(&row.rr, &self.bare.rr)
    }

    /// `row`'s throughput over bare's, where measured, paired by round as [`Self::rr_vs_bare`].
    pub fn bulk_vs_bare(&self, row: &Row) -> Option<f64> {
        (!row.bulk.is_empty() && !self.bare.bulk.is_empty()).then(|| paired_ratio(&row.bulk, &self.bare.bulk))
    }

    /// The request rate at the large map over the small one's, paired by round.
    pub fn large_vs_small(&self) -> f64 {
        paired_ratio(&self.large.rr, &self.small.rr)
    }
}

/// The median of `a[i] / b[i]`: samples taken in the same round.
pub fn paired_ratio(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
    median(&ratios)
}

/// The median of some samples (the mean of the middle two for an even count).
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// (max - min) / median of some samples.
pub fn spread(samples: &[f64]) -> f64 {
    let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    (max - min) / median(samples)
}

/// The setups in the order round `round` measures them: forwards, then backwards in the next
/// round, so that no setup is always measured first, or always right after another.
pub fn round_order(round: usize) -> [Setup; 3] {
    let forwards = [Setup::Bare, Setup::Datapath { entries: SMALL_MAP }, Setup::Datapath { entries: LARGE_MAP }];
    let mut order = forwards;
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// Whether a setup's bulk throughput is measured: bare's and the small map's (the map size only
/// matters to the lookup per packet, which request/response measures better).
fn with_bulk(setup: Setup) -> bool {
    setup != Setup::Datapath { entries: LARGE_MAP }
}

/// Measures the three setups over [`ROUNDS`] rounds, `seconds` per run; `on_sample` sees each run
/// as soon as it is measured: its round, setup, and rate (trans/s, or bulk in Gbit/s).
pub fn run(seconds: Duration, mut on_sample: impl FnMut(usize, Setup, Traffic, f64)) -> Result<DatapathResult> {
    ensure!(!seconds.is_zero(), "each measurement needs some time");
    let interrupt = Interrupt::listen()?;
    let name = format!("bench-{}-dp", std::process::id());
    let topology = two_pods(&name);
    super::check_synthetic(&topology)?;
    let plan = Plan::new(&topology, &name);
    // Compiled before anything is created, as `lab up` does.
    let mut compiled =
        policy::compile(&[allow_client()], &datapath::endpoints(&plan), &plan.identities, &crate::live::options(&plan))
            .context("compiling the benchmark's policy")?;
    let server_policy = &compiled.endpoints[SERVER];
    ensure!(server_policy.ingress_enforced, "the policy does not enforce the server's ingress");
    let (&allow, &allow_entry) = server_policy
        .entries
        .iter()
        .find(|(key, _)| **key == allow_key(plan.pods[CLIENT].identity))
        .context("the policy has no allow for the client")?;
    let used: BTreeSet<u32> = plan.identities.keys().copied().collect();
    let maps = [SMALL_MAP, LARGE_MAP].map(|size| policy_entries(allow, allow_entry, size, &used));

    let lab = RecordedLab::create(plan)?;
    time_build(&lab.plan).context("building the lab")?;
    interrupt.check()?;
    compiled.endpoints[SERVER].entries = maps[0].clone();
    datapath::install(&lab.plan, &compiled, &Default::default()).context("installing the datapath")?;
    let mut pair = Pair {
        interrupt: &interrupt,
        plan: &lab.plan,
        client: netns::open(&lab.plan.pods[CLIENT].netns)?,
        server: Server::listen(&netns::open(&lab.plan.pods[SERVER].netns)?, lab.plan.pods[SERVER].ip)?,
        seconds,
        allow,
        maps,
        current: Setup::Datapath { entries: SMALL_MAP },
    };

    let mut rows = round_order(0).map(Row::new);
    let mut loads: [CpuLoad; 3] = Default::default();
    for round in 0..ROUNDS {
        for setup in round_order(round) {
            let at = rows.iter().position(|row| row.setup == setup).expect("every setup has a row");
            pair.switch_to(setup)?;
            let (rate, lookups) = pair.checked(&mut loads[at], || {
                traffic::request_response(&pair.client, &pair.server, pair.seconds, pair.interrupt)
            })?;
            on_sample(round, setup, Traffic::RequestResponse, rate);
            rows[at].rr.push(rate);
            rows[at].policy_lookups += lookups;
            if with_bulk(setup) {
                let (rate, lookups) = pair.checked(&mut loads[at], || {
                    traffic::bulk(&pair.client, &pair.server, pair.seconds, pair.interrupt)
                })?;
                on_sample(round, setup, Traffic::Bulk, rate / 1e9);
                rows[at].bulk.push(rate / 1e9);
                rows[at].policy_lookups += lookups;
            }
        }
    }
    for (row, load) in rows.iter_mut().zip(&loads) {
        row.other_load = load.cores();
        if row.setup != Setup::Bare {
            pair.switch_to(row.setup)?;
            row.cost =
                Some(pair.program_cost().with_context(|| format!("{}: measuring the programs' cost", row.setup))?);
        }
    }

    drop(pair);
    realise::teardown(&lab.dir)?;
    let [bare, small, large] = rows;
    Ok(DatapathResult { seconds, bare, small, large })
}

/// One node, a client and a server pod with identities of their own, and room for the largest
/// policy map.
fn two_pods(name: &str) -> Topology {
    let mut topology = synthetic_topology(name, 2, 1);
    topology.cluster.policy_map_size = LARGE_MAP as u32;
    for (pod, app) in topology.pods.iter_mut().zip(["client", "server"]) {
        pod.name = app.to_string();
        pod.labels.insert("app".to_string(), app.to_string());
    }
    topology
}

/// The server's policy: the client may open TCP connections to the server's port.
fn allow_client() -> Resource {
    let yaml = format!(
        "spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: client}}}}]
      toPorts: [{{ports: [{{port: \"{}\", protocol: TCP}}]}}]
",
        traffic::PORT
    );
    Resource {
        api_version: "cilium.io/v2".to_string(),
        kind: "CiliumNetworkPolicy".to_string(),
        namespace: Some("default".to_string()),
        name: "bench-allow-client".to_string(),
        file: PathBuf::from("lab bench datapath"),
        location: None,
        object: serde_yaml::from_str(&yaml).expect("the policy is valid YAML"),
    }
}

/// The key of an ingress allow for `identity` on TCP to the server's port.
fn allow_key(identity: u32) -> PolicyKey {
    filler_key(identity, traffic::PORT)
}

fn filler_key(identity: u32, port: u16) -> PolicyKey {
    PolicyKey { prefixlen: POLICY_PREFIX_FULL, identity, egress: 0, protocol: TCP, dport: port.to_be() }
}

/// A policy map of exactly `size` entries: the allow, then allows for identities not in `used`,
/// over the whole range of local identities (so some are the client's neighbours in the trie),
/// first on the server's port, then on [`FILLER_PORTS`].
pub fn policy_entries(
    allow: PolicyKey,
    entry: PolicyEntry,
    size: usize,
    used: &BTreeSet<u32>,
) -> BTreeMap<PolicyKey, PolicyEntry> {
    let filler = PolicyEntry { packets: 0, ..entry };
    let unused = || (identity::FIRST_LOCAL..=u32::from(u16::MAX)).filter(|id| !used.contains(id));
    let keys = std::iter::once(traffic::PORT)
        .chain(FILLER_PORTS)
        .flat_map(|port| unused().map(move |id| filler_key(id, port)))
        .filter(|key| *key != allow);
    std::iter::once((allow, entry)).chain(keys.map(|key| (key, filler)).take(size - 1)).collect()
}

/// The lab and its two pods, while the benchmark runs.
struct Pair<'a> {
    interrupt: &'a Interrupt,
    plan: &'a Plan,
    client: File,
    server: Server,
    seconds: Duration,
    allow: PolicyKey,
    /// The server's policy map at [`SMALL_MAP`] and at [`LARGE_MAP`] entries.
    maps: [BTreeMap<PolicyKey, PolicyEntry>; 2],
    /// What the pods' traffic crosses now.
    current: Setup,
}

impl Pair<'_> {
    /// Puts the pods in `setup`: takes the programs off their veths for bare, puts fresh copies
    /// back for the datapath, and sizes the server's policy map. Maps stay pinned throughout, so
    /// the datapath comes back with its policy.
    fn switch_to(&mut self, setup: Setup) -> Result<()> {
        const PODS: [usize; 2] = [CLIENT, SERVER];
        if setup == self.current {
            return Ok(());
        }
        match setup {
            Setup::Bare => datapath::loader::detach_pods(self.plan, &PODS).context("detaching the datapath")?,
            Setup::Datapath { entries } => {
                let map = &self.maps[usize::from(entries == LARGE_MAP)];
                maps::sync_policy(self.plan, SERVER, map).context("sizing the server's policy map")?;
                self.check_map(entries)?;
                if self.current == Setup::Bare {
                    datapath::loader::attach_pods(self.plan, &PODS).context("attaching the datapath again")?;
                }
            }
        }
        self.current = setup;
        Ok(())
    }

    /// One run; on the datapath, it must have made the allow entry count: (rate, lookups counted).
    /// `load` adds what other processes took of the CPUs meanwhile.
    fn checked(&self, load: &mut CpuLoad, run: impl FnOnce() -> Result<f64>) -> Result<(f64, u64)> {
        let through_datapath = self.current != Setup::Bare;
        self.interrupt.check()?;
        let before = if through_datapath { self.allow_lookups()? } else { 0 };
        let (started, ticks) = (Instant::now(), cpu_ticks()?);
        let rate = run()?;
        load.add(started.elapsed(), ticks, cpu_ticks()?);
        self.interrupt.check()?;
        if !through_datapath {
            return Ok((rate, 0));
        }
        let lookups = self.allow_lookups()? - before;
        ensure!(
            lookups > 0,
            "the allow entry counted no policy lookup during the run: the traffic did not cross the datapath"
        );
        Ok((rate, lookups))
    }

    /// The allow entry's counter.
    fn allow_lookups(&self) -> Result<u64> {
        let entries = maps::read_policy(self.plan, SERVER)?;
        Ok(entries.get(&self.allow).context("the allow entry is not in the server's policy map")?.packets)
    }

    /// Checks that the server's policy map holds exactly `size` entries, the allow among them.
    fn check_map(&self, size: usize) -> Result<()> {
        let entries = maps::read_policy(self.plan, SERVER)?;
        ensure!(entries.len() == size, "the server's policy map holds {} entries, not {size}", entries.len());
        ensure!(entries.contains_key(&self.allow), "the server's policy map lost the allow entry");
        Ok(())
    }

    /// One request/response run with the kernel's BPF statistics on: what the pods' programs cost.
    fn program_cost(&self) -> Result<ProgramCost> {
        let client_map = self.policy_map_id(CLIENT)?;
        let server_map = self.policy_map_id(SERVER)?;
        let stats = enable_stats(Stats::RunTime).context("turning on the kernel's BPF statistics")?;
        let before = pod_programs(&[client_map, server_map])?;
        traffic::request_response(&self.client, &self.server, self.seconds, self.interrupt)?;
        let after = pod_programs(&[client_map, server_map])?;
        drop(stats);
        let mut total = (Duration::ZERO, 0u64);
        let mut policy = (Duration::ZERO, 0u64);
        for (key, (time, runs)) in &after {
            let (time_before, runs_before) = before.get(key).copied().unwrap_or_default();
            let (time, runs) = (time.saturating_sub(time_before), runs - runs_before);
            total = (total.0 + time, total.1 + runs);
            if *key == (server_map, "to_container".to_string()) {
                policy = (time, runs);
            }
        }
        ensure!(
            after.len() == 4 && policy.1 > 0,
            "found {} of the pods' 4 programs, and the server's ingress ran {} times",
            after.len(),
            policy.1
        );
        Ok(ProgramCost {
            per_packet_ns: total.0.as_nanos() as f64 / (total.1 as f64 / 2.0),
            policy_program_ns: policy.0.as_nanos() as f64 / policy.1 as f64,
        })
    }

    /// The id of a pod's policy map: each pod's programs, and no other, use it.
    fn policy_map_id(&self, pod: usize) -> Result<u32> {
        let p = &self.plan.pods[pod];
        let path = pins::policy(&self.plan.lab, &self.plan.nodes[p.node].name, p.endpoint_id);
        Ok(MapInfo::from_pin(&path).with_context(|| format!("opening {}", path.display()))?.id())
    }
}

/// CPU time in clock ticks: (the whole machine's in user and system mode, this process's). Time
/// spent on interrupts and softirqs, where most of the packets' work is done, is in neither.
pub(super) fn cpu_ticks() -> Result<(u64, u64)> {
    let machine = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    // `cpu  user nice system idle ...`
    let busy: Vec<u64> = machine
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .map(|fields| fields.split_whitespace().take(3).filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // After `pid (comm) `: state is field 3, utime 14 and stime 15 (proc(5)); comm may hold spaces.
    let own: Vec<u64> = own
        .rsplit_once(") ")
        .map(|(_, fields)| fields.split_whitespace().skip(11).take(2).filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    ensure!(busy.len() == 3 && own.len() == 2, "cannot read the CPU times in /proc/stat and /proc/self/stat");
    Ok((busy.iter().sum(), own.iter().sum()))
}

/// CPU time other processes took over some runs, and how long the runs lasted.
#[derive(Debug, Default)]
pub(super) struct CpuLoad {
    ticks: u64,
    elapsed: Duration,
}

impl CpuLoad {
    pub(super) fn add(&mut self, elapsed: Duration, (busy_before, own_before): (u64, u64), (busy, own): (u64, u64)) {
        self.ticks += (busy - busy_before).saturating_sub(own - own_before);
        self.elapsed += elapsed;
    }

    /// On average, how many cores the other processes kept busy.
    pub(super) fn cores(&self) -> f64 {
        let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100);
        self.ticks as f64 / ticks_per_second as f64 / self.elapsed.as_secs_f64()
    }
}

/// Run time and count of every loaded program that uses one of `map_ids`, by (map, program name).
fn pod_programs(map_ids: &[u32]) -> Result<BTreeMap<(u32, String), (Duration, u64)>> {
    let mut programs = BTreeMap::new();
    for program in loaded_programs() {
        // Programs unloaded while we list them are no concern of ours.
        let Ok(program) = program else { continue };
        let Ok(Some(maps)) = program.map_ids() else { continue };
        if let Some(map) = map_ids.iter().find(|id| maps.contains(id)) {
            let name = program.name_as_str().unwrap_or_default().to_string();
            programs.insert((*map, name), (program.run_time(), program.run_count()));
        }
    }
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_medians_are_the_middle_samples() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(spread(&[90.0, 100.0, 110.0]), 0.2);
    }

    #[test]
    fn the_load_of_other_processes_is_the_machine_s_less_ours() {
        let mut load = CpuLoad::default();
        load.add(Duration::from_secs(2), (1000, 100), (1250, 250));
        load.add(Duration::from_secs(2), (2000, 300), (2040, 350));
        // 250 - 150 in the first; in the second ours outgrew the machine's (ticks are coarse): 0.
        assert_eq!(load.ticks, 100);
        assert_eq!(load.cores(), 100.0 / 100.0 / 4.0);
        let (busy, own) = cpu_ticks().unwrap();
        assert!(busy >= own);
    }

    #[test]
    fn ratios_pair_the_runs_of_one_round() {
        // The machine slowed down by half from the third round on: each round's ratio is 0.9.
        let bare = [100.0, 100.0, 50.0, 50.0, 50.0];
        let datapath = [90.0, 90.0, 45.0, 45.0, 45.0];
        assert!((paired_ratio(&datapath, &bare) - 0.9).abs() < 1e-9);
        // One disturbed run shifts one ratio, not the median.
        let datapath = [90.0, 10.0, 45.0, 45.0, 45.0];
        assert!((paired_ratio(&datapath, &bare) - 0.9).abs() < 1e-9);
    }

    #[test]
    fn every_setup_is_measured_first_and_last_in_some_round() {
        let firsts: BTreeSet<String> = (0..ROUNDS).map(|r| round_order(r)[0].to_string()).collect();
        let lasts: BTreeSet<String> = (0..ROUNDS).map(|r| round_order(r)[2].to_string()).collect();
        assert_eq!(firsts, lasts);
        assert_eq!(firsts.len(), 2, "{firsts:?}");
        for round in 0..ROUNDS {
            let mut setups: Vec<String> = round_order(round).iter().map(ToString::to_string).collect();
            setups.sort();
            setups.dedup();
            assert_eq!(setups.len(), 3);
        }
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(10), "10");
        assert_eq!(thousands(65_536), "65,536");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(Setup::Datapath { entries: LARGE_MAP }.to_string(), "datapath (65,536 entries)");
    }

    #[test]
    fn the_two_pods_have_identities_of_their_own_and_the_policy_allows_the_client() {
        let topology = two_pods("bench-1-dp");
        assert!(crate::topology::validate::check(&topology).is_empty());
        let plan = Plan::new(&topology, "bench-1-dp");
        let (client, server) = (&plan.pods[CLIENT], &plan.pods[SERVER]);
        assert_eq!((client.name.as_str(), server.name.as_str()), ("client", "server"));
        assert_ne!(client.identity, server.identity);
        assert_eq!(plan.policy_map_size, 65_536);

        let options = crate::live::options(&plan);
        let compiled =
            policy::compile(&[allow_client()], &datapath::endpoints(&plan), &plan.identities, &options).unwrap();
        let (to_server, to_client) = (&compiled.endpoints[SERVER], &compiled.endpoints[CLIENT]);
        assert!(to_server.ingress_enforced && !to_server.egress_enforced);
        assert_eq!(to_client.flags(), 0);
        assert_eq!(to_server.entries.keys().collect::<Vec<_>>(), [&allow_key(client.identity)]);
        let decision = policy::lookup(to_server, client.identity, false, TCP, traffic::PORT);
        assert_eq!(decision.verdict, policy::Verdict::Allowed);
        let other_port = policy::lookup(to_server, client.identity, false, TCP, traffic::PORT + 1);
        assert_ne!(other_port.verdict, policy::Verdict::Allowed);
    }

    #[test]
    fn policy_maps_have_the_allow_and_fillers_for_identities_not_in_use() {
        let used = BTreeSet::from([identity::HOST, 300, 40_000]);
        let allow = allow_key(300);
        let entry = PolicyEntry { deny: 0, prefix_length: 24, pad: 0, rule: 1, packets: 7 };
        for size in [SMALL_MAP, LARGE_MAP] {
            let entries = policy_entries(allow, entry, size, &used);
            assert_eq!(entries.len(), size);
            assert_eq!(entries[&allow], entry);
            let fillers = entries.iter().filter(|(key, _)| **key != allow);
            for (key, filler) in fillers {
                assert!(!used.contains(&key.identity) && key.identity >= identity::FIRST_LOCAL, "{key:?}");
                assert_eq!((key.prefixlen, key.egress, key.protocol), (64, 0, TCP));
                assert_eq!((filler.packets, filler.deny, filler.prefix_length), (0, 0, 24));
            }
        }
        // The small map: identities that do not exist, on the server's port.
        let small = policy_entries(allow, entry, SMALL_MAP, &used);
        assert!(small.keys().all(|key| u16::from_be(key.dport) == traffic::PORT));
        // The large one spans the whole local range, the client's neighbours included.
        let large = policy_entries(allow, entry, LARGE_MAP, &used);
        assert!(large.contains_key(&allow_key(301)) && large.contains_key(&allow_key(65_535)));
        assert!(large.contains_key(&filler_key(identity::FIRST_LOCAL, 80)));
    }
}
