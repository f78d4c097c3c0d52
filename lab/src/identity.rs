//! Security identities: numbers for sets of identity-relevant labels, as Cilium allocates them,
//! except deterministic: the same label sets give the same numbers on every run and machine.
//!
//! A pod's labels are Cilium's: its own (`k8s:app=web`), its namespace's re-exported
//! (`k8s:io.cilium.k8s.namespace.labels.team=web`), its namespace, service account and cluster.
//! Which of them are identity-relevant is Cilium's default label filter, or the cluster's
//! `identityLabels` when set.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::datapath::abi::identity as reserved;
use crate::plan::stable_hash;

/// The cluster name Cilium puts in every pod's labels.
pub const CLUSTER_NAME: &str = "default";

/// `source:key` → value, sorted, as Cilium writes labels (`k8s:app` → `web`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Labels(pub BTreeMap<String, String>);

impl Labels {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Labels as Hubble prints them: `k8s:app=web`, `reserved:world`.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|(k, v)| if v.is_empty() { k.clone() } else { format!("{k}={v}") }).collect()
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_strings().join(","))
    }
}

/// The labels Cilium gives a pod.
pub fn pod_labels(
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
    service_account: &str,
) -> Labels {
    let mut labels = BTreeMap::new();
    for (key, value) in pod_labels {
        labels.insert(format!("k8s:{key}"), value.clone());
    }
    // Kubernetes labels every namespace with its own name.
    let mut namespace_labels = namespace_labels.clone();
    namespace_labels.insert("kubernetes.io/metadata.name".into(), namespace.into());
    for (key, value) in &namespace_labels {
        labels.insert(format!("k8s:io.cilium.k8s.namespace.labels.{key}"), value.clone());
    }
    labels.insert("k8s:io.kubernetes.pod.namespace".into(), namespace.into());
    labels.insert("k8s:io.cilium.k8s.policy.serviceaccount".into(), service_account.into());
    labels.insert("k8s:io.cilium.k8s.policy.cluster".into(), CLUSTER_NAME.into());
    Labels(labels)
}

/// The labels of a node's host endpoint: the node's Kubernetes labels (with the two every node
/// gets from its kubelet) and `reserved:host`.
pub fn host_labels(node: &str, node_labels: &BTreeMap<String, String>) -> Labels {
    let mut labels: BTreeMap<String, String> =
        node_labels.iter().map(|(key, value)| (format!("k8s:{key}"), value.clone())).collect();
    labels.insert("k8s:kubernetes.io/hostname".into(), node.into());
    labels.entry("k8s:kubernetes.io/os".into()).or_insert_with(|| "linux".into());
    labels.insert("reserved:host".into(), String::new());
    Labels(labels)
}

/// Label keys Cilium's default filter leaves out of identities (pkg/labelsfilter), matched at the
/// start of the key after its source. The namespace and policy labels stay.
const DEFAULT_EXCLUDED: &[&str] = &[
    "io.kubernetes",
    "kubernetes.io",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/job-completion-index",
    "batch.kubernetes.io/controller-uid",
    "k8s.io",
    "pod-template-generation",
    "pod-template-hash",
    "controller-revision-hash",
    "controller-uid",
    "annotation.",
    "etcd_node",
    "topology.kubernetes.io",
];
const ALWAYS_RELEVANT: &[&str] =
    &["io.kubernetes.pod.namespace", "io.cilium.k8s.namespace.labels.", "io.cilium.k8s.policy."];

/// Which labels count for identities: Cilium's default filter, or an explicit list in Cilium's
/// `--labels` syntax (`k8s:app`, `!k8s:version`): when any entry includes, only matching labels
/// (and the pod's namespace) count; entries starting with `!` exclude.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelFilter {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl LabelFilter {
    pub fn new(patterns: &[String]) -> LabelFilter {
        let strip = |p: &str| p.strip_prefix("k8s:").or_else(|| p.strip_prefix("any:")).unwrap_or(p).to_string();
        let (exclude, include): (Vec<&String>, Vec<&String>) = patterns.iter().partition(|p| p.starts_with('!'));
        LabelFilter {
            include: include.into_iter().map(|p| strip(p)).collect(),
            exclude: exclude.into_iter().map(|p| strip(&p[1..])).collect(),
        }
    }

    pub fn is_relevant(&self, source_key: &str) -> bool {
        let key = source_key.split_once(':').map_or(source_key, |(_, key)| key);
        if self.exclude.iter().any(|p| key.starts_with(p.as_str())) {
            return false;
        }
        if key == "io.kubernetes.pod.namespace" {
            return true;
        }
        if !self.include.is_empty() {
            return self.include.iter().any(|p| key.starts_with(p.as_str()));
        }
        ALWAYS_RELEVANT.iter().any(|p| key.starts_with(p)) || !DEFAULT_EXCLUDED.iter().any(|p| key.starts_with(p))
    }

    pub fn relevant(&self, labels: &Labels) -> Labels {
        Labels(labels.0.iter().filter(|(k, _)| self.is_relevant(k)).map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

/// The reserved identities, with the labels Cilium gives them.
pub fn reserved_identities() -> BTreeMap<u32, Labels> {
    [
        (reserved::HOST, "reserved:host"),
        (reserved::WORLD, "reserved:world"),
        (reserved::UNMANAGED, "reserved:unmanaged"),
        (reserved::HEALTH, "reserved:health"),
        (reserved::INIT, "reserved:init"),
        (reserved::REMOTE_NODE, "reserved:remote-node"),
        (reserved::KUBE_APISERVER, "reserved:kube-apiserver"),
        (reserved::INGRESS, "reserved:ingress"),
    ]
    .into_iter()
    .map(|(n, label)| (n, Labels(BTreeMap::from([(label.to_string(), String::new())]))))
    .collect()
}

/// Numbers for label sets: each set gets 256 plus its hash modulo the range, probing onwards on
/// collision, in sorted order of the sets, so the numbers depend on the sets alone.
pub fn allocate(sets: impl IntoIterator<Item = Labels>) -> BTreeMap<Labels, u32> {
    const RANGE: u64 = 65536 - reserved::FIRST_LOCAL as u64;
    let sets: BTreeSet<Labels> = sets.into_iter().collect();
    let mut taken = BTreeSet::new();
    let mut numbers = BTreeMap::new();
    for set in sets {
        let start = stable_hash(&set.to_string()) % RANGE;
        let number = (0..RANGE)
            .map(|k| reserved::FIRST_LOCAL + ((start + k) % RANGE) as u32)
            .find(|n| !taken.contains(n))
            .expect("fewer than 65280 identities");
        taken.insert(number);
        numbers.insert(set, number);
    }
    numbers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ns: &str, app: &str, version: &str) -> Labels {
        let pod = BTreeMap::from([("app".to_string(), app.to_string()), ("version".to_string(), version.to_string())]);
        pod_labels(ns, &BTreeMap::from([("team".to_string(), "a".to_string())]), &pod, "default")
    }

    #[test]
    fn pods_get_cilium_labels() {
        let l = labels("x", "web", "v1");
        assert_eq!(l.get("k8s:app"), Some("web"));
        assert_eq!(l.get("k8s:io.kubernetes.pod.namespace"), Some("x"));
        assert_eq!(l.get("k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name"), Some("x"));
        assert_eq!(l.get("k8s:io.cilium.k8s.namespace.labels.team"), Some("a"));
        assert_eq!(l.get("k8s:io.cilium.k8s.policy.cluster"), Some("default"));
    }

    #[test]
    fn the_default_filter_drops_kubernetes_bookkeeping_but_keeps_namespaces() {
        let filter = LabelFilter::default();
        assert!(filter.is_relevant("k8s:app"));
        assert!(filter.is_relevant("k8s:io.kubernetes.pod.namespace"));
        assert!(filter.is_relevant("k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name"));
        assert!(!filter.is_relevant("k8s:pod-template-hash"));
        assert!(!filter.is_relevant("k8s:statefulset.kubernetes.io/pod-name"));
    }

    #[test]
    fn identity_labels_narrow_what_counts() {
        let only_namespace = LabelFilter::new(&["k8s:io.kubernetes.pod.namespace".to_string()]);
        let sets =
            [labels("x", "web", "v1"), labels("x", "web", "v2"), labels("x", "db", "v1"), labels("y", "web", "v1")];
        let by_default = allocate(sets.iter().map(|l| LabelFilter::default().relevant(l)));
        let by_namespace = allocate(sets.iter().map(|l| only_namespace.relevant(l)));
        assert_eq!((by_default.len(), by_namespace.len()), (4, 2));
        let no_version = LabelFilter::new(&["!k8s:version".to_string()]);
        assert_eq!(allocate(sets.iter().map(|l| no_version.relevant(l))).len(), 3);
    }

    #[test]
    fn numbers_depend_only_on_the_label_sets() {
        let a = allocate([labels("x", "web", "v1"), labels("y", "db", "v1")]);
        let b = allocate([labels("y", "db", "v1"), labels("x", "web", "v1"), labels("z", "new", "v1")]);
        for (set, number) in &a {
            assert!(*number >= 256);
            assert_eq!(b[set], *number, "adding a label set renumbered {set}");
        }
    }
}
