//! headroom: move data under a memory ceiling that holds by construction.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into
//! this library; every job lives here so that tests drive the same code.
//!
//! * [`cli`]: the command line (clap), shared flags.
//! * [`memory`]: turns the shared `--memory` flag into a running governor
//!   with its circuit breaker, and reports the plan (`headroom memory`).
//! * [`store`]: local directories and S3 prefixes behind one interface.
//! * [`transfer`]: streaming copy of one object, with named footprints.
//! * [`jobs`]: the jobs themselves (`copy`), each a pipeline of bounded
//!   stages whose concurrency the governor decides.
//! * [`serve`]: `headroom serve`, the task service (HTTP API, dashboard,
//!   durable tasks in SQLite or PostgreSQL).
//! * [`telemetry`]: logs, progress records, leak detector, summaries.

pub mod cli;
pub mod jobs;
pub mod memory;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod transfer;
