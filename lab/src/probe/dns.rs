//! Just enough DNS for the lab: a probe's A query, and the built-in server's answer to one
//! (RFC 1035, one question, no compression in what it writes).

use std::net::Ipv4Addr;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
/// Response, recursion desired and available.
const RESPONSE: u16 = 0x8180;
const NXDOMAIN: u16 = 3;

/// A recursive A query for `name` with the given id.
pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut packet = Vec::with_capacity(name.len() + 18);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&0x0100u16.to_be_bytes()); // recursion desired
    packet.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        packet.push(label.len().min(63) as u8);
        packet.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    packet.push(0);
    packet.extend_from_slice(&TYPE_A.to_be_bytes());
    packet.extend_from_slice(&CLASS_IN.to_be_bytes());
    packet
}

/// The question of a query: its name (lowercase, no trailing dot), type, and where it ends.
fn question(packet: &[u8]) -> Option<(String, u16, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *packet.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(packet.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let kind = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
    Some((labels.join("."), kind, at + 4))
}

/// The answer to `packet` if it is a query of one question: the address `lookup` gives for an
/// A query, or NXDOMAIN. Not a query: `None`, and the server echoes it as any UDP port does.
pub fn answer(packet: &[u8], lookup: impl Fn(&str) -> Option<Ipv4Addr>) -> Option<Vec<u8>> {
    if packet.len() < 12 || packet[2] & 0x80 != 0 || packet[4..6] != [0, 1] {
        return None;
    }
    let (name, kind, end) = question(packet)?;
    let address = if kind == TYPE_A { lookup(&name) } else { None };
    let mut reply = packet[..end].to_vec();
    let flags = RESPONSE | if address.is_none() && kind == TYPE_A { NXDOMAIN } else { 0 };
    reply[2..4].copy_from_slice(&flags.to_be_bytes());
    reply[6..8].copy_from_slice(&u16::from(address.is_some()).to_be_bytes());
    reply[8..12].fill(0);
    if let Some(address) = address {
        reply.extend_from_slice(&[0xc0, 12]); // the question's name
        reply.extend_from_slice(&TYPE_A.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&30u32.to_be_bytes()); // TTL, as CoreDNS's default for services
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&address.octets());
    }
    Some(reply)
}

/// Whether `reply` answers the query `id`: a response with its id. The address it gives, if any.
pub fn read_answer(reply: &[u8], id: u16) -> Option<Option<Ipv4Addr>> {
    if reply.len() < 12 || reply[..2] != id.to_be_bytes() || reply[2] & 0x80 == 0 {
        return None;
    }
    let answers = u16::from_be_bytes([reply[6], reply[7]]);
    let (_, _, end) = question(reply)?;
    if answers == 0 {
        return Some(None);
    }
    // The first answer: a name (a pointer here), type, class, TTL, length, data.
    let data = reply.get(end + 12..end + 16)?;
    Some(Some(Ipv4Addr::new(data[0], data[1], data[2], data[3])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_answered_with_the_address_or_nxdomain() {
        let lookup = |name: &str| (name == "web.shop.svc.cluster.local").then_some(Ipv4Addr::new(172, 30, 0, 10));
        let reply = answer(&query(7, "web.shop.svc.cluster.local."), lookup).unwrap();
        assert_eq!(read_answer(&reply, 7), Some(Some(Ipv4Addr::new(172, 30, 0, 10))));
        let reply = answer(&query(8, "nope.shop.svc.cluster.local"), lookup).unwrap();
        assert_eq!(reply[3] & 0x0f, 3, "NXDOMAIN");
        assert_eq!(read_answer(&reply, 8), Some(None));
        assert_eq!(read_answer(&reply, 9), None, "another query's id");
        assert!(answer(b"lab probe\n", lookup).is_none(), "anything else is echoed");
    }
}
