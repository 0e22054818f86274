//! The log subscriber: one JSON object per line for log pipelines, or text for a person at a terminal.
//!
//! `--log-format auto` (the default) writes JSON when standard output is not a terminal (a container, a file, a
//! pipe) and text when it is. Colour codes are written only to a terminal, whatever the format. Span fields travel
//! with every event: in JSON each line carries `spans`, the list of open spans from the outermost in, so a REST
//! call's `request_id` and a WebSocket connection's `conn_id` are on every line logged on their behalf.

use std::io::IsTerminal;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when standard output is not a terminal, text when it is.
    Auto,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's fields, and `spans`.
    Json,
    /// Human-readable lines.
    Text,
}

/// Installs the global subscriber with `filter` (tracing's `EnvFilter` syntax; `info` when it does not parse).
/// Call once, before anything logs.
pub fn install(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let terminal = std::io::stdout().is_terminal();
    let json = match format {
        LogFormat::Auto => !terminal,
        LogFormat::Json => true,
        LogFormat::Text => false,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal && !json);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init();
    } else {
        builder.with_target(false).init();
    }
}
