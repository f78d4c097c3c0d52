//! The policy decision for one packet, computed as bpf/lib/policy.h computes it from the
//! endpoint's map: two longest-prefix lookups (the remote identity, then identity 0), a deny
//! wins, then the longer protocol/port prefix, then the identity-specific entry.

use std::collections::BTreeMap;

use crate::datapath::abi::{POLICY_PREFIX_FULL, PolicyEntry, PolicyKey};

use super::EndpointPolicy;

pub use crate::datapath::abi::drop::{POLICY as DROP_POLICY, POLICY_DENY as DROP_POLICY_DENY};
pub use crate::datapath::abi::match_type;

/// What the datapath does with the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allowed,
    /// No entry matched: default deny (`DROP_POLICY`, 133).
    DefaultDenied,
    /// A deny entry matched (`DROP_POLICY_DENY`, 181).
    Denied,
}

impl Verdict {
    pub fn is_allowed(self) -> bool {
        self == Verdict::Allowed
    }

    /// The drop reason the datapath reports, if it drops.
    pub fn drop_reason(self) -> Option<u8> {
        match self {
            Verdict::Allowed => None,
            Verdict::DefaultDenied => Some(DROP_POLICY),
            Verdict::Denied => Some(DROP_POLICY_DENY),
        }
    }
}

/// The entry that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched {
    pub key: PolicyKey,
    pub entry: PolicyEntry,
    /// From the lookup with the remote identity (rather than identity 0).
    pub l3: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Whether the direction is enforced; if not, the packet is allowed without a lookup.
    pub enforced: bool,
    pub matched: Option<Matched>,
    /// As the verdict event reports it (`match_type::*`).
    pub match_type: u8,
}

/// The key's bytes after `prefixlen`, in memory order, as the kernel's LPM trie compares them
/// (most significant bit of the first byte first): the identity as the host stores a `u32`, the
/// direction byte, the protocol byte, the port (already in network order in the struct).
pub fn key_bits(key: &PolicyKey) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&key.identity.to_ne_bytes());
    bytes[4] = key.egress;
    bytes[5] = key.protocol;
    bytes[6..].copy_from_slice(&key.dport.to_ne_bytes());
    u64::from_be_bytes(bytes)
}

/// Whether the entry `key` matches the fully specified `lookup` in the LPM sense: the first
/// `key.prefixlen` bits are equal. Keys longer than 64 bits cannot be in the map.
pub fn prefix_matches(key: &PolicyKey, lookup: &PolicyKey) -> bool {
    if key.prefixlen > POLICY_PREFIX_FULL {
        return false;
    }
    let mask = if key.prefixlen == 0 { 0 } else { u64::MAX << (64 - key.prefixlen) };
    (key_bits(key) ^ key_bits(lookup)) & mask == 0
}

/// The kernel's longest-prefix match of a fully specified key over the map.
pub fn lpm_lookup<'a>(
    entries: &'a BTreeMap<PolicyKey, PolicyEntry>,
    lookup: &PolicyKey,
) -> Option<(&'a PolicyKey, &'a PolicyEntry)> {
    let mut best: Option<(&PolicyKey, &PolicyEntry)> = None;
    for (key, entry) in entries {
        if prefix_matches(key, lookup) && best.is_none_or(|(b, _)| key.prefixlen > b.prefixlen) {
            best = Some((key, entry));
        }
    }
    best
}

fn match_type_of(entry: &PolicyEntry, l3: bool) -> u8 {
    match (l3, entry.prefix_length) {
        (true, p) if p > 8 => match_type::L3_L4,
        (true, p) if p > 0 => match_type::L3_PROTO,
        (true, _) => match_type::L3_ONLY,
        (false, 0) => match_type::ALL,
        (false, p) if p <= 8 => match_type::PROTO_ONLY,
        (false, _) => match_type::L4_ONLY,
    }
}

/// The datapath's policy decision for a packet from (ingress) or to (egress) `remote_identity`
/// with `protocol` and destination `port` (host order), mirroring `policy_lookup` in
/// bpf/lib/policy.h.
pub fn lookup(policy: &EndpointPolicy, remote_identity: u32, egress: bool, protocol: u8, port: u16) -> Decision {
    let enforced = if egress { policy.egress_enforced } else { policy.ingress_enforced };
    if !enforced {
        return Decision { verdict: Verdict::Allowed, enforced, matched: None, match_type: match_type::NONE };
    }
    let mut key = PolicyKey {
        prefixlen: POLICY_PREFIX_FULL,
        identity: remote_identity,
        egress: u8::from(egress),
        protocol,
        dport: port.to_be(),
    };
    let l3 = lpm_lookup(&policy.entries, &key);
    key.identity = 0;
    let l4 = lpm_lookup(&policy.entries, &key);

    let (chosen, is_l3) = match (l3, l4) {
        (None, None) => {
            return Decision { verdict: Verdict::DefaultDenied, enforced, matched: None, match_type: match_type::NONE };
        }
        (Some(l3), None) => (l3, true),
        (None, Some(l4)) => (l4, false),
        (Some(l3), Some(_)) if l3.1.deny != 0 => (l3, true),
        (Some(l3), Some(l4)) => {
            if l4.1.deny != 0 || l4.1.prefix_length > l3.1.prefix_length {
                (l4, false)
            } else {
                (l3, true)
            }
        }
    };
    let (key, entry) = (*chosen.0, *chosen.1);
    Decision {
        verdict: if entry.deny != 0 { Verdict::Denied } else { Verdict::Allowed },
        enforced,
        matched: Some(Matched { key, entry, l3: is_l3 }),
        match_type: match_type_of(&entry, is_l3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(prefixlen: u32, identity: u32, egress: u8, protocol: u8, port: u16) -> PolicyKey {
        PolicyKey { prefixlen, identity, egress, protocol, dport: port.to_be() }
    }

    #[test]
    fn key_bits_follow_memory_order() {
        let k = key(64, 0x0102_0304, 1, 6, 0x1F90);
        let expected = u64::from_be_bytes({
            let id = 0x0102_0304u32.to_ne_bytes();
            [id[0], id[1], id[2], id[3], 1, 6, 0x1F, 0x90]
        });
        assert_eq!(key_bits(&k), expected);
        // the port's high byte comes first whatever the host's byte order
        assert_eq!(key_bits(&k) & 0xFFFF, 0x1F90);
        assert_eq!((key_bits(&k) >> 16) & 0xFF, 6);
        assert_eq!((key_bits(&k) >> 24) & 0xFF, 1);
    }

    #[test]
    fn prefixes_match_like_the_kernel() {
        let packet = key(64, 300, 0, 6, 8085);
        assert!(prefix_matches(&key(40, 300, 0, 0, 0), &packet));
        assert!(!prefix_matches(&key(40, 301, 0, 0, 0), &packet));
        assert!(!prefix_matches(&key(40, 300, 1, 0, 0), &packet));
        assert!(prefix_matches(&key(48, 300, 0, 6, 0), &packet));
        assert!(!prefix_matches(&key(48, 300, 0, 17, 0), &packet));
        assert!(prefix_matches(&key(61, 300, 0, 6, 8080), &packet), "8080/13 holds 8080-8087");
        assert!(!prefix_matches(&key(61, 300, 0, 6, 8080), &key(64, 300, 0, 6, 8088)));
        assert!(prefix_matches(&key(63, 300, 0, 6, 8088), &key(64, 300, 0, 6, 8089)));
        assert!(!prefix_matches(&key(64, 300, 0, 6, 8088), &key(64, 300, 0, 6, 8089)));
        assert!(prefix_matches(&key(49, 300, 0, 6, 32768), &key(64, 300, 0, 6, 65535)));
        assert!(!prefix_matches(&key(49, 300, 0, 6, 32768), &key(64, 300, 0, 6, 1024)));
        assert!(!prefix_matches(&key(65, 300, 0, 6, 8085), &packet));
    }

    #[test]
    fn the_longest_prefix_wins() {
        let entry = |rule| PolicyEntry { rule, ..PolicyEntry::default() };
        let entries = BTreeMap::from([
            (key(40, 300, 0, 0, 0), entry(1)),
            (key(48, 300, 0, 6, 0), entry(2)),
            (key(64, 300, 0, 6, 80), entry(3)),
        ]);
        let hit = |port| lpm_lookup(&entries, &key(64, 300, 0, 6, port)).map(|(_, e)| e.rule);
        assert_eq!(hit(80), Some(3));
        assert_eq!(hit(81), Some(2));
        assert_eq!(lpm_lookup(&entries, &key(64, 300, 0, 17, 80)).map(|(_, e)| e.rule), Some(1));
        assert_eq!(lpm_lookup(&entries, &key(64, 301, 0, 6, 80)), None);
    }
}
