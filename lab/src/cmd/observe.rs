//! `lab observe NAME [filters] [-f] [-o json|compact]`: the flows of a lab's datapath, as
//! `hubble observe` prints them. The lab's agent records them in `/run/lab/<name>/flows.jsonl`
//! (and `flows.jsonl.1` before a rotation); this reads that record and, with `--follow`, what
//! the agent appends to it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::datapath::abi;
use crate::flow::{self, Endpoint, FlowRecord, Verdict};
use crate::state::LabDir;
use crate::ui;

/// How many flows to print without `--last` or `--follow`, as `hubble observe` does.
const DEFAULT_LAST: usize = 20;
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The lab.
    pub name: String,
    /// Keep printing flows as the datapath reports them.
    #[arg(long, short)]
    pub follow: bool,
    /// Print the last N matching flows first (default 20 without --follow, none with it).
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Only flows with this verdict.
    #[arg(long, value_enum, ignore_case = true)]
    pub verdict: Option<VerdictFilter>,
    /// Only flows from this pod: `namespace/pod`, the pod a name prefix (`default` when no namespace is given).
    #[arg(long, value_name = "NS/POD")]
    pub from_pod: Option<String>,
    /// Only flows to this pod.
    #[arg(long, value_name = "NS/POD")]
    pub to_pod: Option<String>,
    /// Only flows from or to this pod.
    #[arg(long, value_name = "NS/POD")]
    pub pod: Option<String>,
    /// Only flows from or to pods of this namespace.
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Only flows from or to this TCP or UDP port.
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// Only events of this type.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub event_type: Option<TypeFilter>,
    #[arg(long, short, value_enum, default_value = "compact")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerdictFilter {
    #[value(name = "FORWARDED")]
    Forwarded,
    #[value(name = "DROPPED")]
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TypeFilter {
    Drop,
    Trace,
    PolicyVerdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line a flow, as `hubble observe -o compact`.
    Compact,
    /// One JSON object a line, as `hubble observe -o json`.
    Json,
}

/// A pod as filters name it: a namespace and a prefix of pod names (empty: any pod).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodFilter {
    namespace: String,
    prefix: String,
}

impl PodFilter {
    fn parse(text: &str) -> PodFilter {
        match text.split_once('/') {
            Some((namespace, prefix)) => PodFilter { namespace: namespace.into(), prefix: prefix.into() },
            None => PodFilter { namespace: "default".into(), prefix: text.into() },
        }
    }

    fn matches(&self, endpoint: Option<&Endpoint>) -> bool {
        endpoint.is_some_and(|e| {
            !e.pod_name.is_empty() && e.namespace == self.namespace && e.pod_name.starts_with(&self.prefix)
        })
    }
}

/// Every filter given, all of which a flow must pass.
#[derive(Debug, Clone, Default)]
struct Filter {
    verdict: Option<Verdict>,
    from_pod: Option<PodFilter>,
    to_pod: Option<PodFilter>,
    pod: Option<PodFilter>,
    namespace: Option<String>,
    port: Option<u16>,
    event_type: Option<u8>,
}

impl Filter {
    fn new(args: &Args) -> Filter {
        Filter {
            verdict: args.verdict.map(|v| match v {
                VerdictFilter::Forwarded => Verdict::Forwarded,
                VerdictFilter::Dropped => Verdict::Dropped,
            }),
            from_pod: args.from_pod.as_deref().map(PodFilter::parse),
            to_pod: args.to_pod.as_deref().map(PodFilter::parse),
            pod: args.pod.as_deref().map(PodFilter::parse),
            namespace: args.namespace.clone(),
            port: args.port,
            event_type: args.event_type.map(|t| match t {
                TypeFilter::Drop => abi::EVENT_DROP,
                TypeFilter::Trace => abi::EVENT_TRACE,
                TypeFilter::PolicyVerdict => abi::EVENT_POLICY_VERDICT,
            }),
        }
    }

    fn matches(&self, record: &FlowRecord) -> bool {
        let flow = &record.flow;
        let (source, destination) = (flow.source.as_ref(), flow.destination.as_ref());
        self.verdict.is_none_or(|v| flow.verdict == v)
            && self.event_type.is_none_or(|t| flow.event_type() == t)
            && self.from_pod.as_ref().is_none_or(|p| p.matches(source))
            && self.to_pod.as_ref().is_none_or(|p| p.matches(destination))
            && self.pod.as_ref().is_none_or(|p| p.matches(source) || p.matches(destination))
            && self.namespace.as_ref().is_none_or(|ns| {
                [source, destination].into_iter().flatten().any(|e| !e.namespace.is_empty() && e.namespace == *ns)
            })
            && self
                .port
                .is_none_or(|port| flow.ports().is_some_and(|(s, d)| s == u32::from(port) || d == u32::from(port)))
    }
}

pub fn run(args: &Args) -> Result<()> {
    let lab = LabDir::of(&args.name);
    if !lab.exists() {
        bail!("no lab named `{}`", args.name);
    }
    let color = ui::color_enabled() && io::stdout().is_terminal();
    let path = lab.flows_path();
    let mut out = io::stdout().lock();
    let mut tail = Tail::new(path.clone());
    show_recorded(args, &path, &mut tail, &mut out, color)?;
    if !args.follow {
        if !tail.seen_file() {
            ui::warning(format!(
                "no flows recorded for lab `{}` ({} does not exist: is its datapath loaded?)",
                args.name,
                path.display()
            ));
        }
        return Ok(());
    }
    let filter = Filter::new(args);
    loop {
        for (line, record) in parsed(tail.read_new()?) {
            if filter.matches(&record) {
                print(args.output, &mut out, &line, &record, color)?;
            }
        }
        out.flush()?;
        std::thread::sleep(POLL);
    }
}

/// Prints the last matching flows recorded so far in `path` (and the part before its last
/// rotation), leaving `tail` at the end of what it read.
fn show_recorded(args: &Args, path: &Path, tail: &mut Tail, out: &mut impl Write, color: bool) -> Result<()> {
    let filter = Filter::new(args);
    let mut recorded: Vec<String> = read_all(&flow::rotated_path(path))?;
    recorded.extend(tail.read_new()?);
    let last = args.last.unwrap_or(if args.follow { 0 } else { DEFAULT_LAST });
    let mut shown = VecDeque::with_capacity(last.min(4096));
    if last > 0 {
        for (line, record) in parsed(recorded) {
            if filter.matches(&record) {
                if shown.len() == last {
                    shown.pop_front();
                }
                shown.push_back((line, record));
            }
        }
    }
    for (line, record) in &shown {
        print(args.output, out, line, record, color)?;
    }
    out.flush()?;
    Ok(())
}

fn print(output: Output, out: &mut impl Write, line: &str, record: &FlowRecord, color: bool) -> io::Result<()> {
    match output {
        Output::Json => writeln!(out, "{line}"),
        Output::Compact => writeln!(out, "{}", record.compact(color)),
    }
}

/// The lines that read as flows, with their flows; others (a line cut by a crash) are skipped.
fn parsed(lines: Vec<String>) -> impl Iterator<Item = (String, FlowRecord)> {
    lines.into_iter().filter_map(|line| serde_json::from_str(&line).ok().map(|record| (line, record)))
}

fn read_all(path: &Path) -> Result<Vec<String>> {
    match File::open(path) {
        Ok(file) => BufReader::new(file)
            .lines()
            .collect::<io::Result<Vec<_>>>()
            .with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Follows a file the agent appends to and rotates: complete lines only, the rest of the old file
/// before the new one.
struct Tail {
    path: PathBuf,
    reader: Option<(BufReader<File>, u64)>,
    partial: String,
    seen: bool,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        Tail { path, reader: None, partial: String::new(), seen: false }
    }

    fn seen_file(&self) -> bool {
        self.seen
    }

    /// Every complete line written since the last call.
    fn read_new(&mut self) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            if self.reader.is_none() {
                match File::open(&self.path) {
                    Ok(file) => {
                        let inode = file.metadata()?.ino();
                        self.reader = Some((BufReader::new(file), inode));
                        self.seen = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(lines),
                    Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
                }
            }
            let (reader, inode) = self.reader.as_mut().expect("opened above");
            loop {
                let mut line = String::new();
                let read = reader.read_line(&mut line).with_context(|| format!("reading {}", self.path.display()))?;
                if read == 0 {
                    break;
                }
                self.partial.push_str(&line);
                if self.partial.ends_with('\n') {
                    let complete = std::mem::take(&mut self.partial);
                    lines.push(complete.trim_end_matches('\n').to_string());
                }
            }
            // At the end of what we hold: if the agent rotated the file, go on with the new one.
            let rotated = std::fs::metadata(&self.path).map_or(true, |m| m.ino() != *inode);
            if !rotated {
                return Ok(lines);
            }
            self.reader = None;
            self.partial.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Flow, Layer4, Udp};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(line: &str) -> Args {
        Cli::parse_from(std::iter::once("observe").chain(line.split_whitespace())).args
    }

    fn record(verdict: Verdict, event_type: u8, from: (&str, &str), to: (&str, &str), port: u32) -> FlowRecord {
        let endpoint = |(namespace, pod): (&str, &str)| {
            Some(Endpoint { namespace: namespace.into(), pod_name: pod.into(), identity: 300, ..Endpoint::default() })
        };
        FlowRecord {
            flow: Flow {
                verdict,
                event_type: Some(flow::EventType { event_type: i32::from(event_type), sub_type: 0 }),
                ip: Some(flow::Ip { source: "10.0.0.2".into(), destination: "10.0.0.3".into(), ..flow::Ip::default() }),
                source: endpoint(from),
                destination: endpoint(to),
                l4: Some(Layer4::Udp(Udp { source_port: 40000, destination_port: port })),
                ..Flow::default()
            },
            ..FlowRecord::default()
        }
    }

    #[test]
    fn filters_match_as_hubbles_do() {
        let dropped = record(Verdict::Dropped, abi::EVENT_DROP, ("prod", "client-1"), ("db", "pg"), 5432);
        let traced = record(Verdict::Forwarded, abi::EVENT_TRACE, ("default", "web"), ("prod", "client-1"), 80);
        let matching = |line: &str| {
            let filter = Filter::new(&args(&format!("lab1 {line}")));
            [&dropped, &traced].iter().map(|r| filter.matches(r)).collect::<Vec<_>>()
        };
        assert_eq!(matching(""), [true, true]);
        assert_eq!(matching("--verdict DROPPED"), [true, false]);
        assert_eq!(matching("--verdict forwarded"), [false, true]);
        assert_eq!(matching("--from-pod prod/client"), [true, false]);
        assert_eq!(matching("--to-pod prod/client-1"), [false, true]);
        assert_eq!(matching("--pod prod/client-1"), [true, true]);
        assert_eq!(matching("--pod web"), [false, true], "no namespace means default");
        assert_eq!(matching("--pod prod/"), [true, true]);
        assert_eq!(matching("--namespace db"), [true, false]);
        assert_eq!(matching("--port 80"), [false, true]);
        assert_eq!(matching("--port 40000"), [true, true]);
        assert_eq!(matching("--type drop"), [true, false]);
        assert_eq!(matching("--type trace --namespace prod"), [false, true]);
        assert_eq!(matching("--type policy-verdict"), [false, false]);
    }

    #[test]
    fn options_parse() {
        let a = args("lab1 -f --last 5 -o json");
        assert!(a.follow);
        assert_eq!(a.last, Some(5));
        assert_eq!(a.output, Output::Json);
        assert_eq!(args("lab1").output, Output::Compact);
    }

    #[test]
    fn the_last_matching_flows_are_shown_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let line = |pod: &str, verdict: Verdict| {
            let mut record = record(verdict, abi::EVENT_DROP, ("prod", pod), ("db", "pg"), 5432);
            record.time = "2026-11-22T13:40:00.123Z".into();
            serde_json::to_string(&record).unwrap()
        };
        let old = [line("a", Verdict::Dropped), line("b", Verdict::Forwarded)].join("\n") + "\n";
        let new = [line("c", Verdict::Dropped), "{not a flow".into(), line("d", Verdict::Dropped)].join("\n") + "\n";
        std::fs::write(flow::rotated_path(&path), old).unwrap();
        std::fs::write(&path, &new).unwrap();
        let shown = |options: &str| {
            let mut out = Vec::new();
            let mut tail = Tail::new(path.clone());
            show_recorded(&args(&format!("lab1 {options}")), &path, &mut tail, &mut out, false).unwrap();
            assert!(tail.read_new().unwrap().is_empty(), "the tail goes on after what was shown");
            String::from_utf8(out).unwrap()
        };
        let pods = |text: String| -> Vec<String> {
            text.lines().map(|l| serde_json::from_str::<FlowRecord>(l).unwrap().flow.source.unwrap().pod_name).collect()
        };
        assert_eq!(pods(shown("-o json")), ["a", "b", "c", "d"]);
        assert_eq!(pods(shown("-o json --last 2")), ["c", "d"]);
        assert_eq!(pods(shown("-o json --verdict DROPPED --last 3")), ["a", "c", "d"]);
        assert_eq!(shown("-f"), "");
        let compact = shown("--last 1");
        assert!(compact.ends_with(": prod/d:40000 (ID:300) <> db/pg:5432 (ID:300) 0 DROPPED ()\n"), "{compact}");
    }

    #[test]
    fn the_tail_reads_complete_lines_and_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let mut tail = Tail::new(path.clone());
        assert!(tail.read_new().unwrap().is_empty());
        assert!(!tail.seen_file());
        std::fs::write(&path, "a\nb\npart").unwrap();
        assert_eq!(tail.read_new().unwrap(), ["a", "b"]);
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"ial\nc\n").unwrap();
        assert_eq!(tail.read_new().unwrap(), ["partial", "c"]);
        file.write_all(b"d\n").unwrap();
        std::fs::rename(&path, flow::rotated_path(&path)).unwrap();
        std::fs::write(&path, "e\n").unwrap();
        assert_eq!(tail.read_new().unwrap(), ["d", "e"]);
        assert!(tail.read_new().unwrap().is_empty());
    }
}
