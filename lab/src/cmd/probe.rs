//! `lab probe NAME --from A --to B --port tcp/80`: one real connection through the datapath;
//! `--matrix`: every pod to every pod, printed as the Kubernetes netpol e2e suite prints its
//! truth tables (`.` connected, `X` not).

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};

use crate::net::netns;
use crate::plan::Plan;
use crate::probe::{self, Kind, Outcome};
use crate::state::LabDir;

/// `tcp/80`, `80/tcp`, `udp/53` or `icmp`.
pub fn parse_kind(text: &str) -> Result<Kind, String> {
    if text.eq_ignore_ascii_case("icmp") {
        return Ok(Kind::Icmp);
    }
    let port: crate::topology::Port = text.parse()?;
    Ok(match port.protocol {
        crate::topology::Protocol::Tcp => Kind::Tcp(port.port),
        crate::topology::Protocol::Udp => Kind::Udp(port.port),
    })
}

/// Something that sends or receives: a pod, a node or an external, by name, or an address.
pub struct Endpoint {
    pub name: String,
    pub netns: Option<String>,
    pub ip: Ipv4Addr,
}

/// A pod (`namespace/name`, or a name only one pod has), node, external or IPv4 address.
pub fn resolve(plan: &Plan, target: &str) -> Result<Endpoint> {
    if let Ok(ip) = target.parse::<Ipv4Addr>() {
        return Ok(Endpoint { name: target.to_string(), netns: None, ip });
    }
    if let Ok(pod) = plan.find_pod(target) {
        return Ok(Endpoint { name: pod.id(), netns: Some(pod.netns.clone()), ip: pod.ip });
    }
    if let Some(node) = plan.nodes.iter().find(|n| n.name == target) {
        return Ok(Endpoint { name: node.name.clone(), netns: Some(node.netns.clone()), ip: node.ip.addr() });
    }
    if let Some(external) = plan.externals.iter().find(|e| e.name == target) {
        return Ok(Endpoint {
            name: external.name.clone(),
            netns: Some(external.netns.clone()),
            ip: external.address.addr(),
        });
    }
    bail!("no pod, node or external `{target}` in lab `{}`", plan.lab)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

pub fn run(lab: &str, from: &str, to: &str, kind: Kind, wait: Duration) -> Result<bool> {
    super::require_root()?;
    let plan = LabDir::of(lab).read_plan()?;
    let (source, destination) = (resolve(&plan, from)?, resolve(&plan, to)?);
    let netns_name = source.netns.ok_or_else(|| anyhow!("--from must be a pod, node or external, not an address"))?;
    let netns_file = netns::open(&netns_name)?;
    let outcome = runtime()?.block_on(probe::probe(&netns_file, destination.ip, kind, wait));
    println!("{} -> {} ({}) {kind}: {outcome}", source.name, destination.name, destination.ip);
    Ok(outcome == Outcome::Connected)
}

/// Probes every pod (of `namespaces`, or all) to every pod on `kind` and prints the truth table.
pub fn matrix(lab: &str, kind: Kind, namespaces: &[String], wait: Duration) -> Result<()> {
    super::require_root()?;
    let plan = LabDir::of(lab).read_plan()?;
    let pods: Vec<_> =
        plan.pods.iter().filter(|p| namespaces.is_empty() || namespaces.contains(&p.namespace)).collect();
    print!("{}", probe::matrix(&pods, kind, wait)?);
    Ok(())
}

/// The netpol e2e layout (see [`probe::render_matrix`]).
pub use probe::render_matrix;

/// `1s`, `500ms`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed = if let Some(ms) = text.strip_suffix("ms") {
        ms.parse::<u64>().map(Duration::from_millis).ok()
    } else {
        text.strip_suffix('s').unwrap_or(text).parse::<f64>().ok().filter(|s| *s > 0.0).map(Duration::from_secs_f64)
    };
    parsed.ok_or_else(|| format!("`{text}` is not a duration such as 1s or 500ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_durations_parse() {
        assert_eq!(parse_kind("tcp/80"), Ok(Kind::Tcp(80)));
        assert_eq!(parse_kind("53/udp"), Ok(Kind::Udp(53)));
        assert_eq!(parse_kind("ICMP"), Ok(Kind::Icmp));
        assert!(parse_kind("tcp/0").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn matrices_print_as_the_netpol_suite_does() {
        let names = vec!["x/a".to_string(), "x/b".to_string()];
        let table = vec![vec!['.', 'X'], vec!['.', '.']];
        assert_eq!(render_matrix(&names, &table), "-\tx/a\tx/b\nx/a\t.\tX\nx/b\t.\t.\n");
    }
}
