//! Tracing set-up, done first thing in each binary's `main`: one filter
//! (an `EnvFilter` directive such as `info` or `hostplane_agent=debug`), one
//! format (`plain` | `json`), to stderr, with colours only when stderr is a
//! terminal (never in journald or log files).
use std::io::IsTerminal;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// The filter used when none (or an invalid one) is given.
pub const DEFAULT_FILTER: &str = "info";

/// Log output format (`HOSTPLANE_LOG_FORMAT`, or the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plain" => Ok(LogFormat::Plain),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}; expected plain or json")),
        }
    }
}

/// Install the global subscriber. An invalid `filter` falls back to
/// [`DEFAULT_FILTER`] and is reported as a warning once logging works.
/// Calling it twice keeps the first subscriber.
pub fn init(filter: &str, format: LogFormat) {
    let (filter, problem) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (
            EnvFilter::new(DEFAULT_FILTER),
            Some(format!(
                "log filter {filter:?} is not valid ({e}); using {DEFAULT_FILTER}"
            )),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    if installed.is_ok()
        && let Some(p) = problem
    {
        tracing::warn!("{p}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_name_the_bad_one() {
        assert_eq!("plain".parse::<LogFormat>(), Ok(LogFormat::Plain));
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        let e = "xml".parse::<LogFormat>().unwrap_err();
        assert!(e.contains("\"xml\""), "{e}");
    }
}
