//! Real traffic from inside a namespace: a TCP connection that exchanges bytes with the echo
//! server, a UDP request that must come back, an ICMP echo. Sockets are opened inside the source
//! namespace and then used from the async runtime.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::net::netns;

pub mod dns;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Tcp(u16),
    Udp(u16),
    Icmp,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Tcp(port) => write!(f, "tcp/{port}"),
            Kind::Udp(port) => write!(f, "udp/{port}"),
            Kind::Icmp => f.write_str("icmp"),
        }
    }
}

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The exchange completed and the echo matched.
    Connected,
    /// The peer refused or reset the connection, or an ICMP error said it is unreachable.
    Reset,
    /// Nothing came back in time.
    Timeout,
    /// Something else went wrong (e.g. no route), with the error.
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Connected => f.write_str("connected"),
            Outcome::Reset => f.write_str("reset"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// What an I/O error says of the peer.
pub fn outcome_of(error: io::Error) -> Outcome {
    match error.kind() {
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable => Outcome::Reset,
        io::ErrorKind::TimedOut => Outcome::Timeout,
        _ => Outcome::Failed(error.to_string()),
    }
}

/// `wait` stretched by the factor in `LAB_TIME_SCALE` (default 1), for the test suite's timeouts.
/// Under emulation (scripts/kernel-matrix boots kernels under TCG when KVM is unavailable) the
/// first packet through freshly JIT-compiled programs takes tens of milliseconds per hop, and a
/// timeout sized for real hardware would read a slow connection as a denied one.
pub fn scaled(wait: Duration) -> Duration {
    let factor = std::env::var("LAB_TIME_SCALE").ok().and_then(|f| f.parse::<f64>().ok());
    match factor {
        Some(factor) if factor.is_finite() && factor >= 1.0 => wait.mul_f64(factor),
        _ => wait,
    }
}

/// Runs `probe` with the calling thread held on the CPU it is on, so a TCP probe's packets join
/// the kernel's per-CPU queues in the order they were sent. The handshake's last ACK leaves from
/// the softirq that took the SYN-ACK, on the CPU that sent the SYN; had the thread moved to
/// another CPU by the time it writes, its data could be delivered ahead of that ACK, and the
/// flow log (a trace when a connection shows new TCP flags, as Cilium's aggregation does) would
/// report the data instead of the ACK. Unpinned where the affinity cannot be set.
pub fn on_this_cpu<T>(probe: impl FnOnce() -> T) -> T {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    let this_thread = Pid::from_raw(0);
    // SAFETY: sched_getcpu has no preconditions; it returns -1 on error.
    let cpu = unsafe { libc::sched_getcpu() };
    let pinned = sched_getaffinity(this_thread).ok().filter(|_| cpu >= 0).and_then(|before| {
        let mut one = CpuSet::new();
        one.set(cpu as usize).ok()?;
        sched_setaffinity(this_thread, &one).ok().map(|()| before)
    });
    let result = probe();
    if let Some(before) = pinned {
        let _ = sched_setaffinity(this_thread, &before);
    }
    result
}

/// Sends one probe from the namespace `from` to `to`.
pub async fn probe(from: &File, to: Ipv4Addr, kind: Kind, wait: Duration) -> Outcome {
    let attempt = Attempt { from, to, what: What::Echo(kind), source_port: 0, keep: false };
    timed(wait, attempt.run(|_| {})).await.0
}

/// What a probe asks of its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// The echo of a few bytes (or an ICMP echo).
    Echo(Kind),
    /// An HTTP GET of a path, answered `200 OK`.
    Http { port: u16, path: String },
    /// A DNS A query over UDP, answered with the query's id.
    Dns { port: u16, name: String },
}

impl What {
    pub fn kind(&self) -> Kind {
        match self {
            What::Echo(kind) => *kind,
            What::Http { port, .. } => Kind::Tcp(*port),
            What::Dns { port, .. } => Kind::Udp(*port),
        }
    }
}

/// One probe from inside a namespace.
#[derive(Debug)]
pub struct Attempt<'a> {
    pub from: &'a File,
    pub to: Ipv4Addr,
    pub what: What,
    /// The client's port (for ICMP, the echo identifier): fixed so captures and flows are the
    /// same on every run; 0 lets the kernel choose.
    pub source_port: u16,
    /// TCP: keep the connection open after the exchange instead of closing it.
    pub keep: bool,
}

/// `attempt` given `wait` to finish.
pub async fn timed<T>(wait: Duration, attempt: impl Future<Output = (Outcome, Option<T>)>) -> (Outcome, Option<T>) {
    timeout(wait, attempt).await.unwrap_or((Outcome::Timeout, None))
}

impl Attempt<'_> {
    /// Runs the probe; `bound` learns the client's port as soon as it has one, before anything is
    /// sent. With `keep`, a TCP connection that completed its exchange comes back open.
    pub async fn run(self, bound: impl FnOnce(u16)) -> (Outcome, Option<tokio::net::TcpStream>) {
        let result = match &self.what {
            What::Echo(Kind::Tcp(port)) => self.tcp(*port, None, bound).await,
            What::Http { port, path } => self.tcp(*port, Some(path), bound).await,
            What::Echo(Kind::Udp(port)) => self.udp(*port, None, bound).await.map(|()| None),
            What::Dns { port, name } => self.udp(*port, Some(name), bound).await.map(|()| None),
            What::Echo(Kind::Icmp) => self.icmp(bound).await.map(|()| None),
        };
        match result {
            Ok(stream) => (Outcome::Connected, stream),
            Err(e) => (outcome_of(e), None),
        }
    }

    async fn tcp(
        &self,
        port: u16,
        http: Option<&String>,
        bound: impl FnOnce(u16),
    ) -> io::Result<Option<tokio::net::TcpStream>> {
        let source_port = self.source_port;
        let socket = netns::run_in(self.from, || -> io::Result<tokio::net::TcpSocket> {
            let socket = tokio::net::TcpSocket::new_v4()?;
            // A fixed port may still be in TIME_WAIT towards another peer.
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, source_port)))?;
            Ok(socket)
        })??;
        bound(socket.local_addr()?.port());
        let mut stream = socket.connect(SocketAddr::V4(SocketAddrV4::new(self.to, port))).await?;
        if let Some(path) = http {
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: lab\r\nConnection: close\r\n\r\n", self.to);
            stream.write_all(request.as_bytes()).await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            return if answer.starts_with(b"HTTP/1.1 200 ") || answer.starts_with(b"HTTP/1.0 200 ") {
                Ok(None)
            } else {
                Err(io::Error::new(io::ErrorKind::InvalidData, "the answer was not `200 OK`"))
            };
        }
        exchange(&mut stream).await?;
        if self.keep {
            return Ok(Some(stream));
        }
        close(stream).await?;
        Ok(None)
    }

    async fn udp(&self, port: u16, dns_name: Option<&String>, bound: impl FnOnce(u16)) -> io::Result<()> {
        let source_port = self.source_port;
        let socket = netns::run_in(self.from, || std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, source_port)))??;
        socket.set_nonblocking(true)?;
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let local = socket.local_addr()?.port();
        bound(local);
        socket.connect(SocketAddrV4::new(self.to, port)).await?;
        let request = match dns_name {
            // The query's id is the client's port, so it is as fixed as the port.
            Some(name) => dns::query(local, name),
            None => PAYLOAD.to_vec(),
        };
        socket.send(&request).await?;
        let mut reply = [0u8; 1500];
        let len = socket.recv(&mut reply).await?;
        let answered = match dns_name {
            Some(_) => dns::read_answer(&reply[..len], local).is_some(),
            None => reply[..len] == *PAYLOAD,
        };
        if answered { Ok(()) } else { Err(mismatch()) }
    }

    /// An ICMP echo over a datagram ICMP socket, with which the kernel matches replies to the
    /// socket; the namespace must allow it (`net.ipv4.ping_group_range`), which the lab's do.
    /// The socket's port is the echo's identifier.
    async fn icmp(&self, bound: impl FnOnce(u16)) -> io::Result<()> {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let source_port = self.source_port;
        let socket = netns::run_in(self.from, || -> io::Result<Socket> {
            let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4))?;
            socket.bind(&SockAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, source_port)))?;
            Ok(socket)
        })??;
        socket.set_nonblocking(true)?;
        bound(socket.local_addr()?.as_socket_ipv4().map_or(0, |a| a.port()));
        socket.connect(&SockAddr::from(SocketAddrV4::new(self.to, 0)))?;
        let socket = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(socket))?;
        // Type 8 (echo request), code 0; the kernel fills in the identifier and checksum.
        let mut request = [8u8, 0, 0, 0, 0, 0, 0, 1].to_vec();
        request.extend_from_slice(PAYLOAD);
        socket.send(&request).await?;
        let mut reply = [0u8; 128];
        let len = socket.recv(&mut reply).await?;
        if len >= 8 && reply[0] == 0 && &reply[8..len] == PAYLOAD { Ok(()) } else { Err(mismatch()) }
    }
}

const PAYLOAD: &[u8] = b"lab probe\n";

fn mismatch() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "the echo did not match what was sent")
}

/// Sends a few bytes on an open connection and reads their echo.
pub async fn exchange(stream: &mut tokio::net::TcpStream) -> io::Result<()> {
    stream.write_all(PAYLOAD).await?;
    let mut echo = [0u8; PAYLOAD.len()];
    stream.read_exact(&mut echo).await?;
    // The kernel may hold back its ACK of the echo for up to 200 ms, hoping to ride on data; on
    // a kept connection it would then leave in the next step, after that step's changes, and
    // be the packet they act on. Asking for quick ACKs sends a held-back one now.
    socket2::SockRef::from(&*stream).set_tcp_quickack(true)?;
    if echo != PAYLOAD { Err(mismatch()) } else { Ok(()) }
}

/// Closes a connection the way the echo server expects: this side's FIN, then the server's once
/// it has seen it, so the connection is over (and captured whole) when this returns.
pub async fn close(mut stream: tokio::net::TcpStream) -> io::Result<()> {
    stream.shutdown().await?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await?;
    Ok(())
}

/// Probes every pod of `pods` to every pod of `pods` on `kind`, many at once, and returns the
/// netpol-style truth table (`.` connected, `X` not; rows are senders).
pub fn matrix(pods: &[&crate::plan::PodPlan], kind: Kind, wait: Duration) -> std::io::Result<String> {
    use futures::StreamExt;
    let files: Vec<File> = pods.iter().map(|p| netns::open(&p.netns)).collect::<std::io::Result<_>>()?;
    let n = pods.len();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let outcomes: Vec<(usize, usize, Outcome)> = runtime.block_on(
        futures::stream::iter((0..n).flat_map(|a| (0..n).map(move |b| (a, b))))
            .map(|(a, b)| {
                let (file, ip) = (&files[a], pods[b].ip);
                async move { (a, b, probe(file, ip, kind, wait).await) }
            })
            .buffer_unordered(96)
            .collect(),
    );
    let mut table = vec![vec!['?'; n]; n];
    for (a, b, outcome) in outcomes {
        table[a][b] = if outcome == Outcome::Connected { '.' } else { 'X' };
    }
    Ok(render_matrix(&pods.iter().map(|p| p.id()).collect::<Vec<_>>(), &table))
}

/// The netpol e2e layout: tab-separated, a header row of destinations, a row per source.
pub fn render_matrix(names: &[String], table: &[Vec<char>]) -> String {
    let mut out = format!("-\t{}\n", names.join("\t"));
    for (name, row) in names.iter().zip(table) {
        let cells: Vec<String> = row.iter().map(char::to_string).collect();
        out.push_str(&format!("{name}\t{}\n", cells.join("\t")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sched::sched_getaffinity;
    use nix::unistd::Pid;

    fn allowed_cpus() -> Vec<usize> {
        let set = sched_getaffinity(Pid::from_raw(0)).unwrap();
        (0..nix::sched::CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap()).collect()
    }

    #[test]
    fn a_probe_runs_on_one_cpu_and_the_thread_is_free_again_after() {
        std::thread::spawn(|| {
            let before = allowed_cpus();
            let during = on_this_cpu(|| {
                // SAFETY: no preconditions.
                let cpu = unsafe { libc::sched_getcpu() } as usize;
                (allowed_cpus(), cpu)
            });
            assert_eq!(during.0, vec![during.1], "held on the CPU it was on");
            assert_eq!(allowed_cpus(), before);
        })
        .join()
        .unwrap();
    }
}
