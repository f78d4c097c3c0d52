//! The Kubernetes NetworkPolicy e2e suite, translated into topologies/conformance/cases/: every
//! case's probed matrices through the real datapath equal upstream's expectation under
//! `policySemantics: kubernetes`, and under Cilium's default semantics differ exactly where the
//! case (after docs/policy-semantics.md) says they do; and every probed matrix equals the one
//! `lab policy --matrix` computes from the compiled policy without sending packets.

mod common;

use std::path::PathBuf;

use lab::conformance::{self, Comparison};
use lab::topology::PolicySemantics;

fn cases() -> Vec<PathBuf> {
    let dir = common::topology("conformance/cases");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 40, "the translated suite is there");
    cases
}

/// Runs every case under `semantics`, one lab at a time, and reports every wrong cell.
fn suite(semantics: PolicySemantics) {
    common::require_root();
    // The lab's agent (the pods' servers) is the lab binary, not this test.
    // SAFETY: set before any thread that reads the environment starts.
    unsafe { std::env::set_var("LAB_BINARY", common::lab_binary()) };
    let cluster = common::topology("conformance/cluster.yaml");
    let mut failures = Vec::new();
    let mut compared = 0;
    let cases = cases();
    for (i, case) in cases.iter().enumerate() {
        let name = common::unique_name(&format!("np{i}"));
        match conformance::run(case, &cluster, &name, semantics) {
            Ok(comparisons) => {
                compared += comparisons.len();
                for comparison in &comparisons {
                    let (wrong, miscomputed) = (comparison.wrong(), comparison.miscomputed());
                    let Comparison { step, probe, expected, probed, computed } = comparison;
                    let file = case.file_name().unwrap().to_string_lossy();
                    if !wrong.is_empty() {
                        failures.push(format!(
                            "{file} step {step} {probe}: {} wrong cells {wrong:?}\nexpected:\n{expected}\nprobed:\n{probed}",
                            wrong.len()
                        ));
                    }
                    if !miscomputed.is_empty() {
                        failures.push(format!(
                            "{file} step {step} {probe}: the matrix computed from the policy differs from the probed \
                             one in {} cells {miscomputed:?}\ncomputed:\n{computed}\nprobed:\n{probed}",
                            miscomputed.len()
                        ));
                    }
                }
            }
            Err(e) => failures.push(format!("{}: {e:#}", case.display())),
        }
    }
    assert!(compared >= 60, "only {compared} matrices were compared");
    assert!(
        failures.is_empty(),
        "{} failures over {} cases ({semantics:?}):\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn upstream_expectations_hold_with_kubernetes_semantics() {
    suite(PolicySemantics::Kubernetes);
}

#[test]
fn cilium_semantics_differ_exactly_where_documented() {
    suite(PolicySemantics::Cilium);
}
