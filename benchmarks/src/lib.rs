//! `imbench`'s library half: a protocol client built only on `common` (the multi-process tests use it too, so both
//! speak the wire protocol exactly as a third-party client would), and the load generator's parts: scenario files,
//! the connection fleet, the runner of each scenario, CPU/memory readings, the echo ceiling and the report.

pub mod client;
pub mod cpu;
pub mod echo;
pub mod hold;
pub mod load;
pub mod plot;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod sys;
pub mod writer_stats;
