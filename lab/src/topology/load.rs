//! Reading a topology file: YAML, then semantic checks, then its resources. Every problem becomes
//! a [`Diagnostic`] naming the file, line, column and field.

use std::fmt;
use std::path::{Path, PathBuf};

use super::Topology;
use super::resources::{self, Resource};
use super::source::{Location, SourceMap};
use super::validate::{self, Severity};

/// One problem found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub location: Option<Location>,
    /// The field, as a path (`pods[3].node`); empty for the whole file.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(location) = self.location {
            write!(f, ":{location}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl Diagnostic {
    pub(crate) fn new(file: &Path, map: &SourceMap, field: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            location: map.locate(field),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// A serde_yaml error, whose text ends in "at line L column C" and starts with the field path.
    pub(crate) fn from_yaml(file: &Path, error: &serde_yaml::Error, offset: (usize, usize)) -> Self {
        let text = error.to_string();
        let text = match text.rfind(" at line ") {
            Some(cut) => &text[..cut],
            None => &text,
        };
        let (field, message) = match text.split_once(": ") {
            Some((field, message)) if !field.contains(' ') => (field.to_string(), message.to_string()),
            _ => (String::new(), text.to_string()),
        };
        Diagnostic {
            file: file.to_path_buf(),
            location: error.location().map(|l| Location { line: l.line() + offset.0, column: l.column() + offset.1 }),
            field: if field == "." { String::new() } else { field },
            message,
        }
    }
}

/// Everything wrong with a file; nothing was created because of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TopologyError {}

/// A topology that passed every check, with its resources.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: PathBuf,
    pub topology: Topology,
    pub resources: Vec<Resource>,
    /// Things that are allowed but probably not meant (e.g. two pods given one address).
    pub warnings: Vec<Diagnostic>,
}

/// Reads and checks a topology file.
pub fn load_file(file: &Path) -> Result<Loaded, TopologyError> {
    let text = std::fs::read_to_string(file).map_err(|e| TopologyError {
        diagnostics: vec![Diagnostic {
            file: file.to_path_buf(),
            location: None,
            field: String::new(),
            message: format!("cannot read the topology file: {e}"),
        }],
    })?;
    load_str(file, &text)
}

/// Checks a topology given as text; `file` names it in errors and anchors relative paths.
pub fn load_str(file: &Path, text: &str) -> Result<Loaded, TopologyError> {
    let topology: Topology = serde_yaml::from_str(text)
        .map_err(|e| TopologyError { diagnostics: vec![Diagnostic::from_yaml(file, &e, (0, 0))] })?;
    let map = SourceMap::parse(text);

    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for finding in validate::check(&topology) {
        let diagnostic = Diagnostic::new(file, &map, &finding.field, finding.message);
        match finding.severity {
            Severity::Error => errors.push(diagnostic),
            Severity::Warning => warnings.push(diagnostic),
        }
    }

    if let Some(scenario) = &topology.scenario {
        for finding in super::scenario::check(&topology, &scenario.capture, &scenario.steps, "scenario.") {
            let diagnostic = Diagnostic::new(file, &map, &finding.field, finding.message);
            match finding.severity {
                Severity::Error => errors.push(diagnostic),
                Severity::Warning => warnings.push(diagnostic),
            }
        }
    }

    let base = file.parent().unwrap_or(Path::new("."));
    let namespaces: Vec<&str> =
        topology.namespaces.iter().map(|n| n.name.as_str()).chain(std::iter::once("default")).collect();
    let accept = resources::Accept { namespaces: Some(&namespaces), label_objects: false, field: "resources" };
    let resources = match resources::load(file, &map, accept, base, &topology.resources) {
        Ok(resources) => resources,
        Err(mut diagnostics) => {
            errors.append(&mut diagnostics);
            Vec::new()
        }
    };

    // A step's objects are checked as the topology's are, where they are written.
    for (i, step) in topology.scenario.iter().flat_map(|s| s.steps.iter().enumerate()) {
        let field = format!("scenario.steps[{i}].apply");
        let accept = resources::Accept { field: &field, ..accept };
        if let Err(mut diagnostics) = resources::load(file, &map, accept, base, &step.apply) {
            errors.append(&mut diagnostics);
        }
    }

    if errors.is_empty() {
        Ok(Loaded { file: file.to_path_buf(), topology, resources, warnings })
    } else {
        Err(TopologyError { diagnostics: errors })
    }
}
