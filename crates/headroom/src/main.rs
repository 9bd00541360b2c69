use std::process::ExitCode;

use std::io::Write;

use clap::Parser;
use headroom::cli::{Cli, Command};

#[cfg(feature = "heap-stats")]
#[global_allocator]
static ALLOC: headroom_governor::CountingAlloc = headroom_governor::CountingAlloc::system();

/// Blocking threads (file I/O) at most: each costs a stack, so their number
/// is bounded like everything else.
const MAX_BLOCKING_THREADS: usize = 64;

/// 1 when anything failed; an error when a signal stopped the job before
/// its end.
fn exit_code(job: &str, outcome: &headroom::telemetry::Outcome) -> anyhow::Result<ExitCode> {
    if outcome.interrupted {
        anyhow::bail!(
            "interrupted by a signal before the {job} was done: partial files were removed and incomplete uploads aborted"
        );
    }
    Ok(if outcome.failed > 0 {
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
    let log_format = cli.global.log_format.into();
    headroom::telemetry::init_logging(log_format);
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
        let global = &cli.global;
        // Locked only to print: a dry run's tasks print while the job runs.
        let out = || std::io::stdout().lock();
        match &cli.command {
            Command::Memory(_) => {
                headroom::memory::report(global.memory, log_format, &mut out())?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Purge(args) => {
                let summary = headroom::jobs::purge::run(
                    &args.target,
                    args.older_than,
                    &args.options(),
                    &global.foreground(args.progress_interval),
                    args.simulate_latency,
                )
                .await?;
                summary.print(log_format, &mut out())?;
                exit_code("purge", &summary.outcome)
            }
            Command::Serve(args) => {
                headroom::serve::run(&args.options(), global.memory).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Ingest(args) => {
                let summary = headroom::jobs::ingest::run(
                    &args.from,
                    &args.to,
                    &args.options(),
                    &global.foreground(args.progress_interval),
                )
                .await?;
                summary.print(log_format, &mut out())?;
                match &summary.error {
                    Some(e) => Err(anyhow::anyhow!("{e}")),
                    None => Ok(ExitCode::SUCCESS),
                }
            }
            Command::Proxy(args) => match &args.action {
                Some(headroom::cli::ProxyAction::Keygen {
                    access_key,
                    secret_key,
                }) => {
                    let file = headroom::proxy::keys::KeyFile::generate(access_key, secret_key)?;
                    out().write_all(file.to_json().as_bytes())?;
                    Ok(ExitCode::SUCCESS)
                }
                Some(headroom::cli::ProxyAction::Rewrap(r)) => {
                    let c = headroom::proxy::rewrap::run(&r.options()).await?;
                    use std::sync::atomic::Ordering::Relaxed;
                    let verb = if r.dry_run { "would rewrap" } else { "rewrapped" };
                    writeln!(
                        out(),
                        "{verb} {} objects; {} already under the current KEK, {} not written by the proxy, {} failed (of {} scanned)",
                        c.rewrapped.load(Relaxed),
                        c.current.load(Relaxed),
                        c.not_ours.load(Relaxed),
                        c.failures.count(),
                        c.scanned.load(Relaxed)
                    )?;
                    for (what, why) in c.failures.kept() {
                        writeln!(out(), "  {what}: {why}")?;
                    }
                    Ok(if c.failures.count() > 0 {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    })
                }
                None => {
                    headroom::proxy::run(&args.options(), global.memory).await?;
                    Ok(ExitCode::SUCCESS)
                }
            },
            Command::Check(args) => {
                let summary = headroom::jobs::sync::check(
                    &args.src,
                    &args.dst,
                    &args.options(),
                    &global.foreground(humantime::Duration::from(
                        headroom::jobs::DEFAULT_PROGRESS_INTERVAL,
                    )),
                )
                .await?;
                summary.print(log_format);
                Ok(if summary.matches() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            Command::Sync(args) => {
                let copy = &args.copy;
                let summary = headroom::jobs::sync::sync(
                    &copy.src,
                    &copy.dst,
                    &copy.options(),
                    args.max_delete,
                    &global.foreground(copy.progress_interval),
                )
                .await?;
                summary.copy.print(log_format, &mut out())?;
                summary.deletions.print(log_format, copy.dry_run);
                let code = exit_code("sync", &summary.copy.outcome)?;
                Ok(
                    if summary.deletions.refused.is_some() || summary.deletions.failed > 0 {
                        ExitCode::FAILURE
                    } else {
                        code
                    },
                )
            }
            Command::Copy(args) => {
                let summary = headroom::jobs::copy::run(
                    &args.src,
                    &args.dst,
                    &args.options(),
                    &global.foreground(args.progress_interval),
                )
                .await?;
                summary.print(log_format, &mut out())?;
                exit_code("copy", &summary.outcome)
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
