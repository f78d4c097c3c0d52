//! `lab bench up [--pods 100,500,1000] [--nodes 2]`: how fast labs come up and go away, against
//! the same labs built by a script of `ip` commands.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::ls::Format;
use crate::bench::{self, UpResult};

/// The acceptance targets, set for this many pods on two cores.
const TARGET_PODS: usize = 500;
const TARGET_UP: Duration = Duration::from_secs(3);
const TARGET_UP_RATIO: f64 = 5.0;
const TARGET_DOWN: Duration = Duration::from_secs(1);

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
