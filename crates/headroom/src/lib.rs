//! headroom: move data under a memory ceiling that holds by construction.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into
//! this library; every job lives here so that tests drive the same code.
//!
//! * [`cli`]: the command line (clap); the only module that knows flags.
//!   It turns them into the options types below and nothing imports it.
//! * [`jobs`]: the jobs (`copy`, `purge`, `ingest`), each a pipeline of
//!   bounded stages whose concurrency the governor decides, each taking its
//!   own options type and owning its counters and summary (`report.rs`).
//! * [`serve`]: `headroom serve`, the task service (HTTP API, dashboard,
//!   durable tasks in SQLite or PostgreSQL); a task spec becomes the same
//!   options a command line does.
//! * [`store`]: local directories and S3 prefixes behind one interface;
//!   the only module that knows which backend a store is.
//! * [`transfer`]: streaming copy of one object, with named footprints.
//! * [`memory`]: turns a budget (or none) into a running governor with its
//!   circuit breaker, and reports the plan (`headroom memory`).
//! * [`telemetry`]: logging, the progress reporter and leak detector, the
//!   memory picture and the failures every summary shows.
//! * [`proxy`]: `headroom proxy`, the encrypting S3 proxy.
//! * [`cancel`]: the cancel flag and the signals that set it.

pub mod cancel;
pub mod cli;
pub mod jobs;
pub mod memory;
pub mod proxy;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod transfer;
