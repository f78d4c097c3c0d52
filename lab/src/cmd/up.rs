//! `lab up FILE`: build a lab and return once it is ready; it stays up until `lab down`.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};

use crate::plan::Plan;
use crate::policy::Compiled;
use crate::services::Services;
use crate::state::{LabDir, Status};
use crate::topology::{self, Loaded, validate};
use crate::{agent, datapath, live, realise, ui};

pub fn run(file: &Path, name: Option<&str>) -> Result<()> {
    let loaded = topology::load_file(file)?;
    for warning in &loaded.warnings {
        ui::warning(warning);
    }
    let name = name.unwrap_or(&loaded.topology.name);
    let started = Instant::now();
    let plan = create(&loaded, name)?;
    println!(
        "lab {} is up: {} nodes, {} pods, {} externals, {} routing ({} ms)",
        ui::bold(name),
        plan.nodes.len(),
        plan.pods.len(),
        plan.externals.len(),
        plan.routing_mode,
        started.elapsed().as_millis()
    );
    let mut hints = vec![(format!("lab ls {name}"), "what it is made of")];
    if let Some(pod) = plan.pods.first() {
        hints.push((format!("lab exec {name} {} -- ip addr", pod.name), "run a command in a pod"));
        hints.push((format!("lab observe {name} -f"), "watch the datapath's verdicts"));
    }
    hints.push((format!("lab down {name}"), "remove it"));
    let width = hints.iter().map(|(command, _)| command.len()).max().unwrap_or(0);
    for (command, what) in hints {
        println!("  {command:width$}    {what}");
    }
    Ok(())
}

/// Builds the lab `name` from a checked topology and returns its plan; on failure, removes what
/// it had built.
pub fn create(loaded: &Loaded, name: &str) -> Result<Plan> {
    validate::check_lab_name(name).map_err(|e| anyhow!(e))?;
    super::require_root()?;
    let plan = Plan::new(&loaded.topology, name);
    // Policies are compiled before anything is created: a policy that is wrong or does not fit
    // changes nothing on the host.
    let compiled = live::compile(&plan, &loaded.resources)?;
    let services = live::services(&plan, &loaded.resources)?;
    for warning in compiled.warnings.iter().chain(&services.warnings) {
        ui::warning(warning);
    }
    // So is the kernel: one that lacks something the lab needs is named before anything exists.
    datapath::features::check(&plan)?;
    let lab = LabDir::create(name)?;
    // The record comes first: whatever happens next, `lab down` knows every name to remove.
    let recorded = lab
        .write_plan(&plan)
        .and_then(|()| lab.write_sources(&loaded.topology, &loaded.resources))
        .and_then(|()| lab.set_status(Status::Creating));
    if let Err(e) = recorded {
        let _ = lab.remove();
        return Err(e);
    }
    realise::crash_point("recorded");

    if let Err(error) = build(&lab, &plan, &compiled, &services) {
        let cleanup = realise::teardown(&lab);
        let error = error.context(format!("bringing up lab `{name}` failed"));
        return Err(match cleanup {
            Ok(_) => error.context("everything it had created was removed"),
            Err(e) => {
                error.context(format!("and removing what it had created failed too ({e:#}); run `lab down {name}`"))
            }
        });
    }
    lab.set_status(Status::Ready)?;

    Ok(plan)
}

fn build(lab: &LabDir, plan: &Plan, policy: &Compiled, services: &Services) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let progress = ui::progress("up");
    let built = runtime.block_on(async {
        tokio::select! {
            built = realise::build(plan, &progress) => built,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    progress.finish_and_clear();
    drop(runtime);
    built?;
    realise::crash_point("built");
    datapath::install(plan, policy, services)?;
    realise::announce(plan, services)?;
    agent::spawn(lab).context("starting the lab agent")?;
    realise::crash_point("served");
    Ok(())
}
