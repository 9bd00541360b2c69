use std::process::ExitCode;

use clap::Parser;
use headroom::cli::{Cli, Command};

#[cfg(feature = "heap-stats")]
#[global_allocator]
static ALLOC: headroom_governor::CountingAlloc = headroom_governor::CountingAlloc::system();

/// Blocking threads (file I/O) at most: each costs a stack, so their number
/// is bounded like everything else.
const MAX_BLOCKING_THREADS: usize = 64;

/// 1 when anything failed or a signal stopped the job before its end.
fn exit_code(summary: &headroom::telemetry::Summary) -> anyhow::Result<ExitCode> {
    if summary.interrupted {
        anyhow::bail!(
            "interrupted by a signal before the {} was done: partial files were removed and incomplete uploads aborted",
            summary.job.name()
        );
    }
    Ok(if summary.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    headroom::memory::tune_allocator();
    let mut cli = Cli::parse();
    if let Err(e) = cli.global.memory_from_env() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    headroom::telemetry::init_logging(cli.global.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Memory(_) => {
                headroom::memory::report(
                    cli.global.memory,
                    cli.global.log_format,
                    &mut std::io::stdout().lock(),
                )?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Purge(args) => {
                let summary = headroom::jobs::purge::run(args, &cli.global).await?;
                summary.print(cli.global.log_format, &mut std::io::stdout().lock())?;
                exit_code(&summary)
            }
            Command::Serve(args) => {
                headroom::serve::run(args, &cli.global).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Ingest(args) => {
                let summary = headroom::jobs::ingest::run(args, &cli.global).await?;
                summary.print(cli.global.log_format, &mut std::io::stdout().lock())?;
                match &summary.error {
                    Some(e) => Err(anyhow::anyhow!("{e}")),
                    None => Ok(ExitCode::SUCCESS),
                }
            }
            Command::Copy(args) => {
                let summary = headroom::jobs::copy::run(args, &cli.global).await?;
                summary.print(cli.global.log_format, &mut std::io::stdout().lock())?;
                exit_code(&summary)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            let e: anyhow::Error = e;
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
