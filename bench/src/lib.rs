//! What the benchmark binaries share: the server under test and how it is
//! started and stopped ([`server`]), the load clients ([`client`]),
//! histograms and medians ([`stats`]) and readings from /proc ([`proc`]).
//!
//! Everything here talks to 127.0.0.1 only and waits with a deadline.

pub mod client;
pub mod proc;
pub mod server;
pub mod stats;

pub use herald_tests::free_port;
