//! Named network namespaces under `/run/netns` (so `ip netns exec` works), and entering one from
//! the calling thread for a short synchronous detour.
//!
//! `setns` changes only the calling thread. A [`NetnsGuard`] is `!Send` and restores the thread's
//! namespace when dropped, so it cannot be held across an `.await` that might resume elsewhere.

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};
use nix::sched::{CloneFlags, setns};

pub const NETNS_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates the namespace `name`, bind-mounted at `/run/netns/<name>`, and returns a handle to it.
pub fn create(name: &str) -> io::Result<File> {
    let netns = netns_rs::NetNs::new(name).map_err(|e| io::Error::other(format!("creating netns `{name}`: {e}")))?;
    netns.file().try_clone()
}

/// Opens the existing namespace `name`.
pub fn open(name: &str) -> io::Result<File> {
    File::open(path(name)).map_err(|e| io::Error::new(e.kind(), format!("opening netns `{name}`: {e}")))
}

/// Unmounts and removes `/run/netns/<name>`; the kernel frees the namespace, and every interface
/// in it, once nothing else holds it. Removing a namespace that is not there is not an error, so
/// teardown can be repeated after a crash at any point.
pub fn remove(name: &str) -> io::Result<()> {
    let path = path(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(io::Error::other(format!("unmounting {}: {e}", path.display()))),
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Names under `/run/netns` that start with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// The calling thread is inside another network namespace until this is dropped.
pub struct NetnsGuard {
    original: File,
    _not_send: PhantomData<*const ()>,
}

impl NetnsGuard {
    pub fn enter(target: &File) -> io::Result<NetnsGuard> {
        let original = File::open("/proc/thread-self/ns/net")?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        Ok(NetnsGuard { original, _not_send: PhantomData })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A thread left in a lab's namespace would do the rest of its work in the wrong place.
            eprintln!("fatal: cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}

/// Runs `f` on the calling thread inside `netns`, then returns.
pub fn run_in<T>(netns: &File, f: impl FnOnce() -> T) -> io::Result<T> {
    let _guard = NetnsGuard::enter(netns)?;
    Ok(f())
}

/// The names of the interfaces in `netns` (read inside it: `/proc/net` follows the thread).
pub fn interfaces(netns: &File) -> io::Result<Vec<String>> {
    let text = run_in(netns, || std::fs::read_to_string("/proc/thread-self/net/dev"))??;
    // Two header lines, then `name: counters...` per interface.
    Ok(text.lines().skip(2).filter_map(|line| line.split_once(':')).map(|(name, _)| name.trim().to_string()).collect())
}
