//! `lab down NAME... | --all`: remove labs, exactly and only what they made.

use anyhow::{Result, bail};

use crate::net::netns;
use crate::plan;
use crate::realise;
use crate::state::{self, LabDir};

pub fn run(names: &[String], all: bool) -> Result<()> {
    super::require_root()?;
    let names = if all { every_lab() } else { names.to_vec() };
    if names.is_empty() {
        println!("no labs to remove");
    }
    let mut failed = 0;
    for name in &names {
        let lab = LabDir::of(name);
        let leftovers = netns::list_with_prefix(&plan::netns_prefix(name));
        if !lab.exists() && leftovers.is_empty() && !lab.bpffs_path().exists() {
            println!("no lab {name}: nothing to remove");
            continue;
        }
        match realise::teardown(&lab) {
            Ok(removed) => println!("removed lab {name} ({} namespaces)", removed.namespaces),
            Err(e) => {
                crate::ui::error(format!("removing lab {name}: {e:#}"));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} labs could not be removed completely; run `lab down` again to retry");
    }
    Ok(())
}

/// Labs with a record, and labs whose namespaces outlived their record.
fn every_lab() -> Vec<String> {
    let mut names = state::list();
    names.extend(netns::list_with_prefix("lab.").iter().filter_map(|ns| ns.split('.').nth(1).map(str::to_string)));
    names.sort();
    names.dedup();
    names
}
