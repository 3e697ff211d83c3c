//! `health`: check that a running agent answers on its /metrics endpoint.
use std::path::Path;
use std::process::ExitCode;

use super::{EXIT_CONFIG, EXIT_FAILURE, runtime};
use crate::config::{Config, ProcessEnv};

#[derive(clap::Args, Clone, Debug)]
pub struct HealthArgs {
    /// Address of the endpoint [default: the config's metrics.listen; 0.0.0.0 and :: mean loopback].
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<std::net::SocketAddr>,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime_serde::re::humantime::parse_duration)]
    timeout: std::time::Duration,
}

/// `health`: one GET of /metrics from the running agent.
pub fn health(args: &HealthArgs, config: Option<&Path>) -> ExitCode {
    let mut addr = match args.addr {
        Some(a) => a,
        None => match Config::load(config, &ProcessEnv) {
            Ok(cfg) => match cfg.metrics.listen {
                Some(a) => a,
                None => {
                    eprintln!(
                        "hostplane-agent: metrics.listen is not set, so there is no endpoint to check \
                         (set it, or pass --addr)"
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
            },
            Err(e) => {
                eprintln!("hostplane-agent: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{addr}/metrics");
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(args.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client.get(&url).send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        resp.bytes().await.map(|_| status).map_err(|e| e.to_string())
    });
    match result {
        Ok(status) => {
            println!("{url}: {status}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hostplane-agent: health of {url}: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
