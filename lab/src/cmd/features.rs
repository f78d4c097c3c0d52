//! `lab features`: what this kernel offers of what the datapath needs.

use anyhow::{Result, bail};

use crate::datapath::features;

/// Prints every feature with what the probe found; fails if any is missing.
pub fn run() -> Result<()> {
    super::require_root()?;
    let report = features::probe_all();
    features::print(&report);
    let missing: Vec<&str> = report.missing().map(|(f, _)| f.name).collect();
    if !missing.is_empty() {
        bail!("missing: {} (labs that need them are refused)", missing.join(", "));
    }
    Ok(())
}
