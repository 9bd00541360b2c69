//! headroom: move data under a memory ceiling that holds by construction.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into
//! this library; every job lives here so that tests drive the same code.
//!
//! * [`cli`]: the command line (clap), shared flags.
//! * [`memory`]: turns the shared `--memory` flag into a running governor
//!   with its circuit breaker, and reports the plan (`headroom memory`).
//! * [`telemetry`]: logging set-up (text or JSON).

pub mod cli;
pub mod memory;
pub mod telemetry;
