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
use crate::topology::{Port, Protocol};

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

/// Tells the agent of `name` that the lab's plan changed.
pub fn reload(name: &str) {
    for pid in find(name) {
        let _ = kill(pid, Signal::SIGHUP);
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

/// A listening socket opened inside some namespace.
enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Opens every declared port of the plan, each inside its own namespace.
fn open_listeners(plan: &Plan) -> Result<Vec<(String, Listener)>> {
    let endpoints = plan
        .pods
        .iter()
        .map(|p| (p.id(), &p.netns, &p.ports))
        .chain(plan.nodes.iter().map(|n| (format!("node {}", n.name), &n.netns, &n.ports)))
        .chain(plan.externals.iter().map(|e| (e.name.clone(), &e.netns, &e.ports)));
    let mut listeners = Vec::new();
    for (who, netns_name, ports) in endpoints.filter(|(_, _, ports)| !ports.is_empty()) {
        let file = netns::open(netns_name)?;
        let opened = netns::run_in(&file, || ports.iter().map(bind).collect::<std::io::Result<Vec<_>>>())?
            .with_context(|| format!("opening the ports of {who}"))?;
        listeners.extend(opened.into_iter().map(|l| (who.clone(), l)));
    }
    Ok(listeners)
}

fn bind(port: &Port) -> std::io::Result<Listener> {
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port.port));
    Ok(match port.protocol {
        Protocol::Tcp => {
            let listener = TcpListener::bind(address)?;
            listener.set_nonblocking(true)?;
            Listener::Tcp(listener)
        }
        Protocol::Udp => {
            let socket = UdpSocket::bind(address)?;
            socket.set_nonblocking(true)?;
            Listener::Udp(socket)
        }
    })
}

/// The agent's main: serve until SIGTERM.
pub fn serve(name: &str) -> Result<()> {
    // SAFETY: READY_FD was set up by `spawn` for this process alone; if it is not open (the agent
    // started by hand), writes to it fail and are ignored.
    let mut ready = unsafe { File::from(OwnedFd::from_raw_fd(READY_FD)) };
    let result = serve_until_stopped(name, &mut ready);
    if let Err(e) = &result {
        let _ = writeln!(ready, "{e:#}");
    }
    result
}

fn serve_until_stopped(name: &str, ready: &mut File) -> Result<()> {
    let plan = LabDir::of(name).read_plan()?;
    let listeners = open_listeners(&plan)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let count = listeners.len();
        for (who, listener) in listeners {
            match listener {
                Listener::Tcp(l) => {
                    tokio::spawn(echo_tcp(who, tokio::net::TcpListener::from_std(l)?));
                }
                Listener::Udp(s) => {
                    tokio::spawn(echo_udp(who, tokio::net::UdpSocket::from_std(s)?));
                }
            }
        }
        // `lab apply` signals SIGHUP as soon as `lab up` has returned: the handler must be in
        // place before the agent says it is ready, or the signal's default action kills it.
        let reload = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        eprintln!("lab agent for `{name}`: serving {count} ports");
        let _ = writeln!(ready, "ready");
        let _ = ready.sync_all();
        // Labs without a datapath have no ring buffer: they only serve ports.
        if pins::events(name).exists() {
            tokio::spawn(record_flows(LabDir::of(name), plan, reload));
        }
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("lab agent for `{name}`: stopping");
        Ok(())
    })
}

/// Turns every event of the lab's ring buffer into a Hubble flow appended to `flows.jsonl`,
/// until the agent stops; a failure stops the flows, not the agent.
async fn record_flows(lab: LabDir, plan: Plan, reload: tokio::signal::unix::Signal) {
    if let Err(e) = consume_events(&lab, &plan, reload).await {
        eprintln!("lab agent for `{}`: no more flows: {e:#}", lab.name);
    }
}

async fn consume_events(lab: &LabDir, plan: &Plan, mut reload: tokio::signal::unix::Signal) -> Result<()> {
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
    // `lab apply` changes identities and labels; `reload` says when to read the plan again.
    let mut context = flow_context(lab, plan);
    let path = lab.flows_path();
    let mut log = FlowLog::open(&path, FLOW_LOG_LIMIT).with_context(|| format!("opening {}", path.display()))?;
    eprintln!("lab agent for `{}`: recording flows in {}", lab.name, path.display());
    loop {
        let mut guard = tokio::select! {
            _ = reload.recv() => {
                match lab.read_plan() {
                    Ok(plan) => context = flow_context(lab, &plan),
                    Err(e) => eprintln!("lab agent for `{}`: keeping the old plan: {e:#}", lab.name),
                }
                continue;
            }
            guard = ring.readable_mut() => guard.context("waiting on the ring buffer")?,
        };
        // Cleared before draining, so an event submitted meanwhile wakes the next wait.
        guard.clear_ready();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(event) = Event::from_bytes(&item) else { continue };
            drop(item);
            if let Some(record) = context.record(&event, SystemTime::now()) {
                log.append(&record).with_context(|| format!("writing {}", path.display()))?;
            }
        }
        log.flush().with_context(|| format!("writing {}", path.display()))?;
    }
}

async fn echo_tcp(who: String, listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer_tcp(who.clone(), stream));
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

/// Echoes a TCP connection, except that an HTTP request gets a `200 OK` naming the server, so
/// `curl http://<pod>/` works as people expect.
async fn answer_tcp(who: String, mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut first = vec![0u8; 4096];
    let Ok(len) = stream.read(&mut first).await else { return };
    let first = &first[..len];
    if let Some(method) = http_method(first) {
        let body = format!("{who}\n");
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let body = if method == "HEAD" { "" } else { body.as_str() };
        let _ = stream.write_all(format!("{head}{body}").as_bytes()).await;
        return;
    }
    if stream.write_all(first).await.is_err() {
        return;
    }
    let (mut reader, mut writer) = stream.split();
    let _ = tokio::io::copy(&mut reader, &mut writer).await;
}

fn http_method(request: &[u8]) -> Option<&'static str> {
    ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"].into_iter().find(|m| {
        request.starts_with(m.as_bytes())
            && request.get(m.len()) == Some(&b' ')
            && request.windows(5).any(|w| w == b"HTTP/")
    })
}

async fn echo_udp(who: String, socket: tokio::net::UdpSocket) {
    let mut buffer = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buffer).await {
            Ok((len, peer)) => {
                let _ = socket.send_to(&buffer[..len], peer).await;
            }
            Err(e) => {
                eprintln!("{who}: receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
