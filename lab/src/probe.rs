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
    /// The peer refused or reset the connection.
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

fn outcome_of(error: io::Error) -> Outcome {
    match error.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => Outcome::Reset,
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

/// Sends one probe from the namespace `from` to `to`.
pub async fn probe(from: &File, to: Ipv4Addr, kind: Kind, wait: Duration) -> Outcome {
    let result = match kind {
        Kind::Tcp(port) => timeout(wait, tcp(from, SocketAddrV4::new(to, port))).await,
        Kind::Udp(port) => timeout(wait, udp(from, SocketAddrV4::new(to, port))).await,
        Kind::Icmp => timeout(wait, icmp(from, to)).await,
    };
    match result {
        Err(_elapsed) => Outcome::Timeout,
        Ok(Ok(())) => Outcome::Connected,
        Ok(Err(e)) => outcome_of(e),
    }
}

const PAYLOAD: &[u8] = b"lab probe\n";

fn mismatch() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "the echo did not match what was sent")
}

async fn tcp(from: &File, to: SocketAddrV4) -> io::Result<()> {
    let socket = netns::run_in(from, tokio::net::TcpSocket::new_v4)??;
    let mut stream = socket.connect(SocketAddr::V4(to)).await?;
    stream.write_all(PAYLOAD).await?;
    let mut echo = [0u8; PAYLOAD.len()];
    stream.read_exact(&mut echo).await?;
    if echo != PAYLOAD { Err(mismatch()) } else { Ok(()) }
}

async fn udp(from: &File, to: SocketAddrV4) -> io::Result<()> {
    let socket = netns::run_in(from, || std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    socket.connect(to).await?;
    socket.send(PAYLOAD).await?;
    let mut echo = [0u8; 64];
    let len = socket.recv(&mut echo).await?;
    if &echo[..len] != PAYLOAD { Err(mismatch()) } else { Ok(()) }
}

/// An ICMP echo over a datagram ICMP socket, with which the kernel matches replies to the
/// socket; the namespace must allow it (`net.ipv4.ping_group_range`), which the lab's do.
async fn icmp(from: &File, to: Ipv4Addr) -> io::Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = netns::run_in(from, || Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)))??;
    socket.set_nonblocking(true)?;
    socket.connect(&SockAddr::from(SocketAddrV4::new(to, 0)))?;
    let socket = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(socket))?;
    // Type 8 (echo request), code 0; the kernel fills in the identifier and checksum.
    let mut request = [8u8, 0, 0, 0, 0, 0, 0, 1].to_vec();
    request.extend_from_slice(PAYLOAD);
    socket.send(&request).await?;
    let mut reply = [0u8; 128];
    let len = socket.recv(&mut reply).await?;
    if len >= 8 && reply[0] == 0 && &reply[8..len] == PAYLOAD { Ok(()) } else { Err(mismatch()) }
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
