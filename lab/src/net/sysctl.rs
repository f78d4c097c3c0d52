//! Network sysctls of the calling thread's namespace (`/proc/sys/net` follows the thread that
//! opens it). Call inside [`super::netns::run_in`].

use std::io;

/// Writes `net.ipv4.ip_forward`-style `key` to `value`.
pub fn write(key: &str, value: &str) -> io::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|e| io::Error::new(e.kind(), format!("setting {key}={value}: {e}")))
}

/// Turns IPv6 off for the namespace and for every interface created in it later, so captures are
/// free of router solicitations, MLD reports and duplicate address detection.
pub fn disable_ipv6() -> io::Result<()> {
    write("net.ipv6.conf.default.disable_ipv6", "1")?;
    write("net.ipv6.conf.all.disable_ipv6", "1")
}

/// Lets every user open ICMP datagram sockets, so `ping` and the lab's probes need no raw socket.
pub fn allow_ping_sockets() -> io::Result<()> {
    write("net.ipv4.ping_group_range", "0 2147483647")
}

/// Turns reverse path filtering off for the namespace and every interface created in it later,
/// as Cilium does on the devices it manages. A new namespace copies the host's settings, so
/// without this a lab would filter on one host and not on another; a topology that wants it
/// sets `rp_filter` itself (a node's `sysctls`).
pub fn no_reverse_path_filter() -> io::Result<()> {
    write("net.ipv4.conf.default.rp_filter", "0")?;
    write("net.ipv4.conf.all.rp_filter", "0")
}

/// Stops the namespace sending ICMP redirects, as a cloud network's router does not. The fabric
/// routes between subnets that share one bridge, so the kernel would tell the externals to go
/// around it, as its rate limit allows; an external that took the hint would then ARP for the
/// node itself, and what a capture holds would follow the machine's speed. Call it before the
/// namespace's interfaces are made: the kernel sends redirects where `all` or the interface's
/// own setting (copied from `default` when it is made) allows them.
pub fn no_icmp_redirects() -> io::Result<()> {
    write("net.ipv4.conf.default.send_redirects", "0")?;
    write("net.ipv4.conf.all.send_redirects", "0")
}
