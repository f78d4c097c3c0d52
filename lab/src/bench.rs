//! Benchmarks of the lab against the way other tools drive the kernel.
//!
//! [`up`] times bring-up and teardown of synthetic clusters, and of the same clusters built by a
//! bash script of `ip` commands, one process per operation, as containerlab and Mininet do it.
//! [`datapath`] measures TCP between two pods through the eBPF datapath against the same pods
//! with no program attached, and the cost of a full policy map. [`policy`] times compiling many
//! rules and applying a changed rule to a running lab until the datapath enforces it. [`services`]
//! measures new connections through a ClusterIP as the number of services grows, translated by
//! the datapath and by kube-proxy's iptables rules.
//!
//! Every lab a benchmark builds, the `ip` one included, is recorded in `/run/lab` before anything
//! is created, and a guard removes it however the benchmark ends (error, panic or Ctrl-C): a run
//! leaves nothing behind, and `lab down --all` cleans up after a crash.

pub mod datapath;
pub mod policy;
pub mod services;
mod traffic;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use indicatif::ProgressBar;
use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::Signal;
use tokio::runtime::Runtime;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::net::netns;
use crate::plan::{self, Plan, UPLINK_NAME};
use crate::probe::{self, Kind, Outcome};
use crate::realise;
use crate::state::{self, LabDir, Status};
use crate::topology::validate::{self, Severity};
use crate::topology::{Cluster, Node, Pod, RoutingMode, Topology};

/// Each node's pod CIDR: a /20 holds 4093 pods, so a node never runs out in a benchmark.
const POD_CIDR_MASK_SIZE: u8 = 20;
/// How long the kernel may take to destroy a lab's namespaces before the benchmark gives up.
const FREE_TIMEOUT: Duration = Duration::from_secs(60);
const FREE_POLL_INTERVAL: Duration = Duration::from_millis(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What `lab bench up` measured for one pod count.
#[derive(Debug, Clone)]
pub struct UpResult {
    pub pods: usize,
    pub nodes: usize,
    /// [`realise::build`]: from no namespace to every pod configured.
    pub lab_up: Duration,
    /// [`realise::teardown`], as `lab down` runs it: until every namespace is unmounted and the
    /// record is gone. The kernel destroys the namespaces after that, asynchronously.
    pub lab_down: Duration,
    /// From the start of teardown until the kernel has destroyed every veth of the lab.
    pub lab_freed: Duration,
    /// The `ip` script that builds the same lab.
    pub ip_script_up: Duration,
    /// The `ip netns del` script that removes it.
    pub ip_script_down: Duration,
    /// From the start of the `ip` teardown script until the kernel has destroyed every veth.
    pub ip_script_freed: Duration,
}

impl UpResult {
    /// How many times longer the `ip` script takes than the lab to bring up the same pods.
    pub fn up_ratio(&self) -> f64 {
        self.ip_script_up.as_secs_f64() / self.lab_up.as_secs_f64()
    }
}

/// Measures each pod count in turn, pods spread round-robin over `nodes` nodes; `on_result` sees
/// each result as soon as it is measured.
pub fn up(pod_counts: &[usize], nodes: usize, mut on_result: impl FnMut(&UpResult)) -> Result<Vec<UpResult>> {
    ensure!(nodes >= 1, "the benchmark needs at least one node");
    ensure!(
        pod_counts.iter().all(|&pods| pods >= 2),
        "every pod count must be at least 2: the benchmark pings the last pod from the first"
    );
    let interrupt = Interrupt::listen()?;
    let mut results = Vec::new();
    for &pods in pod_counts {
        let result = measure_up(&interrupt, pods, nodes)
            .with_context(|| format!("benchmarking {pods} pods on {nodes} nodes"))?;
        on_result(&result);
        results.push(result);
    }
    Ok(results)
}

fn measure_up(interrupt: &Interrupt, pods: usize, nodes: usize) -> Result<UpResult> {
    interrupt.check()?;
    let name = format!("bench-{}-{pods}", std::process::id());
    let topology = synthetic_topology(&name, pods, nodes);
    check_synthetic(&topology)?;

    let lab = RecordedLab::create(Plan::new(&topology, &name))?;
    let lab_up = time_build(&lab.plan).context("building the lab")?;
    interrupt.check()?;
    ping_first_to_last(&lab.plan)?;
    let watched = NodeNamespaces::open(&lab.plan)?;
    let started = Instant::now();
    realise::teardown(&lab.dir)?;
    let lab_down = started.elapsed();
    watched.wait_until_emptied(interrupt)?;
    let lab_freed = started.elapsed();

    interrupt.check()?;
    // The same topology under another lab name: the same addresses, MACs and interface names,
    // in namespaces of its own that `lab down <name>-ip` also finds.
    let baseline = RecordedLab::create(Plan::new(&topology, &format!("{name}-ip")))?;
    let (up_script, down_script) = baseline.write_ip_scripts()?;
    let started = Instant::now();
    run_script(&up_script, interrupt)?;
    let ip_script_up = started.elapsed();
    // The comparison only holds if the script built a lab that works as well.
    ping_first_to_last(&baseline.plan)?;
    let watched = NodeNamespaces::open(&baseline.plan)?;
    let started = Instant::now();
    run_script(&down_script, interrupt)?;
    let ip_script_down = started.elapsed();
    watched.wait_until_emptied(interrupt)?;
    let ip_script_freed = started.elapsed();
    // What is left is the record, scripts included.
    realise::teardown(&baseline.dir)?;

    Ok(UpResult { pods, nodes, lab_up, lab_down, lab_freed, ip_script_up, ip_script_down, ip_script_freed })
}

/// Runs [`realise::build`] as `lab up` does: on a runtime of its own with two workers (the cores
/// the target is set for), dropped before anything else happens. Dropping it waits for the
/// blocking tasks still creating namespaces should the build fail, so the teardown that follows
/// misses none. Ctrl-C takes effect when the build returns, for the same reason.
fn time_build(plan: &Plan) -> Result<Duration> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let started = Instant::now();
    let built = runtime.block_on(realise::build(plan, &ProgressBar::hidden()));
    let elapsed = started.elapsed();
    drop(runtime);
    built.map(|()| elapsed)
}

/// `pods` pods in the default namespace, spread round-robin over `nodes` nodes, serving no ports
/// (so no agent process is started), in native routing.
pub fn synthetic_topology(name: &str, pods: usize, nodes: usize) -> Topology {
    let node_names: Vec<String> = (1..=nodes).map(|i| format!("node-{i}")).collect();
    Topology {
        name: name.to_string(),
        cluster: Cluster {
            pod_cidr_mask_size: POD_CIDR_MASK_SIZE,
            routing_mode: RoutingMode::Native,
            ..Cluster::default()
        },
        nodes: node_names
            .iter()
            .map(|name| Node {
                name: name.clone(),
                pod_cidr: None,
                labels: BTreeMap::new(),
                ports: Vec::new(),
                sysctls: BTreeMap::new(),
                uplinks: Vec::new(),
                routes: Vec::new(),
            })
            .collect(),
        namespaces: Vec::new(),
        pods: (0..pods)
            .map(|i| Pod {
                name: format!("pod-{}", i + 1),
                namespace: "default".to_string(),
                node: node_names[i % nodes].clone(),
                labels: BTreeMap::new(),
                service_account: "default".to_string(),
                ports: Vec::new(),
                ip: None,
                managed: true,
            })
            .collect(),
        externals: Vec::new(),
        resources: Vec::new(),
        scenario: None,
    }
}

/// The baseline: bash scripts that build `plan` as [`realise::build`] does and remove it as
/// [`realise::teardown`] does, request for request, each request its own `ip` process (and each
/// detour into a namespace for sysctls its own `ip netns exec`). This is the only place the lab
/// runs `ip`: everything else speaks netlink itself.
///
/// Covers what the benchmark's topologies use: native routing, no externals, no extra uplinks.
pub fn ip_scripts(plan: &Plan) -> Result<(String, String)> {
    ensure!(
        plan.routing_mode == RoutingMode::Native
            && plan.externals.is_empty()
            && plan.nodes.iter().all(|n| n.uplinks.is_empty() && n.routes.is_empty()),
        "the ip script covers native routing without externals or extra uplinks only"
    );
    let mut up = String::from("# `lab bench up`: the lab built by one `ip` process per operation. Run with bash -e.\n");
    for netns in plan.netns_names() {
        writeln!(up, "ip netns add {netns}")?;
        writeln!(
            up,
            "ip netns exec {netns} sysctl -qw net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.all.disable_ipv6=1 \
             net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.all.rp_filter=0 'net.ipv4.ping_group_range=0 2147483647'"
        )?;
    }

    let fabric = &plan.fabric;
    let (fabric_ns, bridge) = (&fabric.netns, &fabric.bridge);
    writeln!(up, "ip -n {fabric_ns} link set lo up")?;
    writeln!(
        up,
        "ip -n {fabric_ns} link add {bridge} index {} address {} up type bridge",
        plan::ifindex::BRIDGE,
        fabric.bridge_mac
    )?;
    for address in &fabric.addresses {
        writeln!(up, "ip -n {fabric_ns} addr add {address} dev {bridge}")?;
    }
    writeln!(
        up,
        "ip netns exec {fabric_ns} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 \
         net.ipv4.conf.{bridge}.send_redirects=0"
    )?;
    for node in &plan.nodes {
        writeln!(up, "ip -n {fabric_ns} route replace {} via {} dev {bridge} onlink", node.pod_cidr, node.ip.addr())?;
        writeln!(
            up,
            "ip -n {fabric_ns} neigh replace {} lladdr {} dev {bridge} nud permanent",
            node.ip.addr(),
            node.uplink_mac
        )?;
    }

    let mtu = plan.mtu;
    for node in &plan.nodes {
        let node_ns = &node.netns;
        writeln!(
            up,
            "ip -n {fabric_ns} link add name {} index {} address {} mtu {mtu} master {bridge} up \
             type veth peer name {UPLINK_NAME} index {} address {} mtu {mtu} netns {node_ns}",
            node.fabric_port,
            node.fabric_port_index,
            node.fabric_port_mac,
            plan::ifindex::UPLINK,
            node.uplink_mac
        )?;
        writeln!(up, "bridge -n {fabric_ns} fdb replace {} dev {} master static", node.uplink_mac, node.fabric_port)?;
        writeln!(up, "ip -n {node_ns} link set lo up")?;
        writeln!(up, "ip -n {node_ns} link set {UPLINK_NAME} up")?;
        writeln!(up, "ip -n {node_ns} addr add {} dev {UPLINK_NAME}", node.ip)?;
        writeln!(up, "ip -n {node_ns} addr add {}/32 dev lo", node.router_ip)?;
        writeln!(
            up,
            "ip -n {node_ns} neigh replace {} lladdr {} dev {UPLINK_NAME} nud permanent",
            node.gateway, fabric.bridge_mac
        )?;
        writeln!(up, "ip -n {node_ns} route replace default via {} dev {UPLINK_NAME} onlink", node.gateway)?;
        for peer in plan.nodes.iter().filter(|peer| peer.name != node.name) {
            let peer_ip = peer.ip.addr();
            writeln!(
                up,
                "ip -n {node_ns} neigh replace {peer_ip} lladdr {} dev {UPLINK_NAME} nud permanent",
                peer.uplink_mac
            )?;
            writeln!(up, "ip -n {node_ns} route replace {} via {peer_ip} dev {UPLINK_NAME} onlink", peer.pod_cidr)?;
        }
        let sysctls: String =
            node.sysctls.iter().map(|(key, value)| format!(" {}", shell_quote(&format!("{key}={value}")))).collect();
        writeln!(up, "ip netns exec {node_ns} sysctl -qw net.ipv4.ip_forward=1{sysctls}")?;
    }

    let pod_mtu = plan.pod_mtu();
    for pod in &plan.pods {
        let node = &plan.nodes[pod.node];
        let (node_ns, pod_ns, host_if) = (&node.netns, &pod.netns, &pod.host_ifname);
        writeln!(
            up,
            "ip -n {node_ns} link add name {host_if} index {} address {} mtu {pod_mtu} up \
             type veth peer name {UPLINK_NAME} index {} address {} mtu {pod_mtu} netns {pod_ns}",
            pod.host_ifindex,
            pod.host_mac,
            plan::ifindex::UPLINK,
            pod.mac
        )?;
        writeln!(up, "ip -n {node_ns} route replace {}/32 dev {host_if} scope link src {}", pod.ip, node.router_ip)?;
        writeln!(up, "ip -n {node_ns} neigh replace {} lladdr {} dev {host_if} nud permanent", pod.ip, pod.mac)?;
        writeln!(up, "ip -n {pod_ns} link set lo up")?;
        writeln!(up, "ip -n {pod_ns} link set {UPLINK_NAME} up")?;
        writeln!(up, "ip -n {pod_ns} addr add {}/32 dev {UPLINK_NAME}", pod.ip)?;
        writeln!(
            up,
            "ip -n {pod_ns} neigh replace {} lladdr {} dev {UPLINK_NAME} nud permanent",
            node.router_ip, pod.host_mac
        )?;
        writeln!(up, "ip -n {pod_ns} route replace default via {} dev {UPLINK_NAME} onlink", node.router_ip)?;
    }

    let mut down =
        String::from("# `lab bench up`: the lab removed by one `ip` process per namespace. Run with bash -e.\n");
    for netns in plan.netns_names() {
        writeln!(down, "ip netns del {netns}")?;
    }
    Ok((up, down))
}

/// `text` as one bash word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Runs a script with `bash -e`: it stops at the first command that fails.
fn run_script(script: &Path, interrupt: &Interrupt) -> Result<()> {
    let mut bash = Command::new("bash");
    bash.arg("-e").arg(script).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    // Should the benchmark be killed, the script must not go on creating namespaces while
    // `lab down` removes them.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe { bash.pre_exec(|| set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)) };
    let output = bash.output().context("running bash")?;
    // Ctrl-C reaches bash too, which then fails: say why.
    interrupt.check()?;
    if !output.status.success() {
        bail!("{} failed ({}): {}", script.display(), output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Pings the plan's last pod from its first, and fails unless the reply comes back: a benchmark
/// of a lab that does not work measures nothing.
fn ping_first_to_last(plan: &Plan) -> Result<()> {
    let (Some(first), Some(last)) = (plan.pods.first(), plan.pods.last()) else {
        bail!("lab {} has no pods", plan.lab)
    };
    let from = netns::open(&first.netns)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = runtime.block_on(probe::probe(&from, last.ip, Kind::Icmp, PING_TIMEOUT));
    ensure!(
        outcome == Outcome::Connected,
        "in lab {}, {} cannot ping {} ({}): {outcome}",
        plan.lab,
        first.id(),
        last.id(),
        last.ip
    );
    Ok(())
}

/// A lab the benchmark recorded in `/run/lab` and is building; dropping it removes whatever of it
/// is left, so neither an error nor a panic leaves namespaces or records behind.
struct RecordedLab {
    dir: LabDir,
    plan: Plan,
}

impl RecordedLab {
    /// Records the lab as `lab up` does, before anything is created.
    fn create(plan: Plan) -> Result<RecordedLab> {
        let dir = LabDir::create(&plan.lab)?;
        let lab = RecordedLab { dir, plan };
        lab.dir.write_plan(&lab.plan)?;
        lab.dir.set_status(Status::Creating)?;
        Ok(lab)
    }

    /// Writes the `ip` scripts (up, down) of this lab into its record, so teardown removes them.
    fn write_ip_scripts(&self) -> Result<(PathBuf, PathBuf)> {
        let (up, down) = ip_scripts(&self.plan)?;
        // Where LabDir keeps the record; it does not share the path.
        let record = Path::new(state::RUN_DIR).join(&self.dir.name);
        let (up_path, down_path) = (record.join("ip-up.sh"), record.join("ip-down.sh"));
        std::fs::write(&up_path, up).with_context(|| format!("writing {}", up_path.display()))?;
        std::fs::write(&down_path, down).with_context(|| format!("writing {}", down_path.display()))?;
        Ok((up_path, down_path))
    }
}

impl Drop for RecordedLab {
    fn drop(&mut self) {
        let leftovers = netns::list_with_prefix(&plan::netns_prefix(&self.dir.name));
        if !self.dir.exists() && leftovers.is_empty() {
            return;
        }
        if let Err(e) = realise::teardown(&self.dir) {
            crate::ui::error(format!(
                "removing benchmark lab {}: {e:#}; run `lab down {}`",
                self.dir.name, self.dir.name
            ));
        }
    }
}

/// Handles on a lab's node namespaces, taken before teardown. They keep the node namespaces alive
/// once unmounted, so the benchmark can watch the kernel destroy the rest: a pod's veth pair goes
/// when the pod's namespace is destroyed, a node's uplink when the fabric's is.
struct NodeNamespaces(Vec<(String, File)>);

impl NodeNamespaces {
    fn open(plan: &Plan) -> Result<NodeNamespaces> {
        let opened = plan.nodes.iter().map(|node| Ok((node.netns.clone(), netns::open(&node.netns)?)));
        Ok(NodeNamespaces(opened.collect::<Result<_>>()?))
    }

    /// Waits until every node namespace holds nothing but `lo`.
    fn wait_until_emptied(&self, interrupt: &Interrupt) -> Result<()> {
        let deadline = Instant::now() + FREE_TIMEOUT;
        for (name, netns) in &self.0 {
            loop {
                let interfaces =
                    netns::interfaces(netns).with_context(|| format!("listing the interfaces of {name}"))?;
                if interfaces.iter().all(|interface| interface == "lo") {
                    break;
                }
                interrupt.check()?;
                if Instant::now() > deadline {
                    bail!("the kernel had not destroyed the interfaces in {name} after {} s", FREE_TIMEOUT.as_secs());
                }
                std::thread::sleep(FREE_POLL_INTERVAL);
            }
        }
        Ok(())
    }
}

/// The interfaces of a namespace: `/proc/thread-self/net/dev` lists those of the namespace the
/// reading thread is in.
/// A synthetic topology must pass the same checks as a file.
fn check_synthetic(topology: &Topology) -> Result<()> {
    let errors: Vec<String> = validate::check(topology)
        .into_iter()
        .filter(|finding| finding.severity == Severity::Error)
        .map(|finding| format!("{}: {}", finding.field, finding.message))
        .collect();
    ensure!(errors.is_empty(), "the synthetic topology is invalid: {}", errors.join("; "));
    Ok(())
}

/// Ctrl-C ends the benchmark through its error path, so the guards remove what it built: by
/// default SIGINT would kill the process and leave the labs behind.
struct Interrupt {
    /// Receives the signal for the whole run.
    _listener: Runtime,
    interrupted: watch::Receiver<bool>,
}

impl Interrupt {
    fn listen() -> Result<Interrupt> {
        let listener = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        // Registered now, not when the task first runs, so no early Ctrl-C is lost.
        let mut interrupts = {
            let _context = listener.enter();
            signal(SignalKind::interrupt()).context("listening for Ctrl-C")?
        };
        let (sender, interrupted) = watch::channel(false);
        listener.spawn(async move {
            if interrupts.recv().await.is_some() {
                let _ = sender.send(true);
            }
        });
        Ok(Interrupt { _listener: listener, interrupted })
    }

    fn check(&self) -> Result<()> {
        if *self.interrupted.borrow() { Err(anyhow!("interrupted")) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_topology_is_valid_and_spreads_pods_round_robin() {
        let topology = synthetic_topology("bench-1-1000", 1000, 3);
        assert!(validate::check(&topology).is_empty());
        let on_first = topology.pods.iter().filter(|pod| pod.node == "node-1").count();
        assert_eq!(on_first, 334);
    }

    #[test]
    fn the_ip_script_mirrors_the_plan_request_for_request() {
        let topology = synthetic_topology("t", 4, 2);
        let plan = Plan::new(&topology, "t-ip");
        let (up, down) = ip_scripts(&plan).unwrap();
        let namespaces = plan.netns_names().len();
        assert_eq!(up.lines().filter(|l| l.starts_with("ip netns add lab.t-ip.")).count(), namespaces);
        assert_eq!(down.lines().filter(|l| l.starts_with("ip netns del lab.t-ip.")).count(), namespaces);
        let pod = &plan.pods[0];
        let veth = format!(
            "ip -n {} link add name {} index {}",
            plan.nodes[pod.node].netns, pod.host_ifname, pod.host_ifindex
        );
        assert!(up.lines().any(|l| l.starts_with(&veth) && l.ends_with(&format!("netns {}", pod.netns))), "{up}");
        // Per pod: the veth, a route and a neighbour on the node, five requests in the pod.
        assert_eq!(
            up.lines()
                .filter(|l| l.contains(&pod.host_ifname) || l.starts_with(&format!("ip -n {} ", pod.netns)))
                .count(),
            8
        );
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a=0 1"), "'a=0 1'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
