//! Diagnostics: `tracing` to standard error, one line each with its level
//! and fields, filtered by `ADTALLY_LOG` (an `EnvFilter`: `warn`,
//! `adtally_host=debug`, ...).

use std::io::IsTerminal;

/// Sends this process's diagnostics to standard error, at the level
/// `ADTALLY_LOG` gives, else `default_filter`.
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ADTALLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
