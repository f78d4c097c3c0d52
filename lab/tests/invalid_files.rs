//! Every invalid topology under tests/invalid/ is refused by `lab validate` and `lab up` with the
//! file, line, column, field and message its first line expects (`# expect: L:C: field: text`),
//! and `lab up` creates nothing on the host.

mod common;

use std::path::PathBuf;

use common::{lab, remains_of};

fn cases() -> Vec<(PathBuf, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut cases: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let expected = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .expect("first line: # expect: L:C: message");
            (path.clone(), format!("{}:{expected}", path.display()))
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "the invalid cases are all there");
    cases
}

fn lab_name_in(path: &PathBuf) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().find_map(|l| l.strip_prefix("name: ")).unwrap().to_string()
}

#[test]
fn validate_names_file_line_column_and_field() {
    for (path, expected) in cases() {
        let out = lab(&["validate", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", path.display());
        assert!(stderr.contains(&expected), "{}:\nexpected: {expected}\n     got: {stderr}", path.display());
    }
}

#[test]
fn up_refuses_an_invalid_file_and_creates_nothing() {
    let before = lab::net::netns::list_with_prefix("lab.");
    for (path, expected) in cases() {
        let out = lab(&["up", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was brought up", path.display());
        assert!(stderr.contains(&expected), "{}:\nexpected: {expected}\n     got: {stderr}", path.display());
        assert_eq!(remains_of(&lab_name_in(&path)), Vec::<String>::new());
    }
    let after = lab::net::netns::list_with_prefix("lab.");
    let new: Vec<&String> = after.iter().filter(|n| !before.contains(n)).filter(|n| n.contains(".bad-")).collect();
    assert!(new.is_empty(), "{new:?}");
}

#[test]
fn valid_files_pass() {
    let topologies = common::repo_root().join("topologies");
    let mut files = Vec::new();
    let mut dirs = vec![topologies];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            // Conformance cases are steps for a topology, not topologies (tests/conformance.rs).
            if path.is_dir() && !path.ends_with("conformance/cases") {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty());
    for file in files {
        let out = lab(&["validate", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    }
}

/// `docs/topology.schema.json` is what `lab schema` prints (regenerate it with
/// `LAB_UPDATE_GOLDEN=1 cargo test --test invalid_files`).
#[test]
fn the_committed_schema_is_current() {
    let path = common::repo_root().join("docs/topology.schema.json");
    let generated = lab::topology::json_schema();
    if std::env::var_os("LAB_UPDATE_GOLDEN").is_some() {
        assert!(std::env::var_os("CI").is_none(), "goldens are never updated in CI");
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    pretty_assertions::assert_eq!(committed, generated, "docs/topology.schema.json is stale");
}
