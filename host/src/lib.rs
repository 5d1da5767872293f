//! The adtally service's parts: sources of clicks (`generator`, `ship`, `source`),
//! the ClickHouse `sink`, and a local `broker` for the demo and tests.
//!
//! This crate owns the I/O around the core: it never decides what a count
//! is (the core does, inside the component that `adtally-runtime` runs).

pub mod broker;
pub mod connect;
pub mod generator;
pub mod pipeline;
pub mod ship;
pub mod sink;
pub mod snapshot_policy;
pub mod source;
