//! `lab exec NAME TARGET -- CMD...`: run a real command inside a pod, node or external.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

use crate::net::netns;
use crate::state::LabDir;

/// The namespace of `target`: a pod (`namespace/name`, or a name only one pod has), a node or an
/// external.
pub fn resolve(lab: &str, target: &str) -> Result<String> {
    let plan = LabDir::of(lab).read_plan()?;
    match plan.find_pod(target) {
        Ok(pod) => Ok(pod.netns.clone()),
        Err(pod_error) => plan
            .nodes
            .iter()
            .map(|n| (&n.name, &n.netns))
            .chain(plan.externals.iter().map(|e| (&e.name, &e.netns)))
            .find(|(name, _)| *name == target)
            .map(|(_, netns)| netns.clone())
            .with_context(|| format!("{pod_error}, and no node or external has that name")),
    }
}

/// Replaces this process with `command` inside the target's namespace; returns only on error.
pub fn run(lab: &str, target: &str, command: &[String]) -> Result<()> {
    super::require_root()?;
    let Some((program, args)) = command.split_first() else {
        bail!("no command given: `lab exec {lab} {target} -- CMD...`")
    };
    let netns_name = resolve(lab, target)?;
    let file = netns::open(&netns_name)?;
    // This process is single-threaded here and becomes `command`: no need to come back.
    setns(&file, CloneFlags::CLONE_NEWNET).context("entering the namespace")?;
    let error = Command::new(program).args(args).env("LAB_NAME", lab).env("LAB_TARGET", target).exec();
    Err(error).with_context(|| format!("running `{program}`"))
}
