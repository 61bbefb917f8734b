//! One function per subcommand; [`dispatch`] picks it.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;

use super::access::{self, Access};
use super::{
    AuditCommand, BenchCommand, Cli, Command, EventsCommand, ExportFormat, ProjectionsCommand,
};
use crate::audit::{self, ExportFilter, ExportQuery, export::Format};
use crate::events::{ConversationId, Seq};

/// Runs the parsed command line.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run => super::serve::run(&cli.global).await,
        Command::Events(EventsCommand::Tail { from, follow, json }) => {
            let ctx = access::load_reader_context(&cli.global)?;
            tail(&ctx, from, follow, json).await
        }
        Command::Replay { conversation, json } => {
            let conv: ConversationId = conversation.parse()?;
            let ctx = access::load_reader_context(&cli.global)?;
            replay(&ctx, conv, json).await
        }
        Command::Audit(AuditCommand::Export {
            conversation,
            since,
            format,
        }) => {
            let conversation = conversation
                .map(|c| c.parse::<ConversationId>())
                .transpose()?;
            let since_us = since.as_deref().map(parse_since).transpose()?;
            let format = match format {
                ExportFormat::Jsonl => Format::Jsonl,
                ExportFormat::Csv => Format::Csv,
            };
            let q = ExportQuery {
                conversation,
                since_us,
                until_us: None,
                format,
                filter: ExportFilter::Network,
            };
            let ctx = access::load_reader_context(&cli.global)?;
            export(&ctx, q).await
        }
        Command::Audit(AuditCommand::Verify { file }) => verify(&file),
        Command::Check => super::check::run(&cli.global).await,
        Command::Projections(ProjectionsCommand::Rebuild { verify }) => {
            let ctx = access::load_context(&cli.global)?;
            rebuild(&ctx, verify).await
        }
        Command::Bench(BenchCommand::Log {
            events,
            dir,
            only,
            keep,
        }) => super::bench::log(events, dir, only, keep).await,
        Command::Bench(BenchCommand::LogRebuild { dir }) => super::bench::log_rebuild(&dir).await,
        Command::Bench(BenchCommand::Proxy {
            requests,
            concurrency,
            seconds,
        }) => {
            crate::proxy::bench::run(requests, concurrency, seconds).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Email { iterations, corpus }) => {
            super::bench::email(iterations, corpus).await
        }
        Command::Bench(BenchCommand::Gateway { messages, dir }) => {
            super::bench::gateway(messages, dir).await
        }
        Command::Bench(BenchCommand::Sandbox {
            runs,
            engine_socket,
            init,
            claude,
            busybox,
            podman,
            parse_mb,
        }) => {
            crate::sandbox::bench::run(crate::sandbox::bench::BenchOptions {
                runs,
                engine_socket,
                init: init.unwrap_or_else(crate::sandbox::probe::default_init_path),
                claude,
                busybox,
                podman,
                parse_mb,
            })
            .await
        }
        Command::Bench(BenchCommand::Dashboard {
            events,
            tasks,
            iterations,
            dir,
        }) => super::bench_dashboard::dashboard(events, tasks, iterations, dir).await,
        Command::Bench(BenchCommand::Startup {
            runs,
            settle,
            dir,
            binary,
        }) => {
            let settle = std::time::Duration::try_from_secs_f64(settle)
                .map_err(|_| anyhow::anyhow!("--settle must be a number of seconds ≥ 0"))?;
            super::bench_startup::startup(super::bench_startup::StartupOptions {
                runs,
                settle,
                dir,
                binary,
            })
            .await
        }
    }
}

/// Runs blocking output code against a locked stdout.
async fn to_stdout<F>(f: F) -> anyhow::Result<()>
where
    F: FnOnce(&mut dyn Write) -> anyhow::Result<()> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        f(&mut out)?;
        out.flush()?;
        Ok(())
    })
    .await?
}

/// Runs a read command: streams `api_path` from a running server, or runs
/// `local` against the store opened here (then closes it).
async fn read_command<F>(
    ctx: &access::Context,
    api_path: &str,
    local: F,
) -> anyhow::Result<ExitCode>
where
    F: FnOnce(
            &crate::log::Log,
            &crate::projections::Projections,
            &mut dyn Write,
        ) -> anyhow::Result<()>
        + Send
        + 'static,
{
    match access::connect(ctx).await? {
        Access::Remote(client) => {
            let mut out = std::io::stdout();
            client.stream_to(api_path, &mut out).await?;
        }
        Access::Local(store) => {
            let (log, projections) = (store.log.clone(), store.projections.clone());
            to_stdout(move |out| local(&log, &projections, out)).await?;
            store.log.close().await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn tail(
    ctx: &access::Context,
    from: u64,
    follow: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let path = format!("/api/events?from={from}&follow={follow}&json={json}");
    read_command(ctx, &path, move |log, _, out| {
        if follow {
            eprintln!("note: no server is running, so nothing new will be appended; printing what is stored");
        }
        audit::write_events_from(log, Seq(from), json, out)
    })
    .await
}

async fn replay(
    ctx: &access::Context,
    conv: ConversationId,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let path = format!("/api/conversations/{conv}/timeline?json={json}");
    read_command(ctx, &path, move |log, projections, out| {
        let find = |id| projections.find_message(id).map_err(anyhow::Error::from);
        audit::write_timeline(log, conv, &find, json, out).map(|_| ())
    })
    .await
}

async fn export(ctx: &access::Context, q: ExportQuery) -> anyhow::Result<ExitCode> {
    let mut path = format!(
        "/api/audit?format={}",
        match q.format {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
        }
    );
    if let Some(c) = q.conversation {
        path.push_str(&format!("&conversation={c}"));
    }
    if let Some(s) = q.since_us {
        path.push_str(&format!("&since_us={s}"));
    }
    read_command(ctx, &path, move |log, _, out| {
        audit::export_jsonl_csv(log, &q, out).map(|_| ())
    })
    .await
}

fn verify(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let input: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let outcome = audit::verify_export(input);
    println!(
        "{} lines: {} events, {} chain links",
        outcome.lines, outcome.events, outcome.links
    );
    for s in &outcome.streams {
        println!(
            "  {}: versions {}..={} {} (last stream hash {})",
            s.stream,
            s.first_version,
            s.last_version,
            if s.complete {
                "complete from genesis"
            } else {
                "partial (filtered export)"
            },
            s.last_hash
        );
    }
    match outcome.failure {
        None => {
            println!("verified: every line matches its hashes and the chains link");
            Ok(ExitCode::SUCCESS)
        }
        Some(f) => {
            println!(
                "FAILED at line {}{}: {}",
                f.line,
                f.seq.map(|s| format!(" (seq {s})")).unwrap_or_default(),
                f.reason
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn rebuild(ctx: &access::Context, verify: bool) -> anyhow::Result<ExitCode> {
    let report: crate::projections::RebuildReport = match access::connect(ctx).await? {
        Access::Remote(client) => {
            client
                .json(
                    hyper::Method::POST,
                    &format!("/api/projections/rebuild?verify={verify}"),
                )
                .await?
        }
        Access::Local(store) => {
            let log = store.log.clone();
            let projections = store.projections.clone();
            let report =
                tokio::task::spawn_blocking(move || projections.rebuild_command(&log, verify))
                    .await??;
            store.log.close().await?;
            report
        }
    };
    println!("{report}");
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--since`: RFC 3339 (`2026-11-28T10:00:00Z`) or an age (`2h`, `3days`).
pub(crate) fn parse_since(s: &str) -> anyhow::Result<i64> {
    let t = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let age = humantime::parse_duration(s).map_err(|_| {
                anyhow::anyhow!(
                    "--since {s:?} is neither a time (2026-11-28T10:00:00Z) nor an age (2h, 3days)"
                )
            })?;
            SystemTime::now()
                .checked_sub(age)
                .ok_or_else(|| anyhow::anyhow!("--since {s:?} reaches before the epoch"))?
        }
    };
    let us = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| anyhow::anyhow!("--since {s:?} is before 1970"))?
        .as_micros();
    i64::try_from(us).map_err(|_| anyhow::anyhow!("--since {s:?} is too far in the future"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_times_and_ages_and_explains_junk() {
        assert_eq!(parse_since("1970-01-01T00:00:01Z").unwrap(), 1_000_000);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        let two_h = parse_since("2h").unwrap();
        assert!((now - two_h - 7_200_000_000).abs() < 60_000_000);
        let err = parse_since("yesterday-ish").unwrap_err().to_string();
        assert!(err.contains("neither a time"), "{err}");
        assert!(parse_since("1960-01-01T00:00:00Z").is_err());
    }
}
