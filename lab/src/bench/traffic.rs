//! Real TCP traffic between two pods, for `lab bench datapath`: request/response (one connection,
//! one byte each way per transaction, as netperf's TCP_RR) and bulk (one connection, 64 KiB
//! writes, as iperf3 sends by default); and for `lab bench services`, new connections (connect,
//! one byte each way, close: netperf's TCP_CRR), to any address that leads to the server.
//!
//! Each socket is created inside its pod's namespace and then used from a plain thread: a socket
//! belongs to the namespace it was created in, whichever thread uses it. With two cores or more,
//! the client's thread runs on the first and the server's on the second, in every run: left to
//! the scheduler, the two would sometimes share a core and sometimes not, and the rates would
//! swing by more than the datapath costs. Every run is bounded in
//! time: the client stops at its deadline or on Ctrl-C, and every blocking call on either side
//! times out, so a datapath that drops the traffic fails the run instead of hanging it.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;
use socket2::{Domain, SockRef, Socket, Type};

use super::Interrupt;
use crate::net::netns;

/// The server's port (iperf3's).
pub const PORT: u16 = 5201;
/// What the bulk client writes at a time.
const BULK_WRITE: usize = 64 * 1024;
const BULK_READ: usize = 256 * 1024;
/// How long a connect, read or write may block before the run is declared broken.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the server waits for the client to connect: longer than the client tries to.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(4);
/// The request of the client's last connection of a run of new connections: the server answers
/// it and stops. Every other request is [`REQUEST`].
const LAST: u8 = 0;
const REQUEST: u8 = 1;

/// The cores the client's and the server's threads run on.
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;

/// Keeps the calling thread on `cpu`, if the machine has it.
fn pin_to(cpu: usize) -> Result<()> {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) <= cpu {
        return Ok(());
    }
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning a thread to CPU {cpu}"))?;
    Ok(())
}

/// A listening socket in the server pod; each run accepts one connection on it.
pub struct Server {
    listener: TcpListener,
    address: SocketAddrV4,
}

impl Server {
    /// Listens on `ip`:[`PORT`] inside `netns`.
    pub fn listen(netns: &File, ip: Ipv4Addr) -> Result<Server> {
        let address = SocketAddrV4::new(ip, PORT);
        let listener =
            netns::run_in(netns, || TcpListener::bind(address))?.with_context(|| format!("listening on {address}"))?;
        // accept() honours SO_RCVTIMEO.
        SockRef::from(&listener).set_read_timeout(Some(ACCEPT_TIMEOUT))?;
        Ok(Server { listener, address })
    }

    fn accept(&self) -> Result<TcpStream> {
        let (stream, _) = self.listener.accept().context("waiting for the client to connect")?;
        configure(&stream)?;
        Ok(stream)
    }

    /// Answers every byte with itself until the client hangs up; returns how many it answered.
    fn echo(&self) -> Result<u64> {
        let mut stream = self.accept()?;
        let mut byte = [0u8; 1];
        let mut answered = 0;
        loop {
            if stream.read(&mut byte).context("reading a request")? == 0 {
                return Ok(answered);
            }
            stream.write_all(&byte).context("answering a request")?;
            answered += 1;
        }
    }

    /// Serves connections one after the other (accept, read the 1-byte request, answer it, wait
    /// for the client to close) until the client's [`LAST`] request; returns how many connections
    /// it served before that one.
    fn serve_connections(&self) -> Result<u64> {
        let mut served = 0;
        loop {
            let (mut stream, _) = self.listener.accept().context("waiting for the client to connect")?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            let mut request = [0u8; 1];
            stream.read_exact(&mut request).context("reading a request")?;
            stream.write_all(&request).context("answering a request")?;
            // The client closes with a reset: waiting for it (end of file or ECONNRESET) keeps
            // this side from sending a FIN, so a connection is the same packets every time.
            let _ = stream.read(&mut [0u8; 1]);
            if request[0] == LAST {
                return Ok(served);
            }
            served += 1;
        }
    }

    /// Reads until the client hangs up; returns how many bytes arrived, and when the last did.
    fn sink(&self) -> Result<(u64, Instant)> {
        let mut stream = self.accept()?;
        let mut buffer = vec![0u8; BULK_READ];
        let mut received = 0;
        loop {
            match stream.read(&mut buffer).context("receiving")? {
                0 => return Ok((received, Instant::now())),
                n => received += n as u64,
            }
        }
    }
}

fn configure(stream: &TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(())
}

/// Connects from inside `netns`.
fn connect(netns: &File, to: SocketAddrV4) -> Result<TcpStream> {
    let stream = netns::run_in(netns, || TcpStream::connect_timeout(&SocketAddr::V4(to), IO_TIMEOUT))?
        .with_context(|| format!("connecting to {to}"))?;
    configure(&stream)?;
    Ok(stream)
}

/// Request/response for `duration` from the client pod's namespace to `server`: transactions per
/// second.
pub fn request_response(client: &File, server: &Server, duration: Duration, interrupt: &Interrupt) -> Result<f64> {
    std::thread::scope(|scope| {
        let echo = scope.spawn(|| pin_to(SERVER_CPU).and_then(|()| server.echo()));
        let measured = scope
            .spawn(|| pin_to(CLIENT_CPU).and_then(|()| ping_pong(client, server.address, duration, interrupt)))
            .join()
            .map_err(|_| anyhow!("the client panicked"))?;
        let answered = echo.join().map_err(|_| anyhow!("the echo server panicked"))?;
        // The client's error first: the server's is usually only that the client went away.
        let (transactions, elapsed) = measured?;
        let answered = answered?;
        ensure!(answered == transactions, "the server answered {answered} requests, the client counted {transactions}");
        Ok(transactions as f64 / elapsed.as_secs_f64())
    })
}

/// Sends one byte and waits for it back, until the deadline: (transactions, time they took).
fn ping_pong(netns: &File, to: SocketAddrV4, duration: Duration, interrupt: &Interrupt) -> Result<(u64, Duration)> {
    let mut stream = connect(netns, to)?;
    let mut byte = [1u8; 1];
    let mut transactions = 0u64;
    let started = Instant::now();
    let deadline = started + duration;
    while Instant::now() < deadline {
        stream.write_all(&byte).context("sending a request")?;
        stream.read_exact(&mut byte).context("waiting for the answer")?;
        transactions += 1;
        if transactions.is_multiple_of(256) {
            interrupt.check()?;
        }
    }
    Ok((transactions, started.elapsed()))
}

/// Bulk transfer for `duration` from the client pod's namespace to `server`: bits per second the
/// server received, from the client's first write to the server's last read.
pub fn bulk(client: &File, server: &Server, duration: Duration, interrupt: &Interrupt) -> Result<f64> {
    std::thread::scope(|scope| {
        let sink = scope.spawn(|| pin_to(SERVER_CPU).and_then(|()| server.sink()));
        let sent = scope
            .spawn(|| pin_to(CLIENT_CPU).and_then(|()| stream_for(client, server.address, duration, interrupt)))
            .join()
            .map_err(|_| anyhow!("the client panicked"))?;
        let received = sink.join().map_err(|_| anyhow!("the receiving server panicked"))?;
        let (sent, started) = sent?;
        let (received, last) = received?;
        ensure!(received == sent, "the server received {received} bytes, the client sent {sent}");
        Ok(received as f64 * 8.0 / last.duration_since(started).as_secs_f64())
    })
}

/// Writes until the deadline, then hangs up: (bytes sent, when the first write started).
fn stream_for(netns: &File, to: SocketAddrV4, duration: Duration, interrupt: &Interrupt) -> Result<(u64, Instant)> {
    let mut stream = connect(netns, to)?;
    let buffer = vec![0x5a; BULK_WRITE];
    let mut sent = 0;
    let started = Instant::now();
    let deadline = started + duration;
    while Instant::now() < deadline {
        stream.write_all(&buffer).context("sending")?;
        sent += BULK_WRITE as u64;
        interrupt.check()?;
    }
    stream.shutdown(Shutdown::Write).context("hanging up")?;
    Ok((sent, started))
}

/// New connections for `duration` from the client pod's namespace to `to`, an address that leads
/// to `server` (its own, or a service's): each connects, sends a 1-byte request, reads the 1-byte
/// answer and closes. (Connections per second, connections.)
///
/// The client closes with SO_LINGER 0, so it sends a reset rather than a FIN and keeps no
/// TIME_WAIT socket: ephemeral ports are never exhausted, however many connections a run makes,
/// and no sysctl of any namespace is changed.
pub fn new_connections(
    client: &File,
    server: &Server,
    to: SocketAddrV4,
    duration: Duration,
    interrupt: &Interrupt,
) -> Result<(f64, u64)> {
    std::thread::scope(|scope| {
        let serving = scope.spawn(|| pin_to(SERVER_CPU).and_then(|()| server.serve_connections()));
        let measured = scope
            .spawn(|| pin_to(CLIENT_CPU).and_then(|()| connect_repeatedly(client, to, duration, interrupt)))
            .join()
            .map_err(|_| anyhow!("the client panicked"))?;
        let served = serving.join().map_err(|_| anyhow!("the server panicked"))?;
        let (connections, elapsed) = measured?;
        let served = served?;
        ensure!(served == connections, "the server served {served} connections, the client made {connections}");
        Ok((connections as f64 / elapsed.as_secs_f64(), connections))
    })
}

/// Opens connections to `to` from inside `netns` until the deadline, then one [`LAST`] that ends
/// the server's loop: (connections before it, the time they took).
fn connect_repeatedly(
    netns: &File,
    to: SocketAddrV4,
    duration: Duration,
    interrupt: &Interrupt,
) -> Result<(u64, Duration)> {
    // This thread stays in the pod for the whole run: every socket is created there.
    let _inside = netns::NetnsGuard::enter(netns).context("entering the client pod")?;
    let mut connections = 0u64;
    let started = Instant::now();
    let deadline = started + duration;
    while Instant::now() < deadline {
        exchange(to, REQUEST).with_context(|| format!("connection {} to {to}", connections + 1))?;
        connections += 1;
        if connections.is_multiple_of(256) {
            interrupt.check()?;
        }
    }
    let elapsed = started.elapsed();
    exchange(to, LAST).with_context(|| format!("the last connection to {to}"))?;
    Ok((connections, elapsed))
}

/// One connection: connect, a 1-byte request, its answer, and a reset.
fn exchange(to: SocketAddrV4, request: u8) -> Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).context("creating a socket")?;
    socket.set_linger(Some(Duration::ZERO))?;
    // A blocking connect gives up after the send timeout.
    socket.set_write_timeout(Some(IO_TIMEOUT))?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    socket.connect(&SocketAddr::V4(to).into()).context("connecting")?;
    let mut stream = TcpStream::from(socket);
    stream.write_all(&[request]).context("sending the request")?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).context("waiting for the answer")?;
    ensure!(answer[0] == request, "the answer was {}, not the request {request}", answer[0]);
    Ok(())
}
