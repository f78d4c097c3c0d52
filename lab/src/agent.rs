//! The lab's agent: one background process per lab, `lab agent <name>`, serving every declared
//! port of its pods, nodes and externals (TCP: accept and echo; UDP: echo) from sockets it opened inside
//! their namespaces, and, when the lab has a datapath, turning its events into Hubble flows in
//! `/run/lab/<name>/flows.jsonl` (what `lab observe` reads). It outlives `lab up` and is stopped
//! by `lab down`.
//!
//! It is found by its command line, not by a pid file, so a `lab up` killed between starting it
//! and recording it leaves nothing `lab down` cannot find.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::datapath::abi::Event;
use crate::datapath::pins;
use crate::flow::{FLOW_LOG_LIMIT, FlowContext, FlowLog};
use crate::net::netns;
use crate::plan::Plan;
use crate::state::LabDir;
use crate::topology::Protocol;

/// The agent tells `lab up` it is serving by writing to this descriptor.
const READY_FD: i32 = 3;
const SUBCOMMAND: &str = "agent";

/// Starts the agent of `lab` and returns once it serves every port, or with its error.
pub fn spawn(lab: &LabDir) -> Result<()> {
    // `LAB_BINARY` names the lab executable when this code runs inside another program (a test).
    let exe = match std::env::var_os("LAB_BINARY") {
        Some(binary) => binary.into(),
        None => std::env::current_exe().context("finding the lab executable")?,
    };
    let log = File::create(lab.log_path()).with_context(|| format!("creating {}", lab.log_path().display()))?;
    let (ready_read, ready_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating a pipe")?;
    let ready_write_fd = ready_write.as_raw_fd();

    let mut command = Command::new(exe);
    command.arg(SUBCOMMAND).arg(&lab.name).current_dir("/").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::dup2(ready_write_fd, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().context("starting the lab agent")?;
    drop(ready_write);
    // Reap the agent if it exits while this process lives (a test, or `up` rolling back), so
    // `stop` does not wait on a zombie; after `lab up` exits, init adopts it.
    std::thread::spawn(move || child.wait());

    // One line: "ready", or the agent's error. End of file without it means the agent died.
    let mut answer = String::new();
    BufReader::new(File::from(ready_read)).read_line(&mut answer).context("waiting for the lab agent")?;
    if answer.trim() == "ready" {
        return Ok(());
    }
    let log = std::fs::read_to_string(lab.log_path()).unwrap_or_default();
    bail!(
        "the lab agent failed to start: {}{}",
        answer.trim(),
        if log.is_empty() { String::new() } else { format!("\n{log}") }
    )
}

/// Stops every agent of the lab `name`; returns how many there were.
pub fn stop(name: &str) -> Result<usize> {
    let pids = find(name);
    for pid in &pids {
        let _ = kill(*pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|pid| alive(*pid)) {
        if Instant::now() > deadline {
            for pid in &pids {
                let _ = kill(*pid, Signal::SIGKILL);
            }
        }
        if Instant::now() > deadline + Duration::from_secs(3) {
            bail!("the lab agent of `{name}` does not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(pids.len())
}

/// Tells the agent of `name` that the lab's plan changed, without waiting for it (see
/// [`request`] to wait).
pub fn reload(name: &str) {
    for pid in find(name) {
        let _ = kill(pid, Signal::SIGHUP);
    }
}

/// What the agent is asked to do, each by a signal, each acknowledged in `agent.acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Read the plan again: serve the ports of added pods, close those of removed ones, name
    /// flows by the new identities.
    Reload,
    /// Record every event the datapath has submitted so far, and flush the flow log.
    SyncFlows,
    /// Restart: a new agent process takes over the listening and connected sockets, loads the
    /// datapath's programs again in place of the running ones, and goes on recording flows.
    Restart,
}

impl Request {
    fn signal(self) -> Signal {
        match self {
            Request::Reload => Signal::SIGHUP,
            Request::SyncFlows => Signal::SIGUSR1,
            Request::Restart => Signal::SIGUSR2,
        }
    }
}

/// Asks the agent of `name` for `request` and waits until it is done.
pub fn request(name: &str, request: Request) -> Result<()> {
    let lab = LabDir::of(name);
    let pids = find(name);
    let Some(pid) = pids.first() else { bail!("lab `{name}` has no agent running") };
    let before = read_acks(&lab).0;
    kill(*pid, request.signal()).with_context(|| format!("signalling the agent of `{name}`"))?;
    let deadline = Instant::now() + crate::probe::scaled(Duration::from_secs(15));
    loop {
        let (count, failure) = read_acks(&lab);
        if count > before {
            return match failure {
                Some(failure) => Err(anyhow::anyhow!("the lab agent of `{name}`: {failure}")),
                None => Ok(()),
            };
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(lab.log_path()).unwrap_or_default();
            bail!("the lab agent of `{name}` did not answer ({request:?}); its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The agent's count of requests done, and the failure of the last one, if it failed.
fn read_acks(lab: &LabDir) -> (u64, Option<String>) {
    let text = std::fs::read_to_string(lab.acks_path()).unwrap_or_default();
    let (count, failure) = text.trim().split_once(' ').map_or((text.trim(), None), |(c, f)| (c, Some(f.to_string())));
    (count.parse().unwrap_or(0), failure)
}

fn write_ack(lab: &LabDir, failure: Option<&str>) {
    let count = read_acks(lab).0 + 1;
    let text = match failure {
        Some(failure) => format!("{count} {}", failure.replace('\n', " ")),
        None => count.to_string(),
    };
    let tmp = lab.acks_path().with_extension("tmp");
    if std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, lab.acks_path())).is_err() {
        eprintln!("lab agent for `{}`: cannot write {}", lab.name, lab.acks_path().display());
    }
}

/// Running (not zombie) processes whose command line is `<lab> agent <name>`.
fn find(name: &str) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.len() >= 3
                && args[1] == SUBCOMMAND.as_bytes()
                && args[2] == name.as_bytes()
                && args[0].ends_with(b"lab")
        })
        .map(Pid::from_raw)
        .filter(|pid| alive(*pid))
        .collect()
}

fn alive(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Where a port is served: the namespace, the protocol and the port.
type ServedKey = (String, Protocol, u16);

/// A socket the agent serves on, as a new agent process takes it over across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SocketKind {
    TcpListener,
    Udp,
    TcpConnection,
}

impl SocketKind {
    fn as_str(self) -> &'static str {
        match self {
            SocketKind::TcpListener => "tcp-listener",
            SocketKind::Udp => "udp",
            SocketKind::TcpConnection => "tcp-connection",
        }
    }

    fn parse(text: &str) -> Option<SocketKind> {
        [SocketKind::TcpListener, SocketKind::Udp, SocketKind::TcpConnection].into_iter().find(|k| k.as_str() == text)
    }
}

/// A descriptor of a served socket kept aside, so the socket outlives its task's own descriptor
/// when the agent restarts.
struct Kept {
    fd: OwnedFd,
    kind: SocketKind,
    who: String,
}

/// What the agent's tasks share.
struct Agent {
    lab: LabDir,
    /// Every socket served, by id: listeners and open connections.
    kept: std::sync::Mutex<std::collections::BTreeMap<u64, Kept>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Set when the agent hands over: connections stop between two exchanges.
    handing_over: tokio::sync::watch::Sender<bool>,
    /// Connection tasks still running.
    connections: tokio::sync::watch::Sender<usize>,
    /// DNS names the built-in DNS answers (`<service>.<namespace>.svc.cluster.local`).
    names: std::sync::RwLock<std::collections::HashMap<String, Ipv4Addr>>,
}

impl Agent {
    fn keep(&self, fd: std::os::fd::BorrowedFd<'_>, kind: SocketKind, who: &str) -> std::io::Result<u64> {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fd = fd.try_clone_to_owned()?;
        self.kept.lock().expect("not poisoned").insert(id, Kept { fd, kind, who: who.to_string() });
        Ok(id)
    }

    fn forget(&self, id: u64) {
        self.kept.lock().expect("not poisoned").remove(&id);
    }
}

/// The ports the plan says to serve, with who serves them.
fn wanted_ports(plan: &Plan) -> Vec<(ServedKey, String)> {
    let endpoints = plan
        .pods
        .iter()
        .map(|p| (p.id(), &p.netns, &p.ports))
        .chain(plan.nodes.iter().map(|n| (format!("node {}", n.name), &n.netns, &n.ports)))
        .chain(plan.externals.iter().map(|e| (e.name.clone(), &e.netns, &e.ports)));
    endpoints
        .flat_map(|(who, netns, ports)| {
            ports.iter().map(move |p| ((netns.clone(), p.protocol, p.port), who.clone())).collect::<Vec<_>>()
        })
        .collect()
}

/// Opens `port` inside the namespace `netns`.
fn bind(netns_name: &str, protocol: Protocol, port: u16) -> Result<OwnedFd> {
    let file = netns::open(netns_name)?;
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let fd = netns::run_in(&file, || -> std::io::Result<OwnedFd> {
        Ok(match protocol {
            Protocol::Tcp => OwnedFd::from(TcpListener::bind(address)?),
            Protocol::Udp => OwnedFd::from(UdpSocket::bind(address)?),
        })
    })??;
    Ok(fd)
}

/// The served ports, each with its task and its kept descriptor's id.
type Serving = std::collections::BTreeMap<ServedKey, (tokio::task::AbortHandle, u64)>;

/// Starts serving a socket: a listener's accept loop, or a UDP echo (and DNS on port 53).
fn serve_socket(
    agent: &std::sync::Arc<Agent>,
    fd: OwnedFd,
    kind: SocketKind,
    who: &str,
) -> Result<(tokio::task::AbortHandle, u64)> {
    use std::os::fd::AsFd;
    let id = agent.keep(fd.as_fd(), kind, who)?;
    let handle = match kind {
        SocketKind::TcpListener => {
            let listener = TcpListener::from(fd);
            listener.set_nonblocking(true)?;
            tokio::spawn(echo_tcp(agent.clone(), who.to_string(), tokio::net::TcpListener::from_std(listener)?))
        }
        SocketKind::Udp => {
            let socket = UdpSocket::from(fd);
            socket.set_nonblocking(true)?;
            tokio::spawn(echo_udp(agent.clone(), who.to_string(), tokio::net::UdpSocket::from_std(socket)?))
        }
        SocketKind::TcpConnection => {
            let stream = std::net::TcpStream::from(fd);
            stream.set_nonblocking(true)?;
            agent.connections.send_modify(|n| *n += 1);
            tokio::spawn(answer_tcp(
                agent.clone(),
                who.to_string(),
                tokio::net::TcpStream::from_std(stream)?,
                id,
                false,
            ))
        }
    };
    Ok((handle.abort_handle(), id))
}

/// Makes the served ports those the plan declares: new ones opened, gone ones closed.
fn reconcile(agent: &std::sync::Arc<Agent>, plan: &Plan, serving: &mut Serving) -> Result<usize> {
    let wanted = wanted_ports(plan);
    let keys: std::collections::BTreeSet<&ServedKey> = wanted.iter().map(|(k, _)| k).collect();
    serving.retain(|key, (task, id)| {
        let keep = keys.contains(key);
        if !keep {
            task.abort();
            agent.forget(*id);
        }
        keep
    });
    for (key, who) in &wanted {
        if serving.contains_key(key) {
            continue;
        }
        let (netns_name, protocol, port) = key;
        let fd = bind(netns_name, *protocol, *port).with_context(|| format!("opening the ports of {who}"))?;
        let kind = if *protocol == Protocol::Tcp { SocketKind::TcpListener } else { SocketKind::Udp };
        serving.insert(key.clone(), serve_socket(agent, fd, kind, who)?);
    }
    Ok(serving.len())
}

/// The agent's main: serve until SIGTERM.
pub fn serve(name: &str) -> Result<()> {
    let handed = std::env::var(HANDOVER_ENV).ok();
    // SAFETY: READY_FD was set up by `spawn` for this process alone; if it is not open (the agent
    // started by hand, or after a restart, which answers in `agent.acks`), writes to it fail and
    // are ignored.
    let mut ready = match handed {
        None => Some(unsafe { File::from(OwnedFd::from_raw_fd(READY_FD)) }),
        Some(_) => None,
    };
    let result = serve_until_stopped(name, ready.as_mut(), handed.as_deref());
    if let (Err(e), Some(ready)) = (&result, &mut ready) {
        let _ = writeln!(ready, "{e:#}");
    }
    result
}

/// Where a restarted agent finds the sockets it takes over: lines of `fd<TAB>kind<TAB>who`.
const HANDOVER_ENV: &str = "LAB_AGENT_HANDOVER";

fn serve_until_stopped(name: &str, ready: Option<&mut File>, handed: Option<&str>) -> Result<()> {
    let lab = LabDir::of(name);
    let plan = lab.read_plan()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let agent = std::sync::Arc::new(Agent {
            lab: lab.clone(),
            kept: Default::default(),
            next_id: Default::default(),
            handing_over: tokio::sync::watch::channel(false).0,
            connections: tokio::sync::watch::channel(0).0,
            names: Default::default(),
        });
        // Requests may come as soon as `lab up` has returned: the handlers must be in place before
        // the agent says it is ready, or a signal's default action kills it.
        let mut reload = signal(SignalKind::hangup())?;
        let mut sync = signal(SignalKind::user_defined1())?;
        let mut restart = signal(SignalKind::user_defined2())?;
        let mut terminate = signal(SignalKind::terminate())?;

        let mut serving = Serving::new();
        if let Some(handed) = handed {
            adopt(&agent, handed, &plan, &mut serving)?;
        }
        let count = reconcile(&agent, &plan, &mut serving)?;
        set_names(&agent, &lab, &plan);
        let restarted = handed.is_some();
        if restarted && pins::events(name).exists() {
            // A cilium-agent that restarts regenerates every endpoint's program.
            crate::datapath::loader::replace(&plan).context("loading the datapath again")?;
        }
        eprintln!("lab agent for `{name}`: serving {count} ports{}", if restarted { " (restarted)" } else { "" });
        match ready {
            Some(ready) => {
                let _ = writeln!(ready, "ready");
                let _ = ready.sync_all();
            }
            None => write_ack(&lab, None),
        }
        // Labs without a datapath have no ring buffer: they only serve ports.
        let (flows, commands) = tokio::sync::mpsc::unbounded_channel();
        if pins::events(name).exists() {
            tokio::spawn(record_flows(lab.clone(), plan, commands));
        }
        loop {
            tokio::select! {
                _ = terminate.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = reload.recv() => {
                    let result = lab.read_plan().and_then(|plan| {
                        reconcile(&agent, &plan, &mut serving)?;
                        set_names(&agent, &lab, &plan);
                        let _ = flows.send(FlowCommand::Reload(Box::new(plan)));
                        Ok(())
                    });
                    if let Err(e) = &result {
                        eprintln!("lab agent for `{name}`: reloading: {e:#}");
                    }
                    write_ack(&lab, result.err().map(|e| format!("{e:#}")).as_deref());
                }
                _ = sync.recv() => {
                    let (done, synced) = tokio::sync::oneshot::channel();
                    // Without a flow recorder there is nothing to sync.
                    if flows.send(FlowCommand::Sync(done)).is_ok() {
                        let _ = synced.await;
                    }
                    write_ack(&lab, None);
                }
                _ = restart.recv() => {
                    let (done, synced) = tokio::sync::oneshot::channel();
                    if flows.send(FlowCommand::Sync(done)).is_ok() {
                        let _ = synced.await;
                    }
                    let error = hand_over(&agent).await;
                    // Only reached if the new agent could not be started: this one goes on.
                    eprintln!("lab agent for `{name}`: restarting failed: {error:#}");
                    let _ = agent.handing_over.send(false);
                    write_ack(&lab, Some(&format!("restarting failed: {error:#}")));
                }
            }
        }
        eprintln!("lab agent for `{name}`: stopping");
        Ok(())
    })
}

/// Takes over the sockets a restarting agent handed on.
fn adopt(agent: &std::sync::Arc<Agent>, handed: &str, plan: &Plan, serving: &mut Serving) -> Result<()> {
    let wanted: std::collections::HashMap<(String, Protocol, u16), String> = wanted_ports(plan).into_iter().collect();
    for line in handed.lines() {
        let mut parts = line.splitn(3, '\t');
        let (Some(fd), Some(kind), Some(who)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("{HANDOVER_ENV}: malformed line `{line}`")
        };
        let (Ok(fd), Some(kind)) = (fd.parse::<i32>(), SocketKind::parse(kind)) else {
            bail!("{HANDOVER_ENV}: malformed line `{line}`")
        };
        // SAFETY: the agent before this one left this descriptor open for this process alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
        if kind == SocketKind::TcpConnection {
            serve_socket(agent, fd, kind, who)?;
            continue;
        }
        // A listener is found again by the namespace and port it serves.
        let port = match kind {
            SocketKind::TcpListener => TcpListener::from(fd.try_clone()?).local_addr()?.port(),
            _ => UdpSocket::from(fd.try_clone()?).local_addr()?.port(),
        };
        let protocol = if kind == SocketKind::TcpListener { Protocol::Tcp } else { Protocol::Udp };
        let key = wanted
            .iter()
            .find(|((_, p, n), w)| *p == protocol && *n == port && w.as_str() == who)
            .map(|(key, _)| key.clone());
        if let Some(key) = key {
            serving.insert(key, serve_socket(agent, fd, kind, who)?);
        }
    }
    Ok(())
}

/// Restarts the agent in place: its connections stop between two exchanges, every served socket
/// is left open for the new process, which this one becomes (`exec`). Returns only on failure.
async fn hand_over(agent: &std::sync::Arc<Agent>) -> anyhow::Error {
    let _ = agent.handing_over.send(true);
    let mut connections = agent.connections.subscribe();
    let quiet = tokio::time::timeout(Duration::from_secs(2), connections.wait_for(|n| *n == 0)).await;
    if quiet.is_err() {
        return anyhow::anyhow!("connections did not stop within 2 s");
    }
    let mut handed = String::new();
    {
        let kept = agent.kept.lock().expect("not poisoned");
        for kept in kept.values() {
            let fd = kept.fd.as_raw_fd();
            // Left open across exec: the new agent takes it over.
            if let Err(e) = nix::fcntl::fcntl(&kept.fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())) {
                return e.into();
            }
            handed.push_str(&format!("{fd}\t{}\t{}\n", kept.kind.as_str(), kept.who));
        }
    }
    // `lab up`'s readiness pipe is not the new agent's.
    // SAFETY: only the descriptor's flags change; it may not be open at all.
    unsafe { libc::fcntl(READY_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e.into(),
    };
    eprintln!(
        "lab agent for `{}`: restarting with {} sockets",
        agent.lab.name,
        agent.kept.lock().expect("not poisoned").len()
    );
    let error = Command::new(exe).arg(SUBCOMMAND).arg(&agent.lab.name).env(HANDOVER_ENV, handed).exec();
    anyhow::Error::from(error).context("starting the new agent")
}

/// The names the built-in DNS answers: every service's ClusterIP.
fn set_names(agent: &Agent, lab: &LabDir, plan: &Plan) {
    let services =
        lab.read_sources().ok().and_then(|(_, resources)| crate::services::Services::resolve(plan, &resources).ok());
    let mut names = std::collections::HashMap::new();
    for service in services.iter().flat_map(|s| &s.services) {
        names.insert(format!("{}.{}.svc.cluster.local", service.name, service.namespace), service.cluster_ip);
    }
    *agent.names.write().expect("not poisoned") = names;
}

/// What the flow recorder is asked while it runs.
enum FlowCommand {
    /// The plan changed: identities and labels, for naming flows.
    Reload(Box<Plan>),
    /// Drain the ring buffer and flush the log, then answer.
    Sync(tokio::sync::oneshot::Sender<()>),
}

/// Turns every event of the lab's ring buffer into a Hubble flow appended to `flows.jsonl`,
/// until the agent stops; a failure stops the flows, not the agent.
async fn record_flows(lab: LabDir, plan: Plan, commands: tokio::sync::mpsc::UnboundedReceiver<FlowCommand>) {
    if let Err(e) = consume_events(&lab, &plan, commands).await {
        eprintln!("lab agent for `{}`: no more flows: {e:#}", lab.name);
    }
}

async fn consume_events(
    lab: &LabDir,
    plan: &Plan,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<FlowCommand>,
) -> Result<()> {
    use aya::maps::{Map, MapData, RingBuf};
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    let pin = pins::events(&lab.name);
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let ring =
        RingBuf::try_from(Map::RingBuf(data)).with_context(|| format!("{} is not a ring buffer", pin.display()))?;
    // SAFETY: the ring buffer owns its descriptor, which stays open, and the same, for as long
    // as the AsyncFd holding it lives.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("polling the ring buffer")?;
    let mut context = flow_context(lab, plan);
    let path = lab.flows_path();
    let mut log = FlowLog::open(&path, FLOW_LOG_LIMIT).with_context(|| format!("opening {}", path.display()))?;
    eprintln!("lab agent for `{}`: recording flows in {}", lab.name, path.display());
    let drain = |ring: &mut RingBuf<MapData>, context: &FlowContext, log: &mut FlowLog| -> Result<()> {
        while let Some(item) = ring.next() {
            let Some(event) = Event::from_bytes(&item) else { continue };
            drop(item);
            if let Some(record) = context.record(&event, SystemTime::now()) {
                log.append(&record).with_context(|| format!("writing {}", path.display()))?;
            }
        }
        log.flush().with_context(|| format!("writing {}", path.display()))
    };
    loop {
        let mut guard = tokio::select! {
            command = commands.recv() => {
                match command {
                    Some(FlowCommand::Reload(plan)) => context = flow_context(lab, &plan),
                    Some(FlowCommand::Sync(done)) => {
                        drain(ring.get_mut(), &context, &mut log)?;
                        let _ = done.send(());
                    }
                    None => return Ok(()),
                }
                continue;
            }
            guard = ring.readable_mut() => guard.context("waiting on the ring buffer")?,
        };
        // Cleared before draining, so an event submitted meanwhile wakes the next wait.
        guard.clear_ready();
        drain(guard.get_inner_mut(), &context, &mut log)?;
    }
}

async fn echo_tcp(agent: std::sync::Arc<Agent>, who: String, listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                use std::os::fd::AsFd;
                let Ok(id) = agent.keep(stream.as_fd(), SocketKind::TcpConnection, &who) else { continue };
                agent.connections.send_modify(|n| *n += 1);
                tokio::spawn(answer_tcp(agent.clone(), who.clone(), stream, id, true));
            }
            Err(e) => {
                eprintln!("{who}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What names the flows: the plan, and the services of the lab's sources (none if they cannot
/// be read: flows are still recorded, without service names).
fn flow_context(lab: &LabDir, plan: &Plan) -> FlowContext {
    let services =
        lab.read_sources().ok().and_then(|(_, resources)| crate::services::Services::resolve(plan, &resources).ok());
    let context = FlowContext::new(plan);
    match services {
        Some(services) => context.with_services(&services),
        None => context,
    }
}

/// Serves one connection until the client closes it or the agent hands it over (between two
/// exchanges, so no byte read is left unanswered).
async fn answer_tcp(agent: std::sync::Arc<Agent>, who: String, stream: tokio::net::TcpStream, id: u64, fresh: bool) {
    let handed_over = echo_connection(&agent, &who, stream, fresh).await;
    if !handed_over {
        agent.forget(id);
    }
    agent.connections.send_modify(|n| *n -= 1);
}

/// Echoes a TCP connection, except that an HTTP request as its first bytes gets a `200 OK`
/// naming the server, so `curl http://<pod>/` works as people expect. Whether it stopped to hand
/// the connection over.
async fn echo_connection(agent: &Agent, who: &str, mut stream: tokio::net::TcpStream, fresh: bool) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut handing_over = agent.handing_over.subscribe();
    let mut buffer = vec![0u8; 16384];
    let mut first = fresh;
    loop {
        let len = tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return false,
                Ok(len) => len,
            },
            _ = handing_over.wait_for(|h| *h) => return true,
        };
        let received = &buffer[..len];
        if std::mem::take(&mut first)
            && let Some(method) = http_method(received)
        {
            let body = format!("{who}\n");
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let body = if method == "HEAD" { "" } else { body.as_str() };
            let _ = stream.write_all(format!("{head}{body}").as_bytes()).await;
            return false;
        }
        if stream.write_all(received).await.is_err() {
            return false;
        }
    }
}

fn http_method(request: &[u8]) -> Option<&'static str> {
    ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"].into_iter().find(|m| {
        request.starts_with(m.as_bytes())
            && request.get(m.len()) == Some(&b' ')
            && request.windows(5).any(|w| w == b"HTTP/")
    })
}

async fn echo_udp(agent: std::sync::Arc<Agent>, who: String, socket: tokio::net::UdpSocket) {
    let dns = socket.local_addr().is_ok_and(|a| a.port() == 53);
    let mut buffer = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buffer).await {
            Ok((len, peer)) => {
                let answer = if dns {
                    let names = agent.names.read().expect("not poisoned");
                    crate::probe::dns::answer(&buffer[..len], |name| names.get(name).copied())
                } else {
                    None
                };
                let _ = socket.send_to(answer.as_deref().unwrap_or(&buffer[..len]), peer).await;
            }
            Err(e) => {
                eprintln!("{who}: receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
