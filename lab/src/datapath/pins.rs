//! Where a lab's BPF maps are pinned, all under `/sys/fs/bpf/lab/<lab>/`, so labs never share a
//! map and `lab down` removes the lab's pins by removing that folder:
//!
//! ```text
//! /sys/fs/bpf/lab/<lab>/lab_events          ring buffer of every node's events
//! /sys/fs/bpf/lab/<lab>/lab_metrics         drop and forward counters
//! /sys/fs/bpf/lab/<lab>/<node>/lab_ipcache  per node: ipcache, endpoints, conntrack
//! /sys/fs/bpf/lab/<lab>/<node>/policy_<id>  per endpoint: its policy
//! /sys/fs/bpf/lab/<lab>/<node>/links/...    TCX links (with `attach: tcx`)
//! ```

use std::path::PathBuf;

use crate::state::LabDir;

pub fn lab_dir(lab: &str) -> PathBuf {
    LabDir::of(lab).bpffs_path()
}

pub fn events(lab: &str) -> PathBuf {
    lab_dir(lab).join("lab_events")
}

pub fn metrics(lab: &str) -> PathBuf {
    lab_dir(lab).join("lab_metrics")
}

pub fn node_dir(lab: &str, node: &str) -> PathBuf {
    lab_dir(lab).join(node)
}

pub fn node_map(lab: &str, node: &str, map: &str) -> PathBuf {
    node_dir(lab, node).join(map)
}

pub fn policy(lab: &str, node: &str, endpoint_id: u16) -> PathBuf {
    node_dir(lab, node).join(format!("policy_{endpoint_id}"))
}

/// A TCX link, which would detach when its last descriptor closed were it not pinned.
pub fn link(lab: &str, node: &str, interface: &str, direction: &str) -> PathBuf {
    node_dir(lab, node).join("links").join(format!("{interface}_{direction}"))
}
