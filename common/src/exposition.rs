//! Serving Prometheus metrics in the format the scraper asked for.
//!
//! `prometheus-client` writes OpenMetrics 1.0 text: a counter family is
//! named without `_total` in `# TYPE`/`# HELP` (its samples carry `_total`),
//! and the body may hold `# UNIT` lines, `_created` samples, exemplars and
//! ends with `# EOF`. That body is only right when served as
//! `application/openmetrics-text`. A scraper that did not ask for OpenMetrics
//! (or prefers the older format) gets the Prometheus text format 0.0.4
//! instead, converted here: `# TYPE`/`# HELP` name the family as its samples
//! do (`hostplane_energy_joules_total`), info and stateset families become
//! gauges, unknown becomes untyped, and `# UNIT`, `_created`, exemplars and
//! `# EOF` are dropped. [`negotiate`] reads the `Accept` header the way
//! Prometheus's own client libraries do (by quality, OpenMetrics on a tie);
//! [`encode`] produces the body.

use std::fmt::Write as _;

pub mod process;

/// The content type of an OpenMetrics 1.0 text body.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of a Prometheus text format 0.0.4 body.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An exposition format a scraper may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (what `prometheus-client` writes).
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Text004,
}

impl Format {
    /// The `Content-Type` to serve a body of this format with.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Text004 => TEXT_CONTENT_TYPE,
        }
    }
}

/// An OpenMetrics body that cannot be written as text format 0.0.4.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("OpenMetrics line {line}: {problem}")]
pub struct ExpositionError {
    /// 1-based line of the OpenMetrics body.
    pub line: usize,
    pub problem: String,
}

/// The format to serve for an `Accept` header (absent = text format 0.0.4).
///
/// OpenMetrics is chosen when an `application/openmetrics-text` range
/// (version 1.0.0, 0.0.1 or none) has a quality above 0 and at least as high
/// as every range the text format matches (`text/plain` with version 0.0.4 or
/// none, `text/*`, `*/*`). Prometheus 2.x sends
/// `application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`
/// and so gets OpenMetrics; `curl` (`*/*`) gets text.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text004;
    };
    let mut om_q = 0.0f32;
    let mut text_q = 0.0f32;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let mut q = 1.0f32;
        let mut version = None;
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                // A malformed quality counts as 0: the range is not acceptable.
                "q" => q = v.parse::<f32>().ok().filter(|q| q.is_finite()).unwrap_or(0.0),
                "version" => version = Some(v.to_string()),
                _ => {}
            }
        }
        let v = version.as_deref();
        match media.as_str() {
            "application/openmetrics-text" if matches!(v, None | Some("1.0.0" | "0.0.1")) => {
                om_q = om_q.max(q);
            }
            "text/plain" if matches!(v, None | Some("0.0.4")) => text_q = text_q.max(q),
            "text/*" | "*/*" => text_q = text_q.max(q),
            _ => {}
        }
    }
    if om_q > 0.0 && om_q >= text_q {
        Format::OpenMetrics
    } else {
        Format::Text004
    }
}

/// The body to serve in `format`, from the OpenMetrics text that
/// `prometheus-client` wrote.
pub fn encode(format: Format, openmetrics: String) -> Result<String, ExpositionError> {
    match format {
        Format::OpenMetrics => Ok(openmetrics),
        Format::Text004 => to_text_004(&openmetrics),
    }
}

/// A family's type as OpenMetrics names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Info,
    StateSet,
    Unknown,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            "info" => Kind::Info,
            "stateset" => Kind::StateSet,
            "unknown" => Kind::Unknown,
            _ => return None,
        })
    }

    /// The 0.0.4 family name and type for an OpenMetrics family `name`.
    fn text_004(self, name: &str) -> (String, &'static str) {
        match self {
            Kind::Counter => (format!("{name}_total"), "counter"),
            Kind::Gauge => (name.to_string(), "gauge"),
            Kind::Histogram => (name.to_string(), "histogram"),
            Kind::Summary => (name.to_string(), "summary"),
            Kind::Info => (format!("{name}_info"), "gauge"),
            Kind::StateSet => (name.to_string(), "gauge"),
            Kind::Unknown => (name.to_string(), "untyped"),
        }
    }

    /// Whether a sample named `name + suffix` belongs to the family, and
    /// whether 0.0.4 keeps it (`_created` has no place there).
    fn sample(self, suffix: &str) -> Option<bool> {
        match (self, suffix) {
            (Kind::Counter, "_total") => Some(true),
            (Kind::Counter, "_created") => Some(false),
            (Kind::Gauge | Kind::StateSet | Kind::Unknown, "") => Some(true),
            (Kind::Histogram, "_bucket" | "_sum" | "_count") => Some(true),
            (Kind::Summary, "" | "_sum" | "_count") => Some(true),
            (Kind::Histogram | Kind::Summary, "_created") => Some(false),
            (Kind::Info, "_info") => Some(true),
            _ => None,
        }
    }
}

/// The family whose metadata or samples are being read.
#[derive(Debug, Default)]
struct Family {
    name: String,
    help: Option<String>,
    kind: Option<Kind>,
    /// Whether its `# HELP`/`# TYPE` were written out.
    written: bool,
}

impl Family {
    fn write_metadata(&mut self, out: &mut String) {
        if self.written || self.name.is_empty() {
            return;
        }
        self.written = true;
        let kind = self.kind.unwrap_or(Kind::Unknown);
        let (name, ty) = kind.text_004(&self.name);
        if let Some(help) = &self.help {
            let _ = writeln!(out, "# HELP {name} {help}");
        }
        if self.kind.is_some() {
            let _ = writeln!(out, "# TYPE {name} {ty}");
        }
    }
}

/// Convert an OpenMetrics text body to Prometheus text format 0.0.4.
pub fn to_text_004(openmetrics: &str) -> Result<String, ExpositionError> {
    let mut out = String::with_capacity(openmetrics.len());
    let mut family = Family::default();
    let mut eof = false;
    for (i, line) in openmetrics.lines().enumerate() {
        let err = |problem: String| ExpositionError { line: i + 1, problem };
        if eof {
            return Err(err("text after # EOF".into()));
        }
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if comment == " EOF" {
                eof = true;
                continue;
            }
            let mut f = comment.trim_start().splitn(3, ' ');
            let (keyword, name, rest) = (
                f.next().unwrap_or_default(),
                f.next().unwrap_or_default(),
                f.next().unwrap_or_default(),
            );
            if !matches!(keyword, "HELP" | "TYPE" | "UNIT") {
                continue; // a plain comment
            }
            if name.is_empty() {
                return Err(err(format!("# {keyword} without a metric name")));
            }
            if family.name != name {
                family.write_metadata(&mut out);
                family = Family {
                    name: name.to_string(),
                    ..Family::default()
                };
            } else if family.written {
                return Err(err(format!("# {keyword} for {name} after its samples")));
            }
            match keyword {
                "HELP" => {
                    if family.help.is_some() {
                        return Err(err(format!("a second # HELP for {name}")));
                    }
                    family.help = Some(help_004(rest));
                }
                "TYPE" => {
                    if family.kind.is_some() {
                        return Err(err(format!("a second # TYPE for {name}")));
                    }
                    let kind = Kind::parse(rest).ok_or_else(|| {
                        err(format!(
                            "type {rest:?} of {name} has no text format 0.0.4 equivalent"
                        ))
                    })?;
                    family.kind = Some(kind);
                }
                _ => {} // UNIT: 0.0.4 has no unit metadata
            }
            continue;
        }
        let sample = Sample::parse(line).map_err(|p| err(p.to_string()))?;
        let keep = match family.kind {
            Some(kind) => match sample.name.strip_prefix(family.name.as_str()) {
                Some(suffix) => kind.sample(suffix),
                None => None,
            },
            None => (family.name == sample.name).then_some(true),
        };
        let keep = match keep {
            Some(keep) => keep,
            None => {
                // A sample with no metadata of its own: an untyped family.
                family.write_metadata(&mut out);
                family = Family {
                    name: sample.name.to_string(),
                    ..Family::default()
                };
                true
            }
        };
        family.write_metadata(&mut out);
        if !keep {
            continue;
        }
        out.push_str(sample.name);
        out.push_str(sample.labels);
        out.push(' ');
        out.push_str(sample.value);
        if let Some(ts) = sample.timestamp {
            // OpenMetrics timestamps are seconds, 0.0.4's are milliseconds.
            let ms = ts
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite())
                .ok_or_else(|| err(format!("timestamp {ts:?} of {} is not a number", sample.name)))?
                * 1000.0;
            let _ = write!(out, " {}", ms.round() as i64);
        }
        out.push('\n');
    }
    family.write_metadata(&mut out);
    Ok(out)
}

/// An OpenMetrics `# HELP` text (escapes `\\`, `\n`, `\"`) as 0.0.4 wants it
/// (escapes `\\` and `\n` only).
fn help_004(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('"') => out.push('"'),
                Some('n') => out.push_str("\\n"),
                Some(other) => {
                    out.push_str("\\\\");
                    if other != '\\' {
                        out.push(other);
                    }
                }
                None => out.push_str("\\\\"),
            },
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One sample line, split into its parts (label values stay escaped: both
/// formats escape them the same way).
#[derive(Debug, PartialEq, Eq)]
struct Sample<'a> {
    name: &'a str,
    /// `{...}` as written, or empty.
    labels: &'a str,
    value: &'a str,
    timestamp: Option<&'a str>,
}

impl<'a> Sample<'a> {
    fn parse(line: &'a str) -> Result<Sample<'a>, &'static str> {
        let name_end = line.find(['{', ' ']).ok_or("a sample without a value")?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err("a sample with an invalid metric name");
        }
        let mut rest = &line[name_end..];
        let mut labels = "";
        if rest.starts_with('{') {
            let end = label_set_end(rest).ok_or("a label set without its closing brace")?;
            labels = &rest[..end];
            rest = &rest[end..];
        }
        let rest = rest.strip_prefix(' ').ok_or("no space before a sample's value")?;
        // What follows " # " after the value (or the timestamp) is an exemplar.
        let (main, _exemplar) = match rest.find(" # ") {
            Some(at) => (&rest[..at], Some(&rest[at + 3..])),
            None => (rest, None),
        };
        let mut fields = main.split(' ');
        let value = fields.next().unwrap_or_default();
        if value.parse::<f64>().is_err() {
            return Err("a sample value that is not a number");
        }
        let timestamp = fields.next();
        if fields.next().is_some() {
            return Err("text after a sample's timestamp");
        }
        Ok(Sample {
            name,
            labels,
            value,
            timestamp,
        })
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The byte just past the `}` closing the label set `s` starts with,
/// skipping braces inside quoted (escaped) label values.
fn label_set_end(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (in_quotes, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_quotes = false,
            (false, _, '"') => in_quotes = true,
            (false, _, '}') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests;
