//! Changing a running lab: policies applied or deleted, pods and namespaces relabelled. The new
//! state is planned and compiled in full first, so a change that is invalid (or does not fit a
//! policy map) changes nothing; then only the map entries that differ are written: identities in
//! every node's ipcache and endpoints, and each endpoint's policy.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::datapath::{self, maps};
use crate::plan::Plan;
use crate::policy::{self, Compiled, PolicyError};
use crate::services::Services;
use crate::state::LabDir;
use crate::topology::resources::{self, Resource};
use crate::topology::source::SourceMap;
use crate::topology::{FileResources, ResourceEntry, TopologyError, validate};

/// A change to a running lab.
#[derive(Debug, Default, Clone)]
pub struct Change {
    /// Objects to create or replace (by kind, namespace and name).
    pub apply: Vec<Resource>,
    /// Objects to remove: (kind, namespace, name).
    pub delete: Vec<(String, Option<String>, String)>,
    /// Pods' whole new label sets, by `namespace/name`.
    pub pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Namespaces' whole new label sets.
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Pods to remove, by `namespace/name` (or a name only one pod has); removed before
    /// `add_pods` are added, so a pod can be re-created.
    pub remove_pods: Vec<String>,
    /// Pods to add.
    pub add_pods: Vec<crate::topology::Pod>,
}

/// What a change did to the datapath.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Pods whose identity changed.
    pub relabelled: usize,
    /// Endpoints whose policy map or enforcement changed.
    pub endpoints: usize,
}

fn key(resource: &Resource) -> (String, Option<String>, String) {
    (resource.kind.clone(), resource.namespace.clone(), resource.name.clone())
}

/// The policy options a plan asks for.
pub fn options(plan: &Plan) -> policy::Options {
    policy::Options {
        max_entries: plan.policy_map_size as usize,
        enforcement: plan.policy_enforcement,
        semantics: plan.policy_semantics,
    }
}

/// Compiles `resources` for `plan`; invalid policies come back as a [`TopologyError`], so they are
/// reported with their file, line and field.
pub fn compile(plan: &Plan, resources: &[Resource]) -> Result<Compiled> {
    match policy::compile(resources, &datapath::endpoints(plan), &plan.identities, &options(plan)) {
        Ok(compiled) => Ok(compiled),
        Err(PolicyError::Invalid(diagnostics)) => Err(TopologyError { diagnostics }.into()),
        Err(e @ PolicyError::Capacity(_)) => Err(e.into()),
    }
}

/// The services among `resources` for `plan`; invalid ones come back as a [`TopologyError`].
pub fn services(plan: &Plan, resources: &[Resource]) -> Result<Services> {
    Services::resolve(plan, resources).map_err(|diagnostics| TopologyError { diagnostics }.into())
}

/// Applies `change` to the running lab `lab`.
pub fn apply(lab: &str, change: &Change) -> Result<Applied> {
    let dir = LabDir::of(lab);
    let old_plan = dir.read_plan()?;
    let (mut topology, mut resources) = dir.read_sources()?;

    for (pod, labels) in &change.pod_labels {
        let (namespace, name) =
            pod.split_once('/').with_context(|| format!("`{pod}`: pods are named namespace/name"))?;
        let entry = topology.pods.iter_mut().find(|p| p.namespace == namespace && p.name == name);
        entry.with_context(|| format!("no pod `{pod}` in lab `{lab}`"))?.labels = labels.clone();
    }
    for (namespace, labels) in &change.namespace_labels {
        match topology.namespaces.iter_mut().find(|n| &n.name == namespace) {
            Some(entry) => entry.labels = labels.clone(),
            None if namespace == "default" => {
                topology.namespaces.push(crate::topology::Namespace { name: namespace.clone(), labels: labels.clone() })
            }
            None => bail!("no namespace `{namespace}` in lab `{lab}`"),
        }
    }
    for target in &change.remove_pods {
        let pod = old_plan.find_pod(target).map_err(anyhow::Error::msg)?;
        topology.pods.retain(|p| !(p.namespace == pod.namespace && p.name == pod.name));
    }
    topology.pods.extend(change.add_pods.iter().cloned());
    for wanted in &change.delete {
        let before = resources.len();
        resources.retain(|r| key(r) != *wanted);
        if resources.len() == before {
            let (kind, namespace, name) = wanted;
            bail!("no {kind} {}{name} in lab `{lab}`", namespace.as_ref().map_or(String::new(), |n| format!("{n}/")));
        }
    }
    for object in &change.apply {
        match resources.iter_mut().find(|r| key(r) == key(object)) {
            Some(existing) => *existing = object.clone(),
            None => resources.push(object.clone()),
        }
    }

    let errors: Vec<String> = validate::check(&topology)
        .into_iter()
        .filter(|f| f.severity == validate::Severity::Error)
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect();
    if !errors.is_empty() {
        bail!("the change would make the lab invalid, so nothing was changed:\n{}", errors.join("\n"));
    }
    let mut plan = Plan::new(&topology, lab);
    let fixed = |pod: &crate::plan::PodPlan| {
        topology.pods.iter().any(|p| p.namespace == pod.namespace && p.name == pod.name && p.ip.is_some())
    };
    plan.keep_running_pods(&old_plan, fixed);
    let compiled = compile(&plan, &resources).context("nothing was changed")?;
    let services = services(&plan, &resources).context("nothing was changed")?;
    let running = |pods: &Plan, pod: &crate::plan::PodPlan| pods.pods.iter().any(|p| p.id() == pod.id());
    let added: Vec<usize> = (0..plan.pods.len()).filter(|&i| !running(&old_plan, &plan.pods[i])).collect();
    let removed: Vec<&crate::plan::PodPlan> = old_plan.pods.iter().filter(|p| !running(&plan, p)).collect();
    if !added.is_empty() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(crate::realise::add_pods(&plan, &added)).context("adding pods")?;
        datapath::loader::attach_pods(&plan, &added).context("attaching the datapath to the new pods")?;
    }
    let applied = write(&old_plan, &plan, &compiled, &services)?;
    dir.write_plan(&plan)?;
    dir.write_sources(&topology, &resources)?;
    // The agent serves the new pods' ports, and lets go of the removed pods' before their
    // namespaces go.
    crate::agent::request(lab, crate::agent::Request::Reload)?;
    if !removed.is_empty() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        for pod in removed {
            runtime.block_on(crate::realise::remove_pod(&old_plan, pod))?;
            let pin = datapath::pins::policy(lab, &old_plan.nodes[pod.node].name, pod.endpoint_id);
            if !plan.pods.iter().any(|p| p.node == pod.node && p.endpoint_id == pod.endpoint_id) {
                let _ = std::fs::remove_file(pin);
            }
        }
    }
    Ok(applied)
}

/// Writes what differs between the running lab and the new plan and policy into the datapath.
fn write(old: &Plan, plan: &Plan, compiled: &Compiled, services: &Services) -> Result<Applied> {
    let mut applied = Applied::default();
    // Policies first, so new identities are allowed before any packet carries them.
    for (pod, endpoint) in compiled.endpoints.iter().enumerate() {
        if maps::sync_policy(plan, pod, &endpoint.entries)? {
            applied.endpoints += 1;
        }
    }
    applied.relabelled = plan.pods.iter().zip(&old.pods).filter(|(new, old)| new.identity != old.identity).count();
    maps::fill_nodes(plan, &compiled.cidr_identities, |pod| compiled.endpoints[pod].flags())?;
    datapath::lb::sync(plan, services)?;
    crate::realise::announce(plan, services)?;
    Ok(applied)
}

/// Reads objects to apply or delete from a file: policies (and later services) as in a topology's
/// `resources:`, and `v1 Pod` / `v1 Namespace` objects whose labels replace the running ones.
pub fn read_change(file: &Path, deleting: bool) -> Result<Change> {
    let entry = ResourceEntry::File(FileResources { file: file.display().to_string() });
    let accept = resources::Accept { namespaces: None, label_objects: true, field: "resources" };
    let objects = resources::load(file, &SourceMap::default(), accept, Path::new("."), &[entry])
        .map_err(|diagnostics| TopologyError { diagnostics })?;
    let mut change = Change::default();
    for object in objects {
        let labels = || -> BTreeMap<String, String> {
            let labels = object.object.get("metadata").and_then(|m| m.get("labels"));
            labels.and_then(|l| serde_yaml::from_value(l.clone()).ok()).unwrap_or_default()
        };
        match (object.api_version.as_str(), object.kind.as_str()) {
            ("v1", kind @ ("Pod" | "Namespace")) if deleting => bail!(
                "{}: lab delete removes policies; to change a {kind}'s labels, apply it with its new labels",
                file.display()
            ),
            ("v1", "Pod") => {
                let namespace = object.namespace.clone().unwrap_or_else(|| "default".into());
                change.pod_labels.insert(format!("{namespace}/{}", object.name), labels());
            }
            ("v1", "Namespace") => {
                change.namespace_labels.insert(object.name.clone(), labels());
            }
            _ if deleting => change.delete.push(key(&object)),
            _ => change.apply.push(object),
        }
    }
    Ok(change)
}
