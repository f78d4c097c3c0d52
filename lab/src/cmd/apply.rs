//! `lab apply NAME FILE` and `lab delete NAME FILE`: change a running lab's policies and its
//! pods' and namespaces' labels. An invalid change changes nothing.

use std::path::Path;

use anyhow::Result;

use crate::live;

pub fn run(lab: &str, file: &Path, deleting: bool) -> Result<()> {
    super::require_root()?;
    let change = live::read_change(file, deleting)?;
    let applied = live::apply(lab, &change)?;
    let objects = change.apply.len() + change.delete.len();
    let labels = change.pod_labels.len() + change.namespace_labels.len();
    println!(
        "{} {objects} objects, relabelled {labels} pods and namespaces: {} identities and {} endpoints' policies changed",
        if deleting { "deleted" } else { "applied" },
        applied.relabelled,
        applied.endpoints
    );
    Ok(())
}
