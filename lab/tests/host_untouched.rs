//! A lab never changes the host's own network: the root namespace's links, addresses, routes,
//! rules and `net.*` sysctls are identical before `lab up` and after `lab down`, in both routing
//! modes, and nothing of a lab ever appears in the root namespace while it runs.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{Lab, probe_every_pair, topology};
use pretty_assertions::assert_eq;

/// `ip` output with the counters that move by themselves (address lifetimes) blanked.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("iproute2 is installed (scripts/setup)");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace()
        .scan(false, |after_lifetime, word| {
            let shown = if *after_lifetime { "_" } else { word };
            *after_lifetime = matches!(word, "valid_lft" | "preferred_lft" | "expires" | "used");
            Some(shown.to_string())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, PartialEq, Eq)]
struct RootNetwork {
    links: String,
    addresses: String,
    routes: String,
    rules: String,
    sysctls: BTreeMap<String, String>,
}

/// Counters, not settings: they may move with any traffic on the host.
const MOVING: &[&str] = &["nf_conntrack_count"];

fn root_network() -> RootNetwork {
    let mut sysctls = BTreeMap::new();
    let mut dirs = vec![std::path::PathBuf::from("/proc/sys/net")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if !MOVING.iter().any(|m| path.ends_with(m))
                && let Ok(value) = std::fs::read_to_string(&path)
            {
                sysctls.insert(path.display().to_string(), value);
            }
        }
    }
    RootNetwork {
        links: ip(&["-d", "link", "show"]),
        addresses: ip(&["-d", "address", "show"]),
        routes: [ip(&["route", "show", "table", "all"]), ip(&["-6", "route", "show", "table", "all"])].join("\n"),
        rules: [ip(&["rule", "show"]), ip(&["-6", "rule", "show"])].join("\n"),
        sysctls,
    }
}

#[test]
fn the_root_namespace_is_identical_before_up_and_after_down() {
    common::require_root();
    let before = root_network();
    assert!(before.sysctls.len() > 100, "read the root namespace's sysctls");
    for routing_mode in ["native", "tunnel"] {
        let text = std::fs::read_to_string(topology("examples/three-nodes.yaml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lab.yaml");
        std::fs::write(&file, text.replace("routingMode: native", &format!("routingMode: {routing_mode}"))).unwrap();

        let lab = Lab::up(&file, "host");
        let (_, failures) = probe_every_pair(&lab.plan());
        assert!(failures.is_empty(), "{failures:#?}");
        let during = root_network();
        assert_eq!(during.links, before.links, "a lab's link appeared in the root namespace");
        drop(lab);
    }
    assert_eq!(root_network(), before);
}
