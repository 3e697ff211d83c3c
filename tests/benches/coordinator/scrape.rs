//! The coordinator's own `/metrics` (its `metrics.listen`), read once after
//! the walk and printed beside the bench's figures. A coordinator that has
//! not got a series (an older build) shows it as absent, never as 0.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

/// One scrape, in the Prometheus text format: series (name and labels, as
/// written) -> value.
#[derive(Debug, Default)]
pub struct Scrape(BTreeMap<String, f64>);

pub async fn scrape(addr: SocketAddr) -> Result<Scrape> {
    let body = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("scraping http://{addr}/metrics"))?
        .text()
        .await?;
    Ok(parse(&body))
}

fn parse(text: &str) -> Scrape {
    let mut out = BTreeMap::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = l.rsplit_once(' ') else {
            continue;
        };
        if let Ok(v) = value.parse::<f64>() {
            out.insert(series.to_string(), v);
        }
    }
    Scrape(out)
}

/// A histogram's cumulative buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// (upper bound, cumulative count), ascending; the last is +Inf.
    buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum: f64,
}

impl Histogram {
    /// The q-quantile as Prometheus' `histogram_quantile` estimates it
    /// (linear within the bucket); None without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q * self.count;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                let within = if c > prev.1 {
                    (rank - prev.1) / (c - prev.1)
                } else {
                    1.0
                };
                return Some(prev.0 + (le - prev.0) * within);
            }
            prev = (le, c);
        }
        Some(prev.0)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }
}

impl Scrape {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A series without labels (or with exactly these, written as in the text).
    pub fn value(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// A histogram by its name (without `_bucket`); None when absent.
    pub fn histogram(&self, name: &str) -> Option<Histogram> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = (self.0.iter())
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *v))
            })
            .collect();
        if buckets.is_empty() {
            return None;
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(Histogram {
            buckets,
            count: self.value(&format!("{name}_count")).unwrap_or(0.0),
            sum: self.value(&format!("{name}_sum")).unwrap_or(0.0),
        })
    }

    /// Every series starting with `prefix` (e.g. the Dpus by phase).
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        (self.0.range(prefix.to_string()..))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), *v))
    }
}
