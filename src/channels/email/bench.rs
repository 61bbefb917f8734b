//! Throughput of email intake over a corpus of `.eml` files: MIME parse,
//! authentication and body extraction (with quote stripping) of every
//! message, whatever the trust decision, so each message costs the full
//! path. For `airut bench email` and the ignored test below; reads files
//! only before the clock starts.

use std::path::{Path, PathBuf};

use mail_parser::MessageParser;
use tokio::time::Instant;

use super::{ParseContext, TrustConfig, parse, trust};

/// What one benchmark run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Distinct messages in the corpus.
    pub corpus_messages: usize,
    /// Their total size in bytes.
    pub corpus_bytes: usize,
    /// Messages processed (corpus × iterations).
    pub messages: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Messages per second.
    pub messages_per_s: f64,
    /// Megabytes (10^6 bytes) of raw mail per second.
    pub mb_per_s: f64,
}

/// The fixture corpus shipped in the repository.
pub fn default_corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/email")
}

/// Every `*.eml` under `dir` (recursively), sorted by path.
pub fn load_corpus(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "eml") {
                let bytes = std::fs::read(&path)?;
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Run parse + authenticate + quote-strip over the corpus in `dir`,
/// `iterations` times.
pub fn bench_corpus(dir: &Path, iterations: usize) -> std::io::Result<BenchReport> {
    let corpus = load_corpus(dir)?;
    let ctx = ParseContext::for_test();
    let trust_config = TrustConfig {
        trusted_authserv_id: "mx.example.net".to_owned(),
        microsoft_internal_fallback: false,
    };
    let corpus_bytes: usize = corpus.iter().map(|(_, b)| b.len()).sum();
    let mut sink = 0usize;
    let start = Instant::now();
    for _ in 0..iterations {
        for (_, raw) in &corpus {
            sink = sink.wrapping_add(run_one(raw, &trust_config, &ctx));
        }
    }
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    std::hint::black_box(sink);
    let messages = corpus.len() * iterations;
    Ok(BenchReport {
        corpus_messages: corpus.len(),
        corpus_bytes,
        messages,
        seconds,
        messages_per_s: messages as f64 / seconds,
        mb_per_s: (corpus_bytes * iterations) as f64 / 1e6 / seconds,
    })
}

fn run_one(raw: &[u8], trust_config: &TrustConfig, ctx: &ParseContext) -> usize {
    let Some(msg) = MessageParser::new().parse(raw) else {
        return 0;
    };
    let trusted = usize::from(
        trust::authenticate_message(&msg, trust_config)
            .sender()
            .is_some(),
    );
    match parse::parse_message(msg, ctx) {
        Ok(p) => trusted + p.body.len() + p.attachments.len(),
        Err(_) => trusted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo test --release --lib channels::email::bench -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark; run in release mode"]
    fn email_intake_throughput() {
        let all = default_corpus_dir();
        for (label, dir) in [
            ("all fixtures", all.clone()),
            ("parse/ (client replies)", all.join("parse")),
        ] {
            // Warm up, then measure.
            bench_corpus(&dir, 20).expect("corpus readable");
            let r = bench_corpus(&dir, 500).expect("corpus readable");
            println!(
                "email intake, {label}: {} messages ({} bytes) x 500: {:.0} messages/s, {:.1} MB/s ({:.2} s)",
                r.corpus_messages, r.corpus_bytes, r.messages_per_s, r.mb_per_s, r.seconds
            );
            assert!(r.corpus_messages > 0);
        }
    }

    #[test]
    fn bench_runs_over_the_fixture_corpus() {
        let r = bench_corpus(&default_corpus_dir(), 1).expect("corpus readable");
        assert!(r.corpus_messages > 10, "{r:?}");
        assert_eq!(r.messages, r.corpus_messages);
    }
}
