//! Tracing set-up, done first thing in `main`: the filter comes from
//! `HOSTPLANE_LOG` (an `EnvFilter` directive, default `info`), the format from
//! `HOSTPLANE_LOG_FORMAT` or the config (`plain` | `json`). Logs go to stderr.
use tracing_subscriber::EnvFilter;

use crate::config::{Env, LogFormat};

/// Default filter when `HOSTPLANE_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info";

/// Install the global subscriber. `format` is the configured format; the
/// `HOSTPLANE_LOG_FORMAT` variable wins when it is valid. Problems with the
/// variables are logged (once the subscriber exists), not fatal. Calling it
/// twice keeps the first subscriber.
pub fn init(env: &dyn Env, format: LogFormat) {
    let mut problems = Vec::new();
    let filter = match env.get("HOSTPLANE_LOG") {
        None => EnvFilter::new(DEFAULT_FILTER),
        Some(spec) => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            problems.push(format!(
                "HOSTPLANE_LOG={spec:?} is not a valid filter ({e}); using {DEFAULT_FILTER}"
            ));
            EnvFilter::new(DEFAULT_FILTER)
        }),
    };
    let format = match env.get("HOSTPLANE_LOG_FORMAT") {
        None => format,
        Some(v) => v.parse().unwrap_or_else(|e| {
            problems.push(format!("HOSTPLANE_LOG_FORMAT: {e}; using {format:?}"));
            format
        }),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if installed.is_ok() {
        for p in problems {
            tracing::warn!("{p}");
        }
    }
}
