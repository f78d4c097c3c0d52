//! What the root integration tests share: running the `lab` binary, a guard that removes a lab
//! however the test ends, and a list of everything a lab may have left on the host.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use lab::plan::{Plan, netns_prefix};
use lab::state::LabDir;

pub fn lab_binary() -> &'static str {
    env!("CARGO_BIN_EXE_lab")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate is in the workspace").to_path_buf()
}

pub fn topology(relative: &str) -> PathBuf {
    repo_root().join("topologies").join(relative)
}

/// Runs `lab ARGS...` and returns its output, whatever its exit status.
pub fn lab(args: &[&str]) -> Output {
    Command::new(lab_binary()).args(args).env("NO_COLOR", "1").output().expect("running lab")
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test builds real namespaces and needs root: run the suite as root (scripts/test does)"
    );
}

/// Whether the running kernel's release is at least MAJOR.MINOR (from `uname -r`, not from the
/// lab's own probes, which the tests check).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = nix::sys::utsname::uname().expect("uname").release().to_string_lossy().into_owned();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (major, minor)
}

/// A lab name no other test (or concurrent test run) uses.
pub fn unique_name(what: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("t{}-{what}-{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A running lab, removed with `lab down` when dropped, even if the test panicked.
pub struct Lab {
    pub name: String,
}

impl Lab {
    /// `lab up FILE --name <unique>`; panics with lab's own error if it fails.
    pub fn up(file: &Path, what: &str) -> Lab {
        require_root();
        let lab = Lab { name: unique_name(what) };
        let out = lab_up(file, &lab.name);
        assert!(out.status.success(), "lab up failed:\n{}", String::from_utf8_lossy(&out.stderr));
        lab
    }

    pub fn plan(&self) -> Plan {
        LabDir::of(&self.name).read_plan().expect("a running lab has a plan")
    }
}

pub fn lab_up(file: &Path, name: &str) -> Output {
    lab(&["up", file.to_str().expect("utf-8 path"), "--name", name])
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = lab(&["down", &self.name]);
        if !out.status.success() && !std::thread::panicking() {
            panic!("lab down {} failed:\n{}", self.name, String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// Removes a lab by name when dropped: for tests that start `lab up` themselves.
pub struct DownOnDrop(pub String);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        lab(&["down", &self.0]);
    }
}

/// Everything of lab `name` still on the host: namespaces, their mounts, its record, its BPF pin
/// folder and its agent processes. Empty when the lab is completely gone.
pub fn remains_of(name: &str) -> Vec<String> {
    let prefix = netns_prefix(name);
    let mut remains: Vec<String> =
        lab::net::netns::list_with_prefix(&prefix).into_iter().map(|n| format!("netns {n}")).collect();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    remains.extend(
        mountinfo.lines().filter(|l| l.contains(&format!("/run/netns/{prefix}"))).map(|l| format!("mount {l}")),
    );
    if LabDir::of(name).exists() {
        remains.push(format!("record /run/lab/{name}"));
    }
    if LabDir::of(name).bpffs_path().exists() {
        remains.push(format!("pins {}", LabDir::of(name).bpffs_path().display()));
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.len() >= 3 && args[1] == "agent" && args[2] == name {
            remains.push(format!("agent process {}", entry.file_name().to_string_lossy()));
        }
    }
    remains
}

/// One probe of the full matrix that did not connect.
#[derive(Debug)]
pub struct Failure {
    pub from: String,
    pub to: String,
    pub kind: lab::probe::Kind,
    pub outcome: lab::probe::Outcome,
}

/// Probes every pod → every other pod and every external, on the target's first TCP port, its
/// first UDP port and ICMP, with real sockets inside the source pod. Returns the probe count and
/// the failures.
pub fn probe_every_pair(plan: &Plan) -> (usize, Vec<Failure>) {
    use futures::StreamExt;
    use lab::probe::{Kind, Outcome, probe};
    use lab::topology::{Port, Protocol};
    use std::time::Duration;

    let first = |ports: &[Port], protocol: Protocol| ports.iter().find(|p| p.protocol == protocol).map(|p| p.port);
    let kinds = |ports: &[Port]| {
        let mut kinds = vec![Kind::Icmp];
        kinds.extend(first(ports, Protocol::Tcp).map(Kind::Tcp));
        kinds.extend(first(ports, Protocol::Udp).map(Kind::Udp));
        kinds
    };
    let targets: Vec<(String, std::net::Ipv4Addr, Vec<Kind>)> = plan
        .pods
        .iter()
        .map(|p| (p.id(), p.ip, kinds(&p.ports)))
        .chain(plan.externals.iter().map(|e| (e.name.clone(), e.address.addr(), kinds(&e.ports))))
        .collect();
    let mut probes = Vec::new();
    for source in &plan.pods {
        let netns = std::sync::Arc::new(lab::net::netns::open(&source.netns).expect("the pod's namespace exists"));
        for (target, ip, kinds) in targets.iter().filter(|(t, ..)| *t != source.id()) {
            for kind in kinds {
                probes.push((source.id(), netns.clone(), target.clone(), *ip, *kind));
            }
        }
    }
    let count = probes.len();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let failures = runtime.block_on(
        futures::stream::iter(probes)
            .map(|(from, netns, to, ip, kind)| async move {
                let outcome = probe(&netns, ip, kind, lab::probe::scaled(Duration::from_secs(3))).await;
                (outcome != Outcome::Connected).then_some(Failure { from, to, kind, outcome })
            })
            .buffer_unordered(32)
            .filter_map(|failure| async { failure })
            .collect::<Vec<_>>(),
    );
    (count, failures)
}

/// The interfaces of a namespace, by name.
pub fn links_in(netns: &std::fs::File) -> Vec<String> {
    lab::net::netns::interfaces(netns).unwrap()
}

/// Waits until the held namespace has only `lo` left. A veth vanishes with its peer, so a held
/// node namespace empties only once the kernel has freed the fabric and every pod namespace on
/// the other ends: nothing of the lab holds them any more.
pub fn assert_links_vanish(node_netns: &std::fs::File) {
    let deadline = std::time::Instant::now() + lab::probe::scaled(std::time::Duration::from_secs(10));
    loop {
        let links = links_in(node_netns);
        if links == ["lo"] {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "links still alive after lab down: {links:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Sends one UDP datagram from inside `netns` through a raw socket, with any source address
/// (the IP header is ours: a pod forging its source, as an attacker would).
pub fn send_raw_udp(
    netns: &std::fs::File,
    source: std::net::Ipv4Addr,
    destination: std::net::Ipv4Addr,
    port: u16,
    payload: &[u8],
) {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = lab::net::netns::run_in(netns, || {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))
    })
    .unwrap()
    .expect("a raw socket (root)");
    let total = 20 + 8 + payload.len();
    let mut packet = Vec::with_capacity(total);
    packet.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&destination.octets());
    let udp_len = 8 + payload.len();
    packet.extend_from_slice(&40000u16.to_be_bytes());
    packet.extend_from_slice(&port.to_be_bytes());
    packet.extend_from_slice(&(udp_len as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]); // no UDP checksum, which IPv4 allows
    packet.extend_from_slice(payload);
    // With IPPROTO_RAW the kernel takes our header as is, filling in only the IP checksum.
    socket.send_to(&packet, &SockAddr::from(std::net::SocketAddrV4::new(destination, 0))).expect("sending");
}

/// A UDP socket listening inside `netns` on `port`, with a short receive timeout.
pub fn udp_listener(netns: &std::fs::File, port: u16) -> std::net::UdpSocket {
    let socket = lab::net::netns::run_in(netns, || std::net::UdpSocket::bind(("0.0.0.0", port))).unwrap().unwrap();
    socket.set_read_timeout(Some(lab::probe::scaled(std::time::Duration::from_millis(300)))).unwrap();
    socket
}

/// The sum of a drop reason's counter over both directions, read from the lab's pinned metrics.
pub fn dropped(lab: &str, reason: u8) -> u64 {
    lab::datapath::maps::read_metrics(lab)
        .unwrap()
        .iter()
        .filter(|((r, _), _)| *r == reason)
        .map(|(_, v)| v.packets)
        .sum()
}

/// Probes every pod to every pod on `kind` and renders the netpol-style `.`/`X` truth table.
pub fn probed_matrix(plan: &Plan, kind: lab::probe::Kind) -> String {
    let pods: Vec<&lab::plan::PodPlan> = plan.pods.iter().collect();
    lab::probe::matrix(&pods, kind, lab::probe::scaled(std::time::Duration::from_millis(500))).unwrap()
}

/// Every flow the agent recorded (the `flow` of each line of /run/lab/<lab>/flows.jsonl).
pub fn flows(lab: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(lab::state::LabDir::of(lab).flows_path()).unwrap_or_default();
    let records = text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    records.map(|v| v["flow"].clone()).collect()
}

/// `lab apply` (or `lab delete`, as `verb`) of `yaml` to the running lab `name`.
pub fn lab_change(name: &str, verb: &str, yaml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("change.yaml");
    std::fs::write(&file, yaml).unwrap();
    lab(&[verb, name, file.to_str().unwrap()])
}

/// A packet socket on `eth0` inside `netns`: every frame the pod receives, from now on.
pub fn capture(netns: &std::fs::File) -> socket2::Socket {
    use socket2::{Domain, Protocol, Socket, Type};
    let all = (libc::ETH_P_ALL as u16).to_be();
    let socket = lab::net::netns::run_in(netns, || {
        let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(i32::from(all))))?;
        socket.set_recv_buffer_size(8 << 20)?;
        Ok::<_, std::io::Error>(socket)
    })
    .unwrap()
    .expect("a packet socket (root)");
    socket.set_nonblocking(true).unwrap();
    socket
}

/// The IPv4 TCP sources (address, port) of every frame to `receiver` the socket holds (it also
/// holds what the pod sent).
pub fn tcp_sources(
    socket: &socket2::Socket,
    receiver: std::net::Ipv4Addr,
) -> std::collections::BTreeMap<(std::net::Ipv4Addr, u16), usize> {
    let mut sources = std::collections::BTreeMap::new();
    let mut frame = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    while let Ok(len) = socket.recv(&mut frame) {
        // SAFETY: recv initialised the first `len` bytes.
        let bytes: Vec<u8> = frame[..len].iter().map(|b| unsafe { b.assume_init() }).collect();
        let Ok(packet) = etherparse::SlicedPacket::from_ethernet(&bytes) else { continue };
        let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Tcp(tcp))) =
            (&packet.net, &packet.transport)
        else {
            continue;
        };
        if ip.header().destination_addr() != receiver {
            continue;
        }
        *sources.entry((ip.header().source_addr(), tcp.source_port())).or_default() += 1;
    }
    sources
}

/// A copy of a native-routing topology with `routingMode: tunnel`, in a folder that goes with the
/// returned guard.
pub fn with_tunnel(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let text = std::fs::read_to_string(topology(name)).unwrap();
    let text = text.replace("routingMode: native", "routingMode: tunnel");
    assert!(text.contains("routingMode: tunnel"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(std::path::Path::new(name).file_name().unwrap());
    std::fs::write(&file, text).unwrap();
    (dir, file)
}
