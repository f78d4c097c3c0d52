//! Each lab's record on the host: `/run/lab/<name>/`, written before anything is created, so
//! `lab down` works from it alone after a crash at any point. It holds the plan (every name the
//! lab will create), a status, and the agent's log.
//!
//! `/run` is a tmpfs: after a reboot the record is gone, as are the namespaces it described.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::plan::Plan;
use crate::topology::Topology;
use crate::topology::resources::Resource;

pub const RUN_DIR: &str = "/run/lab";
/// Where a lab's BPF objects are pinned, one folder per lab.
pub const BPFFS_DIR: &str = "/sys/fs/bpf/lab";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `lab up` is building it, or died while doing so.
    Creating,
    Ready,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Ready => "ready",
        }
    }
}

/// The record of one lab.
#[derive(Debug, Clone)]
pub struct LabDir {
    pub name: String,
    path: PathBuf,
}

impl LabDir {
    pub fn of(name: &str) -> LabDir {
        LabDir { name: name.to_string(), path: Path::new(RUN_DIR).join(name) }
    }

    /// Claims `name` for a new lab; fails if a lab of that name exists (or its record does).
    pub fn create(name: &str) -> Result<LabDir> {
        std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
        let dir = LabDir::of(name);
        match std::fs::create_dir(&dir.path) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                bail!(
                    "a lab named `{name}` already exists; remove it with `lab down {name}` or choose another with --name"
                )
            }
            Err(e) => Err(e).with_context(|| format!("creating {}", dir.path.display())),
        }
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    pub fn log_path(&self) -> PathBuf {
        self.path.join("agent.log")
    }

    /// How many requests (reload, flow sync, restart) the agent has done, and the last failure.
    pub fn acks_path(&self) -> PathBuf {
        self.path.join("agent.acks")
    }

    /// The agent's record of the datapath's flows, one Hubble JSON flow a line.
    pub fn flows_path(&self) -> PathBuf {
        self.path.join("flows.jsonl")
    }

    pub fn bpffs_path(&self) -> PathBuf {
        Path::new(BPFFS_DIR).join(&self.name)
    }

    /// Writes the plan atomically: a reader sees the old record or the new, never half of one.
    pub fn write_plan(&self, plan: &Plan) -> Result<()> {
        self.write_atomic("plan.json", &serde_json::to_vec_pretty(plan)?)
    }

    pub fn read_plan(&self) -> Result<Plan> {
        let path = self.path.join("plan.json");
        let text = std::fs::read(&path)
            .with_context(|| format!("no lab named `{}` (reading {})", self.name, path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("reading {}", path.display()))
    }

    /// What the lab was built from and what was applied since: the topology (its labels change
    /// with `lab apply`) and the Kubernetes objects in force.
    pub fn write_sources(&self, topology: &Topology, resources: &[Resource]) -> Result<()> {
        // The objects are kept once, resolved, in resources.json.
        let topology = Topology { resources: Vec::new(), scenario: None, ..topology.clone() };
        self.write_atomic("topology.json", &serde_json::to_vec_pretty(&topology)?)?;
        self.write_atomic("resources.json", &serde_json::to_vec_pretty(resources)?)
    }

    pub fn read_sources(&self) -> Result<(Topology, Vec<Resource>)> {
        let read = |file: &str| {
            let path = self.path.join(file);
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        Ok((serde_json::from_slice(&read("topology.json")?)?, serde_json::from_slice(&read("resources.json")?)?))
    }

    pub fn set_status(&self, status: Status) -> Result<()> {
        self.write_atomic("status", status.as_str().as_bytes())
    }

    pub fn status(&self) -> Option<Status> {
        match std::fs::read_to_string(self.path.join("status")).ok()?.trim() {
            "ready" => Some(Status::Ready),
            "creating" => Some(Status::Creating),
            _ => None,
        }
    }

    fn write_atomic(&self, file: &str, bytes: &[u8]) -> Result<()> {
        let tmp = self.path.join(format!(".{file}.tmp"));
        let mut out = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        out.write_all(bytes)?;
        out.sync_all()?;
        std::fs::rename(&tmp, self.path.join(file))?;
        Ok(())
    }

    /// Removes the record itself: the last step of `lab down`.
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.path.display()))
            }
            _ => Ok(()),
        }
    }
}

/// The names of every lab with a record, sorted.
pub fn list() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(RUN_DIR) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}
