//! The eBPF datapath: the C programs in `bpf/` (built by `build.rs`), loaded and attached with
//! aya, and the maps userspace keeps for them.

pub mod abi;
pub mod features;
pub mod lb;
pub mod loader;
pub mod maps;
pub mod pins;

use anyhow::{Context, Result};

use crate::plan::Plan;
use crate::policy::{self, Compiled};
use crate::services::Services;

/// The lab's endpoints as the policy engine sees them: the pods in plan order, then each node's
/// host endpoint in node order (see [`host_endpoint`]).
pub fn endpoints(plan: &Plan) -> Vec<policy::Endpoint> {
    let pods = plan.pods.iter().map(|pod| policy::Endpoint {
        id: pod.endpoint_id,
        identity: pod.identity,
        ip: pod.ip,
        labels: pod.labels.clone(),
        namespace: pod.namespace.clone(),
        named_ports: pod.ports.iter().filter_map(|p| Some((p.name.clone()?, p.port, p.protocol))).collect(),
        host: false,
    });
    let hosts = plan.nodes.iter().map(|node| policy::Endpoint {
        id: abi::HOST_ENDPOINT_ID,
        identity: abi::identity::HOST,
        // Host endpoints are not matched by address, whatever the semantics.
        ip: std::net::Ipv4Addr::UNSPECIFIED,
        labels: node.labels.clone(),
        namespace: String::new(),
        named_ports: Vec::new(),
        host: true,
    });
    pods.chain(hosts).collect()
}

/// The index of node `node`'s host endpoint in [`endpoints`] (and so in a compiled policy).
pub fn host_endpoint(plan: &Plan, node: usize) -> usize {
    plan.pods.len() + node
}

/// Loads the datapath into a built lab and fills its maps: ipcache, endpoints and services per
/// node, and every endpoint's policy with its enforcement.
pub fn install(plan: &Plan, policy: &Compiled, services: &Services) -> Result<()> {
    loader::prepare_pins(plan)?;
    loader::attach(plan).context("attaching the datapath")?;
    for (endpoint, compiled) in policy.endpoints.iter().enumerate() {
        maps::sync_policy(plan, endpoint, &compiled.entries)?;
    }
    maps::fill_nodes(plan, &policy.cidr_identities, |endpoint| policy.endpoints[endpoint].flags())
        .context("filling the datapath's maps")?;
    lb::sync(plan, services).context("filling the service maps")?;
    Ok(())
}
