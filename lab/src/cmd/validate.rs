//! `lab validate FILE...`: check topology files without building anything.

use std::path::PathBuf;

use crate::topology::{self, TopologyError};
use crate::ui;

/// Returns whether every file is valid; prints what is wrong with each one that is not.
pub fn run(files: &[PathBuf]) -> bool {
    let mut all_valid = true;
    for file in files {
        match topology::load_file(file) {
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    ui::warning(warning);
                }
                let t = &loaded.topology;
                println!(
                    "{}: valid ({} nodes, {} pods, {} externals, {} resources)",
                    file.display(),
                    t.nodes.len(),
                    t.pods.len(),
                    t.externals.len(),
                    loaded.resources.len()
                );
            }
            Err(TopologyError { diagnostics }) => {
                all_valid = false;
                for diagnostic in diagnostics {
                    ui::error(diagnostic);
                }
            }
        }
    }
    all_valid
}
