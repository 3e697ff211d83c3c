//! `validate`: load the config and say whether it is valid (0) or not (78).
use std::path::Path;
use std::process::ExitCode;

use super::EXIT_CONFIG;
use crate::config::{Config, ProcessEnv};

pub fn validate(config: Option<&Path>) -> ExitCode {
    match Config::load(config, &ProcessEnv) {
        Ok(cfg) => {
            for note in &cfg.deprecated {
                eprintln!("hostplane-agent: warning: {note}");
            }
            println!(
                "config is valid: node {}, coordinator {}",
                cfg.node_name, cfg.coordinator
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hostplane-agent: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
