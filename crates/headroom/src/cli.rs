//! The command line. Flags follow rclone and aws-cli habits.

use clap::{Args, Parser, Subcommand, ValueEnum};
use headroom_governor::ByteSize;

/// Move data under a memory ceiling that holds by construction.
///
/// headroom admits work by bytes, not by workers: give it a budget (or let
/// it read the container's memory limit) and it runs as fast as that budget
/// allows.
#[derive(Debug, Parser)]
#[command(name = "headroom", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand understands.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Memory budget for buffers, e.g. 512MiB, 2GiB, 300MB, 1.5G. Default:
    /// derived from the container's memory limit (cgroup), else a quarter of
    /// physical memory.
    #[arg(
        long,
        global = true,
        value_name = "SIZE",
        env = "HEADROOM_MEMORY",
        allow_hyphen_values = true
    )]
    pub memory: Option<ByteSize>,

    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How logs and reports are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the memory plan: the detected limit, the budget headroom would
    /// use, the circuit breaker's thresholds and current usage.
    Memory(MemoryArgs),
}

/// Arguments of `headroom memory`.
#[derive(Debug, Args)]
pub struct MemoryArgs {}
