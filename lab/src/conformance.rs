//! The Kubernetes NetworkPolicy conformance cases of `topologies/conformance/cases/`: scenario
//! files (see [`crate::topology::scenario::ScenarioFile`]) on the cluster of
//! `topologies/conformance/cluster.yaml`, whose steps change policies and labels and expect
//! reachability matrices probed through the real datapath (the cases' README.md). Each case runs
//! here in a fresh lab, step by step through the scenario engine, and every probed matrix is also
//! compared with the one computed from the compiled policy ([`crate::explain::matrix`]).

use std::path::Path;

use anyhow::{Context, Result};

use crate::scenario::{self, RemoveOnDrop, Runner};
use crate::state::LabDir;
use crate::topology::PolicySemantics;
use crate::topology::scenario::ScenarioFile;

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
        scenario::differing(&self.expected, &self.probed)
    }

    /// Cells where the matrix computed from the policy differs from the probed one, the diagonal
    /// aside.
    pub fn miscomputed(&self) -> Vec<(String, String)> {
        scenario::differing(&self.computed, &self.probed)
    }
}

/// Reads a case.
pub fn read(path: &Path) -> Result<ScenarioFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

/// Runs `case` in a fresh lab named `lab` built from `cluster` with `semantics`, and returns
/// every comparison. The lab is removed however this ends. Run inside another program (a test),
/// `LAB_BINARY` must name the lab executable, which serves the pods' ports.
pub fn run(case_file: &Path, cluster: &Path, lab: &str, semantics: PolicySemantics) -> Result<Vec<Comparison>> {
    let case = read(case_file)?;
    let semantics_name = match semantics {
        PolicySemantics::Cilium => "cilium",
        PolicySemantics::Kubernetes => "kubernetes",
    };
    let text = std::fs::read_to_string(cluster).with_context(|| format!("reading {}", cluster.display()))?;
    let text = text.replacen("cluster:\n", &format!("cluster:\n  policySemantics: {semantics_name}\n"), 1);
    let loaded = crate::topology::load_str(cluster, &text)?;
    let _down = RemoveOnDrop(LabDir::of(lab));
    crate::cmd::up::create(&loaded, lab)?;

    let mut runner = Runner::new(lab, case_file, "", &case.capture, &case.steps)?;
    let mut comparisons = Vec::new();
    for (index, step) in case.steps.iter().enumerate() {
        let report = runner.step(index, step);
        let dir = LabDir::of(lab);
        let plan = dir.read_plan()?;
        let compiled = crate::live::compile(&plan, &dir.read_sources()?.1)?;
        if report.matrices.len() != step.expect.len() {
            anyhow::bail!("step {index}: {}", report.failures.join("; "));
        }
        for matrix in report.matrices {
            let kind = crate::cmd::probe::parse_kind(&matrix.probe).map_err(anyhow::Error::msg)?;
            comparisons.push(Comparison {
                step: index,
                probe: matrix.probe,
                expected: matrix.expected,
                probed: matrix.probed,
                computed: crate::explain::matrix(&plan, &compiled, kind).trim_end().to_string(),
            });
        }
    }
    Ok(comparisons)
}
