//! The kernel side of a lab: network namespaces, netlink requests and sysctls, each behind a
//! small interface that knows nothing of topologies.

pub mod netlink;
pub mod netns;
pub mod sysctl;
