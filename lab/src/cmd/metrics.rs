//! `lab metrics NAME [-o json]`: the datapath's counters of forwarded and dropped packets, by
//! reason and direction, summed over CPUs (as `cilium-dbg bpf metrics list` prints Cilium's).

use anyhow::{Context, Result, bail};
use aya::maps::{Map, MapData, PerCpuArray};
use serde::Serialize;

use crate::cmd::ls::Format;
use crate::datapath::abi::{self, MetricsValue};
use crate::datapath::pins;
use crate::flow;
use crate::state::LabDir;

/// One non-zero counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The drop reason, 0 for forwarded packets.
    pub reason: u32,
    /// `forwarded`, or the reason's `flow.proto` name (`POLICY_DENIED`).
    pub name: String,
    /// What `cilium monitor` calls it (`Policy denied`).
    pub description: String,
    pub direction: String,
    pub packets: u64,
    pub bytes: u64,
}

/// The rows of the counters at each index (`reason << 2 | direction`), one value per CPU; zero
/// counters are left out.
pub fn rows(counters: impl IntoIterator<Item = (u32, Vec<MetricsValue>)>) -> Vec<Row> {
    counters
        .into_iter()
        .filter_map(|(index, per_cpu)| {
            let (packets, bytes) =
                per_cpu.iter().fold((0u64, 0u64), |(p, b), v| (p.wrapping_add(v.packets), b.wrapping_add(v.bytes)));
            if packets == 0 && bytes == 0 {
                return None;
            }
            let (reason, direction) = (index >> 2, (index & 3) as u8);
            let (name, description) = if reason == 0 {
                ("forwarded".to_string(), "Forwarded".to_string())
            } else {
                (
                    flow::drop_reason_name(reason).map_or_else(|| reason.to_string(), str::to_string),
                    flow::drop_reason_text(reason),
                )
            };
            let direction = match direction {
                abi::DIR_INGRESS => "INGRESS".to_string(),
                abi::DIR_EGRESS => "EGRESS".to_string(),
                0 => "UNKNOWN".to_string(),
                other => other.to_string(),
            };
            Some(Row { reason, name, description, direction, packets, bytes })
        })
        .collect()
}

pub fn run(name: &str, format: Format) -> Result<()> {
    let lab = LabDir::of(name);
    if !lab.exists() {
        bail!("no lab named `{name}`");
    }
    super::require_root()?;
    let pin = pins::metrics(name);
    if !pin.exists() {
        bail!("lab `{name}` has no datapath loaded (no {})", pin.display());
    }
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let array: PerCpuArray<MapData, MetricsValue> = PerCpuArray::try_from(Map::PerCpuArray(data))
        .with_context(|| format!("{} is not a per-CPU array", pin.display()))?;
    let mut counters = Vec::new();
    for index in 0..array.len() {
        let values = array.get(&index, 0).with_context(|| format!("reading {} at {index}", pin.display()))?;
        counters.push((index, values.iter().copied().collect::<Vec<_>>()));
    }
    let rows = rows(counters);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table => print_table(&rows),
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    if rows.is_empty() {
        println!("no packets counted yet");
        return;
    }
    let mut cells: Vec<[String; 6]> = vec![[
        "REASON".into(),
        "NAME".into(),
        "DIRECTION".into(),
        "PACKETS".into(),
        "BYTES".into(),
        "DESCRIPTION".into(),
    ]];
    for row in rows {
        cells.push([
            row.reason.to_string(),
            row.name.clone(),
            row.direction.clone(),
            row.packets.to_string(),
            row.bytes.to_string(),
            row.description.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|c| cells.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    for row in cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| if (3..5).contains(&c) { format!("{cell:>w$}") } else { format!("{cell:w$}") })
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(packets: u64, bytes: u64) -> MetricsValue {
        MetricsValue { packets, bytes }
    }

    #[test]
    fn counters_are_summed_over_cpus_and_named() {
        let ingress = u32::from(abi::DIR_INGRESS);
        let egress = u32::from(abi::DIR_EGRESS);
        let rows = rows([
            (egress, vec![value(3, 300), value(2, 200)]),
            (ingress, vec![value(0, 0), value(0, 0)]),
            ((133 << 2) | ingress, vec![value(1, 60), value(0, 0)]),
            ((181 << 2) | egress, vec![value(0, 0), value(4, 240)]),
        ]);
        let summary: Vec<(u32, &str, &str, &str, u64, u64)> = rows
            .iter()
            .map(|r| (r.reason, r.name.as_str(), r.description.as_str(), r.direction.as_str(), r.packets, r.bytes))
            .collect();
        assert_eq!(
            summary,
            [
                (0, "forwarded", "Forwarded", "EGRESS", 5, 500),
                (133, "POLICY_DENIED", "Policy denied", "INGRESS", 1, 60),
                (181, "POLICY_DENY", "Policy denied by denylist", "EGRESS", 4, 240),
            ]
        );
    }
}
