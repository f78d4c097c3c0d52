//! `lab test`: a changed policy fails with a diff naming step, probe and verdict, and `--update`
//! rewrites exactly the goldens it affects (refused under CI); an agent restart keeps an
//! established connection, and a kept connection's ACKs stay in their step; the JUnit report validates against the JUnit schema; a wrong
//! expectation fails naming its probe and leaves no lab behind. Every run is on copies in a
//! temporary folder.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `lab test ARGS...` with the environment given, from `dir`.
fn lab_test(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    common::require_root();
    let mut command = Command::new(common::lab_binary());
    command
        .arg("test")
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("CI")
        .env_remove("LAB_UPDATE_GOLDEN");
    command.env_remove("GITHUB_ACTIONS");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("running lab test")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every file under `dir` with its content.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                pending.push(entry.path());
            } else {
                files.insert(
                    entry.path().strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(entry.path()).unwrap(),
                );
            }
        }
    }
    files
}

/// A copy of the quickstart topology and its goldens, laid out as in the repository.
fn quickstart_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("topologies/examples")).unwrap();
    std::fs::copy(common::topology("examples/quickstart.yaml"), dir.path().join("topologies/examples/quickstart.yaml"))
        .unwrap();
    copy_dir(
        &common::repo_root().join("golden/topologies/examples/quickstart"),
        &dir.path().join("golden/topologies/examples/quickstart"),
    );
    dir
}

#[test]
fn a_changed_policy_fails_with_a_diff_and_update_rewrites_only_its_goldens() {
    let dir = quickstart_copy();
    let file = dir.path().join("topologies/examples/quickstart.yaml");
    let passing = lab_test(dir.path(), &["topologies/examples/quickstart.yaml"], &[]);
    assert!(passing.status.success(), "the copy passes as it is:\n{}", text(&passing));

    // The policy of step 2 now lets the client in on 9090 instead of 80.
    let topology = std::fs::read_to_string(&file).unwrap();
    let edited = topology.replace(
        r#"toPorts: [{ports: [{port: "80", protocol: TCP}]}]"#,
        r#"toPorts: [{ports: [{port: "9090", protocol: TCP}]}]"#,
    );
    assert_ne!(edited, topology);
    std::fs::write(&file, edited).unwrap();
    let before = tree(&dir.path().join("golden"));

    let failing = lab_test(dir.path(), &["topologies/examples/quickstart.yaml"], &[]);
    let out = text(&failing);
    assert!(!failing.status.success(), "{out}");
    assert!(out.contains("step 2 `only the client reaches web, on port 80`"), "names the step:\n{out}");
    assert!(out.contains("client -> web-1 tcp/80: was connected, now blocked"), "names probe and verdict:\n{out}");
    assert!(out.contains("client -> web-1 tcp/9090: was blocked, now connected"), "{out}");
    assert!(out.contains("- probe client -> web-1 tcp/80: connected\n"), "a diff of the verdicts:\n{out}");
    assert!(out.contains("+ probe client -> web-1 tcp/80: blocked\n"), "{out}");
    assert!(out.contains("1 passed, 1 failed"), "{out}");
    assert_eq!(tree(&dir.path().join("golden")), before, "a failing run writes no golden file");

    // Under CI, no update.
    let refused = lab_test(dir.path(), &["topologies/examples/quickstart.yaml", "--update"], &[("CI", "true")]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("refusing to update golden files: CI is set"), "{}", text(&refused));
    let refused =
        lab_test(dir.path(), &["topologies/examples/quickstart.yaml"], &[("CI", "1"), ("LAB_UPDATE_GOLDEN", "1")]);
    assert!(!refused.status.success() && text(&refused).contains("refusing"), "{}", text(&refused));
    assert_eq!(tree(&dir.path().join("golden")), before);

    // The update rewrites step 2's files and nothing else (its expectations still fail the run).
    let updated = lab_test(dir.path(), &["topologies/examples/quickstart.yaml", "--update"], &[]);
    let after = tree(&dir.path().join("golden"));
    let changed: Vec<&PathBuf> = after.keys().filter(|p| before.get(*p) != after.get(*p)).collect();
    assert!(!changed.is_empty(), "{}", text(&updated));
    let step2 = Path::new("topologies/examples/quickstart/only-the-client-reaches-web-on-port-80");
    assert!(changed.iter().all(|p| p.starts_with(step2)), "only step 2's goldens change: {changed:?}");
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>(), "no file added or removed");
    assert!(text(&updated).contains(&format!("updated {} golden files", changed.len())), "{}", text(&updated));
    let verdicts = String::from_utf8(after[&step2.join("verdicts.txt")].clone()).unwrap();
    assert!(verdicts.contains("probe client -> web-1 tcp/80: blocked"), "{verdicts}");
    // Now only the stale expectations of the topology itself fail, not the goldens.
    let rerun = text(&lab_test(dir.path(), &["topologies/examples/quickstart.yaml"], &[]));
    assert!(!rerun.contains("differs"), "{rerun}");
}

const RESTART: &str = "\
name: restart
nodes: [{name: node-a}, {name: node-b}]
pods:
  - {name: client, node: node-a}
  - {name: server, node: node-b, ports: [tcp/80]}
scenario:
  capture: [client]
  steps:
    - name: open
      probes:
        - {from: client, to: server, port: tcp/80, keep: long}
    - name: the agent restarts
      restart: agent
      probes:
        - {name: data after the restart, connection: long}
        - {from: client, to: server, port: tcp/80}
    - name: and once more
      restart: agent
      probes:
        - {name: data after the second restart, connection: long, close: true}
";

#[test]
fn an_agent_restart_keeps_an_established_connection() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("restart.yaml"), RESTART).unwrap();
    std::fs::create_dir(dir.path().join("golden")).unwrap();
    let out = lab_test(dir.path(), &["restart.yaml", "--update"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("3 passed, 0 failed"), "{}", text(&out));
    let golden = dir.path().join("golden/restart");
    let opened = std::fs::read_to_string(golden.join("open/verdicts.txt")).unwrap();
    assert_eq!(opened, "probe client -> server tcp/80 (kept as long): connected\n");
    let after = std::fs::read_to_string(golden.join("the-agent-restarts/verdicts.txt")).unwrap();
    assert!(after.starts_with("probe data after the restart: connected\n"), "{after}");
    // The kept connection's bytes cross the restart: the capture holds its data both ways and
    // no reset.
    let capture = std::fs::read_to_string(golden.join("the-agent-restarts/client.eth0.txt")).unwrap();
    let first = capture.lines().next().unwrap();
    assert!(first.contains("tcp [P.] seq 0 ack 0 len 10"), "data on the old connection first:\n{capture}");
    assert!(!capture.contains("[R"), "{capture}");
    let last = std::fs::read_to_string(golden.join("and-once-more/verdicts.txt")).unwrap();
    assert_eq!(last, "probe data after the second restart: connected\n");
    // And the same again against those goldens.
    let again = lab_test(dir.path(), &["restart.yaml"], &[]);
    assert!(again.status.success(), "{}", text(&again));
}

const KEPT: &str = "\
name: kept
nodes: [{name: node-a}]
pods:
  - {name: client, node: node-a}
  - {name: server, node: node-a, ports: [tcp/80]}
scenario:
  capture: [client]
  steps:
    - name: open
      probes:
        - {from: client, to: server, port: tcp/80, keep: long}
    - name: more data
      probes:
        - {name: more data, connection: long}
    - name: the last data
      probes:
        - {name: the last data, connection: long, close: true}
";

/// The client's TCP segments of a step's pcap, as (outgoing, flags "SFRPA" or "-", payload).
fn client_segments(pcap: &Path) -> Vec<(bool, String, usize)> {
    let mut reader = pcap_file::pcap::PcapReader::new(std::fs::File::open(pcap).unwrap()).unwrap();
    let mut segments = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.unwrap();
        let Ok(sliced) = etherparse::SlicedPacket::from_ethernet(&packet.data) else { continue };
        let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Tcp(tcp))) =
            (&sliced.net, &sliced.transport)
        else {
            continue;
        };
        let flags: String = [(tcp.syn(), 'S'), (tcp.fin(), 'F'), (tcp.rst(), 'R'), (tcp.psh(), 'P'), (tcp.ack(), 'A')]
            .iter()
            .filter_map(|(set, c)| set.then_some(*c))
            .collect();
        // The client's address is the pod's, from the first pod CIDR.
        let outgoing = ip.header().source_addr().octets()[..3] == [10, 0, 0] && tcp.destination_port() == 80;
        segments.push((outgoing, flags, tcp.payload().len()));
    }
    segments
}

/// The lab holds no ACK back on a kept connection: each step's capture ends with the client's
/// acknowledgement of the echo, and the next step starts with the client's data, not with an
/// ACK left over from the step before (which that step's changes would act on).
#[test]
fn a_kept_connection_acknowledges_each_echo_within_its_step() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kept.yaml"), KEPT).unwrap();
    std::fs::create_dir(dir.path().join("golden")).unwrap();
    let out = lab_test(dir.path(), &["kept.yaml", "--update"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let pcaps = dir.path().join("target/lab-test/kept");
    let open = client_segments(&pcaps.join("open/client.eth0.pcap"));
    assert_eq!(open.last(), Some(&(true, "A".to_string(), 0)), "the echo acknowledged in its step: {open:?}");
    let more = client_segments(&pcaps.join("more-data/client.eth0.pcap"));
    assert_eq!(more.first(), Some(&(true, "PA".to_string(), 10)), "the step starts with data: {more:?}");
    assert_eq!(more.last(), Some(&(true, "A".to_string(), 0)), "the echo acknowledged in its step: {more:?}");
    let last = client_segments(&pcaps.join("the-last-data/client.eth0.pcap"));
    assert_eq!(last.first(), Some(&(true, "PA".to_string(), 10)), "the step starts with data: {last:?}");
}

const WRONG: &str = "\
name: wrong
nodes: [{name: node-a}]
pods:
  - {name: a, node: node-a}
  - {name: b, node: node-a, ports: [tcp/80]}
scenario:
  steps:
    - name: b is open
      probes:
        - {from: a, to: b, port: tcp/80, expect: blocked}
        - {from: a, to: b, port: icmp}
";

/// The labs a `lab test` process (by its pid) may have left: `lt<pid>-...`.
fn labs_of(pid: u32) -> Vec<String> {
    let prefix = format!("lt{}-", pid % 100_000);
    let mut remains: Vec<String> = lab::state::list().into_iter().filter(|n| n.starts_with(&prefix)).collect();
    remains.extend(lab::net::netns::list_with_prefix(&format!("lab.{prefix}")));
    let pins = std::fs::read_dir(lab::state::BPFFS_DIR).into_iter().flatten().flatten();
    remains.extend(pins.map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(&prefix)));
    remains
}

#[test]
fn a_wrong_expectation_fails_naming_the_probe_and_leaves_no_lab() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wrong.yaml"), WRONG).unwrap();
    std::fs::create_dir(dir.path().join("golden")).unwrap();
    let report = dir.path().join("report.xml");
    let child = Command::new(common::lab_binary())
        .args(["test", "wrong.yaml", "--update", "--junit", report.to_str().unwrap()])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env_remove("CI")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let out_text = text(&out);
    assert!(!out.status.success(), "{out_text}");
    assert!(out_text.contains("probe `a -> b tcp/80`: expected blocked, got connected"), "{out_text}");
    assert!(out_text.contains("0 passed, 1 failed"), "{out_text}");
    assert_eq!(labs_of(pid), Vec::<String>::new(), "the lab is gone");

    // The report: valid JUnit, one testcase per step, the failure naming the probe.
    let xml = std::fs::read_to_string(&report).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 1, "{xml}");
    assert!(xml.contains("expected blocked, got connected"), "{xml}");
    validate_junit(&report);
}

/// Validates a report against the JUnit schema shipped in tests/fixtures, with xmllint
/// (libxml2-utils, which scripts/setup installs).
fn validate_junit(report: &Path) {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/junit.xsd");
    let out = Command::new("xmllint")
        .args(["--noout", "--schema", schema.to_str().unwrap(), report.to_str().unwrap()])
        .output()
        .expect("xmllint (libxml2-utils, installed by scripts/setup)");
    assert!(out.status.success(), "{}\n{}", text(&out), std::fs::read_to_string(report).unwrap());
}

#[test]
fn junit_has_a_testcase_per_step_and_validates() {
    let dir = quickstart_copy();
    let report = dir.path().join("report.xml");
    let out = lab_test(dir.path(), &["topologies/", "--junit", report.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let xml = std::fs::read_to_string(&report).unwrap();
    assert_eq!(xml.matches("<testsuite ").count(), 1, "{xml}");
    assert_eq!(xml.matches("<testcase ").count(), 2, "one per step:\n{xml}");
    assert!(xml.contains("name=\"02 only the client reaches web, on port 80\""), "{xml}");
    validate_junit(&report);
    // GitHub annotations point at the step's line.
    let file = dir.path().join("topologies/examples/quickstart.yaml");
    let topology = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, topology.replace("expect: blocked}", "expect: connected}")).unwrap();
    let out = lab_test(dir.path(), &["topologies/"], &[("GITHUB_ACTIONS", "true")]);
    let annotated = text(&out);
    assert!(
        annotated.lines().any(|l| l.starts_with("::error file=topologies/examples/quickstart.yaml,line=")),
        "{annotated}"
    );
}
