//! Topology features the field-bug library stands on, on real traffic: extra uplinks with their
//! own routes (topologies/datapath/extra-uplink.yaml), node sysctls that change what the kernel
//! does with the lab's packets (`rp_filter`), and a fabric that sends no ICMP redirects.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use common::{Lab, capture, tcp_sources, topology};
use lab::net::netns;
use lab::plan::Plan;
use pretty_assertions::assert_eq;

/// A packet socket bound to interface `name` inside `netns`: what crosses that interface only.
fn capture_on(netns: &std::fs::File, name: &str) -> socket2::Socket {
    let socket = capture(netns);
    let index = netns::run_in(netns, || nix::net::if_::if_nametoindex(name)).unwrap().unwrap();
    // SAFETY: a zeroed sockaddr_ll is valid; bind reads exactly its size.
    let bound = unsafe {
        let mut address: libc::sockaddr_ll = std::mem::zeroed();
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        address.sll_ifindex = index as i32;
        libc::bind(
            socket.as_raw_fd(),
            (&raw const address).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(bound, 0, "binding to {name}: {}", std::io::Error::last_os_error());
    socket
}

/// extra-uplink.yaml with node-a's `sysctls` set to `sysctls`, in a folder that goes with the guard.
fn with_node_a_sysctls(sysctls: &str) -> (tempfile::TempDir, PathBuf) {
    let text = std::fs::read_to_string(topology("datapath/extra-uplink.yaml")).unwrap();
    let text = text.replace("  - name: node-a\n", &format!("  - name: node-a\n    sysctls: {sysctls}\n"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("extra-uplink.yaml");
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

/// Connects from pod `client` to the external `web`'s port 80: whether it connected.
fn client_reaches_web(plan: &Plan) -> bool {
    let client = netns::open(&plan.pods.iter().find(|p| p.name == "client").unwrap().netns).unwrap();
    let web = plan.externals.iter().find(|e| e.name == "web").unwrap().address.addr();
    let target = SocketAddrV4::new(web, 80).into();
    netns::run_in(&client, || TcpStream::connect_timeout(&target, Duration::from_secs(1))).unwrap().is_ok()
}

/// One of the kernel's counters in the namespace: `name` on the lines starting with `group` of
/// `/proc/net/<file>` (a line of names, then a line of values).
fn kernel_counter(netns: &std::fs::File, file: &str, group: &str, name: &str) -> u64 {
    // thread-self: /proc/self/net would show the namespace of the process's first thread.
    let path = format!("/proc/thread-self/net/{file}");
    let text = netns::run_in(netns, || std::fs::read_to_string(&path)).unwrap().unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(group)).collect();
    let (names, values) = (lines[0].split_whitespace(), lines[1].split_whitespace());
    names.zip(values).find(|(n, _)| *n == name).map(|(_, v)| v.parse().unwrap()).unwrap()
}

/// Packets the kernel dropped by reverse path filtering in the namespace.
fn reverse_path_drops(netns: &std::fs::File) -> u64 {
    kernel_counter(netns, "netstat", "TcpExt:", "IPReversePathFilter")
}

#[test]
fn an_extra_uplink_carries_its_routes_and_the_datapath() {
    let lab = Lab::up(&topology("datapath/extra-uplink.yaml"), "uplink");
    let plan = lab.plan();
    let node_a = plan.nodes.iter().find(|n| n.name == "node-a").unwrap();
    let web = plan.externals.iter().find(|e| e.name == "web").unwrap();
    let node_netns = netns::open(&node_a.netns).unwrap();
    let (on_eth0, on_eth1) = (capture_on(&node_netns, "eth0"), capture_on(&node_netns, "eth1"));
    // A second socket on eth0: reading the first for one receiver drains it.
    let answers_on_eth0 = capture_on(&node_netns, "eth0");
    let at_web = capture(&netns::open(&web.netns).unwrap());

    assert!(client_reaches_web(&plan));
    let address = web.address.addr();
    // Out by eth1, masqueraded there by the datapath to node-a's main address; back on eth0.
    let left_by = |socket| tcp_sources(socket, address).keys().map(|(source, _)| *source).collect::<Vec<Ipv4Addr>>();
    let sources = left_by(&at_web);
    assert!(!sources.is_empty() && sources.iter().all(|s| *s == node_a.ip.addr()), "{sources:?}");
    assert!(!left_by(&on_eth1).is_empty(), "the request left by eth1");
    let on_eth0_requests = tcp_sources(&on_eth0, address);
    assert!(on_eth0_requests.is_empty(), "no request left by eth0: {on_eth0_requests:?}");
    assert!(!tcp_sources(&answers_on_eth0, node_a.ip.addr()).is_empty(), "the answer came back on eth0");
    assert_eq!(reverse_path_drops(&node_netns), 0);
    // web's answers came in and went out on the fabric's bridge; a router that sent web an ICMP
    // redirect to node-a would change what web's captures hold from one machine to another.
    let fabric = netns::open(&plan.fabric.netns).unwrap();
    assert_eq!(kernel_counter(&fabric, "snmp", "Icmp:", "OutRedirects"), 0, "ICMP redirects the fabric sent");
}

/// The same asymmetric path with strict reverse path filtering in node-a: the answers arrive on
/// eth0 from an address routed by eth1, so the kernel drops them, and says so in its counter.
#[test]
fn strict_reverse_path_filtering_drops_the_masqueraded_answers() {
    let (_dir, file) = with_node_a_sysctls("{net.ipv4.conf.all.rp_filter: 1}");
    let lab = Lab::up(&file, "rpfilter");
    let plan = lab.plan();
    let node_netns = netns::open(&plan.nodes[0].netns).unwrap();
    assert!(!client_reaches_web(&plan));
    assert!(reverse_path_drops(&node_netns) > 0);
}
