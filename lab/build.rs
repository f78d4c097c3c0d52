//! Compiles the C datapath in ../bpf with clang, so `cargo build` builds everything.

use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAMS: &[&str] = &["lab_lxc", "lab_host", "lab_probe"];

fn main() {
    let bpf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bpf");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("BPF_CLANG").unwrap_or_else(|_| "clang-19".into());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "arm64",
        _ => "x86",
    };
    let multiarch = match arch {
        "arm64" => "/usr/include/aarch64-linux-gnu",
        _ => "/usr/include/x86_64-linux-gnu",
    };
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    println!("cargo:rerun-if-changed={}", bpf.display());
    for entry in std::fs::read_dir(bpf.join("lib")).expect("bpf/lib exists") {
        println!("cargo:rerun-if-changed={}", entry.expect("readable").path().display());
    }
    for program in PROGRAMS {
        let source = bpf.join(format!("{program}.c"));
        println!("cargo:rerun-if-changed={}", source.display());
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
            .arg(format!("-D__TARGET_ARCH_{arch}"))
            .arg(format!("-I{multiarch}"))
            .arg("-c")
            .arg(&source)
            .arg("-o")
            .arg(out.join(format!("{program}.o")))
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run `{clang}` to build the BPF datapath ({e}); run scripts/setup, or set BPF_CLANG")
            });
        assert!(status.success(), "`{clang}` failed to build {}", source.display());
    }
}
