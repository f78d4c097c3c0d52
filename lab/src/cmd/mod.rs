//! One module per `lab` subcommand.

pub mod apply;
pub mod bench;
pub mod down;
pub mod exec;
pub mod features;
pub mod ls;
pub mod metrics;
pub mod observe;
pub mod policy;
pub mod probe;
pub mod services;
pub mod test;
pub mod up;
pub mod validate;

use anyhow::{Result, bail};

/// Everything a lab does needs CAP_NET_ADMIN and CAP_SYS_ADMIN (namespaces, mounts, netlink).
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("this command needs root (it creates network namespaces and mounts); run it with sudo");
    }
    Ok(())
}

/// Lets the process hold one socket or namespace handle per pod: raises the soft limit on open
/// files to the hard limit.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
