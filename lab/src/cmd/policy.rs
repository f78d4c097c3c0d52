//! `lab policy NAME --from x/a --to y/b --port 80/tcp`: what the datapath does with that
//! connection and why, both checks on its way (the sender's egress, the receiver's ingress) with
//! the map entry and the rule that decide each; `--matrix`: the truth table every pod to every
//! pod, computed from the compiled policy without sending a packet (compare it with
//! `lab probe --matrix`). `--kernel` also reads the endpoints' maps from the kernel and says
//! whether they hold what was compiled.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use aya::maps::{HashMap, Map, MapData, MapError};

use crate::datapath::abi::{
    ENDPOINT_F_EGRESS_ENFORCED, ENDPOINT_F_INGRESS_ENFORCED, EndpointInfo, EndpointKey, PolicyKey,
};
use crate::datapath::{maps, pins};
use crate::explain::{self, Explanation, Peer, Side};
use crate::plan::Plan;
use crate::policy::{Compiled, Decision, Direction, EndpointPolicy, Verdict};
use crate::probe::Kind;
use crate::state::LabDir;
use crate::ui;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The lab.
    pub name: String,
    /// The sender: a pod (`pod` or `namespace/pod`), node, external or IPv4 address.
    #[arg(long, required_unless_present = "matrix")]
    pub from: Option<String>,
    /// The receiver: a pod, node, external or IPv4 address.
    #[arg(long, required_unless_present = "matrix")]
    pub to: Option<String>,
    /// `tcp/80`, `80/tcp`, `udp/53` or `icmp`.
    #[arg(long, value_parser = super::probe::parse_kind)]
    pub port: Kind,
    /// Every pod to every pod, as the `.`/`X` truth table `lab probe --matrix` measures.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub matrix: bool,
    /// With --matrix: only pods of these namespaces.
    #[arg(long, short)]
    pub namespace: Vec<String>,
    /// Also read the endpoints' policy maps and enforcement from the kernel and compare them
    /// with the compiled policy (needs root).
    #[arg(long)]
    pub kernel: bool,
}

/// Runs `lab policy`; `Ok(false)` when the explained connection would not get through (so the
/// exit status says so, as `lab probe`'s does).
pub fn run(args: &Args) -> Result<bool> {
    if args.kernel {
        super::require_root()?;
    }
    let dir = LabDir::of(&args.name);
    let plan = dir.read_plan()?;
    let (_, resources) = dir.read_sources()?;
    let compiled = crate::live::compile(&plan, &resources)?;
    for warning in &compiled.warnings {
        ui::warning(warning);
    }

    if args.matrix {
        let pods: Vec<usize> = (0..plan.pods.len())
            .filter(|&p| args.namespace.is_empty() || args.namespace.contains(&plan.pods[p].namespace))
            .collect();
        if pods.is_empty() {
            bail!("no pods in namespaces {} of lab `{}`", args.namespace.join(", "), plan.lab);
        }
        print!("{}", explain::matrix_of(&plan, &compiled, args.port, &pods));
        if args.kernel {
            let checks = pods.iter().map(|&pod| check_kernel(&plan, &compiled, pod)).collect::<Result<Vec<_>>>()?;
            let differing: Vec<&KernelCheck> = checks.iter().filter(|c| !c.is_same()).collect();
            for check in &differing {
                ui::warning(check.summary(&plan, &compiled));
            }
            if differing.is_empty() {
                eprintln!("kernel: the maps of all {} endpoints hold what was compiled", checks.len());
            } else {
                bail!("{} of {} endpoints' maps differ from the compiled policy", differing.len(), checks.len());
            }
        }
        return Ok(true);
    }

    let (from, to) = (args.from.as_deref().expect("required by clap"), args.to.as_deref().expect("required by clap"));
    let from = Peer::resolve(&plan, from).map_err(anyhow::Error::msg)?;
    let to = Peer::resolve(&plan, to).map_err(anyhow::Error::msg)?;
    let explanation = explain::explain(&plan, &compiled, from, to, args.port);
    print!("{}", render(&plan, &compiled, &explanation));

    if args.kernel {
        let mut differ = false;
        println!();
        for side in [&explanation.egress, &explanation.ingress].into_iter().flatten() {
            let check = check_kernel(&plan, &compiled, side.pod)?;
            let decision = side.decide_with(&check.policy(), explanation.protocol, explanation.port);
            let same_decision = same_decision(&decision, &side.decision);
            differ |= !check.is_same() || !same_decision;
            let mut line = format!("{} {}", label("kernel"), check.summary(&plan, &compiled));
            if !same_decision {
                let _ = write!(line, "; with it the kernel decides {}", verdict_text(decision.verdict));
            }
            println!("{line}");
        }
        if explanation.egress.is_none() && explanation.ingress.is_none() {
            println!("{} no endpoint's map is involved", label("kernel"));
        }
        if differ {
            bail!("the kernel's policy maps differ from the compiled policy");
        }
    }
    Ok(explanation.reachable())
}

fn same_decision(a: &Decision, b: &Decision) -> bool {
    (a.verdict, a.enforced, a.match_type) == (b.verdict, b.enforced, b.match_type)
        && a.matched.map(|m| (m.key, m.entry.deny, m.entry.rule))
            == b.matched.map(|m| (m.key, m.entry.deny, m.entry.rule))
}

/// What the kernel holds for one endpoint, against what was compiled.
struct KernelCheck {
    pod: usize,
    /// The endpoints map's flags; `None` if the endpoint has no entry.
    flags: Option<u32>,
    compiled_flags: u32,
    entries: std::collections::BTreeMap<PolicyKey, crate::policy::PolicyEntry>,
    diff: explain::EntryDiff,
}

impl KernelCheck {
    fn is_same(&self) -> bool {
        self.diff.is_empty() && self.flags == Some(self.compiled_flags)
    }

    fn policy(&self) -> EndpointPolicy {
        let flags = self.flags.unwrap_or(0);
        EndpointPolicy {
            ingress_enforced: flags & ENDPOINT_F_INGRESS_ENFORCED != 0,
            egress_enforced: flags & ENDPOINT_F_EGRESS_ENFORCED != 0,
            entries: self.entries.clone(),
        }
    }

    fn summary(&self, plan: &Plan, compiled: &Compiled) -> String {
        let pod = plan.pods[self.pod].id();
        if self.is_same() {
            return format!("{pod}'s map ({} entries) and enforcement are as compiled", self.entries.len());
        }
        let mut parts = Vec::new();
        match self.flags {
            None => parts.push("no endpoints map entry".to_string()),
            Some(flags) if flags != self.compiled_flags => {
                parts.push(format!("enforcement {} instead of {}", flags_text(flags), flags_text(self.compiled_flags)))
            }
            Some(_) => {}
        }
        let keys = |what: &str, keys: &[PolicyKey]| {
            let shown: Vec<String> = keys.iter().take(3).map(|k| key_text(plan, compiled, k)).collect();
            let more = if keys.len() > 3 { format!(", and {} more", keys.len() - 3) } else { String::new() };
            format!("{} {what} ({}{more})", keys.len(), shown.join("; "))
        };
        for (what, list) in
            [("missing", &self.diff.missing), ("not compiled", &self.diff.extra), ("changed", &self.diff.changed)]
        {
            if !list.is_empty() {
                parts.push(keys(what, list));
            }
        }
        format!("{pod}'s map differs from the compiled one: {}", parts.join(", "))
    }
}

fn flags_text(flags: u32) -> String {
    let mut directions = Vec::new();
    if flags & ENDPOINT_F_INGRESS_ENFORCED != 0 {
        directions.push("ingress");
    }
    if flags & ENDPOINT_F_EGRESS_ENFORCED != 0 {
        directions.push("egress");
    }
    if directions.is_empty() { "none".to_string() } else { directions.join("+") }
}

fn check_kernel(plan: &Plan, compiled: &Compiled, pod: usize) -> Result<KernelCheck> {
    let entries =
        maps::read_policy(plan, pod).with_context(|| format!("reading the map of {}", plan.pods[pod].id()))?;
    let diff = explain::diff_entries(&compiled.endpoints[pod].entries, &entries);
    Ok(KernelCheck {
        pod,
        flags: endpoint_flags(plan, pod)?,
        compiled_flags: compiled.endpoints[pod].flags(),
        entries,
        diff,
    })
}

/// The pod's enforcement flags in its node's endpoints map.
fn endpoint_flags(plan: &Plan, pod: usize) -> Result<Option<u32>> {
    let p = &plan.pods[pod];
    let path = pins::node_map(&plan.lab, &plan.nodes[p.node].name, "lab_endpoints");
    let data = MapData::from_pin(&path).with_context(|| format!("opening the pinned map {}", path.display()))?;
    let map: HashMap<MapData, EndpointKey, EndpointInfo> = HashMap::try_from(Map::HashMap(data))?;
    match map.get(&EndpointKey { ip: maps::ipv4(p.ip) }, 0) {
        Ok(info) => Ok(Some(info.flags)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A field name in the explanation's left column.
fn label(name: &str) -> String {
    ui::bold(&format!("{name:<9}"))
}

fn verdict_text(verdict: Verdict) -> String {
    match cause(verdict) {
        Some(cause) => format!("dropped by {cause}"),
        None => "allowed".to_string(),
    }
}

/// Why the datapath drops, with the drop reason it reports.
fn cause(verdict: Verdict) -> Option<String> {
    let reason = verdict.drop_reason()?;
    Some(match verdict {
        Verdict::Denied => format!("a deny entry (drop reason {reason})"),
        _ => format!("default deny (drop reason {reason})"),
    })
}

/// `identity 12345 (x/a)`.
fn identity_text(plan: &Plan, compiled: &Compiled, id: u32) -> String {
    if id == 0 {
        return "any identity".to_string();
    }
    format!("identity {id} ({})", explain::identity_name(plan, compiled, id))
}

/// A policy map key as people read it: `identity 12345 (x/a) ingress TCP/80 [prefix 64]`.
fn key_text(plan: &Plan, compiled: &Compiled, key: &PolicyKey) -> String {
    let direction = if key.is_egress() { "egress" } else { "ingress" };
    format!(
        "{} {direction} {} [prefix {}]",
        identity_text(plan, compiled, key.identity),
        explain::describe_ports(key),
        key.prefixlen
    )
}

/// `x/a (10.0.0.10 on node-a)`, `web (203.0.113.10)`.
fn peer_text(plan: &Plan, peer: Peer) -> String {
    match peer {
        Peer::Pod(pod) => {
            let p = &plan.pods[pod];
            format!("{} ({} on {})", p.id(), p.ip, plan.nodes[p.node].name)
        }
        Peer::Address(ip) => {
            let name = peer.name(plan);
            if name == ip.to_string() { name } else { format!("{name} ({ip})") }
        }
    }
}

/// The explanation, for people.
pub fn render(plan: &Plan, compiled: &Compiled, e: &Explanation) -> String {
    let mut out = String::new();
    let outcome = if e.loopback {
        "allowed: a pod reaching itself goes over loopback and never meets the datapath".to_string()
    } else {
        match e.dropped_at() {
            Some(side) => format!(
                "dropped at {} of {}, by {}",
                side.direction,
                plan.pods[side.pod].id(),
                cause(side.decision.verdict).unwrap_or_default()
            ),
            None if e.egress.is_none() && e.ingress.is_none() => {
                "allowed: neither end is a pod, so no endpoint policy applies".to_string()
            }
            None => "allowed".to_string(),
        }
    };
    let _ = writeln!(out, "{} -> {} {}", peer_text(plan, e.from), peer_text(plan, e.to), e.kind);
    let _ = writeln!(out, "{} {}", label("verdict"), ui::bold(&outcome));
    if e.served == Some(false) {
        let _ = writeln!(
            out,
            "{} {} does not serve {}: a probe would be refused{}",
            label("note"),
            e.to.name(plan),
            e.kind,
            if e.verdict().is_allowed() { " even though policy allows it" } else { "" }
        );
    }
    let dropped_at = e.dropped_at().map(|side| side.direction);
    let ends = [(&e.egress, "sender", Direction::Egress), (&e.ingress, "receiver", Direction::Ingress)];
    for (side, end, direction) in ends.into_iter().filter(|_| !e.loopback) {
        out.push('\n');
        match side {
            Some(side) => {
                let unreached = direction == Direction::Ingress && dropped_at == Some(Direction::Egress);
                render_side(&mut out, plan, compiled, e, side, unreached);
            }
            None => {
                let _ = writeln!(
                    out,
                    "{}",
                    ui::bold(&format!("{direction}: the {end} is not a pod, so no endpoint policy applies"))
                );
            }
        }
    }
    out
}

fn render_side(out: &mut String, plan: &Plan, compiled: &Compiled, e: &Explanation, side: &Side, unreached: bool) {
    let pod = plan.pods[side.pod].id();
    let decision = &side.decision;
    let reached = if unreached { " (not reached: dropped at egress first)" } else { "" };
    let mut heading = format!("{} at {pod}{reached}: {}", side.direction, verdict_text(decision.verdict));
    if !decision.enforced {
        let _ = write!(heading, " (not enforced: no policy applies to {pod}'s {})", side.direction);
    }
    let _ = writeln!(out, "{}", ui::bold(&heading));

    let remote_name = explain::identity_name(plan, compiled, side.remote_identity);
    let node = &plan.nodes[plan.pods[side.pod].node].name;
    let how = match side.remote_prefix {
        Some(prefix) => format!("{remote_name}, by {node}'s ipcache entry {prefix}"),
        None => format!("{remote_name}: {node}'s ipcache has no entry for it"),
    };
    let _ = writeln!(out, "  {} {} is identity {} ({how})", label("remote"), side.remote_ip, side.remote_identity);
    if let Some(labels) = explain::identity_labels(plan, compiled, side.remote_identity) {
        let _ = writeln!(out, "  {} {}", label("labels"), labels.to_strings().join(", "));
    }
    if !decision.enforced {
        return;
    }
    let (protocol, port) = (e.protocol, e.port);
    let lookup = format!(
        "{} {} {}",
        identity_text(plan, compiled, side.remote_identity),
        side.direction,
        explain::describe_ports(&PolicyKey {
            prefixlen: 64,
            identity: side.remote_identity,
            egress: u8::from(side.direction.is_egress()),
            protocol,
            dport: port.to_be(),
        })
    );
    let _ = writeln!(out, "  {} {lookup}, then any identity", label("lookup"));
    match decision.matched {
        Some(matched) => {
            let entry = matched.entry;
            let _ = writeln!(
                out,
                "  {} {} -> {} (rule {}, {} match)",
                label("entry"),
                key_text(plan, compiled, &matched.key),
                if entry.deny != 0 { "deny" } else { "allow" },
                entry.rule,
                crate::flow::policy_match_text(u32::from(decision.match_type))
            );
            match &side.rule {
                Some(rule) => {
                    let _ = writeln!(out, "  {} {rule}", label("rule"));
                    let place = match rule.location {
                        Some(location) => format!("{}:{}", rule.file.display(), location.line),
                        None => rule.file.display().to_string(),
                    };
                    let _ = writeln!(out, "  {} {place}", label(""));
                }
                None if entry.rule == 0 => {
                    let _ = writeln!(
                        out,
                        "  {} none: the implicit allow-all of a direction with rules but no default deny \
                         (enableDefaultDeny: false)",
                        label("rule")
                    );
                }
                None => {
                    let _ = writeln!(out, "  {} cookie {} names no rule", label("rule"), entry.rule);
                }
            }
        }
        None => {
            let _ = writeln!(out, "  {} none matches", label("entry"));
            let endpoint = &compiled.endpoints[side.pod];
            let egress = u8::from(side.direction.is_egress());
            let in_direction: Vec<_> = endpoint.entries.iter().filter(|(k, _)| k.egress == egress).collect();
            let cookies: BTreeSet<u32> = in_direction.iter().map(|(_, e)| e.rule).collect();
            if in_direction.is_empty() {
                let _ = writeln!(
                    out,
                    "  {} the map holds no {} entries: everything is denied",
                    label("map"),
                    side.direction
                );
            } else {
                let _ = writeln!(
                    out,
                    "  {} {} {} entries, none for this identity and port, from:",
                    label("map"),
                    in_direction.len(),
                    side.direction
                );
                for cookie in cookies {
                    let text =
                        compiled.rule(cookie).map_or_else(|| "the implicit allow-all".to_string(), |r| r.to_string());
                    let _ = writeln!(out, "  {} {text}", label(""));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::load_str;

    fn plain(text: &str) -> String {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                chars.by_ref().find(|c| *c == 'm');
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn explanations_name_the_entry_and_the_rule() {
        let text = r#"
name: t
nodes: [{name: n}]
pods:
  - {name: a, node: n, labels: {app: a}, ports: [tcp/80]}
  - {name: b, node: n, labels: {app: b}, ports: [tcp/80]}
resources:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: a-in}
    spec:
      endpointSelector: {matchLabels: {app: a}}
      ingress:
        - fromEndpoints: [{matchLabels: {app: b}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;
        let loaded = load_str(std::path::Path::new("t.yaml"), text).unwrap();
        let plan = Plan::new(&loaded.topology, "t");
        let compiled = crate::live::compile(&plan, &loaded.resources).unwrap();
        let (a, b) = (Peer::Pod(0), Peer::Pod(1));

        let allowed = plain(&render(&plan, &compiled, &explain::explain(&plan, &compiled, b, a, Kind::Tcp(80))));
        assert!(allowed.contains("verdict   allowed\n"), "{allowed}");
        assert!(allowed.contains("egress at default/b: allowed (not enforced"), "{allowed}");
        assert!(allowed.contains("-> allow (rule 1, L3-L4 match)"), "{allowed}");
        assert!(
            allowed.contains("rule      CiliumNetworkPolicy default/a-in spec.ingress[0] (ingress allow)"),
            "{allowed}"
        );
        assert!(allowed.contains("t.yaml:"), "{allowed}");

        let denied = plain(&render(&plan, &compiled, &explain::explain(&plan, &compiled, b, a, Kind::Udp(80))));
        assert!(
            denied.contains("verdict   dropped at ingress of default/a, by default deny (drop reason 133)"),
            "{denied}"
        );
        assert!(denied.contains("entry     none matches"), "{denied}");
        assert!(denied.contains("1 ingress entries, none for this identity and port"), "{denied}");
        assert!(denied.contains("does not serve udp/80"), "{denied}");
    }
}
