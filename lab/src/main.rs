//! The `lab` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lab::cmd::{self, ls::Format};
use lab::topology::TopologyError;
use lab::ui;

/// A Kubernetes network lab on one Linux host: real namespaces, veths and (soon) a real eBPF
/// datapath, built from one topology file.
#[derive(Parser)]
#[command(name = "lab", version, about, long_about = None, propagate_version = true)]
#[command(after_help = "Start with:  lab up topologies/examples/quickstart.yaml && lab ls")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a lab from a topology file; returns when it is ready, and it stays up until `lab down`.
    Up {
        /// The topology file.
        file: PathBuf,
        /// Name the lab differently from the file's `name:` (to run one file twice).
        #[arg(long, short)]
        name: Option<String>,
    },
    /// Remove labs: their namespaces, servers and pins, and nothing else. Safe to repeat.
    Down {
        /// Labs to remove.
        #[arg(required_unless_present = "all")]
        names: Vec<String>,
        /// Remove every lab on this host, including remains of crashed ones.
        #[arg(long, conflicts_with = "names")]
        all: bool,
    },
    /// List labs with their nodes, pods, externals and addresses.
    Ls {
        /// Only these labs.
        names: Vec<String>,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Format,
    },
    /// Run a command inside a pod (`pod` or `namespace/pod`), node or external of a lab.
    Exec {
        name: String,
        target: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Check topology files without building anything.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema of topology files (as in docs/topology.schema.json).
    Schema,
    /// The lab's background server process (started by `lab up`).
    #[command(hide = true)]
    Agent { name: String },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().filter_or("LAB_LOG", "warn")).init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Agent { .. }) {
        // Like any Unix filter, end quietly when the reader goes away (`lab ls | head`). The
        // agent keeps Rust's default (ignored), or a peer hanging up would kill it.
        // SAFETY: no other thread exists yet.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    cmd::raise_open_files_limit();
    let result = match cli.command {
        Command::Up { file, name } => cmd::up::run(&file, name.as_deref()),
        Command::Down { names, all } => cmd::down::run(&names, all),
        Command::Ls { names, output } => cmd::ls::run(&names, output),
        Command::Exec { name, target, command } => cmd::exec::run(&name, &target, &command),
        Command::Validate { files } => return if cmd::validate::run(&files) { ExitCode::SUCCESS } else { ExitCode::FAILURE },
        Command::Schema => {
            print!("{}", lab::topology::json_schema());
            Ok(())
        }
        Command::Agent { name } => lab::agent::serve(&name),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            match error.downcast_ref::<TopologyError>() {
                Some(invalid) => invalid.diagnostics.iter().for_each(ui::error),
                None => ui::error(format!("{error:#}")),
            }
            ExitCode::FAILURE
        }
    }
}
