//! `lab`: a single-node Kubernetes network lab with a real eBPF datapath.
//!
//! A topology file ([`topology`]) becomes a [`plan::Plan`], which [`realise`] turns into network
//! namespaces, veths and routes on this host; [`agent`] serves the pods' ports; [`state`] records
//! each lab so `lab down` can remove exactly what it made; [`probe`] sends real traffic.

pub mod agent;
pub mod bench;
pub mod cmd;
pub mod conformance;
pub mod datapath;
pub mod explain;
pub mod flow;
pub mod identity;
pub mod live;
pub mod load;
pub mod net;
pub mod plan;
pub mod policy;
pub mod probe;
pub mod realise;
pub mod scenario;
pub mod services;
pub mod state;
pub mod topology;
pub mod ui;
