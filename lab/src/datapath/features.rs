//! What the datapath needs from the kernel, and whether the running kernel has it.
//!
//! `lab up` probes before it creates anything, so a kernel that lacks something stops the lab
//! with the missing feature and the first Linux release that has it, instead of a verifier log
//! or an `EINVAL` halfway through a build. BPF features are probed with aya's probes (a map of
//! the type created, a program calling the helper loaded). The network's (veth, bridge, VXLAN,
//! clsact, cls_bpf, TCX) are probed by making them, in the network namespace of a thread that
//! exists only for the probe: nothing of the host's network is touched, and the namespace and
//! everything in it go when the thread ends, whatever happens (even `kill -9`).
//!
//! An explicit `cluster.attach: tcx` is never turned into netlink attach on a kernel without
//! TCX: a topology that asks for TCX is testing TCX, so the lab refuses and names the way out.
//! The default, netlink attach, works on every kernel from [`MINIMUM_KERNEL`].

use std::fmt;

use anyhow::{Result, bail};
use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::programs::tc::{self, NlOptions, SchedClassifier, TcAttachOptions, TcAttachType};
use aya::sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported};

use crate::plan::Plan;
use crate::topology::{AttachMode, RoutingMode};

static PROBE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lab_probe.o"));

/// When a lab needs a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Always,
    /// `cluster.routingMode: tunnel`.
    Tunnel,
    /// `cluster.attach: tcx`.
    Tcx,
}

impl Need {
    fn applies_to(self, plan: &Plan) -> bool {
        match self {
            Need::Always => true,
            Need::Tunnel => plan.routing_mode == RoutingMode::Tunnel,
            Need::Tcx => plan.attach == AttachMode::Tcx,
        }
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Need::Always => "every lab",
            Need::Tunnel => "routingMode: tunnel",
            Need::Tcx => "attach: tcx",
        })
    }
}

/// How a feature is probed.
#[derive(Debug, Clone, Copy)]
pub enum Probe {
    /// Programs of type `sched_cls`, which every datapath program is.
    Classifier,
    Map(MapType),
    /// A helper, called from a `sched_cls` program.
    Helper(BpfHelper),
    /// Read-only globals (`.rodata`): each pod's copy of the program is loaded with its constants.
    GlobalData,
    Veth,
    Bridge,
    /// A VXLAN device in metadata (`external`) mode, whose packets' VNI the programs set.
    Vxlan,
    Clsact,
    /// A `bpf` filter in direct-action mode on a clsact hook.
    ClsBpf,
    Tcx,
}

/// One thing the datapath needs from the kernel.
#[derive(Debug)]
pub struct Feature {
    pub name: &'static str,
    /// The first Linux release that has it, as (major, minor).
    pub since: (u32, u32),
    /// The kernel configuration it takes.
    pub config: &'static str,
    pub need: Need,
    pub probe: Probe,
}

const fn feature(name: &'static str, since: (u32, u32), config: &'static str, need: Need, probe: Probe) -> Feature {
    Feature { name, since, config, need, probe }
}

/// Everything the datapath uses. A unit test holds the maps and helpers against the compiled
/// objects, so a program that starts using a new one cannot forget to add it here.
pub const FEATURES: &[Feature] = &[
    feature("sched_cls programs", (4, 1), "CONFIG_BPF_SYSCALL", Need::Always, Probe::Classifier),
    feature("global data (.rodata)", (5, 2), "CONFIG_BPF_SYSCALL", Need::Always, Probe::GlobalData),
    feature("hash maps", (3, 19), "CONFIG_BPF_SYSCALL", Need::Always, Probe::Map(MapType::Hash)),
    feature("array maps", (3, 19), "CONFIG_BPF_SYSCALL", Need::Always, Probe::Map(MapType::Array)),
    feature("per-CPU array maps", (4, 6), "CONFIG_BPF_SYSCALL", Need::Always, Probe::Map(MapType::PerCpuArray)),
    feature("LRU hash maps", (4, 10), "CONFIG_BPF_SYSCALL", Need::Always, Probe::Map(MapType::LruHash)),
    feature("LPM trie maps", (4, 11), "CONFIG_BPF_SYSCALL", Need::Always, Probe::Map(MapType::LpmTrie)),
    feature("ring buffer maps", (5, 8), "CONFIG_BPF_SYSCALL", Need::Always, Probe::Map(MapType::RingBuf)),
    feature(
        "bpf_map_lookup_elem",
        (3, 19),
        "CONFIG_BPF_SYSCALL",
        Need::Always,
        Probe::Helper(BpfHelper::BPF_FUNC_map_lookup_elem),
    ),
    feature(
        "bpf_map_update_elem",
        (3, 19),
        "CONFIG_BPF_SYSCALL",
        Need::Always,
        Probe::Helper(BpfHelper::BPF_FUNC_map_update_elem),
    ),
    feature(
        "bpf_ktime_get_ns",
        (4, 1),
        "CONFIG_BPF_SYSCALL",
        Need::Always,
        Probe::Helper(BpfHelper::BPF_FUNC_ktime_get_ns),
    ),
    feature(
        "bpf_skb_load_bytes",
        (4, 5),
        "CONFIG_BPF_SYSCALL",
        Need::Always,
        Probe::Helper(BpfHelper::BPF_FUNC_skb_load_bytes),
    ),
    feature(
        "bpf_skb_get_tunnel_key",
        (4, 3),
        "CONFIG_BPF_SYSCALL",
        Need::Always,
        Probe::Helper(BpfHelper::BPF_FUNC_skb_get_tunnel_key),
    ),
    feature(
        "bpf_skb_set_tunnel_key",
        (4, 3),
        "CONFIG_BPF_SYSCALL",
        Need::Always,
        Probe::Helper(BpfHelper::BPF_FUNC_skb_set_tunnel_key),
    ),
    feature(
        "bpf_ringbuf_reserve",
        (5, 8),
        "CONFIG_BPF_SYSCALL",
        Need::Always,
        Probe::Helper(BpfHelper::BPF_FUNC_ringbuf_reserve),
    ),
    feature(
        "bpf_ringbuf_submit",
        (5, 8),
        "CONFIG_BPF_SYSCALL",
        Need::Always,
        Probe::Helper(BpfHelper::BPF_FUNC_ringbuf_submit),
    ),
    feature(
        "bpf_get_prandom_u32",
        (4, 1),
        "CONFIG_BPF_SYSCALL",
        Need::Always,
        Probe::Helper(BpfHelper::BPF_FUNC_get_prandom_u32),
    ),
    feature(
        "bpf_skb_store_bytes",
        (4, 1),
        "CONFIG_BPF_SYSCALL",
        Need::Always,
        Probe::Helper(BpfHelper::BPF_FUNC_skb_store_bytes),
    ),
    feature(
        "bpf_l3_csum_replace",
        (4, 1),
        "CONFIG_BPF_SYSCALL",
        Need::Always,
        Probe::Helper(BpfHelper::BPF_FUNC_l3_csum_replace),
    ),
    feature(
        "bpf_l4_csum_replace",
        (4, 1),
        "CONFIG_BPF_SYSCALL",
        Need::Always,
        Probe::Helper(BpfHelper::BPF_FUNC_l4_csum_replace),
    ),
    feature("bpf_redirect", (4, 4), "CONFIG_BPF_SYSCALL", Need::Always, Probe::Helper(BpfHelper::BPF_FUNC_redirect)),
    feature(
        "bpf_fib_lookup",
        (4, 18),
        "CONFIG_BPF_SYSCALL",
        Need::Always,
        Probe::Helper(BpfHelper::BPF_FUNC_fib_lookup),
    ),
    feature("veth", (2, 6), "CONFIG_VETH", Need::Always, Probe::Veth),
    feature("bridge", (2, 6), "CONFIG_BRIDGE", Need::Always, Probe::Bridge),
    feature("clsact qdisc", (4, 5), "CONFIG_NET_SCH_INGRESS", Need::Always, Probe::Clsact),
    feature("cls_bpf direct-action filters", (4, 4), "CONFIG_NET_CLS_BPF", Need::Always, Probe::ClsBpf),
    feature("VXLAN in metadata mode", (4, 3), "CONFIG_VXLAN", Need::Tunnel, Probe::Vxlan),
    feature("TCX links", (6, 6), "CONFIG_NET_XGRESS", Need::Tcx, Probe::Tcx),
];

/// The oldest kernel every lab runs on with the default netlink attach: the newest `since` of
/// what every lab needs. `attach: tcx` needs [`TCX_KERNEL`].
pub const MINIMUM_KERNEL: (u32, u32) = newest_needed_by_all();
pub const TCX_KERNEL: (u32, u32) = (6, 6);

const fn newest_needed_by_all() -> (u32, u32) {
    let mut newest = (0, 0);
    let mut i = 0;
    while i < FEATURES.len() {
        let f = &FEATURES[i];
        let newer = f.since.0 > newest.0 || (f.since.0 == newest.0 && f.since.1 > newest.1);
        if matches!(f.need, Need::Always) && newer {
            newest = f.since;
        }
        i += 1;
    }
    newest
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Present,
    /// The kernel said it has no such thing; why, in its words.
    Missing(String),
    /// The probe itself failed (not root, an unexpected error): the lab goes on and the load or
    /// attach will say what is wrong.
    Unknown(String),
}

/// The running kernel's release and what each probed feature's probe found, in [`FEATURES`] order.
#[derive(Debug)]
pub struct Report {
    pub kernel: String,
    pub results: Vec<(&'static Feature, Status)>,
}

/// Probes every feature.
pub fn probe_all() -> Report {
    probe(|_| true)
}

/// Probes what `plan` needs and fails, naming each missing feature, the kernel release that
/// brought it and the configuration it takes, if this kernel lacks any.
pub fn check(plan: &Plan) -> Result<()> {
    let report = probe(|f| f.need.applies_to(plan));
    match report.refusal() {
        Some(message) => bail!(message),
        None => Ok(()),
    }
}

fn probe(wanted: impl Fn(&Feature) -> bool) -> Report {
    let wanted: Vec<&'static Feature> = FEATURES.iter().filter(|f| wanted(f)).collect();
    let network: Vec<Probe> = wanted.iter().map(|f| f.probe).filter(|p| is_network(*p)).collect();
    let mut network_results = probe_network(&network).into_iter();
    let results = wanted
        .into_iter()
        .map(|f| {
            let status = if is_network(f.probe) {
                network_results.next().expect("one result per network probe")
            } else {
                probe_bpf(f.probe)
            };
            (f, status)
        })
        .collect();
    Report { kernel: kernel_release(), results }
}

impl Report {
    pub fn missing(&self) -> impl Iterator<Item = &(&'static Feature, Status)> {
        self.results.iter().filter(|(_, s)| matches!(s, Status::Missing(_)))
    }

    /// Why a lab cannot run here, if it cannot: one line per missing feature.
    pub fn refusal(&self) -> Option<String> {
        let missing: Vec<String> = self
            .missing()
            .map(|(f, status)| {
                let Status::Missing(why) = status else { unreachable!("filtered") };
                let (major, minor) = f.since;
                let mut line =
                    format!("  {} (Linux {major}.{minor} or later, {}), needed by {}: {why}", f.name, f.config, f.need);
                if f.need == Need::Tcx {
                    let (major, minor) = MINIMUM_KERNEL;
                    line.push_str(&format!(
                        "\n    (`attach: netlink`, the default, needs no TCX and works from Linux {major}.{minor})"
                    ));
                }
                line
            })
            .collect();
        if missing.is_empty() {
            return None;
        }
        let (major, minor) = MINIMUM_KERNEL;
        Some(format!(
            "this kernel (Linux {}) lacks what the lab needs; the lab needs Linux {major}.{minor} or later:\n{}",
            self.kernel,
            missing.join("\n")
        ))
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_else(|_| "?".into())
}

fn is_network(probe: Probe) -> bool {
    matches!(probe, Probe::Veth | Probe::Bridge | Probe::Vxlan | Probe::Clsact | Probe::ClsBpf | Probe::Tcx)
}

fn probe_bpf(probe: Probe) -> Status {
    let found = match probe {
        Probe::Classifier => is_program_supported(ProgramType::SchedClassifier).map_err(|e| describe(&e)),
        Probe::Map(map) => is_map_supported(map).map_err(|e| describe(&e)),
        Probe::Helper(helper) => is_helper_supported(ProgramType::SchedClassifier, helper).map_err(|e| describe(&e)),
        Probe::GlobalData => Ok(aya::features().bpf_global_data()),
        _ => unreachable!("network probes run in their own namespace"),
    };
    match found {
        Ok(true) => Status::Present,
        Ok(false) => Status::Missing("the kernel refused it".into()),
        Err(e) => Status::Unknown(e),
    }
}

/// Runs the network probes, in order, in a fresh network namespace that belongs to a thread of
/// its own: it is freed with everything in it when the thread ends.
fn probe_network(probes: &[Probe]) -> Vec<Status> {
    if probes.is_empty() {
        return Vec::new();
    }
    let owned = probes.to_vec();
    let thread = std::thread::Builder::new().name("lab-features".into()).spawn(move || -> Result<Vec<Status>> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| anyhow::anyhow!("creating a scratch network namespace: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            anyhow::Ok(handle)
        })?;
        // Kept until the thread ends: the probe filter is detached when it is dropped.
        let mut probe_program = None;
        Ok(owned.iter().map(|probe| probe_in_namespace(*probe, &runtime, &handle, &mut probe_program)).collect())
    });
    let unknown = |why: String| probes.iter().map(|_| Status::Unknown(why.clone())).collect();
    match thread.map(|t| t.join()) {
        Ok(Ok(Ok(statuses))) => statuses,
        Ok(Ok(Err(e))) => unknown(format!("{e:#}")),
        Ok(Err(_)) => unknown("the probe thread panicked".into()),
        Err(e) => unknown(format!("starting the probe thread: {e}")),
    }
}

fn probe_in_namespace(
    probe: Probe,
    runtime: &tokio::runtime::Runtime,
    handle: &rtnetlink::Handle,
    probe_program: &mut Option<aya::Ebpf>,
) -> Status {
    use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkVeth, LinkVxlan};
    let add_link = |message| {
        // A kind the kernel does not know is EOPNOTSUPP ("Unknown device type").
        match runtime.block_on(handle.link().add(message).execute()) {
            Ok(()) => Status::Present,
            Err(e) => classify(netlink_errno(&e), &[libc::EOPNOTSUPP], e.to_string()),
        }
    };
    match probe {
        Probe::Veth => add_link(LinkVeth::new("probe0", "probe1").build()),
        Probe::Bridge => add_link(LinkBridge::new("probe-br").build()),
        Probe::Vxlan => add_link(
            LinkMessageBuilder::<LinkVxlan>::new("probe-vxlan")
                .collect_metadata(true)
                .learning(false)
                .port(8472)
                .build(),
        ),
        // An unknown qdisc kind is ENOENT ("Specified qdisc kind is unknown").
        Probe::Clsact => match tc::qdisc_add_clsact("lo") {
            Ok(()) => Status::Present,
            Err(e) => classify(errno_in(&e), &[libc::ENOENT, libc::EOPNOTSUPP], describe(&e)),
        },
        // An unknown filter kind is ENOENT ("TC classifier not found").
        Probe::ClsBpf => match attach_probe_program(probe_program) {
            Ok(()) => Status::Present,
            Err(e) => {
                let errno = e.chain().find_map(errno_in);
                classify(errno, &[libc::ENOENT, libc::EOPNOTSUPP], format!("{e:#}"))
            }
        },
        // Querying a TCX hook is EINVAL where there are none: no harm done where there are.
        Probe::Tcx => match SchedClassifier::query_tcx("lo", TcAttachType::Ingress) {
            Ok(_) => Status::Present,
            Err(e) => classify(errno_in(&e), &[libc::EINVAL], describe(&e)),
        },
        _ => unreachable!("BPF probes need no namespace"),
    }
}

/// Loads the do-nothing classifier and attaches it as the lab does with netlink: a clsact qdisc
/// (made by the clsact probe, or here) and a direct-action `bpf` filter.
fn attach_probe_program(slot: &mut Option<aya::Ebpf>) -> Result<()> {
    // No BTF: the probe relocates nothing, and parsing the kernel's costs 10-20 ms.
    let ebpf = slot.insert(aya::EbpfLoader::new().btf(None).load(PROBE_OBJECT)?);
    let program: &mut SchedClassifier = ebpf.program_mut("probe").expect("built from bpf/lab_probe.c").try_into()?;
    program.load()?;
    match tc::qdisc_add_clsact("lo") {
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        result => result?,
    }
    program.attach_with_options("lo", TcAttachType::Ingress, TcAttachOptions::Netlink(NlOptions::default()))?;
    Ok(())
}

/// A probe's error: the feature is missing if the kernel answered with one of `missing`.
fn classify(errno: Option<i32>, missing: &[i32], message: String) -> Status {
    match errno {
        Some(errno) if missing.contains(&errno) => Status::Missing(message),
        _ => Status::Unknown(message),
    }
}

fn netlink_errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| -code.get()),
        _ => None,
    }
}

/// `error` and its sources, as `anyhow`'s `{:#}` prints them: aya's errors name the syscall
/// and leave the errno to their source.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let more = source.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        next = source.source();
    }
    text
}

/// The OS error somewhere in `error`'s chain of sources.
fn errno_in(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        if let Some(netlink) = error.downcast_ref::<aya::sys::NetlinkError>() {
            return netlink.raw_os_error();
        }
        next = error.source();
    }
    None
}

/// `lab features`: every feature, whether this kernel has it, and who needs it.
pub fn print(report: &Report) {
    let (major, minor) = MINIMUM_KERNEL;
    println!(
        "kernel {} (lab needs {major}.{minor} or later; attach: tcx needs {}.{})",
        report.kernel, TCX_KERNEL.0, TCX_KERNEL.1
    );
    let width = report.results.iter().map(|(f, _)| f.name.len()).max().unwrap_or(0);
    for (feature, status) in &report.results {
        let (major, minor) = feature.since;
        let status = match status {
            Status::Present => "yes".to_string(),
            Status::Missing(why) => format!("MISSING: {why}"),
            Status::Unknown(why) => format!("unknown: {why}"),
        };
        println!(
            "  {:width$}  {:>5}  {:22}  {:19}  {status}",
            feature.name,
            format!("{major}.{minor}"),
            feature.config,
            feature.need.to_string()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use aya::programs::ProgramError;

    use super::*;

    fn report(missing: &[&str]) -> Report {
        Report {
            kernel: "6.1.0-test".into(),
            results: FEATURES
                .iter()
                .map(|f| {
                    let status =
                        if missing.contains(&f.name) { Status::Missing("nope".into()) } else { Status::Present };
                    (f, status)
                })
                .collect(),
        }
    }

    #[test]
    fn the_minimum_kernel_is_the_ring_buffers() {
        assert_eq!(MINIMUM_KERNEL, (5, 8));
    }

    #[test]
    fn a_kernel_with_everything_is_not_refused() {
        assert_eq!(report(&[]).refusal(), None);
    }

    #[test]
    fn a_missing_feature_is_named_with_its_kernel_and_config() {
        let message = report(&["ring buffer maps"]).refusal().expect("refused");
        assert_eq!(
            message,
            "this kernel (Linux 6.1.0-test) lacks what the lab needs; the lab needs Linux 5.8 or later:\n  \
             ring buffer maps (Linux 5.8 or later, CONFIG_BPF_SYSCALL), needed by every lab: nope"
        );
    }

    #[test]
    fn missing_tcx_points_to_netlink_attach() {
        let message = report(&["TCX links"]).refusal().expect("refused");
        assert!(
            message.contains("TCX links (Linux 6.6 or later, CONFIG_NET_XGRESS), needed by attach: tcx"),
            "{message}"
        );
        assert!(message.contains("`attach: netlink`, the default, needs no TCX and works from Linux 5.8"), "{message}");
    }

    #[test]
    fn unknown_is_not_a_refusal() {
        let mut report = report(&[]);
        report.results[0].1 = Status::Unknown("EPERM".into());
        assert_eq!(report.refusal(), None);
    }

    #[test]
    fn errors_are_classified_by_errno() {
        assert_eq!(classify(Some(libc::EINVAL), &[libc::EINVAL], "x".into()), Status::Missing("x".into()));
        assert_eq!(classify(Some(libc::EPERM), &[libc::EINVAL], "x".into()), Status::Unknown("x".into()));
        assert_eq!(classify(None, &[libc::EINVAL], "x".into()), Status::Unknown("x".into()));
        let wrapped = ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_prog_query",
            io_error: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
        assert_eq!(errno_in(&wrapped), Some(libc::EINVAL));
    }

    /// Every map type and helper the compiled programs use is probed: a program that starts
    /// using a new helper fails this test until the helper is in [`FEATURES`].
    #[test]
    fn every_map_and_helper_of_the_programs_is_probed() {
        let probed_maps: BTreeSet<u32> = FEATURES
            .iter()
            .filter_map(|f| match f.probe {
                Probe::Map(map) => Some(map as u32),
                _ => None,
            })
            .collect();
        let probed_helpers: BTreeSet<u32> = FEATURES
            .iter()
            .filter_map(|f| match f.probe {
                Probe::Helper(helper) => Some(helper as u32),
                _ => None,
            })
            .collect();
        let (mut maps, mut helpers) = (BTreeSet::new(), BTreeSet::new());
        for object in [super::super::loader::LXC_OBJECT, super::super::loader::HOST_OBJECT] {
            let object = aya_obj::Object::parse(object).expect("a BPF object");
            maps.extend(object.maps.values().map(|m| m.map_type()));
            for function in object.functions.values() {
                // BPF_JMP | BPF_CALL with src_reg 0 calls a helper; 1 is a call within the program.
                helpers.extend(
                    function.instructions.iter().filter(|i| i.code == 0x85 && i.src_reg() == 0).map(|i| i.imm as u32),
                );
            }
        }
        let unprobed_maps: Vec<u32> = maps.difference(&probed_maps).copied().collect();
        let unprobed_helpers: Vec<u32> = helpers.difference(&probed_helpers).copied().collect();
        assert_eq!((unprobed_maps, unprobed_helpers), (vec![], vec![]), "map types and helper ids not in FEATURES");
        assert!(helpers.contains(&(BpfHelper::BPF_FUNC_ringbuf_reserve as u32)), "the instructions were read");
    }
}
