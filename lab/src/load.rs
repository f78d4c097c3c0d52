//! Steady traffic while something changes under it (a datapath upgrade, an agent restart): from
//! inside one namespace, a stream of new TCP connections at a fixed rate, each exchanging once
//! with the echo server and closing, and one established connection exchanging on every tick.
//! Every failure is counted, so a change that costs traffic shows up as a number, not as a
//! flaky probe.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// A load running on a thread of its own until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    worker: JoinHandle<LoadReport>,
}

/// How long one exchange may take before it counts as failed: well above a first packet's
/// latency through freshly loaded programs, well below TCP's first retransmission.
const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(800);
/// One tick: an exchange on the established connection.
const TICK: Duration = Duration::from_millis(10);

impl Load {
    /// Starts the load from `from` (a namespace) to `to`, an echo server: `rate` new connections
    /// a second, and one connection kept open. Fails if the kept connection cannot be made.
    pub fn start(from: &File, to: SocketAddrV4, rate: u32) -> Result<Load> {
        let established = connect(from, to).with_context(|| format!("opening the established connection to {to}"))?;
        let from = from.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let every = Duration::from_secs(1) / rate.max(1);
        let worker = std::thread::spawn(move || {
            let mut report = LoadReport::default();
            let mut established = Some(established);
            let mut next_connection = Instant::now();
            while !stopped.load(Ordering::Relaxed) {
                let tick = Instant::now();
                report.exchanges += 1;
                if established.as_mut().is_none_or(|stream| exchange(stream, report.exchanges).is_err()) {
                    report.failed_exchanges += 1;
                    established = None;
                }
                if tick >= next_connection {
                    report.new_connections += 1;
                    let fresh = connect(&from, to).and_then(|mut stream| exchange(&mut stream, 0));
                    if fresh.is_err() {
                        report.failed_connections += 1;
                    }
                    next_connection += every;
                }
                std::thread::sleep(TICK.saturating_sub(tick.elapsed()));
            }
            report
        });
        Ok(Load { stop, worker })
    }

    /// Stops the load and reports what it saw.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.worker.join().expect("the load's thread does not panic")
    }
}

/// A TCP connection from inside `from`: the socket is made there, and keeps its namespace.
fn connect(from: &File, to: SocketAddrV4) -> io::Result<TcpStream> {
    let socket = netns::run_in(from, || Socket::new(Domain::IPV4, Type::STREAM, None))??;
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
