//! Logging set-up. Levels come from `PRISMD_LOG` (tracing's filter syntax). Nothing we log
//! carries a token, password or `Authorization` header; the dependencies that could print
//! raw protocol data at their debug levels are held at `info` unless named explicitly.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Text for people, JSON for log pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber, writing to stderr.
pub fn init(format: LogFormat, default_level: &str) {
    let spec = std::env::var("PRISMD_LOG").unwrap_or_else(|_| default_level.to_owned());
    // Directives for hyper and h2 come first so that a plain `PRISMD_LOG=trace` does not turn
    // on their wire-level logging; naming them explicitly (`hyper=trace`) still wins.
    let filter = EnvFilter::try_new(format!("hyper=info,h2=info,{spec}"))
        .unwrap_or_else(|_| EnvFilter::new(format!("hyper=info,h2=info,{default_level}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
