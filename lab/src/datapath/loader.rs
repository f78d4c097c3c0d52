//! Loading the datapath into a lab: per node, the host object on the uplink (and the tunnel
//! device) and the node's maps; per pod, a copy of the pod object with the pod's constants and its
//! own policy map, on both directions of its veth. Programs are attached with netlink (clsact
//! and cls_bpf direct-action: the filters, and so the programs, stay after `lab up` exits and go
//! with the interfaces) or as pinned TCX links; the maps stay pinned under the lab's bpffs folder.

use std::fs::File;
use std::path::PathBuf;

use anyhow::{Context, Result};
use aya::programs::LinkOrder;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{
    self, NlOptions, SchedClassifier, SchedClassifierLink, TcAttachOptions, TcAttachType, TcHandle,
};
use aya::{Ebpf, EbpfLoader};

use super::maps::ipv4;
use super::pins;
use crate::net::netns;
use crate::plan::{Plan, UPLINK_NAME, VXLAN_NAME};
use crate::topology::{AttachMode, RoutingMode};

pub(crate) static LXC_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lab_lxc.o"));
pub(crate) static HOST_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lab_host.o"));

/// Maps shared by every node of a lab, pinned in the lab's folder rather than the node's.
const LAB_WIDE_MAPS: [&str; 2] = ["lab_events", "lab_metrics"];
const POLICY_MAP: &str = "lab_policy";
pub(crate) const HOST_POLICY_MAP: &str = "lab_host_policy";

/// Where a netlink-attached program sits among the interface's filters: Cilium's `pref 1 handle
/// 0x1`, fixed so a restarted datapath can name the filter whose program it replaces.
const FILTER_PRIORITY: u16 = 1;
const FILTER_HANDLE: TcHandle = TcHandle::new(0, 1);

/// Whether programs go onto bare interfaces or take the place of the ones attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Install {
    Attach,
    /// In one step per hook (a netlink filter changed in place, a TCX link updated): no packet
    /// ever passes without a program, as when cilium-agent regenerates its endpoints.
    Replace,
}

/// The magic number of a bpf filesystem (`BPF_FS_MAGIC`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPFFS: &str = "/sys/fs/bpf";

/// Makes sure `/sys/fs/bpf` is a bpf filesystem (systemd mounts it; minimal CI machines may not)
/// and creates the lab's folders in it.
pub fn prepare_pins(plan: &Plan) -> Result<()> {
    let statfs = nix::sys::statfs::statfs(BPFFS).with_context(|| format!("{BPFFS} does not exist"))?;
    if statfs.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        nix::mount::mount(Some("bpf"), BPFFS, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .with_context(|| format!("mounting the bpf filesystem on {BPFFS}"))?;
    }
    for node in &plan.nodes {
        let dir = pins::node_dir(&plan.lab, &node.name).join("links");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// The constants one pod's copy of the datapath is loaded with. They must outlive the loader,
/// which borrows them.
struct PodConstants {
    ip: u32,
    endpoint_id: u16,
    node_id: u16,
    policy_pin: PathBuf,
}

/// Loads and attaches the datapath to every node and pod of `plan`. The maps must be filled
/// (see [`super::maps`]) before traffic is expected to pass as the policy says.
pub fn attach(plan: &Plan) -> Result<()> {
    install(plan, Install::Attach)
}

/// Loads every program of a running lab again, on its pinned maps, and puts each in the place of
/// the one attached, as a restarted cilium-agent does: conntrack, identities and policies carry
/// over, and so do established connections.
pub fn replace(plan: &Plan) -> Result<()> {
    install(plan, Install::Replace)
}

fn install(plan: &Plan, how: Install) -> Result<()> {
    let constants = pod_constants(plan);
    let mut loader = lab_loader(plan);
    let nodes = open_nodes(plan)?;
    // Every node first: the loader keeps the globals it was given, and the pods' are not in the
    // node object.
    let native_routing = [plan.native_routing_cidr.network(), plan.native_routing_cidr.netmask()].map(ipv4);
    let node_ips: Vec<u32> = plan.nodes.iter().map(|n| ipv4(n.ip.addr())).collect();
    let masquerade = u8::from(plan.masquerade);
    for ((node, planned), node_ip) in nodes.iter().zip(&plan.nodes).zip(&node_ips) {
        loader.default_map_pin_directory(pins::node_dir(&plan.lab, node.name));
        // Not `must_exist`: the loader keeps them for the pods' object, which has none of them.
        loader
            .override_global("NODE_ID", &planned.id, true)
            .override_global("NODE_IP", node_ip, false)
            .override_global("MASQUERADE", &masquerade, false)
            .override_global("NATIVE_ROUTING_NET", &native_routing[0], false)
            .override_global("NATIVE_ROUTING_MASK", &native_routing[1], false);
        let mut host =
            loader.load(HOST_OBJECT).with_context(|| format!("loading the datapath of node {}", node.name))?;
        // Every uplink is a native device, as Cilium attaches to each.
        let uplinks = std::iter::once(UPLINK_NAME).chain(planned.uplinks.iter().map(|u| u.name.as_str()));
        for uplink in uplinks {
            node.attach(&mut host, "from_netdev", uplink, TcAttachType::Ingress, how)?;
            node.attach(&mut host, "to_netdev", uplink, TcAttachType::Egress, how)?;
        }
        if plan.routing_mode == RoutingMode::Tunnel {
            node.attach(&mut host, "from_overlay", VXLAN_NAME, TcAttachType::Ingress, how)?;
            node.attach(&mut host, "to_overlay", VXLAN_NAME, TcAttachType::Egress, how)?;
        }
    }
    // An unmanaged pod started before the datapath: its veth stays bare.
    let managed: Vec<usize> = (0..plan.pods.len()).filter(|&i| plan.pods[i].managed).collect();
    attach_pods_with(&mut loader, &constants, &nodes, plan, &managed, how)
}

/// Loads a fresh copy of the pod datapath for each of `pods` (indices into `plan.pods`) and
/// attaches it to the pod's veth, on the maps already pinned: the pods' connections, identities
/// and policies carry over. The pods must have no program attached (see [`detach_pods`]).
pub fn attach_pods(plan: &Plan, pods: &[usize]) -> Result<()> {
    let constants = pod_constants(plan);
    attach_pods_with(&mut lab_loader(plan), &constants, &open_nodes(plan)?, plan, pods, Install::Attach)
}

/// Takes the programs off `pods`' veths: their packets then cross bare veths, as before the
/// datapath was attached. The pinned maps stay.
pub fn detach_pods(plan: &Plan, pods: &[usize]) -> Result<()> {
    let nodes = open_nodes(plan)?;
    for &index in pods {
        let pod = &plan.pods[index];
        nodes[pod.node].detach(
            &pod.host_ifname,
            &[("from_container", TcAttachType::Ingress), ("to_container", TcAttachType::Egress)],
        )?;
    }
    Ok(())
}

/// One loader for the whole lab: creating one parses the kernel's BTF (10-20 ms).
fn lab_loader<'a>(plan: &Plan) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(POLICY_MAP, plan.policy_map_size);
    loader.map_max_entries(HOST_POLICY_MAP, plan.policy_map_size);
    for map in LAB_WIDE_MAPS {
        loader.map_pin_path(map, pins::lab_dir(&plan.lab).join(map));
    }
    loader
}

fn open_nodes(plan: &Plan) -> Result<Vec<Node<'_>>> {
    plan.nodes
        .iter()
        .map(|n| Ok(Node { lab: &plan.lab, name: &n.name, netns: netns::open(&n.netns)?, mode: plan.attach }))
        .collect()
}

/// The constants of every pod, in plan order.
fn pod_constants(plan: &Plan) -> Vec<PodConstants> {
    plan.pods
        .iter()
        .map(|pod| PodConstants {
            ip: u32::from_ne_bytes(pod.ip.octets()),
            endpoint_id: pod.endpoint_id,
            node_id: plan.nodes[pod.node].id,
            policy_pin: pins::policy(&plan.lab, &plan.nodes[pod.node].name, pod.endpoint_id),
        })
        .collect()
}

fn attach_pods_with<'a>(
    loader: &mut EbpfLoader<'a>,
    constants: &'a [PodConstants],
    nodes: &[Node<'_>],
    plan: &Plan,
    pods: &[usize],
    how: Install,
) -> Result<()> {
    for &index in pods {
        let (pod, constants) = (&plan.pods[index], &constants[index]);
        let node = &nodes[pod.node];
        loader
            .default_map_pin_directory(pins::node_dir(&plan.lab, node.name))
            .override_global("ENDPOINT_IP", &constants.ip, true)
            .override_global("ENDPOINT_ID", &constants.endpoint_id, true)
            .override_global("NODE_ID", &constants.node_id, true)
            .map_pin_path(POLICY_MAP, constants.policy_pin.as_path());
        let mut lxc = loader.load(LXC_OBJECT).with_context(|| format!("loading the datapath of pod {}", pod.id()))?;
        node.attach(&mut lxc, "from_container", &pod.host_ifname, TcAttachType::Ingress, how)?;
        node.attach(&mut lxc, "to_container", &pod.host_ifname, TcAttachType::Egress, how)?;
    }
    Ok(())
}

/// Where programs go on one node, and how they are attached.
struct Node<'a> {
    lab: &'a str,
    name: &'a str,
    netns: File,
    mode: AttachMode,
}

impl Node<'_> {
    /// Detaches the named programs from `interface`: the netlink filters that run them, or their
    /// pinned TCX links.
    fn detach(&self, interface: &str, programs: &[(&str, TcAttachType)]) -> Result<()> {
        for &(program, direction) in programs {
            match self.mode {
                AttachMode::Netlink => netns::run_in(&self.netns, || {
                    tc::qdisc_detach_program(interface, direction, program)
                        .with_context(|| format!("detaching {program} from {interface}"))
                })??,
                AttachMode::Tcx => {
                    let path = pins::link(self.lab, self.name, interface, side(direction));
                    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                }
            }
        }
        Ok(())
    }

    /// Attaches `program` of `ebpf` to `interface` (or, with [`Install::Replace`], puts it in the
    /// place of the program attached there) and leaves it there after this process exits: a
    /// netlink filter holds its program until the interface goes; a TCX link is pinned.
    fn attach(
        &self,
        ebpf: &mut Ebpf,
        program: &str,
        interface: &str,
        direction: TcAttachType,
        how: Install,
    ) -> Result<()> {
        let classifier: &mut SchedClassifier = ebpf
            .program_mut(program)
            .with_context(|| format!("no program {program} in the datapath object"))?
            .try_into()?;
        if classifier.fd().is_err() {
            classifier.load().map_err(|e| anyhow::anyhow!("the kernel refused {program}: {e:#}"))?;
        }
        let pin = pins::link(self.lab, self.name, interface, side(direction));
        if how == Install::Replace && self.mode == AttachMode::Tcx {
            let link = FdLink::from(PinnedLink::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?);
            let id = classifier
                .attach_to_link(SchedClassifierLink::try_from(link)?)
                .with_context(|| format!("replacing {program} on {interface}"))?;
            // The pinned link now runs the new program; this descriptor of it may close.
            drop(classifier.take_link(id)?);
            return Ok(());
        }
        let options = match self.mode {
            AttachMode::Netlink => TcAttachOptions::Netlink(NlOptions {
                priority: FILTER_PRIORITY,
                handle: FILTER_HANDLE,
                ..NlOptions::default()
            }),
            AttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
        };
        // aya resolves the interface and talks netlink in the calling thread's namespace.
        let link = netns::run_in(&self.netns, || -> Result<_> {
            if how == Install::Replace {
                let attached =
                    SchedClassifierLink::attached(interface, direction, FILTER_PRIORITY, FILTER_HANDLE, None)
                        .with_context(|| format!("finding {program} on {interface}"))?;
                let id = classifier
                    .attach_to_link(attached)
                    .with_context(|| format!("replacing {program} on {interface}"))?;
                return Ok(classifier.take_link(id)?);
            }
            if self.mode == AttachMode::Netlink && direction == TcAttachType::Ingress {
                // A pod whose programs were detached keeps its (empty) clsact qdisc.
                match tc::qdisc_add_clsact(interface) {
                    Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(nix::libc::EEXIST) => {}
                    result => result.with_context(|| format!("adding the clsact qdisc to {interface}"))?,
                }
            }
            let id = classifier
                .attach_with_options(interface, direction, options)
                .with_context(|| format!("attaching {program} to {interface} ({:?})", self.mode))?;
            Ok(classifier.take_link(id)?)
        })??;
        match self.mode {
            // Dropping the link would detach the filter; it stays as long as the interface.
            AttachMode::Netlink => std::mem::forget(link),
            AttachMode::Tcx => {
                FdLink::try_from(link)?.pin(&pin).with_context(|| format!("pinning {}", pin.display()))?;
            }
        }
        Ok(())
    }
}

/// How a TCX link's pin names its direction.
fn side(direction: TcAttachType) -> &'static str {
    if direction == TcAttachType::Ingress { "ingress" } else { "egress" }
}
