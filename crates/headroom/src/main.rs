use std::process::ExitCode;

use clap::Parser;
use headroom::cli::{Cli, Command};

#[cfg(feature = "heap-stats")]
#[global_allocator]
static ALLOC: headroom_governor::CountingAlloc = headroom_governor::CountingAlloc::system();

fn main() -> ExitCode {
    let cli = Cli::parse();
    headroom::telemetry::init_logging(cli.global.log_format);
    let result = match cli.command {
        Command::Memory(_) => headroom::memory::report(
            cli.global.memory,
            cli.global.log_format,
            &mut std::io::stdout().lock(),
        )
        .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
