//! The eBPF datapath: the C programs in `bpf/` (built by `build.rs`), loaded and attached with
//! aya, and the maps userspace keeps for them.

pub mod abi;
pub mod loader;
pub mod maps;
pub mod pins;

use anyhow::{Context, Result};

use crate::plan::Plan;
use crate::policy::{self, Compiled};

/// The lab's pods as the policy engine sees them, in plan order.
pub fn endpoints(plan: &Plan) -> Vec<policy::Endpoint> {
    plan.pods
        .iter()
        .map(|pod| policy::Endpoint {
            id: pod.endpoint_id,
            identity: pod.identity,
            ip: pod.ip,
            labels: pod.labels.clone(),
            namespace: pod.namespace.clone(),
            named_ports: pod.ports.iter().filter_map(|p| Some((p.name.clone()?, p.port, p.protocol))).collect(),
        })
        .collect()
}

/// Loads the datapath into a built lab and fills its maps: ipcache and endpoints per node, and
/// every endpoint's policy with its enforcement.
pub fn install(plan: &Plan, policy: &Compiled) -> Result<()> {
    loader::prepare_pins(plan)?;
    loader::attach(plan).context("attaching the datapath")?;
    for (pod, endpoint) in policy.endpoints.iter().enumerate() {
        maps::sync_policy(plan, pod, &endpoint.entries)?;
    }
    maps::fill_nodes(plan, &policy.cidr_identities, |pod| policy.endpoints[pod].flags())
        .context("filling the datapath's maps")?;
    Ok(())
}
