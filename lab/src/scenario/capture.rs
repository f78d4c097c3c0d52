//! Packets of chosen interfaces during a step: taken with a packet socket inside the interface's
//! namespace, kept as a pcap (synthetic timestamps: the packet's index in microseconds; little
//! endian on every host) and rendered one line a packet for golden files. What the kernel does not
//! fix is left out of the rendering or made relative, as packetdrill does: TCP sequence numbers
//! count from each direction's SYN (or first segment seen), IP IDs, checksums and windows are not
//! shown, ports from the kernel's ephemeral range (and ICMP echo identifiers not the step's
//! probes') are renumbered in order of appearance. Left out: pure ACKs (no data, no SYN, FIN or
//! RST), whose number and timing follow delayed-ACK timers; what the kernel sends when it pleases
//! or as a rate limit allows: IGMP reports and ICMP redirects; and retransmissions (a frame
//! rendered the same as an earlier one), as how many of them fall inside a step follows the
//! machine's speed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::{Context, Result};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use crate::net::netns;

/// One frame as the interface saw it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Sent by this interface's namespace (rather than received).
    pub outgoing: bool,
    pub bytes: Vec<u8>,
}

/// A packet socket on one interface.
pub struct Capture {
    socket: OwnedFd,
}

const SNAPLEN: usize = 65536;

impl Capture {
    /// Starts capturing every frame of `interface` inside `netns`.
    pub fn open(netns_file: &File, interface: &str) -> Result<Capture> {
        let all = (libc::ETH_P_ALL as u16).to_be();
        let socket = netns::run_in(netns_file, || -> io::Result<OwnedFd> {
            // Protocol 0: nothing arrives before the socket is bound to the one interface.
            // SAFETY: plain system calls; the descriptor is owned at once.
            let fd =
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let socket = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = std::ffi::CString::new(interface).map_err(io::Error::other)?;
            // Inside the namespace, so the index is of its interface.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                return Err(io::Error::last_os_error());
            }
            let size: libc::c_int = 8 << 20;
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_protocol = all;
            address.sll_ifindex = index as i32;
            let bound = unsafe {
                libc::bind(
                    fd,
                    (&address as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if bound < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(socket)
        })?
        .with_context(|| format!("capturing on {interface}"))?;
        Ok(Capture { socket })
    }

    /// Every frame captured so far, in the order the interface saw them.
    pub fn drain(&self) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut buffer = vec![0u8; SNAPLEN];
        loop {
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: the buffer and address outlive the call, with their lengths.
            let len = unsafe {
                libc::recvfrom(
                    self.socket.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if len <= 0 {
                return frames;
            }
            let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
            frames.push(Frame { outgoing, bytes: buffer[..len as usize].to_vec() });
        }
    }
}

/// The TCP source and destination ports of an IPv4 frame.
pub fn tcp_ports(frame: &Frame) -> Option<(u16, u16)> {
    let packet = etherparse::SlicedPacket::from_ethernet(&frame.bytes).ok()?;
    match packet.transport? {
        etherparse::TransportSlice::Tcp(tcp) => Some((tcp.source_port(), tcp.destination_port())),
        _ => None,
    }
}

/// The frames as a pcap file: little endian, Ethernet, the n-th frame stamped n microseconds.
pub fn pcap(frames: &[Frame]) -> Vec<u8> {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let header =
        PcapHeader { endianness: pcap_file::Endianness::Little, snaplen: SNAPLEN as u32, ..PcapHeader::default() };
    let mut writer = PcapWriter::with_header(Vec::new(), header).expect("writing to memory");
    for (index, frame) in frames.iter().enumerate() {
        let packet = PcapPacket::new(Duration::from_micros(index as u64), frame.bytes.len() as u32, &frame.bytes);
        writer.write_packet(&packet).expect("writing to memory");
    }
    writer.into_writer()
}

/// The kernel's default ephemeral port range starts here (`net.ipv4.ip_local_port_range`);
/// ports from it are chosen at random, and renumbered in renderings and flows.
pub const EPHEMERAL_PORTS: u16 = 32768;

/// Ephemeral ports renumbered in order of appearance: the first seen becomes 32768, the next
/// 32769, ...
#[derive(Debug, Default)]
pub struct PortNumbers {
    renumbered: HashMap<u16, u16>,
    /// The client ports of the step's own probes, which are their echo identifiers too.
    probe_ids: Range<u16>,
}

impl PortNumbers {
    pub fn fixed(&mut self, port: u16) -> u16 {
        if port < EPHEMERAL_PORTS {
            return port;
        }
        self.renumbered(port)
    }

    /// An ICMP echo identifier: the client port of one of the step's probes, or the kernel's
    /// choice (for `ping`, say: the next of a counter shared by every namespace, so any value)
    /// renumbered as an ephemeral port.
    pub fn echo_id(&mut self, id: u16) -> u16 {
        if self.probe_ids.contains(&id) { id } else { self.renumbered(id) }
    }

    fn renumbered(&mut self, value: u16) -> u16 {
        let next = EPHEMERAL_PORTS + self.renumbered.len() as u16;
        *self.renumbered.entry(value).or_insert(next)
    }
}

/// One line a packet; see the module's documentation for what is normalised. `probe_ports` are
/// the client ports of the step's probes.
pub fn render(frames: &[Frame], probe_ports: Range<u16>) -> String {
    let mut out = String::new();
    let mut bases: HashMap<(Ipv4Addr, u16, Ipv4Addr, u16), u32> = HashMap::new();
    let mut ports = PortNumbers { probe_ids: probe_ports, ..PortNumbers::default() };
    let mut seen = HashSet::new();
    let mut number = 0;
    for frame in frames {
        let Some(line) = render_frame(frame, &mut bases, &mut ports) else { continue };
        if !seen.insert((frame.outgoing, line.clone())) {
            continue;
        }
        number += 1;
        out.push_str(&format!("{number} {} {line}\n", if frame.outgoing { "out" } else { "in" }));
    }
    out
}

fn render_frame(
    frame: &Frame,
    bases: &mut HashMap<(Ipv4Addr, u16, Ipv4Addr, u16), u32>,
    ports: &mut PortNumbers,
) -> Option<String> {
    let bytes = &frame.bytes;
    let mac = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":");
    if bytes.len() < 14 {
        return Some(format!("runt frame of {} bytes", bytes.len()));
    }
    let macs = format!("{} > {}", mac(&bytes[6..12]), mac(&bytes[..6]));
    let Ok(packet) = SlicedPacket::from_ethernet(bytes) else {
        return Some(format!("{macs} malformed, {} bytes", bytes.len()));
    };
    let Some(NetSlice::Ipv4(ip)) = &packet.net else {
        let ether_type = u16::from_be_bytes([bytes[12], bytes[13]]);
        return Some(format!("{macs} ethertype 0x{ether_type:04x}, {} bytes", bytes.len()));
    };
    let header = ip.header();
    let (source, destination) = (header.source_addr(), header.destination_addr());
    let ip_part = |detail: String| {
        let df = if header.dont_fragment() { " DF" } else { "" };
        format!("{macs} {detail} ttl {}{df}", header.ttl())
    };
    Some(match &packet.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let payload = tcp.payload().len();
            let (syn, fin, rst, psh, ack) = (tcp.syn(), tcp.fin(), tcp.rst(), tcp.psh(), tcp.ack());
            if payload == 0 && ack && !(syn || fin || rst || psh) {
                return None;
            }
            let (sport, dport) = (ports.fixed(tcp.source_port()), ports.fixed(tcp.destination_port()));
            let key = (source, tcp.source_port(), destination, tcp.destination_port());
            // A SYN starts the sequence space afresh: a connection that the peer reset and the
            // client's retransmitted SYN opened again counts from 0 like the first.
            let base = match syn {
                true => *bases.entry(key).insert_entry(tcp.sequence_number()).get(),
                false => *bases.entry(key).or_insert(tcp.sequence_number()),
            };
            let reverse = (destination, tcp.destination_port(), source, tcp.source_port());
            let mut flags = String::new();
            for (set, c) in [(syn, 'S'), (fin, 'F'), (rst, 'R'), (psh, 'P'), (ack, '.')] {
                if set {
                    flags.push(c);
                }
            }
            let mut detail = format!(
                "{source}:{sport} > {destination}:{dport} tcp [{flags}] seq {}",
                tcp.sequence_number().wrapping_sub(base)
            );
            if ack {
                let peer = match syn {
                    true => *bases.entry(reverse).insert_entry(tcp.acknowledgment_number().wrapping_sub(1)).get(),
                    false => *bases.entry(reverse).or_insert(tcp.acknowledgment_number()),
                };
                detail.push_str(&format!(" ack {}", tcp.acknowledgment_number().wrapping_sub(peer)));
            }
            detail.push_str(&format!(" len {payload}"));
            let options: Vec<String> = tcp
                .options_iterator()
                .filter_map(|o| o.ok())
                .map(|option| {
                    use etherparse::TcpOptionElement::*;
                    match option {
                        MaximumSegmentSize(mss) => format!("mss {mss}"),
                        // The scale follows the host's memory (tcp_rmem), not the lab.
                        WindowScale(_) => "wscale".to_string(),
                        SelectiveAcknowledgementPermitted => "sackOK".to_string(),
                        SelectiveAcknowledgement(..) => "sack".to_string(),
                        Timestamp(..) => "TS".to_string(),
                        Noop => "nop".to_string(),
                    }
                })
                .filter(|o| o != "nop")
                .collect();
            if !options.is_empty() {
                detail.push_str(&format!(" <{}>", options.join(",")));
            }
            ip_part(detail)
        }
        Some(TransportSlice::Udp(udp)) => {
            let (sport, dport) = (ports.fixed(udp.source_port()), ports.fixed(udp.destination_port()));
            ip_part(format!("{source}:{sport} > {destination}:{dport} udp len {}", udp.payload().len()))
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            use etherparse::Icmpv4Type::*;
            let what = match icmp.icmp_type() {
                EchoRequest(echo) => format!("echo request id {} seq {}", ports.echo_id(echo.id), echo.seq),
                EchoReply(echo) => format!("echo reply id {} seq {}", ports.echo_id(echo.id), echo.seq),
                // Sent or not as the kernel's rate limit allows.
                Redirect(_) => return None,
                DestinationUnreachable(code) => format!("unreachable {code:?}"),
                TimeExceeded(code) => format!("time exceeded {code:?}"),
                other => format!("{other:?}"),
            };
            ip_part(format!("{source} > {destination} icmp {what} len {}", icmp.payload().len()))
        }
        // Multicast membership reports go out when the kernel pleases.
        _ if header.protocol() == etherparse::IpNumber::IGMP => return None,
        _ => ip_part(format!("{source} > {destination} ip protocol {}", header.protocol().0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp(seq: u32, ack: Option<u32>, syn: bool, payload: &[u8], outgoing: bool) -> Frame {
        let (a, b) = ([10, 0, 0, 2], [10, 0, 0, 3]);
        let (src, dst, sport, dport) = if outgoing { (a, b, 20001, 80) } else { (b, a, 80, 20001) };
        let mut builder = PacketBuilder::ethernet2([0x0a, 0x58, 10, 0, 0, 2], [0x0a, 0x59, 10, 0, 0, 2])
            .ipv4(src, dst, 64)
            .tcp(sport, dport, seq, 64240);
        if syn {
            builder = builder.syn();
        }
        if let Some(ack) = ack {
            builder = builder.ack(ack);
        }
        let mut bytes = Vec::new();
        builder.write(&mut bytes, payload).unwrap();
        Frame { outgoing, bytes }
    }

    #[test]
    fn sequence_numbers_are_relative_and_pure_acks_left_out() {
        let frames = vec![
            tcp(1000, None, true, b"", true),
            tcp(5000, Some(1001), true, b"", false),
            tcp(1001, Some(5001), false, b"", true), // pure ACK
            tcp(1001, Some(5001), false, b"hello", true),
        ];
        let text = render(&frames, 20000..20001);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with(
                "1 out 0a:58:0a:00:00:02 > 0a:59:0a:00:00:02 10.0.0.2:20001 > 10.0.0.3:80 tcp [S] seq 0 len 0"
            ),
            "{text}"
        );
        assert!(lines[1].contains("tcp [S.] seq 0 ack 1 len 0"), "{text}");
        assert!(lines[2].starts_with("3 out") && lines[2].contains("tcp [.] seq 1 ack 1 len 5"), "{text}");
        assert!(!text.contains("5000") && !text.contains("1001"), "{text}");
    }

    #[test]
    fn retransmissions_are_left_out() {
        let frames = vec![
            tcp(1000, None, true, b"", true),
            tcp(5000, Some(1001), true, b"", false),
            tcp(5000, Some(1001), true, b"", false), // the SYN-ACK again, its timer run out
            tcp(1001, Some(5001), false, b"hello", true),
            tcp(1001, Some(5001), false, b"hello", true),
            tcp(1006, Some(5001), false, b"hello", true), // new data, the same bytes
        ];
        let text = render(&frames, 20000..20001);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].starts_with("2 in") && lines[1].contains("[S.] seq 0 ack 1 len 0"), "{text}");
        assert!(lines[2].starts_with("3 out") && lines[2].contains("seq 1 ack 1 len 5"), "{text}");
        assert!(lines[3].starts_with("4 out") && lines[3].contains("seq 6 ack 1 len 5"), "{text}");
    }

    #[test]
    fn a_connection_opened_again_counts_from_its_new_syn() {
        let frames = vec![
            tcp(1000, None, true, b"", true),
            tcp(5000, Some(1001), true, b"", false),
            tcp(1000, None, true, b"", true), // the SYN retransmitted: the SYN-ACK went elsewhere
            tcp(9000, Some(1001), true, b"", false), // the server's new SYN-ACK, a new ISN
        ];
        let text = render(&frames, 20000..20001);
        assert_eq!(text.lines().count(), 2, "the second opening renders as the first:\n{text}");
    }

    #[test]
    fn ephemeral_ports_are_renumbered_in_order() {
        let mut ports = PortNumbers::default();
        assert_eq!(
            (ports.fixed(80), ports.fixed(51234), ports.fixed(40000), ports.fixed(51234)),
            (80, 32768, 32769, 32768)
        );
    }

    #[test]
    fn echo_identifiers_are_kept_only_for_the_step_s_probes() {
        let mut ports = PortNumbers { probe_ids: 20100..20102, ..PortNumbers::default() };
        assert_eq!(
            (ports.echo_id(20101), ports.echo_id(23907), ports.echo_id(20102), ports.echo_id(23907)),
            (20101, 32768, 32769, 32768),
            "a `ping` whose identifier falls among the lab's ports is renumbered all the same"
        );
    }

    #[test]
    fn pcaps_are_little_endian_with_synthetic_times() {
        let bytes = pcap(&[tcp(1, None, true, b"", true)]);
        assert_eq!(&bytes[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "little-endian magic");
        assert_eq!(&bytes[24..32], &[0; 8], "the first packet at 0 s 0 us");
    }
}
