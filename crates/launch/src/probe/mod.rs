//! `huddle config`: survey hosts over ssh and write the hostfile.
//!
//! A survey runs in four steps, each over the system's ssh:
//! 1. `facts`: every host reports its name, cores, memory, accelerators
//!    and interfaces (one ssh each, all at once, so every unreachable host
//!    is named in one error);
//! 2. `wire`: a small TCP probe server (`huddle probe-serve`) starts on
//!    every host, and each host in turn runs the probe client
//!    (`huddle probe-client`) against every address of every other host,
//!    measuring round trip and bandwidth;
//! 3. `links`: point-to-point links that have no IPv4 address (both ends
//!    up, found through their IPv6 link-local addresses) get a /30 pair,
//!    applied or only printed;
//! 4. `order`: each host's addresses, best first, into a [`Hostfile`](crate::Hostfile);
//!    `dot` draws the measured graph.
//!
//! The probe never trusts an address alone: every probe server names the
//! host it runs on, and a reply from the wrong host is not a link.

mod dot;
mod error;
mod facts;
mod links;
mod order;
mod remote;
mod survey;
mod wire;

pub use dot::render_dot;
pub use error::{ProbeError, Unreached};
pub use facts::{FACTS_SCRIPT, Gpu, HostFacts, Interface, Ipv4Net};
pub use links::{AddressAssignment, P2pLink, cables_only, plan_addresses};
pub use order::{AddressStats, MeasuredLink, address_stats, build_hostfile};
pub use remote::Remote;
pub use survey::{Survey, SurveyOptions, survey};
pub use wire::{
    Measurement, ProbeTarget, ProbeTargetError, TargetResult, measure_target, probe_all,
    reach_target, serve_probe,
};
