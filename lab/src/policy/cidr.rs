//! CIDR peers (`fromCIDR`, `toCIDRSet`, NetworkPolicy `ipBlock`) and the local CIDR identities
//! that stand for them, as Cilium's ipcache and selector cache use them.
//!
//! Every prefix a rule names, `cidr` and each `except` alike, gets a local CIDR identity
//! (`0x01000000 | n`, n counting from 1 over the sorted prefixes) that the datapath inserts into
//! the ipcache. The ipcache is a longest-prefix match, so a packet's address resolves to the most
//! specific prefix that holds it: a pod's /32 or a node's address (more specific, or equal and of
//! higher precedence, as Cilium's ipcache sources rank), else the longest policy prefix, else
//! `0.0.0.0/0`, which is world. A CIDR peer therefore selects every CIDR identity whose prefix
//! lies inside its `cidr` and inside none of its `except`s (an `except` prefix has its own
//! identity, so addresses in it never resolve to a selected one), plus world when its `cidr` is
//! `0.0.0.0/0`. `0.0.0.0/0` itself is never a CIDR identity: it is world.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use crate::identity::Labels;

/// The flag of node-local identities (Cilium's `identity.IdentityScopeLocal`): CIDR identities
/// are `LOCAL_IDENTITY_FLAG | n`. They never leave the node.
pub const LOCAL_IDENTITY_FLAG: u32 = 0x0100_0000;

/// A CIDR peer, checked: `cidr` and `except` in canonical form (host bits cleared), every
/// `except` inside `cidr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrPeer {
    pub cidr: Ipv4Net,
    pub except: Vec<Ipv4Net>,
    /// Where it was written (`spec.ingress[0].from[1].ipBlock`), for warnings.
    pub field: String,
}

impl CidrPeer {
    /// Whether the peer selects the CIDR identity of `prefix`: inside `cidr`, inside no `except`.
    pub fn selects_prefix(&self, prefix: &Ipv4Net) -> bool {
        self.cidr.contains(prefix) && !self.except.iter().any(|e| e.contains(prefix))
    }

    /// Whether `ip` is in the block: inside `cidr`, outside every `except`.
    pub fn contains_ip(&self, ip: Ipv4Addr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }

    /// Whether it selects world too: its `cidr` is `0.0.0.0/0`.
    pub fn includes_world(&self) -> bool {
        self.cidr.prefix_len() == 0
    }

    /// The prefixes that need a CIDR identity: `cidr` and every `except`, but not `0.0.0.0/0`.
    pub fn prefixes(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        std::iter::once(self.cidr).chain(self.except.iter().copied()).filter(|p| p.prefix_len() > 0)
    }

    /// `10.0.0.0/8` or `10.0.0.0/8 except 10.1.0.0/16, 10.2.0.0/16`.
    pub fn describe(&self) -> String {
        if self.except.is_empty() {
            return self.cidr.to_string();
        }
        let except: Vec<String> = self.except.iter().map(ToString::to_string).collect();
        format!("{} except {}", self.cidr, except.join(", "))
    }
}

/// A parsed CIDR: the lab is IPv4 only, so an IPv6 one is kept apart (it matches nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    V4(Ipv4Net),
    V6,
}

/// Parses `10.0.0.0/8` (host bits are cleared, as Cilium does); with `bare_ip`, a single address
/// `10.0.0.1` is its /32 (Cilium's `fromCIDR` accepts that, a NetworkPolicy `ipBlock` does not).
pub fn parse(text: &str, bare_ip: bool) -> Result<Parsed, String> {
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(ip) if bare_ip => IpNet::from(ip),
            Ok(_) => return Err(format!("`{text}` is an address, not a CIDR: write `{text}/32` (or /128)")),
            Err(_) => return Err(format!("`{text}` is not a CIDR (like 10.0.0.0/8)")),
        },
    };
    Ok(match net {
        IpNet::V4(net) => Parsed::V4(net.trunc()),
        IpNet::V6(_) => Parsed::V6,
    })
}

/// The CIDR identities of a set of prefixes: `LOCAL_IDENTITY_FLAG | n`, n = 1, 2, ... in sorted
/// order (network address, then prefix length). `0.0.0.0/0` is skipped: it is world.
pub fn number(prefixes: impl IntoIterator<Item = Ipv4Net>) -> BTreeMap<Ipv4Net, u32> {
    let sorted: BTreeSet<Ipv4Net> = prefixes.into_iter().filter(|p| p.prefix_len() > 0).collect();
    sorted.into_iter().zip(1u32..).map(|(prefix, n)| (prefix, LOCAL_IDENTITY_FLAG | n)).collect()
}

/// The labels Cilium gives a CIDR identity (pkg/labels `GetCIDRLabels`): `cidr:<prefix>` and the
/// world label, so that the `world` entity (and a `reserved:world` selector) selects it too.
pub fn labels(prefix: &Ipv4Net) -> Labels {
    Labels(BTreeMap::from([(format!("cidr:{prefix}"), String::new()), ("reserved:world".to_string(), String::new())]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn parsing_clears_host_bits_and_knows_bare_addresses() {
        assert_eq!(parse("10.1.2.3/8", false), Ok(Parsed::V4(net("10.0.0.0/8"))));
        assert_eq!(parse("10.1.2.3", true), Ok(Parsed::V4(net("10.1.2.3/32"))));
        assert!(parse("10.1.2.3", false).unwrap_err().contains("10.1.2.3/32"));
        assert_eq!(parse("2001:db8::/32", false), Ok(Parsed::V6));
        assert!(parse("10.0.0.0/33", true).unwrap_err().contains("not a CIDR"));
        assert!(parse("ten", true).is_err());
    }

    #[test]
    fn numbering_is_sorted_and_skips_the_default_route() {
        let ids =
            number([net("10.1.0.0/16"), net("0.0.0.0/0"), net("10.0.0.0/8"), net("10.0.0.0/16"), net("10.0.0.0/8")]);
        assert_eq!(
            ids.into_iter().collect::<Vec<_>>(),
            vec![
                (net("10.0.0.0/8"), 0x0100_0001),
                (net("10.0.0.0/16"), 0x0100_0002),
                (net("10.1.0.0/16"), 0x0100_0003)
            ]
        );
    }

    #[test]
    fn selection_is_inside_cidr_and_outside_excepts() {
        let peer = CidrPeer { cidr: net("10.0.0.0/8"), except: vec![net("10.1.0.0/16")], field: String::new() };
        assert!(peer.selects_prefix(&net("10.0.0.0/8")));
        assert!(peer.selects_prefix(&net("10.2.0.0/16")));
        assert!(!peer.selects_prefix(&net("10.1.0.0/16")), "the except has its own identity");
        assert!(!peer.selects_prefix(&net("10.1.2.0/24")));
        assert!(!peer.selects_prefix(&net("0.0.0.0/1")), "wider than the cidr");
        assert!(!peer.selects_prefix(&net("192.168.0.0/16")));
        assert!(peer.contains_ip("10.2.0.1".parse().unwrap()));
        assert!(!peer.contains_ip("10.1.0.1".parse().unwrap()));
        assert!(!peer.includes_world());
        assert_eq!(peer.prefixes().collect::<Vec<_>>(), [net("10.0.0.0/8"), net("10.1.0.0/16")]);
        assert_eq!(peer.describe(), "10.0.0.0/8 except 10.1.0.0/16");
    }
}
