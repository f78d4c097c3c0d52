//! `lab services NAME [-o json]`: the lab's services as the datapath serves them, one line per
//! frontend with its backends and their state, as `cilium-dbg service list` prints Cilium's.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::Result;
use serde::Serialize;

use crate::cmd::ls::Format;
use crate::live;
use crate::services::{BackendState, FrontendKind, Services};
use crate::state::LabDir;

/// One frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The reverse NAT index, as in the datapath's maps and conntrack.
    pub id: u16,
    pub service: String,
    pub frontend: String,
    pub affinity: Option<u32>,
    pub backends: Vec<BackendRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendRow {
    pub address: String,
    pub state: &'static str,
}

/// `announced` names the node the fabric routes each LoadBalancer address and external IP to.
pub fn rows(services: &Services, announced: &BTreeMap<Ipv4Addr, String>) -> Vec<Row> {
    services
        .frontends()
        .map(|(id, service, frontend)| Row {
            id,
            service: service.id(),
            frontend: {
                let protocol = format!("{:?}", frontend.protocol).to_uppercase();
                let address = format!("{}:{}/{protocol}", frontend.address, frontend.port);
                match (frontend.kind, frontend.node_port) {
                    (FrontendKind::ClusterIp, None) => address,
                    (FrontendKind::ClusterIp, Some(node_port)) => format!("{address} (NodePort {node_port})"),
                    (kind, _) => match announced.get(&frontend.address) {
                        Some(node) => format!("{address} ({kind}, announced by {node})"),
                        None => format!("{address} ({kind}, not announced)"),
                    },
                }
            },
            affinity: service.affinity_seconds,
            backends: frontend
                .backends
                .iter()
                .map(|b| BackendRow {
                    address: format!("{}:{}", b.address, b.port),
                    state: match b.state {
                        BackendState::Active => "active",
                        BackendState::Terminating => "terminating",
                    },
                })
                .collect(),
        })
        .collect()
}

pub fn run(name: &str, format: Format) -> Result<()> {
    let dir = LabDir::of(name);
    let plan = dir.read_plan()?;
    let resources = dir.read_sources()?.1;
    let services = live::services(&plan, &resources)?;
    let announced = services
        .announcements(&plan)
        .into_iter()
        .map(|(address, node)| (address, plan.nodes[node].name.clone()))
        .collect();
    let rows = rows(&services, &announced);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table => print!("{}", table(&rows)),
    }
    Ok(())
}

fn table(rows: &[Row]) -> String {
    let mut lines = vec![["ID".to_string(), "SERVICE".into(), "FRONTEND".into(), "BACKENDS".into()]];
    for row in rows {
        let backends: Vec<String> = row.backends.iter().map(|b| format!("{} ({})", b.address, b.state)).collect();
        let backends = if backends.is_empty() { "none".to_string() } else { backends.join(", ") };
        let affinity = row.affinity.map_or(String::new(), |s| format!(", affinity ClientIP {s}s"));
        lines.push([row.id.to_string(), row.service.clone(), row.frontend.clone(), format!("{backends}{affinity}")]);
    }
    let widths: Vec<usize> = (0..3).map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0)).collect();
    lines
        .iter()
        .map(|l| {
            format!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {}\n",
                l[0],
                l[1],
                l[2],
                l[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::{Backend, Frontend, FrontendKind, Service};
    use crate::topology::Protocol;

    #[test]
    fn a_frontend_per_line_with_its_backends_and_their_state() {
        let backend = |last, state| Backend { address: std::net::Ipv4Addr::new(10, 0, 0, last), port: 8080, state };
        let services = Services {
            services: vec![Service {
                namespace: "default".into(),
                name: "web".into(),
                cluster_ip: "172.30.0.10".parse().unwrap(),
                affinity_seconds: None,
                external_local: false,
                internal_local: false,
                frontends: vec![Frontend {
                    name: None,
                    kind: FrontendKind::ClusterIp,
                    address: "172.30.0.10".parse().unwrap(),
                    port: 80,
                    protocol: Protocol::Tcp,
                    node_port: Some(30080),
                    backends: vec![backend(5, BackendState::Active), backend(6, BackendState::Terminating)],
                }],
            }],
            warnings: Vec::new(),
        };
        let rows = rows(&services, &BTreeMap::new());
        let text = table(&rows);
        let line = text.lines().nth(1).unwrap();
        assert!(line.starts_with(&rows[0].id.to_string()), "{text}");
        assert!(
            line.ends_with(
                "default/web  172.30.0.10:80/TCP (NodePort 30080)  10.0.0.5:8080 (active), 10.0.0.6:8080 (terminating)"
            ),
            "{text}"
        );
    }
}
