//! A step's flows: read from the lab's flow log as the agent appends them, and normalised for
//! golden files: Hubble's JSON without `time` and `uuid`, ephemeral ports renumbered, and a stable
//! order. The order: connections as they first appear (the client's address and port name one,
//! both ways), and within a connection by the packet's place in a TCP exchange (SYN, SYN-ACK,
//! ACK, data, the echo, FINs, RST) or request before reply, keeping the recorded order among a
//! packet's own flows. Two cores may interleave the events of one connection's packets; they
//! never reorder a packet's own path.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use crate::flow::{Flow, FlowRecord, Layer4, Verdict};

use super::capture::PortNumbers;

/// Reads a flow log from where it stood when the tail was made.
#[derive(Debug)]
pub struct FlowTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl FlowTail {
    /// From the end of the log as it is now.
    pub fn at_end(path: PathBuf) -> FlowTail {
        let offset = std::fs::metadata(&path).map_or(0, |m| m.len());
        FlowTail { path, offset, partial: String::new() }
    }

    /// The flows appended since the last call.
    pub fn read(&mut self) -> Vec<Flow> {
        let Ok(mut file) = std::fs::File::open(&self.path) else { return Vec::new() };
        let length = file.metadata().map_or(0, |m| m.len());
        if length < self.offset {
            // Rotated: the new log starts from nothing.
            self.offset = 0;
            self.partial.clear();
        }
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_string(&mut text).is_err() {
            return Vec::new();
        }
        self.offset += text.len() as u64;
        let text = std::mem::take(&mut self.partial) + &text;
        let (complete, rest) = match text.rfind('\n') {
            Some(end) => text.split_at(end + 1),
            None => ("", text.as_str()),
        };
        self.partial = rest.to_string();
        complete.lines().filter_map(|line| serde_json::from_str::<FlowRecord>(line).ok()).map(|r| r.flow).collect()
    }
}

/// Whether `flow` is a drop of a packet from or to the client port `port` of `protocol`
/// (6 TCP, 17 UDP, 1 ICMP, where the port is the echo's identifier and flows carry none).
pub fn drops_port(flow: &Flow, protocol: u8, port: u16) -> bool {
    if flow.verdict != Verdict::Dropped {
        return false;
    }
    match (&flow.l4, protocol) {
        (Some(Layer4::Tcp(_)), 6) | (Some(Layer4::Udp(_)), 17) => {
            flow.ports().is_some_and(|(s, d)| s == u32::from(port) || d == u32::from(port))
        }
        (Some(Layer4::Icmpv4(_)), 1) => true,
        _ => false,
    }
}

/// The client side of a flow's connection: the source of a request, the destination of a reply.
fn client(flow: &Flow) -> (String, u32) {
    let (source_port, destination_port) = flow.ports().unwrap_or((0, 0));
    let ip = flow.ip.clone().unwrap_or_default();
    if flow.is_reply == Some(true) { (ip.destination, destination_port) } else { (ip.source, source_port) }
}

/// Where a flow's packet stands in its exchange.
fn phase(flow: &Flow) -> u8 {
    let reply = flow.is_reply == Some(true);
    match &flow.l4 {
        Some(Layer4::Tcp(tcp)) => {
            let flags = tcp.flags.unwrap_or_default();
            match (flags.syn, flags.rst, flags.fin, flags.psh, flags.ack) {
                (true, _, _, _, false) => 0,
                (true, _, _, _, true) => 1,
                (_, true, _, _, _) => 8,
                (_, _, true, _, _) => 6 + u8::from(reply),
                (_, _, _, true, _) => 3 + u8::from(reply),
                _ => 2 + 3 * u8::from(reply),
            }
        }
        _ => u8::from(reply),
    }
}

/// A step's flows as golden JSON lines.
pub fn normalise(flows: &[Flow]) -> String {
    let mut connections: Vec<(String, u32)> = Vec::new();
    let mut keyed: Vec<(usize, u8, usize, &Flow)> = Vec::new();
    for (order, flow) in flows.iter().enumerate() {
        let key = client(flow);
        let connection = match connections.iter().position(|c| *c == key) {
            Some(at) => at,
            None => {
                connections.push(key);
                connections.len() - 1
            }
        };
        keyed.push((connection, phase(flow), order, flow));
    }
    keyed.sort_by_key(|(connection, phase, order, _)| (*connection, *phase, *order));
    let mut ports = PortNumbers::default();
    let mut out = String::new();
    for (_, _, _, flow) in keyed {
        let mut flow = flow.normalized();
        match &mut flow.l4 {
            Some(Layer4::Tcp(tcp)) => {
                tcp.source_port = u32::from(ports.fixed(tcp.source_port as u16));
                tcp.destination_port = u32::from(ports.fixed(tcp.destination_port as u16));
            }
            Some(Layer4::Udp(udp)) => {
                udp.source_port = u32::from(ports.fixed(udp.source_port as u16));
                udp.destination_port = u32::from(ports.fixed(udp.destination_port as u16));
            }
            _ => {}
        }
        out.push_str(&serde_json::to_string(&flow).expect("a flow serialises"));
        out.push('\n');
    }
    out
}
