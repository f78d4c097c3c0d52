//! Protocols and ports of policy rules, and how a port range becomes aligned prefix blocks
//! (Cilium's pkg/policy/portrange.go).

use std::fmt;

/// IP protocol numbers of the L4 protocols a port rule can name.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// A port rule's `protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolSpec {
    /// `ANY` or omitted: one entry per TCP and UDP (SCTP only when named).
    Any,
    /// One IP protocol (TCP, UDP or SCTP).
    One(u8),
}

impl ProtocolSpec {
    /// Cilium's spelling: `TCP`, `UDP`, `SCTP`, `ANY`; omitted or empty means `ANY`.
    pub fn parse(text: Option<&str>) -> Result<ProtocolSpec, String> {
        match text.unwrap_or("") {
            "" | "ANY" => Ok(ProtocolSpec::Any),
            "TCP" => Ok(ProtocolSpec::One(IPPROTO_TCP)),
            "UDP" => Ok(ProtocolSpec::One(IPPROTO_UDP)),
            "SCTP" => Ok(ProtocolSpec::One(IPPROTO_SCTP)),
            other if ["tcp", "udp", "sctp", "any"].contains(&other.to_ascii_lowercase().as_str()) => Err(format!(
                "unknown protocol `{other}`: protocols are written in upper case (`{}`)",
                other.to_ascii_uppercase()
            )),
            other => Err(format!("unknown protocol `{other}`, expected TCP, UDP, SCTP or ANY")),
        }
    }

    /// The protocols this spec stands for in a port rule: `ANY` is TCP and UDP.
    pub fn expand(self) -> Vec<u8> {
        match self {
            ProtocolSpec::Any => vec![IPPROTO_TCP, IPPROTO_UDP],
            ProtocolSpec::One(p) => vec![p],
        }
    }
}

/// A protocol number as people write it.
pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        0 => "any".into(),
        IPPROTO_TCP => "TCP".into(),
        IPPROTO_UDP => "UDP".into(),
        IPPROTO_SCTP => "SCTP".into(),
        1 => "ICMP".into(),
        other => format!("proto {other}"),
    }
}

/// A port rule's port, checked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSpec {
    /// `port: 0` or no port: every port of the protocol.
    Any,
    /// `port` alone (start == end) or `port` .. `endPort`, inclusive, start ≥ 1.
    Range(u16, u16),
    /// A named port, resolved per endpoint.
    Named(String),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Any => f.write_str("any"),
            PortSpec::Range(a, b) if a == b => write!(f, "{a}"),
            PortSpec::Range(a, b) => write!(f, "{a}-{b}"),
            PortSpec::Named(name) => f.write_str(name),
        }
    }
}

/// Whether `name` is a valid named port (Kubernetes IANA_SVC_NAME): 1–15 lower-case letters,
/// digits and inner single hyphens, with at least one letter.
pub fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Splits `start..=end` into the fewest aligned blocks, each `(first port, prefix bits of the
/// 16-bit port)`: 8080–8090 → (8080, 13), (8088, 15), (8090, 16); 0–65535 → (0, 0).
pub fn split_range(start: u16, end: u16) -> Vec<(u16, u8)> {
    let (mut port, end) = (u32::from(start), u32::from(end));
    let mut blocks = Vec::new();
    while port <= end {
        let mut free_bits = if port == 0 { 16 } else { port.trailing_zeros().min(16) };
        while port + (1 << free_bits) - 1 > end {
            free_bits -= 1;
        }
        blocks.push((port as u16, (16 - free_bits) as u8));
        port += 1 << free_bits;
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_into_aligned_blocks() {
        assert_eq!(split_range(8080, 8090), vec![(8080, 13), (8088, 15), (8090, 16)]);
        assert_eq!(split_range(1024, 65535), vec![(1024, 6), (2048, 5), (4096, 4), (8192, 3), (16384, 2), (32768, 1)]);
        assert_eq!(split_range(80, 80), vec![(80, 16)]);
        assert_eq!(split_range(0, 65535), vec![(0, 0)]);
        assert_eq!(split_range(1, 65535).len(), 16);
        assert_eq!(split_range(65535, 65535), vec![(65535, 16)]);
    }

    #[test]
    fn blocks_cover_exactly_the_range() {
        for (start, end) in [(1, 1), (3, 17), (1000, 1999), (8080, 8090), (1024, 65535), (12345, 54321), (2, 65534)] {
            let blocks = split_range(start, end);
            let mut covered = Vec::new();
            for (first, bits) in blocks {
                let size = 1u32 << (16 - bits);
                assert_eq!(u32::from(first) % size, 0, "block {first}/{bits} is aligned");
                covered.extend(u32::from(first)..u32::from(first) + size);
            }
            assert_eq!(covered, (u32::from(start)..=u32::from(end)).collect::<Vec<_>>(), "{start}-{end}");
        }
    }

    #[test]
    fn protocols_and_port_names() {
        assert_eq!(ProtocolSpec::parse(None), Ok(ProtocolSpec::Any));
        assert_eq!(ProtocolSpec::parse(Some("UDP")), Ok(ProtocolSpec::One(17)));
        assert!(ProtocolSpec::parse(Some("tcp")).unwrap_err().contains("upper case"));
        assert!(ProtocolSpec::parse(Some("ICMP")).unwrap_err().contains("unknown protocol"));
        assert_eq!(ProtocolSpec::Any.expand(), vec![6, 17]);
        assert!(is_port_name("http") && is_port_name("http-8080") && is_port_name("h2c"));
        assert!(!is_port_name("8080") && !is_port_name("-http") && !is_port_name("HTTP") && !is_port_name("a--b"));
        assert!(!is_port_name("a-very-long-port-name"));
    }
}
