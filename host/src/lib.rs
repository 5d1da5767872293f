//! The adtally service's parts: sources of clicks (`generator`, `ship`, `source`),
//! the Kafka `producer` they share,
//! the ClickHouse `sink`, the `pipeline` that joins them, and the batch
//! job that checks the stream against the raw events (`reconcile`), the
//! recalculation of a range (`replay`), and the read side: the design's two
//! questions (`query`) answered over HTTP (`serve`).
//!
//! This crate owns the I/O around the core: it never decides what a count
//! is (the core does, inside the component that `adtally-runtime` runs).
//! The local broker and the embedded ClickHouse that the demo, the tests
//! and the benchmarks run on are crates of their own (`adtally-broker`,
//! `adtally-clickhouse-embedded`), never part of the service.

pub mod connect;
pub mod generator;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod producer;
pub mod query;
pub mod reconcile;
pub mod replay;
pub mod serve;
pub mod ship;
pub mod sink;
pub mod snapshot_policy;
pub mod source;
