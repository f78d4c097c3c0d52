//! `lab bench up [--pods 100,500,1000] [--nodes 2]`: how fast labs come up and go away, against
//! the same labs built by a script of `ip` commands.
//!
//! `lab bench datapath [--seconds 3]`: TCP between two pods through the datapath, against the same
//! pods with no program attached, and with a small and a full policy map.
//!
//! `lab bench policy`: compiling 10,000 rules over 5,000 identities, and one changed rule applied
//! to 1,000 endpoints of a running lab until the datapath enforces it, with the memory used.
//!
//! `lab bench services [--services 10,10000,50000] [--seconds 2]`: new connections per second
//! through a ClusterIP as the number of services grows, translated by the datapath and by
//! kube-proxy's iptables rules.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::ls::Format;
use crate::bench::datapath::{self, DatapathResult, LARGE_MAP, ROUNDS, Row, SMALL_MAP, Setup, Traffic, thousands};
use crate::bench::policy::{self as policy_bench, PolicyResult, Step};
use crate::bench::services::{self as services_bench, Progress, ServicesResult, Translation};
use crate::bench::{self, UpResult};

/// The acceptance targets, set for this many pods on two cores.
const TARGET_PODS: usize = 500;
const TARGET_UP: Duration = Duration::from_secs(3);
const TARGET_UP_RATIO: f64 = 5.0;
const TARGET_DOWN: Duration = Duration::from_secs(1);
/// The datapath's least share of bare veth's request rate and throughput.
const TARGET_VS_BARE: f64 = 0.9;
/// The most request rate a full policy map may lose against a small one.
const TARGET_MAP_LOSS: f64 = 0.1;
/// Other processes keeping more cores than this busy make the datapath benchmark unreliable.
const NOISY_LOAD: f64 = 0.1;
/// Compiling every rule, on two cores.
const TARGET_COMPILE: Duration = Duration::from_secs(1);
/// One changed rule, from `lab apply` to the datapath enforcing it on every endpoint.
const TARGET_ENFORCED: Duration = Duration::from_millis(50);
/// The BPF datapath's new-connection rate with this many services...
const TARGET_MANY_SERVICES: usize = 50_000;
/// ...at most this much below its rate with this many.
const TARGET_FEW_SERVICES: usize = 10;
const TARGET_SERVICES_LOSS: f64 = 0.1;

pub fn up(pods: &[usize], nodes: usize, format: Format) -> Result<()> {
    super::require_root()?;
    let results = bench::up(pods, nodes, |r| {
        eprintln!(
            "{} pods: lab up {} ms, down {} ms; ip script up {} ms, down {} ms",
            r.pods,
            ms(r.lab_up),
            ms(r.lab_down),
            ms(r.ip_script_up),
            ms(r.ip_script_down)
        );
    })?;
    let verdicts = verdicts(&results);
    match format {
        Format::Json => {
            let results: Vec<_> = results.iter().map(as_json).collect();
            let targets: Vec<_> =
                verdicts.iter().map(|v| json!({"target": v.target, "met": v.met, "measured": v.measured})).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"cores": cores(), "results": results, "targets": targets}))?
            );
        }
        Format::Table => print_table(&results, &verdicts),
    }
    Ok(())
}

fn ms(duration: Duration) -> u128 {
    duration.as_millis()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn as_json(r: &UpResult) -> serde_json::Value {
    let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
    json!({
        "pods": r.pods, "nodes": r.nodes,
        "labUpMs": ms(r.lab_up), "labDownMs": ms(r.lab_down), "labFreedMs": ms(r.lab_freed),
        "ipScriptUpMs": ms(r.ip_script_up), "ipScriptDownMs": ms(r.ip_script_down),
        "ipScriptFreedMs": ms(r.ip_script_freed), "upRatio": r.up_ratio(),
    })
}

/// One acceptance target and how this run did against it.
struct Verdict {
    target: String,
    met: bool,
    measured: String,
}

fn verdicts(results: &[UpResult]) -> Vec<Verdict> {
    let Some(r) = results.iter().find(|r| r.pods == TARGET_PODS) else { return Vec::new() };
    let pods = TARGET_PODS;
    vec![
        Verdict {
            target: format!("{pods} pods up in under {} ms", ms(TARGET_UP)),
            met: r.lab_up < TARGET_UP,
            measured: format!("{} ms", ms(r.lab_up)),
        },
        Verdict {
            target: format!("at least {TARGET_UP_RATIO}x faster up than the ip script"),
            met: r.up_ratio() >= TARGET_UP_RATIO,
            measured: format!("{:.1}x", r.up_ratio()),
        },
        Verdict {
            target: format!("{pods} pods down in under {} ms", ms(TARGET_DOWN)),
            met: r.lab_down < TARGET_DOWN,
            measured: format!("{} ms until `lab down` returned", ms(r.lab_down)),
        },
        Verdict {
            target: format!("{pods} pods freed by the kernel in under {} ms", ms(TARGET_DOWN)),
            met: r.lab_freed < TARGET_DOWN,
            measured: format!("{} ms until every veth was gone", ms(r.lab_freed)),
        },
    ]
}

fn print_table(results: &[UpResult], verdicts: &[Verdict]) {
    let header = ["pods", "nodes", "lab up", "lab down", "freed", "ip-script up", "ip-script down", "up ratio"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in results {
        rows.push(vec![
            r.pods.to_string(),
            r.nodes.to_string(),
            ms(r.lab_up).to_string(),
            ms(r.lab_down).to_string(),
            ms(r.lab_freed).to_string(),
            ms(r.ip_script_up).to_string(),
            ms(r.ip_script_down).to_string(),
            format!("{:.1}x", r.up_ratio()),
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| rows.iter().map(|row| row[c].len()).max().unwrap_or(0)).collect();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, &width)| format!("{cell:>width$}")).collect();
        println!("{}", cells.join("  "));
    }
    println!();
    println!("Times in ms, on {} cores. lab up: `realise::build`, as `lab up` runs it. lab down:", cores());
    println!("`realise::teardown`, as `lab down` runs it, until the namespaces are unmounted. freed: from");
    println!("the start of teardown until the kernel has destroyed every veth of the lab. ip-script: the");
    println!("same lab built, then removed, by a bash script of one `ip` process per operation. up ratio:");
    println!("ip-script up / lab up.");
    println!();
    if verdicts.is_empty() {
        println!("targets: not checked; they are set for {TARGET_PODS} pods, add {TARGET_PODS} to --pods");
    }
    for v in verdicts {
        println!("target {}: {} ({})", v.target, if v.met { "met" } else { "MISSED" }, v.measured);
    }
}

pub fn datapath(seconds: Duration, format: Format) -> Result<()> {
    super::require_root()?;
    let result = datapath::run(seconds, |round, setup, traffic, rate| match traffic {
        Traffic::RequestResponse => {
            eprintln!("round {}/{ROUNDS}, {setup}: request/response {rate:.0} trans/s", round + 1)
        }
        Traffic::Bulk => eprintln!("round {}/{ROUNDS}, {setup}: bulk {rate:.2} Gbit/s", round + 1),
    })?;
    let verdicts = datapath_verdicts(&result);
    match format {
        Format::Json => {
            let rows: Vec<_> = result.rows().iter().map(|row| row_as_json(&result, row)).collect();
            let targets: Vec<_> =
                verdicts.iter().map(|v| json!({"target": v.target, "met": v.met, "measured": v.measured})).collect();
            let report = json!({
                "cores": cores(), "seconds": result.seconds.as_secs_f64(), "rounds": ROUNDS,
                "rows": rows, "targets": targets,
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Format::Table => print_datapath_table(&result, &verdicts),
    }
    Ok(())
}

fn row_as_json(result: &DatapathResult, row: &Row) -> serde_json::Value {
    let entries = match row.setup {
        Setup::Bare => None,
        Setup::Datapath { entries } => Some(entries),
    };
    json!({
        "setup": row.setup.to_string(), "policyMapEntries": entries,
        "rrTransPerSec": row.rr(), "rrSamples": row.rr, "rrSpread": row.rr_spread(),
        "rrVsBare": result.rr_vs_bare(row), "usPerTransaction": row.us_per_transaction(),
        "bulkGbitPerSec": row.bulk(), "bulkSamples": row.bulk, "bulkSpread": row.bulk_spread(),
        "bulkVsBare": result.bulk_vs_bare(row),
        "policyLookups": row.policy_lookups, "otherProcessesCores": row.other_load,
        "nsPerPacket": row.cost.map(|c| c.per_packet_ns), "policyProgramNs": row.cost.map(|c| c.policy_program_ns),
    })
}

fn datapath_verdicts(result: &DatapathResult) -> Vec<Verdict> {
    let (bare, small, large) = (&result.bare, &result.small, &result.large);
    let rr_ratio = result.rr_vs_bare(small);
    let bulk_ratio = result.bulk_vs_bare(small).unwrap_or(f64::NAN);
    let map_ratio = result.large_vs_small();
    let (small_entries, large_entries) = (thousands(SMALL_MAP), thousands(LARGE_MAP));
    vec![
        Verdict {
            target: format!("request rate through the datapath at least {TARGET_VS_BARE} of bare veth"),
            met: rr_ratio >= TARGET_VS_BARE,
            measured: format!(
                "{rr_ratio:.3}: medians {:.0} vs {:.0} trans/s, {small_entries} entries",
                small.rr(),
                bare.rr()
            ),
        },
        Verdict {
            target: format!("bulk throughput through the datapath at least {TARGET_VS_BARE} of bare veth"),
            met: bulk_ratio >= TARGET_VS_BARE,
            measured: format!(
                "{bulk_ratio:.3}: medians {:.2} vs {:.2} Gbit/s, {small_entries} entries",
                small.bulk().unwrap_or(f64::NAN),
                bare.bulk().unwrap_or(f64::NAN)
            ),
        },
        Verdict {
            target: format!(
                "request rate at {large_entries} entries at most {:.0}% below {small_entries} entries",
                TARGET_MAP_LOSS * 100.0
            ),
            met: map_ratio >= 1.0 - TARGET_MAP_LOSS,
            measured: format!(
                "{:+.1}%: medians {:.0} vs {:.0} trans/s",
                (map_ratio - 1.0) * 100.0,
                large.rr(),
                small.rr()
            ),
        },
    ]
}

fn print_datapath_table(result: &DatapathResult, verdicts: &[Verdict]) {
    let header =
        ["setup", "RR (trans/s)", "RR vs bare", "µs/trans", "bulk (Gbit/s)", "bulk vs bare", "ns/packet", "policy ns"];
    let dash = || "-".to_string();
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for row in result.rows() {
        let bare = row.setup == Setup::Bare;
        rows.push(vec![
            row.setup.to_string(),
            format!("{:.0}", row.rr()),
            if bare { dash() } else { format!("{:.3}", result.rr_vs_bare(row)) },
            format!("{:.1}", row.us_per_transaction()),
            row.bulk().map_or_else(dash, |b| format!("{b:.2}")),
            result.bulk_vs_bare(row).filter(|_| !bare).map_or_else(dash, |r| format!("{r:.3}")),
            row.cost.map_or_else(dash, |c| format!("{:.0}", c.per_packet_ns)),
            row.cost.map_or_else(dash, |c| format!("{:.0}", c.policy_program_ns)),
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| rows.iter().map(|row| row[c].chars().count()).max().unwrap_or(0)).collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &width))| if c == 0 { format!("{cell:<width$}") } else { format!("{cell:>width$}") })
            .collect();
        println!("{}", cells.join("  "));
    }
    let lookups: u64 = result.rows().iter().map(|row| row.policy_lookups).sum();
    println!();
    println!(
        "Medians of {ROUNDS} runs of {} s each, on {} cores, the setups taking turns (one run of each per",
        result.seconds.as_secs(),
        cores()
    );
    println!("round, the order reversed every round); the client and the server pod on one node, the server's");
    println!("ingress enforced by a policy that allows the client; the client's thread on the first core, the");
    println!("server's on the second. RR: one TCP connection, a 1-byte request and its 1-byte answer per");
    println!("transaction (TCP_RR). bulk: one TCP connection, 64 KiB writes, bits the server received per");
    println!("second. vs bare: over the same pods with the programs detached, the median of the ratios");
    println!("within each round (runs taken one right after the other), not the ratio of the medians.");
    println!("µs/trans: 1 / RR. ns/packet: what the two programs a packet crosses (the sender's");
    println!("from_container, the receiver's to_container) cost it, from the kernel's BPF statistics over one");
    println!("more RR run; policy ns: the server's to_container alone, the program that looks the policy up.");
    println!("Every datapath run went through the allow entry ({lookups} lookups counted).");
    println!();
    let spreads: Vec<String> = result
        .rows()
        .iter()
        .map(|row| {
            let bulk = row.bulk_spread().map_or_else(String::new, |s| format!(", bulk {:.0}%", s * 100.0));
            format!("{} RR {:.0}%{bulk}", row.setup, row.rr_spread() * 100.0)
        })
        .collect();
    println!("Spread of the runs, (max - min) / median: {}.", spreads.join("; "));
    let loads: Vec<String> = result.rows().iter().map(|row| format!("{} {:.2}", row.setup, row.other_load)).collect();
    println!("Cores other processes kept busy during the runs: {}.", loads.join("; "));
    let widest = result.rows().into_iter().flat_map(|row| [Some(row.rr_spread()), row.bulk_spread()]).flatten();
    let busiest = result.rows().into_iter().map(|row| row.other_load).fold(0.0, f64::max);
    if widest.fold(0.0, f64::max) > TARGET_MAP_LOSS || busiest > NOISY_LOAD {
        println!("The runs were disturbed: the ratios carry that noise. Run the benchmark again on a quiet host.");
    }
    println!();
    for v in verdicts {
        println!("target {}: {} ({})", v.target, if v.met { "met" } else { "MISSED" }, v.measured);
    }
}

pub fn policy(format: Format) -> Result<()> {
    super::require_root()?;
    let result = policy_bench::run(|step| match step {
        Step::Compiled(c) => eprintln!(
            "compile: {} rules over {} identities in {} ms (runs: {})",
            thousands(c.rules),
            thousands(c.identities),
            ms(c.median()),
            runs(&c.total)
        ),
        Step::LabUp(took) => {
            eprintln!("lab of {} pods up with its datapath in {} ms", thousands(policy_bench::ENDPOINTS + 1), ms(took))
        }
        Step::Applied { run, applied, enforced } => {
            eprintln!("run {run}: applied in {:.1} ms, enforced after {:.1} ms", fine_ms(applied), fine_ms(enforced))
        }
    })?;
    let verdicts = policy_verdicts(&result);
    match format {
        Format::Json => {
            let (c, a) = (&result.compile, &result.apply);
            let list = |samples: &[Duration]| samples.iter().map(|d| fine_ms(*d)).collect::<Vec<_>>();
            let targets: Vec<_> =
                verdicts.iter().map(|v| json!({"target": v.target, "met": v.met, "measured": v.measured})).collect();
            let report = json!({
                "cores": cores(), "repeats": policy_bench::REPEATS,
                "compile": {
                    "rules": c.rules, "ruleItems": c.items, "identities": c.identities, "endpoints": c.endpoints,
                    "cidrIdentities": c.cidr_identities, "entries": c.entries, "maxEntriesPerEndpoint": c.max_entries,
                    "ms": fine_ms(c.median()), "samplesMs": list(&c.total),
                    "parseMs": fine_ms(c.median_parse()), "parseSamplesMs": list(&c.parse),
                    "cpuMs": fine_ms(c.median_cpu()), "cpuSamplesMs": list(&c.cpu),
                    "peakRssBytes": c.peak_rss,
                },
                "apply": {
                    "endpoints": a.endpoints, "pods": a.pods, "nodes": a.nodes, "labUpMs": fine_ms(a.lab_up),
                    "appliedMs": fine_ms(a.median_applied()), "appliedSamplesMs": list(&a.applied),
                    "enforcedMs": fine_ms(a.median_enforced()), "enforcedSamplesMs": list(&a.enforced),
                    "changedEndpoints": a.changed, "pings": a.pings,
                    "pinnedMaps": a.maps, "pinnedMapsMemlockBytes": a.maps_memlock,
                    "policyMaps": a.policy_maps, "policyMapsMemlockBytes": a.policy_maps_memlock,
                    "mapsByName": a.maps_by_name.iter()
                        .map(|(name, (count, total))| (name.clone(), json!({"maps": count, "memlockBytes": total})))
                        .collect::<serde_json::Map<_, _>>(),
                },
                "peakRssBytes": result.peak_rss, "targets": targets,
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Format::Table => print_policy_table(&result, &verdicts),
    }
    Ok(())
}

/// Milliseconds with their fraction.
fn fine_ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn runs(samples: &[Duration]) -> String {
    samples.iter().map(|d| format!("{:.1}", fine_ms(*d))).collect::<Vec<_>>().join(", ")
}

/// Bytes in KiB below a MiB, in MiB from there.
fn bytes(n: u64) -> String {
    if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

fn policy_verdicts(result: &PolicyResult) -> Vec<Verdict> {
    let (c, a) = (&result.compile, &result.apply);
    vec![
        Verdict {
            target: format!(
                "compile {} rules over {} identities in under {} ms",
                thousands(c.rules),
                thousands(c.identities),
                ms(TARGET_COMPILE)
            ),
            met: c.median() < TARGET_COMPILE,
            measured: format!("{:.0} ms", fine_ms(c.median())),
        },
        Verdict {
            target: format!(
                "one changed rule applied to {} endpoints until enforced in under {} ms",
                thousands(a.endpoints),
                ms(TARGET_ENFORCED)
            ),
            met: a.median_enforced() < TARGET_ENFORCED,
            measured: format!(
                "{:.1} ms until a probe got through; `lab apply` returned after {:.1} ms",
                fine_ms(a.median_enforced()),
                fine_ms(a.median_applied())
            ),
        },
    ]
}

fn print_policy_table(result: &PolicyResult, verdicts: &[Verdict]) {
    let (c, a) = (&result.compile, &result.apply);
    let header = ["measurement", "median (ms)", "runs (ms)"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let mut row = |what: String, samples: &[Duration]| {
        rows.push(vec![what, format!("{:.1}", fine_ms(policy_bench::median(samples))), runs(samples)]);
    };
    row(format!("compile {} rules, {} identities", thousands(c.rules), thousands(c.identities)), &c.total);
    row("  of which parse and check".to_string(), &c.parse);
    row("  CPU time of the compiling thread".to_string(), &c.cpu);
    row(format!("apply 1 rule to {} endpoints", thousands(a.endpoints)), &a.applied);
    row("  until enforced (probe)".to_string(), &a.enforced);
    let widths: Vec<usize> =
        (0..header.len()).map(|i| rows.iter().map(|row| row[i].chars().count()).max().unwrap_or(0)).collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, &width))| if i == 0 { format!("{cell:<width$}") } else { format!("{cell:>width$}") })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    let changed: Vec<String> = a.changed.iter().map(|n| thousands(*n)).collect();
    let by_name: Vec<String> = a
        .maps_by_name
        .iter()
        .map(|(name, (count, total))| format!("{name} x{} {}", thousands(*count), bytes(*total)))
        .collect();
    let text = [
        format!("Medians of {} runs, on {} cores.", policy_bench::REPEATS, cores()),
        format!(
            "compile: `policy::compile` (parse and check, resolve every selector, build every endpoint's map) of \
             {} synthetic policies ({} rule items: L3-L4 allows, port ranges from other namespaces, egress to pods \
             and to the world, denies, CIDR sets, NetworkPolicies) over {} identities, one endpoint each: {} map \
             entries in all, at most {} for one endpoint, {} CIDR identities. The engine runs on one thread.",
            thousands(c.rules),
            thousands(c.items),
            thousands(c.identities),
            thousands(c.entries),
            thousands(c.max_entries),
            c.cidr_identities
        ),
        format!(
            "apply: `lab apply` (`live::apply`) of one changed CiliumNetworkPolicy rule selecting {} pods of a \
             running lab ({} pods on {} nodes, built with its datapath in {} ms): the rule went from TCP/80 to \
             everything from a prober pod, so every selected endpoint's map was rewritten ({} per run). until \
             enforced: from the start of `lab apply` until a ping from the prober, sent every 2 ms all along, reached \
             the pod whose map is written last; then every map was checked to hold the change.",
            thousands(a.endpoints),
            thousands(a.pods),
            a.nodes,
            ms(a.lab_up),
            changed.join(", ")
        ),
        format!(
            "Memory: peak resident set of the process {} after the compile, {} at the end. The lab's {} pinned \
             maps hold {} (memlock, as bpftool shows it), of which its {} policy maps (at most {} entries each, \
             allocated as used) {}. By map: {}.",
            bytes(c.peak_rss),
            bytes(result.peak_rss),
            thousands(a.maps),
            bytes(a.maps_memlock),
            thousands(a.policy_maps),
            policy_bench::POLICY_MAP_SIZE,
            bytes(a.policy_maps_memlock),
            by_name.join(", ")
        ),
    ];
    for paragraph in text {
        println!();
        for line in wrap(&paragraph, 100) {
            println!("{line}");
        }
    }
    println!();
    for v in verdicts {
        println!("target {}: {} ({})", v.target, if v.met { "met" } else { "MISSED" }, v.measured);
    }
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

pub fn services(counts: &[usize], seconds: Duration, format: Format) -> Result<()> {
    super::require_root()?;
    let result = services_bench::run(counts, seconds, |step| match step {
        Progress::Prepared { took } => {
            eprintln!("services, service maps and iptables rules computed in {} ms", ms(took))
        }
        Progress::LabUp { took } => eprintln!("lab up with its datapath in {} ms", ms(took)),
        Progress::Loaded { setup, took } => {
            let what = match setup.translation {
                Translation::Bpf => "service maps written",
                Translation::Iptables => "iptables rules loaded",
            };
            eprintln!("{} services: {what} in {:.1} ms", thousands(setup.services), fine_ms(took))
        }
        Progress::Sample { round, setup, rate } => {
            eprintln!("round {}/{}, {setup}: {rate:.0} connections/s", round + 1, services_bench::ROUNDS)
        }
    })?;
    let verdicts = services_verdicts(&result);
    match format {
        Format::Json => {
            let mut report = result.as_json();
            report["cores"] = json!(cores());
            report["targets"] =
                verdicts.iter().map(|v| json!({"target": v.target, "met": v.met, "measured": v.measured})).collect();
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Format::Table => print_services_table(&result, &verdicts),
    }
    Ok(())
}

fn services_verdicts(result: &ServicesResult) -> Vec<Verdict> {
    let (few, many) = (TARGET_FEW_SERVICES, TARGET_MANY_SERVICES);
    if !result.counts.contains(&few) || !result.counts.contains(&many) || result.counts[0] != few {
        return Vec::new();
    }
    let (at_few, at_many) = (result.row(Translation::Bpf, few), result.row(Translation::Bpf, many));
    let ratio = result.vs_fewest(at_many);
    vec![Verdict {
        target: format!(
            "BPF new-connection rate at {} services within {:.0}% of its rate at {few}",
            thousands(many),
            TARGET_SERVICES_LOSS * 100.0
        ),
        met: ratio >= 1.0 - TARGET_SERVICES_LOSS,
        measured: format!(
            "{:+.1}%: medians {:.0} vs {:.0} connections/s",
            (ratio - 1.0) * 100.0,
            at_many.rate(),
            at_few.rate()
        ),
    }]
}

fn print_services_table(result: &ServicesResult, verdicts: &[Verdict]) {
    let fewest = thousands(result.counts[0]);
    let vs = format!("vs {fewest}");
    let header = [
        "services",
        "BPF (conn/s)",
        vs.as_str(),
        "spread",
        "maps (ms)",
        "iptables (conn/s)",
        vs.as_str(),
        "spread",
        "rules",
        "load (ms)",
        "iptables/BPF",
    ];
    let dash = || "-".to_string();
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for (i, &n) in result.counts.iter().enumerate() {
        let (bpf, iptables) = (result.row(Translation::Bpf, n), result.row(Translation::Iptables, n));
        let load = |row: &services_bench::Row| row.load().map_or_else(dash, |d| format!("{:.1}", fine_ms(d)));
        rows.push(vec![
            thousands(n),
            format!("{:.0}", bpf.rate()),
            format!("{:.3}", result.vs_fewest(bpf)),
            format!("{:.0}%", bpf.spread() * 100.0),
            load(bpf),
            format!("{:.0}", iptables.rate()),
            format!("{:.3}", result.vs_fewest(iptables)),
            format!("{:.0}%", iptables.spread() * 100.0),
            thousands(result.rules[i]),
            load(iptables),
            format!("{:.3}", result.iptables_vs_bpf(n)),
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| rows.iter().map(|row| row[c].chars().count()).max().unwrap_or(0)).collect();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, &width)| format!("{cell:>width$}")).collect();
        println!("{}", cells.join("  "));
    }
    let samples = |translation: Translation| -> String {
        result
            .counts
            .iter()
            .map(|&n| {
                let row = result.row(translation, n);
                let runs: Vec<String> = row.rates.iter().map(|r| format!("{r:.0}")).collect();
                format!("{}: {}", thousands(n), runs.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let by_round = |translation: Translation| -> String {
        result.counts[1..]
            .iter()
            .map(|&n| {
                let ratios = result.vs_fewest_by_round(result.row(translation, n));
                let ratios: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
                format!("{}: {}", thousands(n), ratios.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let loads: Vec<String> = result
        .rows
        .iter()
        .map(|row| format!("{} {}: {:.2}", row.setup.translation, thousands(row.setup.services), row.other_load))
        .collect();
    let text = [
        format!(
            "Medians of {} rounds of {} s runs, on {} cores: each round measures every setup once, a translation's runs \
             at every count back to back, in the same order every round (BPF from fewest to most services, then iptables from most to fewest), {} s of quiet after every change of maps or rules before the next run (and 40 µs more per rule removed), and an uncounted {} s run after every change of translation. A run: from the client pod, connect to \
             the ClusterIP {} (`{}/{}`, one backend, the server pod's {}), send 1 byte, read the 1-byte answer, \
             close with a reset (SO_LINGER 0, so no TIME_WAIT), over and over (TCP_CRR); client thread on the first \
             core, server thread on the second, both pods on one node. {} services defined: the measured one and \
             fillers `svc-00001`, ..., each a ClusterIP with the same one backend.",
            services_bench::ROUNDS,
            result.seconds.as_secs(),
            cores(),
            services_bench::SETTLE.as_secs(),
            services_bench::WARM_UP.as_secs(),
            result.frontend,
            "default",
            services_bench::MEASURED,
            result.backend,
            result.counts.iter().map(|n| thousands(*n)).collect::<Vec<_>>().join(", ")
        ),
        "BPF: the datapath as `lab up` installs it; the client's from_container looks the ClusterIP up in the \
         service maps and DNATs to the backend; no netfilter rule in the node. maps: writing the services into \
         the empty service maps (`lb::sync`). iptables: the client's and server's programs detached (bare veths), \
         kube-proxy's iptables-mode nat rules for the same services loaded with iptables-restore inside the \
         node's namespace: PREROUTING -> KUBE-SERVICES, one rule per service, -> KUBE-SVC-x -> KUBE-SEP-y -> DNAT. \
         The measured service is the last service rule of KUBE-SERVICES (kube-proxy writes the chain in Go map \
         order; here namespace/name order, and `web` sorts after `svc-*`), so every new connection walks all of \
         them: the worst case. load: iptables-restore of the whole table into a node without rules; rules: the \
         rules it holds."
            .to_string(),
        format!(
            "vs {fewest}: a translation's rate over its own at {fewest} services, the median of the ratios within each \
             round. iptables/BPF: iptables' rate over BPF's at the same count, paired by round. spread: (max - min) / \
             median of the runs. iptables: {}; its DNAT rule for the measured service counted {} of the {} \
             connections of the iptables runs.",
            result.iptables, result.dnat_counted, result.iptables_connections
        ),
        format!(
            "Runs (connections/s). BPF: {}. iptables: {}.",
            samples(Translation::Bpf),
            samples(Translation::Iptables)
        ),
        format!(
            "Ratios vs {fewest} by round. BPF: {}. iptables: {}.",
            by_round(Translation::Bpf),
            by_round(Translation::Iptables)
        ),
        format!("Cores other processes kept busy during the runs: {}.", loads.join("; ")),
    ];
    for paragraph in text {
        println!();
        for line in wrap(&paragraph, 100) {
            println!("{line}");
        }
    }
    let widest = result.rows.iter().map(|row| row.spread()).fold(0.0, f64::max);
    let busiest = result.rows.iter().map(|row| row.other_load).fold(0.0, f64::max);
    if widest > TARGET_SERVICES_LOSS || busiest > NOISY_LOAD {
        println!("The runs were disturbed: the ratios carry that noise. Run the benchmark again on a quiet host.");
    }
    println!();
    if verdicts.is_empty() {
        println!(
            "targets: not checked; they compare {} and {} services, measure both (--services {},{})",
            TARGET_FEW_SERVICES, TARGET_MANY_SERVICES, TARGET_FEW_SERVICES, TARGET_MANY_SERVICES
        );
    }
    for v in verdicts {
        println!("target {}: {} ({})", v.target, if v.met { "met" } else { "MISSED" }, v.measured);
    }
    if let (Some(&first), Some(&last)) = (result.counts.first(), result.counts.last())
        && first != last
    {
        let iptables = result.row(Translation::Iptables, last);
        println!(
            "iptables at {} services: {:+.1}% against {} (medians {:.0} vs {:.0} connections/s); {:.3} of BPF's rate",
            thousands(last),
            (result.vs_fewest(iptables) - 1.0) * 100.0,
            thousands(first),
            iptables.rate(),
            result.row(Translation::Iptables, first).rate(),
            result.iptables_vs_bpf(last)
        );
    }
}

/// `lab bench suite`: `lab test` of the conformance cases, whose cases share a lab per job,
/// against the same cases each bringing up a lab of its own, in one run.
pub fn suite(path: &std::path::Path, jobs: Option<usize>, format: Format) -> Result<()> {
    use super::test::{self, CaseResult};
    super::require_root()?;
    let cases = test::discover(&[path.to_path_buf()], None)?;
    anyhow::ensure!(!cases.is_empty(), "no scenarios in {}", path.display());
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1);
    let measure = |share: bool| -> Result<(f64, usize, usize)> {
        let started = std::time::Instant::now();
        let results: Vec<CaseResult> = test::run_cases_sharing(cases.clone(), jobs, false, share, |_| {});
        let seconds = started.elapsed().as_secs_f64();
        let probes = results.iter().flat_map(|r| &r.steps).map(|s| s.probes).sum();
        Ok((seconds, probes, test::count(&results).1))
    };
    let (shared_seconds, probes, shared_failed) = measure(true)?;
    let (own_seconds, own_probes, own_failed) = measure(false)?;
    let steps: usize = cases.iter().map(|c| c.steps.len()).sum();
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "path": path.display().to_string(), "scenarios": cases.len(), "steps": steps, "jobs": jobs,
                "shared": {"seconds": shared_seconds, "probes": probes, "probes_per_second": probes as f64 / shared_seconds, "failed_steps": shared_failed},
                "lab_per_case": {"seconds": own_seconds, "probes": own_probes, "probes_per_second": own_probes as f64 / own_seconds, "failed_steps": own_failed},
            }))?
        ),
        Format::Table => {
            println!(
                "{}: {} scenarios, {steps} steps, {probes} probes, {jobs} labs at once",
                path.display(),
                cases.len()
            );
            println!("{:<28} {:>9} {:>10} {:>13}", "HOW", "WALL", "PROBES/S", "FAILED STEPS");
            for (how, seconds, probes, failed) in [
                ("lab test (shared labs)", shared_seconds, probes, shared_failed),
                ("a fresh lab per case", own_seconds, own_probes, own_failed),
            ] {
                println!("{how:<28} {:>7.1} s {:>10.0} {failed:>13}", seconds, probes as f64 / seconds);
            }
            println!(
                "lab test is {:.1}x as fast; target: the suite in under 60 s: {}",
                own_seconds / shared_seconds,
                if shared_seconds < 60.0 { "met" } else { "missed" }
            );
        }
    }
    anyhow::ensure!(
        shared_failed == 0 && own_failed == 0,
        "steps failed; run `lab test {}` to see why",
        path.display()
    );
    Ok(())
}
