//! `lab down` removes exactly what a lab made: after a clean run, after `kill -9` of `lab up` at
//! any point, and while another lab of the same file keeps running.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{DownOnDrop, Lab, lab, lab_binary, probe_every_pair, remains_of, require_root, topology, unique_name};

#[test]
fn down_removes_every_namespace_mount_record_and_server() {
    let lab_ = Lab::up(&topology("examples/quickstart.yaml"), "down");
    let remains = remains_of(&lab_.name);
    assert!(
        remains.iter().filter(|r| r.starts_with("netns ")).count() == lab_.plan().netns_names().len(),
        "{remains:#?}"
    );
    assert!(remains.iter().any(|r| r.starts_with("agent process")), "the servers run in an agent: {remains:#?}");
    assert!(remains.iter().any(|r| r.starts_with("mount ")), "{remains:#?}");

    let node = lab::net::netns::open(&lab_.plan().nodes[0].netns).unwrap();
    assert!(
        common::links_in(&node).iter().filter(|l| l.starts_with("lxc")).count() >= 2,
        "{:?}",
        common::links_in(&node)
    );

    let name = lab_.name.clone();
    drop(lab_);
    assert_eq!(remains_of(&name), Vec::<String>::new());
    common::assert_links_vanish(&node);
}

#[test]
fn down_is_idempotent() {
    let lab_ = Lab::up(&topology("examples/quickstart.yaml"), "twice");
    for _ in 0..2 {
        let out = lab(&["down", &lab_.name]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(remains_of(&lab_.name), Vec::<String>::new());
    }
}

/// `lab up` kills itself with SIGKILL at each named point (the `LAB_CRASH_AT` test hook), leaving
/// a half-built lab; `lab down` then removes all of it.
#[test]
fn down_cleans_up_after_kill_9_at_each_point_of_up() {
    require_root();
    for point in ["recorded", "namespaces", "pods", "built", "served"] {
        let name = unique_name(point);
        let _guard = DownOnDrop(name.clone());
        let status = Command::new(lab_binary())
            .args(["up", topology("examples/quickstart.yaml").to_str().unwrap(), "--name", &name])
            .env("LAB_CRASH_AT", point)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "lab up was to be killed at `{point}`");
        assert!(!remains_of(&name).is_empty(), "killed at `{point}`, lab up should have left something");

        let out = lab(&["down", &name]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(remains_of(&name), Vec::<String>::new(), "after a kill at `{point}`");
    }
}

/// The same, with `kill -9` from outside at moments spread over a larger lab's bring-up.
#[test]
fn down_cleans_up_after_kill_9_at_any_moment() {
    require_root();
    let text = std::fs::read_to_string(topology("examples/three-nodes.yaml")).unwrap();
    for delay_ms in [2, 10, 30, 60, 120] {
        let name = unique_name(&format!("kill{delay_ms}"));
        let _guard = DownOnDrop(name.clone());
        let mut child = Command::new(lab_binary())
            .args(["up", "/dev/stdin", "--name", &name])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();

        let out = lab(&["down", &name]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(remains_of(&name), Vec::<String>::new(), "after a kill at {delay_ms} ms");
    }
}

/// Two labs of one file run side by side; removing one leaves the other whole and working.
#[test]
fn two_labs_of_one_file_run_side_by_side() {
    let file = topology("examples/three-nodes.yaml");
    let first = Lab::up(&file, "side-a");
    let second = Lab::up(&file, "side-b");
    for lab_ in [&first, &second] {
        let (count, failures) = probe_every_pair(&lab_.plan());
        assert!(failures.is_empty(), "{} of {count} probes failed in {}:\n{failures:#?}", failures.len(), lab_.name);
    }

    let first_node = lab::net::netns::open(&first.plan().nodes[0].netns).unwrap();
    let second_before = remains_of(&second.name);
    let first_name = first.name.clone();
    drop(first);
    assert_eq!(remains_of(&first_name), Vec::<String>::new());
    common::assert_links_vanish(&first_node);
    assert_eq!(remains_of(&second.name), second_before, "removing one lab touched the other");
    let (_, failures) = probe_every_pair(&second.plan());
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_name_in_use_is_refused_and_the_running_lab_is_untouched() {
    let file = topology("examples/quickstart.yaml");
    let running = Lab::up(&file, "taken");
    let before = remains_of(&running.name);
    let out = common::lab_up(&file, &running.name);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(remains_of(&running.name), before);
}
