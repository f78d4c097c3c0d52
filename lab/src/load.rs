//! Steady traffic while something changes under it (a datapath upgrade, an agent restart): from
//! inside one namespace, a stream of new TCP connections at a fixed rate, each exchanging once
//! with the echo server and closing, and one established connection exchanging on every tick.
//! Every failure is counted, so a change that costs traffic shows up as a number, not as a
//! flaky probe.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use socket2::{Domain, Socket, Type};

use crate::net::netns;

/// What a load saw, from start to stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LoadReport {
    /// New connections tried, and those that did not connect or did not get their echo back.
    pub new_connections: u64,
    pub failed_connections: u64,
    /// Exchanges on the established connection, and those that failed (after a failure the
    /// connection is gone: every later tick counts as failed too).
    pub exchanges: u64,
    pub failed_exchanges: u64,
}

impl LoadReport {
    pub fn failures(&self) -> u64 {
        self.failed_connections + self.failed_exchanges
    }
}

/// A load running on threads of its own until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    established: JoinHandle<(u64, u64)>,
    fresh: JoinHandle<(u64, u64)>,
}

/// How long one exchange may take before it counts as failed: well above a first packet's
/// latency through freshly loaded programs, well below TCP's first retransmission.
const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(800);
/// One tick: an exchange on the established connection.
const TICK: Duration = Duration::from_millis(10);

impl Load {
    /// Starts the load from `from` (a namespace) to `to`, an echo server: `rate` new connections
    /// a second, and one connection kept open, each on a thread of its own, so an exchange that
    /// waits for a retransmission does not hold the new connections back. Fails if the kept
    /// connection cannot be made.
    pub fn start(from: &File, to: SocketAddrV4, rate: u32) -> Result<Load> {
        let mut kept = connect(from, to).with_context(|| format!("opening the established connection to {to}"))?;
        let from = from.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        // (tries, failures) on the kept connection; after a failure it is gone, and every later
        // tick counts as failed too.
        let established = std::thread::spawn(move || {
            let (mut exchanges, mut failed, mut alive) = (0, 0, true);
            while !stopped.load(Ordering::Relaxed) {
                let tick = Instant::now();
                exchanges += 1;
                alive = alive && exchange(&mut kept, exchanges).is_ok();
                if !alive {
                    failed += 1;
                }
                std::thread::sleep(TICK.saturating_sub(tick.elapsed()));
            }
            (exchanges, failed)
        });
        let stopped = stop.clone();
        let every = Duration::from_secs(1) / rate.max(1);
        let fresh = std::thread::spawn(move || {
            let (mut tries, mut failed) = (0, 0);
            let mut next = Instant::now();
            while !stopped.load(Ordering::Relaxed) {
                tries += 1;
                if connect(&from, to).and_then(|mut stream| exchange(&mut stream, 0)).is_err() {
                    failed += 1;
                }
                next += every;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            (tries, failed)
        });
        Ok(Load { stop, established, fresh })
    }

    /// Stops the load and reports what it saw.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let (exchanges, failed_exchanges) = self.established.join().expect("the load's threads do not panic");
        let (new_connections, failed_connections) = self.fresh.join().expect("the load's threads do not panic");
        LoadReport { new_connections, failed_connections, exchanges, failed_exchanges }
    }
}

/// The client ports loads send from, taken in turn: below the probes' (20000-32767) and the
/// kernel's ephemeral ports, so a scenario can tell a load's traffic from everything else.
pub const LOAD_PORTS: std::ops::Range<u16> = 15000..20000;

/// Whether `port` (as flows write ports) is one loads send from.
pub fn is_load_port(port: u32) -> bool {
    u16::try_from(port).is_ok_and(|port| LOAD_PORTS.contains(&port))
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A TCP connection from inside `from`, from the next of [`LOAD_PORTS`]: the socket is made
/// there, and keeps its namespace.
fn connect(from: &File, to: SocketAddrV4) -> io::Result<TcpStream> {
    let socket = netns::run_in(from, || Socket::new(Domain::IPV4, Type::STREAM, None))??;
    let span = LOAD_PORTS.end - LOAD_PORTS.start;
    let port = LOAD_PORTS.start + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % span;
    // A port used a turn ago may still be in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, port).into())?;
    socket.connect_timeout(&to.into(), EXCHANGE_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    stream.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends a numbered line and reads its echo back.
fn exchange(stream: &mut TcpStream, number: u64) -> io::Result<()> {
    let line = format!("{number:016}\n");
    stream.write_all(line.as_bytes())?;
    let mut echo = vec![0; line.len()];
    stream.read_exact(&mut echo)?;
    if echo != line.as_bytes() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the echo differs"));
    }
    Ok(())
}
