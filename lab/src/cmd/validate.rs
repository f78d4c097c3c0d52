//! `lab validate FILE...`: check topology files without building anything.

use std::path::PathBuf;

use crate::live;
use crate::plan::Plan;
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
                // Policies and services as `lab up` would compile them, under a placeholder name.
                let plan = Plan::new(&loaded.topology, "validate");
                let checked = live::compile(&plan, &loaded.resources)
                    .and_then(|compiled| Ok((compiled, live::services(&plan, &loaded.resources)?)));
                match checked {
                    Ok((compiled, services)) => {
                        for warning in compiled.warnings.iter().chain(&services.warnings) {
                            ui::warning(warning);
                        }
                    }
                    Err(error) => {
                        all_valid = false;
                        match error.downcast::<TopologyError>() {
                            Ok(TopologyError { diagnostics }) => diagnostics.into_iter().for_each(ui::error),
                            Err(error) => eprintln!("error: {}: {error:#}", file.display()),
                        }
                        continue;
                    }
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
