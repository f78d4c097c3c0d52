//! `lab test [PATH...]`: runs every scenario found (topology files with a `scenario:`, and
//! scenario files naming their `topology:`), each in a fresh lab of its own, several at once, and
//! compares what every step saw (verdicts, flows, packet renderings) with the golden files in
//! `golden/<topology path>/<step>/`. Scenario files on one topology whose steps change only
//! policies and labels share a lab, which is reset to the topology between them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::scenario::{RemoveOnDrop, Runner, StepReport};
use crate::state::LabDir;
use crate::topology::scenario::{ScenarioFile, Step};
use crate::topology::source::SourceMap;
use crate::topology::{self, Diagnostic, Loaded, TopologyError};
use crate::ui;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Topology or scenario files, or folders to search for them (default: `topologies`).
    pub paths: Vec<PathBuf>,
    /// Write what this run saw as the new golden files (refused when `CI` is set).
    #[arg(long, env = "LAB_UPDATE_GOLDEN", value_parser = clap::builder::FalseyValueParser::new())]
    pub update: bool,
    /// Write a JUnit XML report: one testsuite per scenario, one testcase per step.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Only scenarios whose path or name contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Labs running at once (default: one per core).
    #[arg(long, short)]
    pub jobs: Option<usize>,
    /// Where the golden files are (default: `golden/` beside the nearest folder above the
    /// scenarios that has one, or is a git checkout).
    #[arg(long, value_name = "DIR")]
    pub golden: Option<PathBuf>,
}

/// One scenario to run.
#[derive(Debug, Clone)]
pub struct Case {
    /// The file the steps are written in.
    pub file: PathBuf,
    /// The file's path as reports name it, relative to the golden folder's parent.
    pub display: String,
    /// What the scenario is about: a scenario file's `name`, or the topology's.
    pub name: String,
    pub topology: Loaded,
    pub steps: Vec<Step>,
    pub capture: Vec<String>,
    /// Where the steps stand in their file: `scenario.` in a topology.
    pub prefix: String,
    /// Each step's line in its file.
    pub lines: Vec<Option<usize>>,
    /// `golden/<display without .yaml>`.
    pub golden: PathBuf,
}

impl Case {
    /// Whether this case can share a lab with other cases of its topology.
    fn shares_lab(&self) -> bool {
        self.prefix.is_empty() && self.steps.iter().all(Step::only_resources_and_labels)
    }
}

/// What one step came to.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub title: String,
    pub line: Option<usize>,
    pub seconds: f64,
    pub probes: usize,
    /// Failed assertions and differences from the golden files, as text for people.
    pub problems: Vec<String>,
    /// Golden files written (with --update).
    pub updated: Vec<PathBuf>,
}

/// What one scenario came to.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub case: Case,
    pub steps: Vec<StepResult>,
    pub seconds: f64,
}

/// Whether `CI` says this runs in CI: set, and neither empty, `0` nor `false` (as insta reads it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

pub fn run(args: &Args) -> Result<bool> {
    super::require_root()?;
    if args.update && in_ci() {
        bail!(
            "refusing to update golden files: CI is set; update them where you can review the diff, then commit them"
        );
    }
    let paths = if args.paths.is_empty() { vec![PathBuf::from("topologies")] } else { args.paths.clone() };
    let mut cases = discover(&paths, args.golden.as_deref())?;
    if let Some(filter) = &args.filter {
        cases.retain(|c| c.display.contains(filter.as_str()) || c.name.contains(filter.as_str()));
    }
    if cases.is_empty() {
        bail!("no scenarios found in {}", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1);
    let started = Instant::now();
    let steps: usize = cases.iter().map(|c| c.steps.len()).sum();
    let progress = ui::progress("test");
    progress.set_length(steps as u64);
    let results = run_cases(cases, jobs, args.update, |result| {
        progress.suspend(|| print_case(result));
        progress.inc(result.steps.len() as u64);
    });
    progress.finish_and_clear();
    let (passed, failed) = count(&results);
    if let Some(file) = &args.junit {
        std::fs::write(file, junit(&results, started.elapsed()))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") {
        for line in annotations(&results) {
            println!("{line}");
        }
    }
    let updated: usize = results.iter().flat_map(|r| &r.steps).map(|s| s.updated.len()).sum();
    if args.update {
        println!("updated {updated} golden files");
    }
    let probes: usize = results.iter().flat_map(|r| &r.steps).map(|s| s.probes).sum();
    println!(
        "lab test: {} scenarios, {steps} steps, {probes} probes in {:.1} s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// Steps passed and failed.
pub fn count(results: &[CaseResult]) -> (usize, usize) {
    let steps = results.iter().flat_map(|r| &r.steps);
    let failed = steps.clone().filter(|s| !s.problems.is_empty()).count();
    (steps.count() - failed, failed)
}

/// Finds the scenarios under `paths`, sorted by path.
pub fn discover(paths: &[PathBuf], golden: Option<&Path>) -> Result<Vec<Case>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut files)?;
        } else if path.exists() {
            if kind_of(path).is_none() {
                bail!(
                    "{}: not a topology with a `scenario:`, nor a scenario file (`topology:` and `steps:`)",
                    path.display()
                );
            }
            files.push(path.clone());
        } else {
            bail!("{}: no such file or folder", path.display());
        }
    }
    files.sort();
    files.dedup();
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let Some(kind) = kind_of(&file) else { continue };
        match load_case(&file, kind, golden) {
            Ok(case) => cases.push(case),
            Err(e) => match e.downcast::<TopologyError>() {
                Ok(invalid) => errors.extend(invalid.diagnostics),
                Err(e) => return Err(e),
            },
        }
    }
    if !errors.is_empty() {
        return Err(TopologyError { diagnostics: errors }.into());
    }
    Ok(cases)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") && kind_of(&path).is_some() {
            files.push(path);
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Topology,
    ScenarioFile,
}

/// A topology with a scenario, a scenario file, or neither (policies, other YAML).
fn kind_of(path: &Path) -> Option<Kind> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
    let has = |key: &str| value.get(key).is_some();
    if has("nodes") && has("scenario") {
        Some(Kind::Topology)
    } else if has("topology") && has("steps") {
        Some(Kind::ScenarioFile)
    } else {
        None
    }
}

/// The golden folder for scenarios in `file`'s folder: `golden/` in the nearest folder above
/// that has one or is a git checkout, or in the current folder.
fn golden_root(file: &Path) -> PathBuf {
    let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    for dir in absolute.ancestors().skip(1) {
        if dir.join("golden").is_dir() || dir.join(".git").exists() {
            return dir.join("golden");
        }
    }
    PathBuf::from("golden")
}

fn load_case(file: &Path, kind: Kind, golden: Option<&Path>) -> Result<Case> {
    let golden = golden.map_or_else(|| golden_root(file), Path::to_path_buf);
    let root = golden.parent().map(Path::to_path_buf).unwrap_or_default();
    let absolute = std::path::absolute(file)?;
    let display = absolute.strip_prefix(std::path::absolute(&root)?).unwrap_or(file).display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let map = SourceMap::parse(&text);
    let (loaded, name, steps, capture, prefix) = match kind {
        Kind::Topology => {
            let loaded = topology::load_file(file)?;
            let scenario = loaded.topology.scenario.clone().unwrap_or_default();
            let name = loaded.topology.name.clone();
            (loaded, name, scenario.steps, scenario.capture, "scenario.")
        }
        Kind::ScenarioFile => {
            let scenario: ScenarioFile = serde_yaml::from_str(&text)
                .map_err(|e| TopologyError { diagnostics: vec![Diagnostic::from_yaml(file, &e, (0, 0))] })?;
            let topology_file = file.parent().unwrap_or(Path::new(".")).join(&scenario.topology);
            let loaded = topology::load_file(&topology_file)?;
            let findings = topology::scenario::check(&loaded.topology, &scenario.capture, &scenario.steps, "");
            let errors: Vec<Diagnostic> = findings
                .into_iter()
                .filter(|f| f.severity == topology::validate::Severity::Error)
                .map(|f| Diagnostic::new(file, &map, &f.field, f.message))
                .collect();
            if !errors.is_empty() {
                return Err(TopologyError { diagnostics: errors }.into());
            }
            (loaded, scenario.name, scenario.steps, scenario.capture, "")
        }
    };
    let lines = (0..steps.len()).map(|i| map.locate(&format!("{prefix}steps[{i}]")).map(|l| l.line)).collect();
    let golden = golden.join(Path::new(&display).with_extension(""));
    Ok(Case {
        file: file.to_path_buf(),
        display,
        name,
        topology: loaded,
        steps,
        capture,
        prefix: prefix.into(),
        lines,
        golden,
    })
}

/// Runs `cases` on `jobs` labs at once; `done` sees each scenario's result as it finishes. The
/// results come back in the cases' order.
pub fn run_cases(cases: Vec<Case>, jobs: usize, update: bool, done: impl FnMut(&CaseResult)) -> Vec<CaseResult> {
    run_cases_sharing(cases, jobs, update, true, done)
}

/// [`run_cases`], with labs shared where they can be (`share`) or a fresh lab for every case.
pub fn run_cases_sharing(
    cases: Vec<Case>,
    jobs: usize,
    update: bool,
    share: bool,
    mut done: impl FnMut(&CaseResult),
) -> Vec<CaseResult> {
    // Groups that share a lab: scenario files of one topology that change only policies and
    // labels, split so every job has some; every other case alone.
    let mut groups: Vec<Vec<(usize, Case)>> = Vec::new();
    let mut shared: BTreeMap<PathBuf, Vec<(usize, Case)>> = BTreeMap::new();
    for (index, case) in cases.into_iter().enumerate() {
        if share && case.shares_lab() {
            shared.entry(case.topology.file.clone()).or_default().push((index, case));
        } else {
            groups.push(vec![(index, case)]);
        }
    }
    for (_, members) in shared {
        let parts = jobs.min(members.len()).max(1);
        let mut split: Vec<Vec<(usize, Case)>> = vec![Vec::new(); parts];
        for (i, member) in members.into_iter().enumerate() {
            split[i % parts].push(member);
        }
        groups.extend(split);
    }
    // Larger groups first, so the last to start is short.
    groups.sort_by_key(|g| std::cmp::Reverse(g.iter().map(|(_, c)| c.steps.len()).sum::<usize>()));

    let queue = std::sync::Mutex::new(groups.into_iter());
    let (results, received) = mpsc::channel();
    let mut all = Vec::new();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let (queue, results) = (&queue, results.clone());
            scope.spawn(move || {
                loop {
                    let Some(group) = queue.lock().expect("not poisoned").next() else { return };
                    run_group(group, update, &results);
                }
            });
        }
        drop(results);
        for (index, result) in received {
            done(&result);
            all.push((index, result));
        }
    });
    all.sort_by_key(|(index, _)| *index);
    all.into_iter().map(|(_, result)| result).collect()
}

/// A lab name no other run on this host uses.
fn unique_lab(what: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let what: String = what.chars().filter(|c| c.is_ascii_alphanumeric()).take(10).collect::<String>().to_lowercase();
    format!("lt{}-{what}-{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

fn run_group(group: Vec<(usize, Case)>, update: bool, results: &mpsc::Sender<(usize, CaseResult)>) {
    let Some((_, first)) = group.first() else { return };
    let lab = unique_lab(&first.topology.topology.name);
    let _down = RemoveOnDrop(LabDir::of(&lab));
    let up = crate::cmd::up::create(&first.topology, &lab);
    for (position, (index, case)) in group.iter().enumerate() {
        let started = Instant::now();
        let steps = match &up {
            Err(e) => failed_steps(case, &format!("bringing up the lab: {e:#}")),
            Ok(_) => {
                let reset = if position > 0 { reset(&lab, &case.topology) } else { Ok(()) };
                match reset.and_then(|()| run_case(&lab, case, update)) {
                    Ok(steps) => steps,
                    Err(e) => failed_steps(case, &format!("{e:#}")),
                }
            }
        };
        let result = CaseResult { case: case.clone(), steps, seconds: started.elapsed().as_secs_f64() };
        if results.send((*index, result)).is_err() {
            return;
        }
    }
}

/// Every step of `case` failed with `why`.
fn failed_steps(case: &Case, why: &str) -> Vec<StepResult> {
    case.steps
        .iter()
        .enumerate()
        .map(|(i, step)| StepResult {
            title: step.title(i),
            line: case.lines[i],
            seconds: 0.0,
            probes: 0,
            problems: vec![why.to_string()],
            updated: Vec::new(),
        })
        .collect()
}

/// Puts a shared lab back as its topology describes it: its objects, pods' and namespaces' labels.
fn reset(lab: &str, loaded: &Loaded) -> Result<()> {
    let (_, running) = LabDir::of(lab).read_sources()?;
    let key = |r: &crate::topology::resources::Resource| (r.kind.clone(), r.namespace.clone(), r.name.clone());
    let base: Vec<_> = loaded.resources.iter().map(key).collect();
    let change = crate::live::Change {
        apply: loaded.resources.clone(),
        delete: running.iter().map(key).filter(|k| !base.contains(k)).collect(),
        pod_labels: loaded
            .topology
            .pods
            .iter()
            .map(|p| (format!("{}/{}", p.namespace, p.name), p.labels.clone()))
            .collect(),
        namespace_labels: loaded.topology.namespaces.iter().map(|n| (n.name.clone(), n.labels.clone())).collect(),
        ..Default::default()
    };
    crate::live::apply(lab, &change).context("resetting the shared lab")?;
    Ok(())
}

fn run_case(lab: &str, case: &Case, update: bool) -> Result<Vec<StepResult>> {
    let mut runner = Runner::new(lab, &case.file, &case.prefix, &case.capture, &case.steps)?;
    let mut results = Vec::new();
    let mut broken = None;
    for (index, step) in case.steps.iter().enumerate() {
        if let Some(why) = &broken {
            results.push(StepResult {
                title: step.title(index),
                line: case.lines[index],
                seconds: 0.0,
                probes: 0,
                problems: vec![format!("not run: {why}")],
                updated: Vec::new(),
            });
            continue;
        }
        let report = runner.step(index, step);
        let mut result = StepResult {
            title: report.title.clone(),
            line: case.lines[index],
            seconds: report.elapsed.as_secs_f64(),
            probes: report.probes,
            problems: report.failures.clone(),
            updated: Vec::new(),
        };
        let dir = case.golden.join(&report.slug);
        if update {
            result.updated = write_golden(&dir, &report)?;
        } else {
            result.problems.extend(compare_golden(&dir, &report));
        }
        save_artifacts(case, &report);
        // A step that could not change the lab leaves the rest without meaning.
        if report.outputs.is_empty()
            && !report.failures.is_empty()
            && report.failures.iter().any(|f| f.starts_with("changing"))
        {
            broken = Some(format!("step `{}` failed", report.title));
        }
        results.push(result);
    }
    if update {
        // Folders of steps that are no longer in the scenario.
        let slugs: Vec<String> =
            case.steps.iter().enumerate().map(|(i, s)| crate::topology::scenario::slug(&s.title(i))).collect();
        if let Ok(entries) = std::fs::read_dir(&case.golden) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.path().is_dir() && !slugs.contains(&name) {
                    std::fs::remove_dir_all(entry.path())?;
                    if let Some(last) = results.last_mut() {
                        last.updated.push(entry.path());
                    }
                }
            }
        }
    }
    Ok(results)
}

/// Makes `dir` hold exactly the step's outputs; returns the files written or removed.
fn write_golden(dir: &Path, report: &StepReport) -> Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in &report.outputs {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            changed.push(path);
        }
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_file() && !report.outputs.contains_key(&name) {
            std::fs::remove_file(entry.path())?;
            changed.push(entry.path());
        }
    }
    if report.outputs.is_empty() {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(changed)
}

/// The differences between a step's outputs and its golden files, each a readable diff.
fn compare_golden(dir: &Path, report: &StepReport) -> Vec<String> {
    let mut golden: BTreeMap<String, String> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().is_file() {
                golden.insert(
                    entry.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(entry.path()).unwrap_or_default(),
                );
            }
        }
    }
    let mut problems = Vec::new();
    let names: std::collections::BTreeSet<&String> = golden.keys().chain(report.outputs.keys()).collect();
    for name in names {
        let path = dir.join(name);
        match (golden.get(name), report.outputs.get(name)) {
            (Some(expected), Some(actual)) if expected == actual => {}
            (Some(expected), Some(actual)) => problems.push(format!(
                "{} differs:\n{}{}",
                path.display(),
                changed_verdicts(expected, actual),
                diff(expected, actual)
            )),
            (None, Some(actual)) => problems.push(format!(
                "{} has no golden file (run with --update to write it):\n{}",
                path.display(),
                diff("", actual)
            )),
            (Some(expected), None) => {
                problems.push(format!("{} was not produced this time:\n{}", path.display(), diff(expected, "")))
            }
            (None, None) => {}
        }
    }
    problems
}

/// For verdict files: each probe whose verdict changed, in one line.
fn changed_verdicts(expected: &str, actual: &str) -> String {
    let verdicts = |text: &str| -> BTreeMap<String, String> {
        text.lines()
            .filter(|l| l.starts_with("probe ") || l.starts_with("exec "))
            .filter_map(|l| l.rsplit_once(": ").map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()
    };
    let (before, after) = (verdicts(expected), verdicts(actual));
    let mut out = String::new();
    for (probe, was) in &before {
        if let Some(now) = after.get(probe)
            && now != was
        {
            out.push_str(&format!("  {probe}: was {was}, now {now}\n"));
        }
    }
    out
}

/// A line diff of `expected` (golden, `-`) and `actual` (this run, `+`), with two lines of
/// context around each change, coloured on a terminal.
pub fn diff(expected: &str, actual: &str) -> String {
    let paint = |text: String, code: &str| ui::paint(&text, code);
    let lines: Vec<(char, &str)> = diff::lines(expected, actual)
        .into_iter()
        .map(|change| match change {
            diff::Result::Left(l) => ('-', l),
            diff::Result::Right(r) => ('+', r),
            diff::Result::Both(b, _) => (' ', b),
        })
        .collect();
    const CONTEXT: usize = 2;
    let near_change = |i: usize| {
        let from = i.saturating_sub(CONTEXT);
        let to = (i + CONTEXT + 1).min(lines.len());
        lines[from..to].iter().any(|(c, _)| *c != ' ')
    };
    let mut out = String::new();
    let mut skipped = false;
    for (i, (change, line)) in lines.iter().enumerate() {
        if !near_change(i) {
            skipped = true;
            continue;
        }
        if skipped {
            out.push_str("  ...\n");
            skipped = false;
        }
        out.push_str(&match change {
            '-' => paint(format!("- {line}"), "31"),
            '+' => paint(format!("+ {line}"), "32"),
            _ => format!("  {line}"),
        });
        out.push('\n');
    }
    out
}

fn print_case(result: &CaseResult) {
    let failed = result.steps.iter().filter(|s| !s.problems.is_empty()).count();
    let status = if failed == 0 { ui::paint_ok("ok") } else { ui::paint_failed("FAILED") };
    println!("{}: {status} ({} steps, {:.1} s)", result.case.display, result.steps.len(), result.seconds);
    for (i, step) in result.steps.iter().enumerate() {
        if step.problems.is_empty() {
            continue;
        }
        let line = step.line.map_or(String::new(), |l| format!(":{l}"));
        println!("  step {} `{}` ({}{line}):", i + 1, step.title, result.case.display);
        for problem in &step.problems {
            for text in problem.lines() {
                println!("    {text}");
            }
        }
    }
}

/// `::error` lines GitHub Actions turns into annotations on the failing steps.
pub fn annotations(results: &[CaseResult]) -> Vec<String> {
    let escape = |text: &str| text.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A");
    let mut lines = Vec::new();
    for result in results {
        for step in result.steps.iter().filter(|s| !s.problems.is_empty()) {
            let line = step.line.map_or(String::new(), |l| format!(",line={l}"));
            let title = escape(&format!("step `{}`", step.title)).replace(',', "%2C").replace(':', "%3A");
            let message = escape(&step.problems.join("\n"));
            lines.push(format!("::error file={}{line},title={title}::{message}", result.case.display));
        }
    }
    lines
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // ANSI colour and other control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// The JUnit XML report: a testsuite per scenario, a testcase per step, as Jenkins' JUnit schema
/// (junit-4.xsd) and the GitHub reporters built on it read it.
pub fn junit(results: &[CaseResult], elapsed: Duration) -> String {
    let (passed, failed) = count(results);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites name=\"lab test\" tests=\"{}\" failures=\"{failed}\" errors=\"0\" time=\"{:.3}\">\n",
        passed + failed,
        elapsed.as_secs_f64()
    ));
    for result in results {
        let failures = result.steps.iter().filter(|s| !s.problems.is_empty()).count();
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{:.3}\" package=\"{}\">\n",
            xml_escape(&result.case.display),
            result.steps.len(),
            result.seconds,
            xml_escape(&result.case.name),
        ));
        let classname = result.case.display.trim_end_matches(".yaml").replace('/', ".");
        for (i, step) in result.steps.iter().enumerate() {
            out.push_str(&format!(
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
                xml_escape(&format!("{:02} {}", i + 1, step.title)),
                xml_escape(&classname),
                step.seconds
            ));
            if step.problems.is_empty() {
                out.push_str("/>\n");
                continue;
            }
            let first = step.problems[0].lines().next().unwrap_or_default();
            out.push_str(&format!(
                ">\n      <failure message=\"{}\" type=\"lab.test\">{}</failure>\n    </testcase>\n",
                xml_escape(first),
                xml_escape(&step.problems.join("\n\n"))
            ));
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// Keeps a step's pcaps and outputs where people can open them: `target/lab-test/` beside the
/// golden folder, mirroring its layout.
fn save_artifacts(case: &Case, report: &StepReport) {
    let Some(root) = case.golden.ancestors().find(|a| a.file_name().is_some_and(|n| n == "golden")) else { return };
    let Ok(relative) = case.golden.strip_prefix(root) else { return };
    let dir = root.parent().unwrap_or(Path::new(".")).join("target/lab-test").join(relative).join(&report.slug);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for (name, bytes) in &report.pcaps {
        let _ = std::fs::write(dir.join(name), bytes);
    }
    for (name, text) in &report.outputs {
        let _ = std::fs::write(dir.join(name), text);
    }
}
