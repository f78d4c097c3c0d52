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
    /// Open real connections through the datapath: one, or every pod to every pod (--matrix).
    #[command(
        after_help = "Examples:\n  lab probe demo --from x/a --to y/b --port tcp/80\n  lab probe demo --matrix --port udp/53"
    )]
    Probe {
        name: String,
        /// The sender: a pod (`pod` or `namespace/pod`), node or external.
        #[arg(long, required_unless_present = "matrix")]
        from: Option<String>,
        /// The receiver: a pod, node, external or IPv4 address.
        #[arg(long, required_unless_present = "matrix")]
        to: Option<String>,
        /// `tcp/80`, `udp/53` or `icmp`.
        #[arg(long, value_parser = cmd::probe::parse_kind)]
        port: lab::probe::Kind,
        /// Every pod to every pod, as a `.`/`X` truth table.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        matrix: bool,
        /// With --matrix: only pods of these namespaces.
        #[arg(long, short)]
        namespace: Vec<String>,
        /// How long to wait for an answer.
        #[arg(long, default_value = "1s", value_parser = cmd::probe::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Show the datapath's flows, as `hubble observe` does.
    #[command(
        after_help = "Examples:\n  lab observe demo --last 50\n  lab observe demo -f --verdict DROPPED\n  lab observe demo --pod prod/web -o json"
    )]
    Observe(cmd::observe::Args),
    /// Explain what the datapath does with a connection, and which map entries and rules decide
    /// it; or compute every pod to every pod (--matrix) from the policy, without sending packets.
    #[command(
        after_help = "Examples:\n  lab policy demo --from x/a --to y/b --port 80/tcp\n  lab policy demo --matrix --port tcp/80 --kernel"
    )]
    Policy(cmd::policy::Args),
    /// Show the datapath's counters of forwarded and dropped packets, by reason and direction.
    Metrics {
        name: String,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Format,
    },
    /// List a lab's services: each frontend (ClusterIP:port) with its backends and their state.
    Services {
        name: String,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Format,
    },
    /// Apply policies, services and endpoint slices, or pods' and namespaces' new labels (v1
    /// Pod/Namespace objects), to a running lab.
    Apply { name: String, file: PathBuf },
    /// Delete the policies in a file from a running lab.
    Delete { name: String, file: PathBuf },
    /// Run scenarios (topology files with a `scenario:`, scenario files) each in a fresh lab and
    /// compare every step's verdicts, flows and packets with golden files.
    #[command(
        after_help = "Examples:\n  lab test topologies/\n  lab test topologies/policy --filter ports\n  lab test topologies/ --update        (write new golden files; refused when CI is set)\n  lab test topologies/ --junit report.xml"
    )]
    Test(cmd::test::Args),
    /// Check topology files without building anything.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema of topology files (as in docs/topology.schema.json).
    Schema,
    /// Probe this kernel for what the datapath needs: BPF maps and helpers, veth, bridge, VXLAN,
    /// clsact, cls_bpf and TCX, with the first Linux release that has each.
    Features,
    /// Measure the lab on this host.
    Bench {
        #[command(subcommand)]
        target: BenchTarget,
    },
    /// The lab's background server process (started by `lab up`).
    #[command(hide = true)]
    Agent { name: String },
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Wall time and probes per second of `lab test` on a folder of scenarios (the netpol
    /// conformance suite), against the same scenarios each bringing up a lab of its own.
    Suite {
        #[arg(default_value = "topologies/conformance")]
        path: PathBuf,
        /// Labs running at once (default: one per core).
        #[arg(long, short)]
        jobs: Option<usize>,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Format,
    },
    /// Time bring-up and teardown of N pods, and of the same pods built by a script of `ip`
    /// commands, one process per operation (as containerlab and Mininet do it).
    Up {
        /// Pod counts to measure, one lab each, in order.
        #[arg(long, value_delimiter = ',', default_values_t = [100, 500, 1000])]
        pods: Vec<usize>,
        /// Nodes the pods are spread over, round-robin.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Format,
    },
    /// TCP request/response rate and bulk throughput between two pods through the datapath,
    /// against the same pods with no program attached, and with 10 and 65,536 policy map entries.
    Datapath {
        /// Length of each run, in seconds; each setup runs once per round, over 7 rounds.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
        seconds: u64,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Format,
    },
    /// Compile 10,000 rules over 5,000 identities; apply one changed rule to 1,000 endpoints of a
    /// running lab until the datapath enforces it; and the memory both take.
    Policy {
        #[arg(long, short, value_enum, default_value = "table")]
        output: Format,
    },
    /// New TCP connections per second through a ClusterIP with N services defined, translated by
    /// the datapath's service maps and by kube-proxy's iptables rules (loaded in the lab's node).
    Services {
        /// Service counts to measure; the fewest is the reference of each curve.
        #[arg(long, value_delimiter = ',', default_values_t = lab::bench::services::SERVICE_COUNTS)]
        services: Vec<usize>,
        /// Length of each run, in seconds; each setup runs once per round, over 7 rounds.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=600))]
        seconds: u64,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Format,
    },
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
        Command::Probe { name, matrix: true, port, namespace, timeout, .. } => {
            cmd::probe::matrix(&name, port, &namespace, timeout)
        }
        Command::Probe { name, from, to, port, timeout, .. } => {
            let (from, to) = (from.expect("required by clap"), to.expect("required by clap"));
            match cmd::probe::run(&name, &from, &to, port, timeout) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::from(1),
                Err(e) => Err(e),
            }
        }
        Command::Observe(args) => cmd::observe::run(&args),
        Command::Policy(args) => match cmd::policy::run(&args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Test(args) => match cmd::test::run(&args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Metrics { name, output } => cmd::metrics::run(&name, output),
        Command::Services { name, output } => cmd::services::run(&name, output),
        Command::Apply { name, file } => cmd::apply::run(&name, &file, false),
        Command::Delete { name, file } => cmd::apply::run(&name, &file, true),
        Command::Validate { files } => {
            return if cmd::validate::run(&files) { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
        Command::Features => cmd::features::run(),
        Command::Schema => {
            print!("{}", lab::topology::json_schema());
            Ok(())
        }
        Command::Bench { target: BenchTarget::Up { pods, nodes, output } } => cmd::bench::up(&pods, nodes, output),
        Command::Bench { target: BenchTarget::Datapath { seconds, output } } => {
            cmd::bench::datapath(std::time::Duration::from_secs(seconds), output)
        }
        Command::Bench { target: BenchTarget::Policy { output } } => cmd::bench::policy(output),
        Command::Bench { target: BenchTarget::Suite { path, jobs, output } } => cmd::bench::suite(&path, jobs, output),
        Command::Bench { target: BenchTarget::Services { services, seconds, output } } => {
            cmd::bench::services(&services, std::time::Duration::from_secs(seconds), output)
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
