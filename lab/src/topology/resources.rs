//! Kubernetes objects named by a topology's `resources:`, loaded and checked: a known apiVersion
//! and kind, a name, and no two objects of one kind with the same namespace and name. Later
//! stages (policy, services) give them meaning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

use super::load::Diagnostic;
use super::source::{Location, SourceMap};
use super::{FileResources, InlineResources, ResourceEntry};

/// The kinds the lab understands, and whether each lives in a namespace.
const KINDS: &[(&str, &str, bool)] = &[
    ("cilium.io/v2", "CiliumNetworkPolicy", true),
    ("cilium.io/v2", "CiliumClusterwideNetworkPolicy", false),
    ("networking.k8s.io/v1", "NetworkPolicy", true),
    ("v1", "Service", true),
    ("discovery.k8s.io/v1", "EndpointSlice", true),
];

/// One Kubernetes object and where it was written.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Resource {
    pub api_version: String,
    pub kind: String,
    /// `None` for cluster-scoped kinds; `default` when a namespaced object names none.
    pub namespace: Option<String>,
    pub name: String,
    pub file: PathBuf,
    pub location: Option<Location>,
    pub object: Value,
}

impl Resource {
    /// `kind namespace/name`, as kubectl would name it.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// One YAML document with the map of where its values stand.
struct Document {
    file: PathBuf,
    map: SourceMap,
    /// The path of the document inside its map (`resources[2]` for an object written in place).
    root: String,
    value: Value,
}

impl Document {
    fn field(&self, field: &str) -> String {
        match (self.root.is_empty(), field.is_empty()) {
            (true, _) => field.to_string(),
            (false, true) => self.root.clone(),
            (false, false) => format!("{}.{field}", self.root),
        }
    }

    fn error(&self, field: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(&self.file, &self.map, &self.field(field), message)
    }
}

/// Which objects a load accepts.
#[derive(Debug, Clone, Copy)]
pub struct Accept<'a> {
    /// The namespaces objects may live in; `None` leaves that to the caller.
    pub namespaces: Option<&'a [&'a str]>,
    /// `v1 Pod` and `v1 Namespace` objects, whose labels `lab apply` sets.
    pub label_objects: bool,
    /// The field of the entries in their file, for errors: `resources`, or a scenario step's
    /// `scenario.steps[2].apply`.
    pub field: &'a str,
}

/// Kinds that only carry labels for a running lab's pods and namespaces.
const LABEL_KINDS: &[(&str, &str, bool)] = &[("v1", "Pod", true), ("v1", "Namespace", false)];

/// Loads every entry of `resources:`. `map` is the topology file's own, for objects written in it.
pub fn load(
    topology_file: &Path,
    map: &SourceMap,
    accept: Accept,
    base: &Path,
    entries: &[ResourceEntry],
) -> Result<Vec<Resource>, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut documents = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let field = format!("{}[{i}]", accept.field);
        match entry {
            ResourceEntry::File(FileResources { file }) => {
                let path = base.join(file);
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        parse_documents(&path, &text, SourceMap::documents(&text), (0, 0), &mut documents, &mut errors)
                    }
                    Err(e) => errors.push(Diagnostic::new(
                        topology_file,
                        map,
                        &format!("{field}.file"),
                        format!("cannot read `{}`: {e}", path.display()),
                    )),
                }
            }
            ResourceEntry::Inline(InlineResources { inline }) => {
                let (lines, columns) = block_scalar_offset(map.locate(&format!("{field}.inline")));
                let maps = SourceMap::documents(inline).into_iter().map(|m| m.shifted(lines, columns)).collect();
                parse_documents(topology_file, inline, maps, (lines, columns), &mut documents, &mut errors);
            }
            ResourceEntry::Object(value) => documents.push(Document {
                file: topology_file.to_path_buf(),
                map: map.clone(),
                root: field,
                value: value.clone(),
            }),
        }
    }

    let mut resources = Vec::new();
    for document in &documents {
        collect(document, &document.value, "", accept.label_objects, &mut resources, &mut errors);
    }

    // The first definition of each kind + namespace + name.
    let mut seen: HashMap<(&str, Option<&str>, &str), &Resource> = HashMap::new();
    for resource in &resources {
        let key = (resource.kind.as_str(), resource.namespace.as_deref(), resource.name.as_str());
        if let Some(first) = seen.get(&key) {
            let line = first.location.map_or(String::new(), |l| l.line.to_string());
            let first = if first.file == resource.file {
                format!("line {line}")
            } else {
                format!("{}:{line}", first.file.display())
            };
            errors.push(Diagnostic {
                file: resource.file.clone(),
                location: resource.location,
                field: "metadata.name".into(),
                message: format!("{} is defined twice (first at {first})", resource.display_name()),
            });
        } else {
            seen.insert(key, resource);
        }
        if let (Some(namespace), Some(namespaces)) = (&resource.namespace, accept.namespaces)
            && !namespaces.contains(&namespace.as_str())
        {
            errors.push(Diagnostic {
                file: resource.file.clone(),
                location: resource.location,
                field: "metadata.namespace".into(),
                message: format!(
                    "{}: no namespace `{namespace}`; declare it under `namespaces:`",
                    resource.display_name()
                ),
            });
        }
    }

    if errors.is_empty() { Ok(resources) } else { Err(errors) }
}

/// How far a block scalar's text is moved in its file: its marker is the first line and column of
/// the text itself.
fn block_scalar_offset(start: Option<Location>) -> (usize, usize) {
    start.map_or((0, 0), |l| (l.line - 1, l.column - 1))
}

fn parse_documents(
    file: &Path,
    text: &str,
    maps: Vec<SourceMap>,
    offset: (usize, usize),
    documents: &mut Vec<Document>,
    errors: &mut Vec<Diagnostic>,
) {
    let mut maps = maps.into_iter();
    for document in serde_yaml::Deserializer::from_str(text) {
        let map = maps.next().unwrap_or_default();
        match Value::deserialize(document) {
            Ok(Value::Null) => {}
            Ok(value) => documents.push(Document { file: file.to_path_buf(), map, root: String::new(), value }),
            Err(e) => {
                errors.push(Diagnostic::from_yaml(file, &e, offset));
                return;
            }
        }
    }
}

fn collect(
    document: &Document,
    value: &Value,
    path: &str,
    label_objects: bool,
    out: &mut Vec<Resource>,
    errors: &mut Vec<Diagnostic>,
) {
    let join = |field: &str| if path.is_empty() { field.to_string() } else { format!("{path}.{field}") };
    let Some(object) = value.as_mapping() else {
        errors.push(document.error(path, "expected a Kubernetes object (a mapping with apiVersion and kind)"));
        return;
    };
    let text = |key: &str| object.get(key).and_then(Value::as_str);
    let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
        errors.push(document.error(path, "a Kubernetes object needs `apiVersion` and `kind`"));
        return;
    };

    if kind.ends_with("List")
        && let Some(items) = object.get("items").and_then(Value::as_sequence)
    {
        for (i, item) in items.iter().enumerate() {
            collect(document, item, &join(&format!("items[{i}]")), label_objects, out, errors);
        }
        return;
    }

    let kinds = KINDS.iter().chain(if label_objects { LABEL_KINDS } else { &[] });
    let Some(&(_, _, namespaced)) = kinds.clone().find(|(v, k, _)| *v == api_version && *k == kind) else {
        let known: Vec<String> = kinds.clone().map(|(v, k, _)| format!("{v} {k}")).collect();
        let field = if kinds.clone().any(|(_, k, _)| *k == kind) { "apiVersion" } else { "kind" };
        errors.push(
            document.error(
                &join(field),
                format!("unknown object `{api_version} {kind}`; the lab knows {}", known.join(", ")),
            ),
        );
        return;
    };

    let metadata = object.get("metadata");
    let field_of = |key: &str| metadata.and_then(|m| m.get(key)).and_then(Value::as_str);
    let Some(name) = field_of("name").filter(|n| !n.is_empty()) else {
        errors.push(document.error(&join("metadata"), format!("{kind} needs `metadata.name`")));
        return;
    };
    let namespace = match (namespaced, field_of("namespace")) {
        (true, ns) => Some(ns.unwrap_or("default").to_string()),
        (false, Some(_)) => {
            errors.push(
                document.error(&join("metadata.namespace"), format!("{kind} is cluster-scoped and takes no namespace")),
            );
            return;
        }
        (false, None) => None,
    };
    out.push(Resource {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        namespace,
        name: name.to_string(),
        file: document.file.clone(),
        location: document.map.locate(&document.field(&join("metadata.name"))),
        object: value.clone(),
    });
}
