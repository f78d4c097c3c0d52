//! `lab ls [NAME...] [-o json]`: the labs on this host, their nodes, pods and addresses.

use anyhow::Result;
use serde_json::json;

use crate::plan::Plan;
use crate::state::{self, LabDir, Status};
use crate::ui;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn run(names: &[String], format: Format) -> Result<()> {
    let names = if names.is_empty() { state::list() } else { names.to_vec() };
    let mut labs = Vec::new();
    for name in &names {
        let lab = LabDir::of(name);
        let status = match lab.status() {
            Some(Status::Ready) => "ready",
            Some(Status::Creating) => "incomplete",
            None => "unknown",
        };
        labs.push((name.clone(), status, lab.read_plan()?));
    }
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&labs.iter().map(|(n, s, p)| as_json(n, s, p)).collect::<Vec<_>>())?
        ),
        Format::Table if labs.is_empty() => println!("no labs"),
        Format::Table => {
            for (i, (name, status, plan)) in labs.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print_table(name, status, plan);
            }
        }
    }
    Ok(())
}

fn as_json(name: &str, status: &str, plan: &Plan) -> serde_json::Value {
    json!({
        "name": name,
        "status": status,
        "routingMode": plan.routing_mode.to_string(),
        "nodes": plan.nodes.iter().map(|n| json!({
            "name": n.name, "ip": n.ip.addr(), "podCIDR": n.pod_cidr, "netns": n.netns,
        })).collect::<Vec<_>>(),
        "pods": plan.pods.iter().map(|p| json!({
            "namespace": p.namespace, "name": p.name, "node": plan.nodes[p.node].name, "ip": p.ip,
            "mac": p.mac, "interface": p.host_ifname, "netns": p.netns,
            "ports": p.ports.iter().map(|port| port.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "externals": plan.externals.iter().map(|e| json!({
            "name": e.name, "ip": e.address.addr(), "netns": e.netns,
            "ports": e.ports.iter().map(|port| port.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn ports(ports: &[crate::topology::Port]) -> String {
    if ports.is_empty() { "-".into() } else { ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",") }
}

fn print_table(name: &str, status: &str, plan: &Plan) {
    println!("{} ({status}, {} routing)", ui::bold(name), plan.routing_mode);
    let mut rows: Vec<[String; 5]> =
        vec![["KIND".into(), "NAME".into(), "NODE".into(), "IP".into(), "PORTS / POD CIDR".into()]];
    for node in &plan.nodes {
        rows.push([
            "node".into(),
            node.name.clone(),
            "-".into(),
            node.ip.addr().to_string(),
            node.pod_cidr.to_string(),
        ]);
    }
    for pod in &plan.pods {
        rows.push(["pod".into(), pod.id(), plan.nodes[pod.node].name.clone(), pod.ip.to_string(), ports(&pod.ports)]);
    }
    for external in &plan.externals {
        rows.push([
            "external".into(),
            external.name.clone(),
            "-".into(),
            external.address.addr().to_string(),
            ports(&external.ports),
        ]);
    }
    let widths: Vec<usize> = (0..5).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:w$}")).collect();
        println!("  {}", line.join("  ").trim_end());
    }
}
