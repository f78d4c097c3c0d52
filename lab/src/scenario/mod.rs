//! Runs a scenario's steps on a running lab (see [`crate::topology::scenario`] for the format):
//! each step's changes through [`crate::live`], its faults, then its traffic, one probe at a
//! time from fixed client ports so flows and captures are the same on every run. A probe whose
//! packets the datapath drops ends as soon as the drop's flow is recorded (`blocked`), rather
//! than at its timeout. What a step saw comes back as text files for golden comparison
//! (verdicts, flows, packet renderings) and pcaps for people.

pub mod capture;
pub mod flows;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::datapath::pins;
use crate::flow::Flow;
use crate::live::{self, Change};
use crate::load::{Load, is_load_port};
use crate::net::{netns, sysctl};
use crate::plan::{Plan, UPLINK_NAME};
use crate::probe::{self, Attempt, Kind, Outcome, What};
use crate::state::LabDir;
use crate::topology::resources::{self, Accept};
use crate::topology::scenario::{self, Expected, LoadOutcome, Probe, Restart, Step, parse_delete};
use crate::topology::source::SourceMap;
use capture::Capture;
use flows::FlowTail;

/// Client ports of a step's probes: a block of 100 per step, placed by the step's name so that
/// adding a step does not renumber the others' (below the kernel's ephemeral range).
pub const FIRST_PROBE_PORT: u16 = 20000;
const PORT_BLOCKS: u16 = (capture::EPHEMERAL_PORTS - FIRST_PROBE_PORT) / 100;
/// How long a probe waits for an answer by default: under TCP's first retransmission (1 s), so
/// captures never hold a retransmitted SYN.
pub const PROBE_WAIT: Duration = Duration::from_millis(800);
/// The longest the default wait of a probe expected to fail is stretched to: still under the
/// first retransmission.
const PROBE_WAIT_LIMIT: Duration = Duration::from_millis(950);
/// A matrix probe's wait, as the conformance suite has always used.
const MATRIX_WAIT: Duration = Duration::from_millis(500);
/// A matrix probe's second chance, after no answer and no drop.
const MATRIX_RETRY_WAIT: Duration = Duration::from_secs(2);
/// How often the flow log is read while a probe waits.
const FLOW_POLL: Duration = Duration::from_millis(3);

/// One compared matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixResult {
    pub probe: String,
    pub expected: String,
    pub probed: String,
}

/// What one step saw.
#[derive(Debug, Clone, Default)]
pub struct StepReport {
    pub index: usize,
    pub title: String,
    /// Its folder among the golden files.
    pub slug: String,
    /// Expected outcomes that did not happen, and errors, each naming the probe or part.
    pub failures: Vec<String>,
    /// Text files for golden comparison, by file name.
    pub outputs: BTreeMap<String, String>,
    /// Captures as pcap files, by file name.
    pub pcaps: BTreeMap<String, Vec<u8>>,
    pub probes: usize,
    pub matrices: Vec<MatrixResult>,
    pub elapsed: Duration,
}

/// A TCP connection a probe kept open for later steps.
struct Kept {
    stream: tokio::net::TcpStream,
    port: u16,
}

/// Runs the steps of one scenario on one running lab, in order.
pub struct Runner {
    lab: String,
    /// The file the steps are written in: relative paths in `apply` start from its folder.
    file: PathBuf,
    /// Where the steps stand in their file (`scenario.` in a topology).
    prefix: String,
    capture: Vec<String>,
    blocks: Vec<u16>,
    kept: HashMap<String, Kept>,
    /// Loads started by a step and not stopped yet.
    loads: HashMap<String, Load>,
    runtime: tokio::runtime::Runtime,
}

/// How long [`Restart::Reattach`] leaves the pods without programs: long enough for a steady
/// load to notice, as a real teardown-first upgrade would be.
const REATTACH_GAP: Duration = Duration::from_secs(1);

/// The first port of each step's block.
fn port_blocks(steps: &[Step]) -> Vec<u16> {
    let mut taken = HashSet::new();
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let start = (crate::plan::stable_hash(&scenario::slug(&step.title(i))) % u64::from(PORT_BLOCKS)) as u16;
            let block = (0..PORT_BLOCKS).map(|k| (start + k) % PORT_BLOCKS).find(|b| !taken.contains(b)).unwrap_or(0);
            taken.insert(block);
            FIRST_PROBE_PORT + block * 100
        })
        .collect()
}

impl Runner {
    pub fn new(lab: &str, file: &Path, prefix: &str, capture: &[String], steps: &[Step]) -> Result<Runner> {
        Ok(Runner {
            lab: lab.to_string(),
            file: file.to_path_buf(),
            prefix: prefix.to_string(),
            capture: capture.to_vec(),
            blocks: port_blocks(steps),
            kept: HashMap::new(),
            loads: HashMap::new(),
            runtime: tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?,
        })
    }

    fn plan(&self) -> Result<Plan> {
        LabDir::of(&self.lab).read_plan()
    }

    fn has_datapath(&self) -> bool {
        pins::events(&self.lab).exists()
    }

    /// Runs step `index`; its failures are in the report, errors that stop the step included.
    pub fn step(&mut self, index: usize, step: &Step) -> StepReport {
        let started = Instant::now();
        let title = step.title(index);
        let mut report = StepReport { index, slug: scenario::slug(&title), title, ..StepReport::default() };
        if let Err(e) = self.run_step(index, step, &mut report) {
            report.failures.push(format!("{e:#}"));
        }
        report.elapsed = started.elapsed();
        report
    }

    fn run_step(&mut self, index: usize, step: &Step, report: &mut StepReport) -> Result<()> {
        let plan = self.plan()?;
        let captures = self
            .capture
            .iter()
            .map(|target| {
                let (netns_name, interface) = interface_of(&plan, target)?;
                let name =
                    format!("{}.{interface}", target.trim_end_matches(&format!("/{interface}")).replace('/', "."));
                Ok((name, Capture::open(&netns::open(&netns_name)?, &interface)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let traffic = !step.probes.is_empty() || !step.exec.is_empty() || !step.stop_load.is_empty();
        if traffic && self.has_datapath() {
            crate::agent::request(&self.lab, crate::agent::Request::SyncFlows)?;
        }
        let mut tail = FlowTail::at_end(LabDir::of(&self.lab).flows_path());

        let mut verdicts = String::new();
        for start in &step.start_load {
            let from = netns::open(&crate::cmd::exec::resolve(&self.lab, &start.from)?)?;
            let Kind::Tcp(port) = crate::cmd::probe::parse_kind(&start.port).map_err(|e| anyhow!(e))? else {
                bail!("load `{}`: a load runs over TCP", start.name);
            };
            let to = SocketAddrV4::new(destination(&self.lab, &plan, &start.to)?, port);
            let load = Load::start(&from, to, start.rate).with_context(|| format!("starting load `{}`", start.name))?;
            self.loads.insert(start.name.clone(), load);
            verdicts.push_str(&format!("load {}: started, {} -> {to}\n", start.name, start.from));
        }
        match (self.change(index, step), step.refused) {
            (Ok(()), false) => {}
            (Ok(()), true) => {
                report.failures.push("the step's changes were expected to be refused, and were applied".into())
            }
            (Err(e), true) => verdicts.push_str(&format!("refused: {e:#}\n")),
            (Err(e), false) => return Err(e.context("changing the lab")),
        }
        self.faults(step)?;

        let plan = self.plan()?;
        let mut step_flows = Vec::new();
        let mut load_drops = 0;
        let first_port = self.blocks.get(index).copied().unwrap_or(FIRST_PROBE_PORT);
        let probe_ports = first_port..first_port + step.probes.len() as u16;
        for (port, probe) in probe_ports.clone().zip(&step.probes) {
            let label = probe_label(probe);
            let outcome = self.probe(&plan, probe, port, &mut tail, &mut step_flows)?;
            report.probes += 1;
            verdicts.push_str(&format!("probe {label}: {outcome}\n"));
            if outcome != probe.expect.to_string() {
                report.failures.push(format!("probe `{label}`: expected {}, got {outcome}", probe.expect));
            }
        }
        for exec in &step.exec {
            let label = format!("{}: {}", exec.target, exec.command.join(" "));
            let wait =
                exec.timeout.as_deref().map(crate::cmd::probe::parse_duration).transpose().map_err(|e| anyhow!(e))?;
            let status = run_command(&self.lab, &exec.target, &exec.command, wait.unwrap_or(Duration::from_secs(10)))?;
            verdicts.push_str(&format!("exec {label}: {status}\n"));
            if status != format!("exit {}", exec.status) {
                report.failures.push(format!("exec `{label}`: expected exit {}, got {status}", exec.status));
            }
        }
        if traffic && self.has_datapath() {
            crate::agent::request(&self.lab, crate::agent::Request::SyncFlows)?;
            step_flows.extend(tail.read());
            // A load's traffic depends on timing (how many connections, which backends): only
            // its drops are counted, for its verdict.
            let (load, others): (Vec<Flow>, Vec<Flow>) = std::mem::take(&mut step_flows).into_iter().partition(|f| {
                f.l4.as_ref().and_then(|l4| l4.ports()).is_some_and(|(s, d)| is_load_port(s) || is_load_port(d))
            });
            load_drops = load.iter().filter(|f| f.verdict == crate::flow::Verdict::Dropped).count();
            step_flows = others;
            let text = flows::normalise(&step_flows);
            if !text.is_empty() {
                report.outputs.insert("flows.jsonl".into(), text);
            }
        }
        for stop in &step.stop_load {
            let load = self.loads.remove(&stop.name).with_context(|| format!("no load `{}` is running", stop.name))?;
            let seen = load.stop();
            let outcome = if seen.failures() == 0 { LoadOutcome::Lossless } else { LoadOutcome::Lossy };
            // Only the outcome goes into the golden: how many connections fit in a step is the
            // machine's business.
            match (outcome, load_drops) {
                (LoadOutcome::Lossless, 0) => {
                    verdicts.push_str(&format!("load {}: lossless, nothing dropped\n", stop.name))
                }
                (LoadOutcome::Lossless, _) => {
                    verdicts.push_str(&format!("load {}: lossless, but the datapath dropped some\n", stop.name));
                    report
                        .failures
                        .push(format!("load `{}`: the datapath dropped {load_drops} of its packets", stop.name));
                }
                (LoadOutcome::Lossy, _) => verdicts.push_str(&format!("load {}: lossy\n", stop.name)),
            }
            if outcome != stop.expect {
                report.failures.push(format!(
                    "load `{}`: expected {}, got {outcome}: {} of {} new connections and {} of {} exchanges failed",
                    stop.name,
                    stop.expect,
                    seen.failed_connections,
                    seen.new_connections,
                    seen.failed_exchanges,
                    seen.exchanges
                ));
            }
        }
        for expectation in &step.expect {
            let kind = crate::cmd::probe::parse_kind(&expectation.probe).map_err(|e| anyhow!(e))?;
            let probed = self.matrix(&plan, kind)?;
            let expected = expectation.expected(plan.policy_semantics).trim_end().to_string();
            let probed = probed.trim_end().to_string();
            report.probes += plan.pods.len() * plan.pods.len();
            verdicts.push_str(&format!("matrix {}:\n{probed}\n", expectation.probe));
            let wrong = differing(&expected, &probed);
            if !wrong.is_empty() {
                let cells: Vec<String> = wrong.iter().map(|(from, to)| format!("{from} -> {to}")).collect();
                report.failures.push(format!(
                    "matrix {}: {} wrong cells ({})\nexpected:\n{expected}\nprobed:\n{probed}",
                    expectation.probe,
                    wrong.len(),
                    cells.join(", ")
                ));
            }
            report.matrices.push(MatrixResult { probe: expectation.probe.clone(), expected, probed });
        }
        if !verdicts.is_empty() {
            report.outputs.insert("verdicts.txt".into(), verdicts);
        }
        for (name, capture) in &captures {
            // A load's packets depend on timing, as its flows do: the captures leave them out.
            let frames: Vec<capture::Frame> = capture
                .drain()
                .into_iter()
                .filter(|frame| {
                    !capture::tcp_ports(frame)
                        .is_some_and(|(s, d)| is_load_port(u32::from(s)) || is_load_port(u32::from(d)))
                })
                .collect();
            report.pcaps.insert(format!("{name}.pcap"), capture::pcap(&frames));
            let text = capture::render(&frames, probe_ports.clone());
            if !text.is_empty() {
                report.outputs.insert(format!("{name}.txt"), text);
            }
        }
        Ok(())
    }

    /// The step's changes to policies, labels, pods and backends, in one [`live::apply`].
    fn change(&self, index: usize, step: &Step) -> Result<()> {
        let field = format!("{}steps[{index}].apply", self.prefix);
        let accept = Accept { namespaces: None, label_objects: false, field: &field };
        let base = self.file.parent().unwrap_or(Path::new("."));
        let map = SourceMap::parse(&std::fs::read_to_string(&self.file).unwrap_or_default());
        let mut change = Change {
            apply: resources::load(&self.file, &map, accept, base, &step.apply)
                .map_err(|diagnostics| crate::topology::TopologyError { diagnostics })?,
            delete: step.delete.iter().map(|d| parse_delete(d)).collect::<Result<_, _>>().map_err(|e| anyhow!(e))?,
            pod_labels: step.pod_labels.clone(),
            namespace_labels: step.namespace_labels.clone(),
            remove_pods: step.remove_pods.clone(),
            add_pods: step.add_pods.clone(),
        };
        if !step.delete_backends.is_empty() {
            let (_, running) = LabDir::of(&self.lab).read_sources()?;
            for backend in &step.delete_backends {
                change.apply.extend(without_backend(&running, &change.apply, backend)?);
            }
        }
        let empty = change.apply.is_empty()
            && change.delete.is_empty()
            && change.pod_labels.is_empty()
            && change.namespace_labels.is_empty()
            && change.remove_pods.is_empty()
            && change.add_pods.is_empty();
        if !empty {
            live::apply(&self.lab, &change)?;
        }
        Ok(())
    }

    fn faults(&self, step: &Step) -> Result<()> {
        match step.restart {
            Some(Restart::Agent) => crate::agent::request(&self.lab, crate::agent::Request::Restart)?,
            Some(Restart::Datapath) => {
                crate::datapath::loader::replace(&self.plan()?).context("restarting the datapath")?
            }
            Some(Restart::Reattach) => {
                let plan = self.plan()?;
                let managed: Vec<usize> = (0..plan.pods.len()).filter(|&i| plan.pods[i].managed).collect();
                crate::datapath::loader::detach_pods(&plan, &managed).context("detaching the datapath")?;
                std::thread::sleep(REATTACH_GAP);
                crate::datapath::loader::attach_pods(&plan, &managed).context("attaching the datapath again")?;
            }
            None => {}
        }
        let plan = self.plan()?;
        for (target, sysctls) in &step.sysctls {
            let netns_name = crate::cmd::exec::resolve(&self.lab, target)?;
            netns::run_in(&netns::open(&netns_name)?, || -> std::io::Result<()> {
                sysctls.iter().try_for_each(|(key, value)| sysctl::write(key, &value.0))
            })?
            .with_context(|| format!("setting sysctls of {target}"))?;
        }
        for (targets, up) in [(&step.link_down, false), (&step.link_up, true)] {
            for target in targets {
                if interface_of(&plan, target).is_ok_and(|(_, interface)| interface == UPLINK_NAME)
                    && !target.ends_with(&format!("/{UPLINK_NAME}"))
                {
                    self.runtime.block_on(crate::realise::set_wire(&plan, target, up))?;
                    continue;
                }
                // A named interface: its own state, as `ip link set` would (the kernel flushes
                // the routes through an interface taken down).
                let (netns_name, interface) = interface_of(&plan, target)?;
                let file = netns::open(&netns_name)?;
                self.runtime.block_on(async {
                    let link = crate::net::netlink::Netlink::connect_in(&file)?;
                    let index = link.index_of(&interface).await?;
                    if up { link.set_up(index).await } else { link.set_down(index).await }
                })?;
            }
        }
        Ok(())
    }

    /// One probe, with drops seen in the flow log ending it early; its outcome as reported.
    fn probe(
        &mut self,
        plan: &Plan,
        probe: &Probe,
        port: u16,
        tail: &mut FlowTail,
        seen: &mut Vec<Flow>,
    ) -> Result<String> {
        let wait =
            probe.timeout.as_deref().map(crate::cmd::probe::parse_duration).transpose().map_err(|e| anyhow!(e))?;
        // Stretched under emulation (LAB_TIME_SCALE). A probe expected to connect ends when it
        // does and may take all of it; one expected to fail waits it out, and by default never
        // reaches TCP's first retransmission, which real hardware would not have sent.
        let wait = match wait {
            Some(wait) => probe::scaled(wait),
            None if probe.expect == Expected::Connected => probe::scaled(PROBE_WAIT),
            None => probe::scaled(PROBE_WAIT).min(PROBE_WAIT_LIMIT),
        };
        let watch = self.has_datapath();
        if let Some(name) = &probe.connection {
            let kept = self.kept.remove(name).with_context(|| format!("no connection `{name}` is open"))?;
            let (client_port, close) = (kept.port, probe.close);
            let window = seen.len();
            let (outcome, stream) = probe::on_this_cpu(|| {
                self.runtime.block_on(watch_drops(watch, tail, seen, 6, client_port, wait, async move {
                    let mut stream = kept.stream;
                    // Should the exchange fail or be cut short, the connection ends with one RST,
                    // not a FIN behind unanswered data that the kernel would retransmit into later
                    // steps' captures.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    let exchanged = probe::exchange(&mut stream).await;
                    let _ = socket2::SockRef::from(&stream).set_linger(None);
                    match exchanged {
                        Ok(()) if close => match probe::close(stream).await {
                            Ok(()) => (Outcome::Connected, None),
                            Err(e) => (probe::outcome_of(e), None),
                        },
                        Ok(()) => (Outcome::Connected, Some(stream)),
                        Err(e) => {
                            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                            (probe::outcome_of(e), None)
                        }
                    }
                }))
            });
            if let Some(stream) = stream {
                self.kept.insert(name.clone(), Kept { stream, port: client_port });
            }
            return Ok(verdict(outcome, &seen[window..]));
        }
        let from = probe.from.as_deref().context("a probe needs `from`")?;
        let to = probe.to.as_deref().context("a probe needs `to`")?;
        let source = crate::cmd::probe::resolve(plan, from)?;
        let netns_name = source.netns.with_context(|| format!("`{from}` must be a pod, node or external"))?;
        let destination = destination(&self.lab, plan, to)?;
        let what = what_of(probe)?;
        let protocol = match what.kind() {
            Kind::Tcp(_) => 6,
            Kind::Udp(_) => 17,
            Kind::Icmp => 1,
        };
        let from_file = netns::open(&netns_name)?;
        let keep = probe.keep.is_some();
        let window = seen.len();
        let attempt = Attempt { from: &from_file, to: destination, what, source_port: port, keep };
        let (outcome, stream) = probe::on_this_cpu(|| {
            self.runtime.block_on(watch_drops(watch, tail, seen, protocol, port, wait, attempt.run(|_| {})))
        });
        if let (Some(name), Some(stream)) = (&probe.keep, stream) {
            self.kept.insert(name.clone(), Kept { stream, port });
        }
        Ok(verdict(outcome, &seen[window..]))
    }

    /// Every pod to every pod on `kind`, many at once, as a netpol truth table. A probe the
    /// datapath drops ends at its drop; one that got no answer otherwise is tried once more with
    /// a longer wait (as the netpol suite retries), so a busy machine is not read as a policy.
    pub fn matrix(&self, plan: &Plan, kind: Kind) -> Result<String> {
        let files: Vec<File> = plan.pods.iter().map(|p| netns::open(&p.netns)).collect::<Result<_, _>>()?;
        let n = plan.pods.len();
        let pairs: Vec<(usize, usize)> = (0..n).flat_map(|a| (0..n).map(move |b| (a, b))).collect();
        let first = self.probe_pairs(plan, &files, kind, &pairs, probe::scaled(MATRIX_WAIT))?;
        let again: Vec<(usize, usize)> =
            first.iter().filter(|(_, _, reached, dropped)| !reached && !dropped).map(|(a, b, ..)| (*a, *b)).collect();
        let second = self.probe_pairs(plan, &files, kind, &again, probe::scaled(MATRIX_RETRY_WAIT))?;
        let mut table = vec![vec!['?'; n]; n];
        for (a, b, reached, _) in first.into_iter().chain(second) {
            table[a][b] = if reached { '.' } else { 'X' };
        }
        Ok(probe::render_matrix(&plan.pods.iter().map(|p| p.id()).collect::<Vec<_>>(), &table))
    }

    /// Probes each (sender, receiver) pair of pods at once: whether it connected, and whether the
    /// datapath dropped it.
    fn probe_pairs(
        &self,
        plan: &Plan,
        files: &[File],
        kind: Kind,
        pairs: &[(usize, usize)],
        wait: Duration,
    ) -> Result<Vec<(usize, usize, bool, bool)>> {
        use futures::StreamExt;
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        // Drops of earlier probes, recorded late, must not be read as these: a pod's ephemeral
        // port comes round again.
        if self.has_datapath() {
            crate::agent::request(&self.lab, crate::agent::Request::SyncFlows)?;
        }
        let mut tail = FlowTail::at_end(LabDir::of(&self.lab).flows_path());
        let dropped: Arc<Mutex<HashSet<(Ipv4Addr, u16, Ipv4Addr)>>> = Arc::default();
        let watching = Arc::new(std::sync::atomic::AtomicBool::new(self.has_datapath()));
        let icmp = kind == Kind::Icmp;
        Ok(self.runtime.block_on(async {
            let poller = {
                let (dropped, watching) = (dropped.clone(), watching.clone());
                tokio::spawn(async move {
                    while watching.load(std::sync::atomic::Ordering::Relaxed) {
                        // Pods' ephemeral ports repeat from pod to pod: a client is its address
                        // and port, towards its server.
                        let clients: Vec<(Ipv4Addr, u16, Ipv4Addr)> = tail
                            .read()
                            .iter()
                            .filter(|f| f.verdict == crate::flow::Verdict::Dropped)
                            .filter_map(|f| Some((f.ip.as_ref()?, f.ports()?)))
                            .filter_map(|(ip, (source, destination))| {
                                let (from, to): (Ipv4Addr, Ipv4Addr) = (ip.source.parse().ok()?, ip.destination.parse().ok()?);
                                Some([(from, source as u16, to), (to, destination as u16, from)])
                            })
                            .flatten()
                            .collect();
                        dropped.lock().expect("not poisoned").extend(clients);
                        tokio::time::sleep(FLOW_POLL).await;
                    }
                })
            };
            let outcomes = futures::stream::iter(pairs.iter().copied())
                .map(|(a, b)| {
                    let (file, client, server, dropped) = (&files[a], plan.pods[a].ip, plan.pods[b].ip, dropped.clone());
                    async move {
                        let port = Arc::new(Mutex::new(None));
                        let bound = {
                            let port = port.clone();
                            move |p: u16| *port.lock().expect("not poisoned") = Some(p)
                        };
                        let attempt =
                            Attempt { from: file, to: server, what: What::Echo(kind), source_port: 0, keep: false };
                        let run = probe::timed(wait, attempt.run(bound));
                        tokio::pin!(run);
                        loop {
                            tokio::select! {
                                (outcome, _) = &mut run => break (a, b, outcome == Outcome::Connected, false),
                                _ = tokio::time::sleep(FLOW_POLL) => {
                                    let port = *port.lock().expect("not poisoned");
                                    let seen = |p: u16| dropped.lock().expect("not poisoned").contains(&(client, p, server));
                                    if !icmp && port.is_some_and(seen) {
                                        break (a, b, false, true);
                                    }
                                }
                            }
                        }
                    }
                })
                .buffer_unordered(96)
                .collect::<Vec<_>>()
                .await;
            watching.store(false, std::sync::atomic::Ordering::Relaxed);
            let _ = poller.await;
            outcomes
        }))
    }
}

/// Runs `attempt` for at most `wait`, reading the flow log meanwhile (every flow read is kept in
/// `seen`); a drop of the client port's packets ends it at once.
async fn watch_drops<T>(
    watch: bool,
    tail: &mut FlowTail,
    seen: &mut Vec<Flow>,
    protocol: u8,
    port: u16,
    wait: Duration,
    attempt: impl Future<Output = (Outcome, Option<T>)>,
) -> (Outcome, Option<T>) {
    let run = probe::timed(wait, attempt);
    tokio::pin!(run);
    loop {
        tokio::select! {
            result = &mut run => return result,
            _ = tokio::time::sleep(FLOW_POLL), if watch => {
                let flows = tail.read();
                let dropped = flows.iter().any(|f| flows::drops_port(f, protocol, port));
                seen.extend(flows);
                if dropped {
                    return (Outcome::Timeout, None);
                }
            }
        }
    }
}

/// What a probe's outcome is reported as: no answer is `blocked` when the datapath dropped
/// something meanwhile, `timeout` otherwise.
fn verdict(outcome: Outcome, during: &[Flow]) -> String {
    let dropped = during.iter().any(|f| f.verdict == crate::flow::Verdict::Dropped);
    match outcome {
        Outcome::Timeout if dropped => Expected::Blocked.to_string(),
        Outcome::Timeout => Expected::Timeout.to_string(),
        Outcome::Connected => Expected::Connected.to_string(),
        Outcome::Reset => Expected::Reset.to_string(),
        Outcome::Failed(e) => format!("failed: {e}"),
    }
}

/// `FROM -> TO PORT`, or the probe's name.
pub fn probe_label(probe: &Probe) -> String {
    if let Some(name) = &probe.name {
        return name.clone();
    }
    if let Some(connection) = &probe.connection {
        return format!("connection {connection}{}", if probe.close { " (closed)" } else { "" });
    }
    let what = match (&probe.http, &probe.dns) {
        (Some(path), _) => format!("http {} {path}", probe.port.as_deref().unwrap_or("tcp/80")),
        (_, Some(name)) => format!("dns {} {name}", probe.port.as_deref().unwrap_or("udp/53")),
        _ => probe.port.clone().unwrap_or_default(),
    };
    let keep = probe.keep.as_ref().map_or(String::new(), |k| format!(" (kept as {k})"));
    format!("{} -> {} {what}{keep}", probe.from.as_deref().unwrap_or("?"), probe.to.as_deref().unwrap_or("?"))
}

fn what_of(probe: &Probe) -> Result<What> {
    let kind = probe.port.as_deref().map(crate::cmd::probe::parse_kind).transpose().map_err(|e| anyhow!(e))?;
    Ok(match (&probe.http, &probe.dns, kind) {
        (Some(path), _, kind) => What::Http {
            port: match kind {
                Some(Kind::Tcp(port)) => port,
                _ => 80,
            },
            path: path.clone(),
        },
        (_, Some(name), kind) => What::Dns {
            port: match kind {
                Some(Kind::Udp(port)) => port,
                _ => 53,
            },
            name: name.clone(),
        },
        (None, None, Some(kind)) => What::Echo(kind),
        (None, None, None) => bail!("a probe needs a `port`, `http` or `dns`"),
    })
}

/// A probe's destination address: a pod, node, external, address or `service/NAMESPACE/NAME`.
fn destination(lab: &str, plan: &Plan, to: &str) -> Result<Ipv4Addr> {
    let Some(service) = to.strip_prefix("service/") else {
        return Ok(crate::cmd::probe::resolve(plan, to)?.ip);
    };
    let (namespace, name) = service.split_once('/').unwrap_or(("default", service));
    let (_, resources) = LabDir::of(lab).read_sources()?;
    let services = live::services(plan, &resources)?;
    services
        .services
        .iter()
        .find(|s| s.namespace == namespace && s.name == name)
        .map(|s| s.cluster_ip)
        .with_context(|| format!("no service `{namespace}/{name}` in lab `{lab}`"))
}

/// The namespace and interface `TARGET[/INTERFACE]` names; without one, the target's `eth0`.
fn interface_of(plan: &Plan, target: &str) -> Result<(String, String)> {
    let netns_of = |name: &str| -> Option<String> {
        if let Ok(pod) = plan.find_pod(name) {
            return Some(pod.netns.clone());
        }
        let node = plan.nodes.iter().find(|n| n.name == name).map(|n| n.netns.clone());
        node.or_else(|| plan.externals.iter().find(|e| e.name == name).map(|e| e.netns.clone()))
    };
    if let Some(netns_name) = netns_of(target) {
        return Ok((netns_name, UPLINK_NAME.to_string()));
    }
    let (head, interface) = scenario::split_interface(target);
    match (netns_of(head), interface) {
        (Some(netns_name), Some(interface)) => Ok((netns_name, interface.to_string())),
        _ => bail!("`{target}` names no pod, node or external of lab `{}`", plan.lab),
    }
}

/// The service's EndpointSlices without `backend`'s address, as replacements to apply (on top of
/// those a step already applies).
fn without_backend(
    running: &[resources::Resource],
    applying: &[resources::Resource],
    backend: &scenario::Backend,
) -> Result<Vec<resources::Resource>> {
    let (namespace, service) = backend.service.split_once('/').unwrap_or(("default", &backend.service));
    let address = backend.address.to_string();
    let mut changed = Vec::new();
    for slice in applying.iter().chain(running).filter(|r| r.kind == "EndpointSlice") {
        let owner = slice
            .object
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(|l| l.get("kubernetes.io/service-name"));
        if slice.namespace.as_deref() != Some(namespace)
            || owner.and_then(|o| o.as_str()) != Some(service)
            || changed.iter().any(|c: &resources::Resource| c.name == slice.name)
        {
            continue;
        }
        let mut slice = slice.clone();
        if let Some(endpoints) = slice.object.get_mut("endpoints").and_then(|e| e.as_sequence_mut()) {
            for endpoint in endpoints.iter_mut() {
                if let Some(addresses) = endpoint.get_mut("addresses").and_then(|a| a.as_sequence_mut()) {
                    addresses.retain(|a| a.as_str() != Some(address.as_str()));
                }
            }
            endpoints.retain(|e| e.get("addresses").and_then(|a| a.as_sequence()).is_some_and(|a| !a.is_empty()));
        }
        changed.push(slice);
    }
    if changed.is_empty() {
        bail!("service {namespace}/{service} has no EndpointSlice holding {address}");
    }
    Ok(changed)
}

/// Runs `command` inside `target` and returns `exit N` (or how it ended otherwise).
fn run_command(lab: &str, target: &str, command: &[String], wait: Duration) -> Result<String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let (program, args) = command.split_first().context("an empty command")?;
    let file = netns::open(&crate::cmd::exec::resolve(lab, target)?)?;
    let fd = file.as_raw_fd();
    let mut process = std::process::Command::new(program);
    process.args(args).env("LAB_NAME", lab).env("LAB_TARGET", target).stdin(std::process::Stdio::null());
    process.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    // SAFETY: between fork and exec only setns, a system call, runs; the child alone enters.
    unsafe {
        process.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = process.spawn().with_context(|| format!("running `{program}` in {target}"))?;
    let deadline = Instant::now() + probe::scaled(wait);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                _ => "ended".to_string(),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(format!("killed after {} ms", wait.as_millis()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The (row, column) names of the cells where two truth tables differ, the diagonal (a pod
/// reaching itself, which upstream ignores) aside; a difference in shape is one more entry,
/// `("matrix", "shape")`.
pub fn differing(a: &str, b: &str) -> Vec<(String, String)> {
    let parse = |text: &str| -> Vec<Vec<String>> {
        text.lines().map(|l| l.split('\t').map(str::to_string).collect()).collect()
    };
    let (a, b) = (parse(a), parse(b));
    let mut wrong = Vec::new();
    for (row, (x, y)) in a.iter().zip(&b).enumerate().skip(1) {
        for (column, (p, q)) in x.iter().zip(y).enumerate().skip(1) {
            if p != q && row != column {
                wrong.push((x[0].clone(), a[0][column].clone()));
            }
        }
    }
    if a.len() != b.len() || a.first() != b.first() {
        wrong.push(("matrix".into(), "shape".into()));
    }
    wrong
}

/// Removes a lab when dropped, whether its run passed, failed or panicked.
pub struct RemoveOnDrop(pub LabDir);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.exists()
            && let Err(e) = crate::realise::teardown(&self.0)
        {
            eprintln!("removing lab {}: {e:#}", self.0.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_cells_are_named_and_the_diagonal_ignored() {
        let a = "-\tx/a\tx/b\nx/a\t.\t.\nx/b\t.\t.";
        let b = "-\tx/a\tx/b\nx/a\tX\tX\nx/b\t.\t.";
        assert_eq!(differing(a, b), vec![("x/a".to_string(), "x/b".to_string())]);
        assert!(differing(a, a).is_empty());
        assert_eq!(differing(a, "-\tx/b\tx/a\nx/b\t.\t.\nx/a\t.\t."), vec![("matrix".into(), "shape".into())]);
    }

    #[test]
    fn each_step_has_its_own_block_of_ports() {
        let steps: Vec<Step> =
            ["a", "b", "c"].iter().map(|n| Step { name: Some(n.to_string()), ..Step::default() }).collect();
        let blocks = port_blocks(&steps);
        assert_eq!(blocks.iter().collect::<HashSet<_>>().len(), 3);
        assert!(blocks.iter().all(|b| (FIRST_PROBE_PORT..capture::EPHEMERAL_PORTS - 99).contains(b)));
        assert_eq!(port_blocks(&steps[1..2]), blocks[1..2], "a step's block follows its name");
    }
}
