//! The Kubernetes NetworkPolicy conformance cases of `topologies/conformance/cases/`: each runs in
//! a fresh lab of `topologies/conformance/cluster.yaml`, step by step, and every expected
//! reachability matrix is compared with the one probed through the real datapath (the format is
//! documented in the cases' README.md). Each is also compared with the matrix computed from the
//! compiled policy ([`crate::explain::matrix`]), which must equal the probed one.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use serde::Deserialize;

use crate::live::{self, Change};
use crate::plan::Plan;
use crate::probe::{self, Kind, Outcome};
use crate::state::LabDir;
use crate::topology::resources::{self, Accept};
use crate::topology::source::SourceMap;
use crate::topology::{PolicySemantics, ResourceEntry};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Upstream's test name.
    pub name: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    #[serde(default)]
    pub apply: Vec<ResourceEntry>,
    /// `Kind namespace/name` or `Kind name`.
    #[serde(default)]
    pub delete: Vec<String>,
    #[serde(default)]
    pub pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub expect: Vec<Expectation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expectation {
    /// `tcp/80`, `udp/81`, ...
    pub probe: String,
    /// Upstream's expectation.
    pub matrix: String,
    /// Where Cilium's semantics give another matrix.
    pub cilium: Option<String>,
    pub cilium_why: Option<String>,
}

impl Case {
    pub fn read(path: &Path) -> Result<Case> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_yaml::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }

    /// The matrix expected under `semantics`.
    fn expected(expectation: &Expectation, semantics: PolicySemantics) -> &str {
        match (semantics, &expectation.cilium) {
            (PolicySemantics::Cilium, Some(cilium)) => cilium,
            _ => &expectation.matrix,
        }
    }
}

/// One compared matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub step: usize,
    pub probe: String,
    pub expected: String,
    pub probed: String,
    /// What `lab policy --matrix` computes from the compiled policy, without sending packets.
    pub computed: String,
}

impl Comparison {
    /// Cells where the probed matrix differs from the expectation, the diagonal (a pod reaching
    /// itself over loopback, which upstream ignores too) aside.
    pub fn wrong(&self) -> Vec<(String, String)> {
        differing(&self.expected, &self.probed)
    }

    /// Cells where the matrix computed from the policy differs from the probed one, the diagonal
    /// aside.
    pub fn miscomputed(&self) -> Vec<(String, String)> {
        differing(&self.computed, &self.probed)
    }
}

/// The (row, column) names of the cells where two truth tables differ, the diagonal aside; a
/// difference in shape is one more entry, `("matrix", "shape")`.
pub fn differing(a: &str, b: &str) -> Vec<(String, String)> {
    let parse = |text: &str| -> Vec<Vec<String>> {
        text.lines().map(|l| l.split('\t').map(str::to_string).collect()).collect()
    };
    let (a, b) = (parse(a), parse(b));
    let mut wrong = Vec::new();
    for (row, (x, y)) in a.iter().zip(&b).enumerate().skip(1) {
        for (column, (p, q)) in x.iter().zip(y).enumerate().skip(1) {
            if p != q && row != column {
                wrong.push((x[0].clone(), a[0][column].clone()));
            }
        }
    }
    if a.len() != b.len() || a.first() != b.first() {
        wrong.push(("matrix".into(), "shape".into()));
    }
    wrong
}

fn parse_delete(text: &str) -> Result<(String, Option<String>, String)> {
    let (kind, rest) = text.split_once(' ').with_context(|| format!("`{text}`: expected `Kind namespace/name`"))?;
    Ok(match rest.split_once('/') {
        Some((namespace, name)) => (kind.to_string(), Some(namespace.to_string()), name.to_string()),
        None => (kind.to_string(), None, rest.to_string()),
    })
}

/// Runs `case` in a fresh lab named `lab` built from `cluster` with `semantics`, and returns
/// every comparison. The lab is removed however this ends. Run inside another program (a test),
/// `LAB_BINARY` must name the lab executable, which serves the pods' ports.
pub fn run(case_file: &Path, cluster: &Path, lab: &str, semantics: PolicySemantics) -> Result<Vec<Comparison>> {
    let case = Case::read(case_file)?;
    let semantics_name = match semantics {
        PolicySemantics::Cilium => "cilium",
        PolicySemantics::Kubernetes => "kubernetes",
    };
    let text = std::fs::read_to_string(cluster).with_context(|| format!("reading {}", cluster.display()))?;
    let text = text.replacen("cluster:\n", &format!("cluster:\n  policySemantics: {semantics_name}\n"), 1);
    let loaded = crate::topology::load_str(cluster, &text)?;
    let _down = RemoveOnDrop(LabDir::of(lab));
    crate::cmd::up::create(&loaded, lab)?;

    let mut comparisons = Vec::new();
    for (index, step) in case.steps.iter().enumerate() {
        let accept = Accept { namespaces: None, label_objects: false };
        let base = case_file.parent().unwrap_or(Path::new("."));
        let apply = resources::load(case_file, &SourceMap::default(), accept, base, &step.apply)
            .map_err(|diagnostics| crate::topology::TopologyError { diagnostics })?;
        let change = Change {
            apply,
            delete: step.delete.iter().map(|d| parse_delete(d)).collect::<Result<_>>()?,
            pod_labels: step.pod_labels.clone(),
            namespace_labels: step.namespace_labels.clone(),
        };
        live::apply(lab, &change).with_context(|| format!("step {index}"))?;
        let dir = LabDir::of(lab);
        let plan = dir.read_plan()?;
        let compiled = live::compile(&plan, &dir.read_sources()?.1)?;
        for expectation in &step.expect {
            let kind = crate::cmd::probe::parse_kind(&expectation.probe).map_err(anyhow::Error::msg)?;
            comparisons.push(Comparison {
                step: index,
                probe: expectation.probe.clone(),
                expected: Case::expected(expectation, semantics).trim_end().to_string(),
                probed: probed_matrix(&plan, kind)?.trim_end().to_string(),
                computed: crate::explain::matrix(&plan, &compiled, kind).trim_end().to_string(),
            });
        }
    }
    Ok(comparisons)
}

/// Every pod to every pod on `kind`, as a netpol truth table.
pub fn probed_matrix(plan: &Plan, kind: Kind) -> Result<String> {
    let files: Vec<std::fs::File> =
        plan.pods.iter().map(|p| crate::net::netns::open(&p.netns)).collect::<Result<_, _>>()?;
    let n = plan.pods.len();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let outcomes: Vec<(usize, usize, Outcome)> = runtime.block_on(
        futures::stream::iter((0..n).flat_map(|a| (0..n).map(move |b| (a, b))))
            .map(|(a, b)| {
                let (file, ip) = (&files[a], plan.pods[b].ip);
                async move { (a, b, probe::probe(file, ip, kind, probe::scaled(Duration::from_millis(500))).await) }
            })
            .buffer_unordered(96)
            .collect(),
    );
    let mut table = vec![vec!['?'; n]; n];
    for (a, b, outcome) in outcomes {
        table[a][b] = if outcome == Outcome::Connected { '.' } else { 'X' };
    }
    Ok(crate::cmd::probe::render_matrix(&plan.pods.iter().map(|p| p.id()).collect::<Vec<_>>(), &table))
}

/// Removes a lab when dropped, whether the case passed, failed or panicked.
struct RemoveOnDrop(LabDir);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.exists()
            && let Err(e) = crate::realise::teardown(&self.0)
        {
            eprintln!("removing lab {}: {e:#}", self.0.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_cells_are_named_and_the_diagonal_ignored() {
        let a = "-\tx/a\tx/b\nx/a\t.\t.\nx/b\t.\t.";
        let b = "-\tx/a\tx/b\nx/a\tX\tX\nx/b\t.\t.";
        assert_eq!(differing(a, b), vec![("x/a".to_string(), "x/b".to_string())]);
        assert!(differing(a, a).is_empty());
        assert_eq!(differing(a, "-\tx/b\tx/a\nx/b\t.\t.\nx/a\t.\t."), vec![("matrix".into(), "shape".into())]);
    }
}
