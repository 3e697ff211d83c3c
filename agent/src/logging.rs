//! Tracing set-up, done first thing in `main`: the filter comes from
//! `HOSTPLANE_LOG` (an `EnvFilter` directive, default `info`), the format from
//! `HOSTPLANE_LOG_FORMAT` or the config (`plain` | `json`). Logs go to stderr,
//! through [`hostplane_common::logging`].
use hostplane_common::logging::{self, DEFAULT_FILTER};

use crate::config::{Env, LogFormat};

/// Install the global subscriber. `format` is the configured format; the
/// `HOSTPLANE_LOG_FORMAT` variable wins when it is valid. Problems with the
/// variables are logged (once the subscriber exists), not fatal. Calling it
/// twice keeps the first subscriber.
pub fn init(env: &dyn Env, format: LogFormat) {
    let filter = env
        .get("HOSTPLANE_LOG")
        .unwrap_or_else(|| DEFAULT_FILTER.to_string());
    let (format, problem) = match env.get("HOSTPLANE_LOG_FORMAT") {
        None => (format, None),
        Some(v) => match v.parse() {
            Ok(f) => (f, None),
            Err(e) => (
                format,
                Some(format!("HOSTPLANE_LOG_FORMAT: {e}; using {format:?}")),
            ),
        },
    };
    logging::init(&filter, format);
    if let Some(p) = problem {
        tracing::warn!("{p}");
    }
}
