//! The rshim `misc` file: a fresh `KEY value` snapshot on every read (plus the
//! DPU's boot log at `DISPLAY_LEVEL 2`), and one `KEY VALUE` command per write.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use super::{RshimError, describe_errno};

/// One parsed read of `misc`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MiscSnapshot {
    /// `KEY value` lines in order; the value is the rest of the line, trimmed.
    pub fields: Vec<(String, String)>,
    /// Log lines (trimmed, empty lines dropped) after the `Log Messages` banner.
    pub log: Vec<String>,
    /// True when the snapshot carried a log section (DISPLAY_LEVEL 2).
    pub has_log_section: bool,
}

impl MiscSnapshot {
    pub fn parse(text: &str) -> MiscSnapshot {
        let mut snap = MiscSnapshot::default();
        let mut in_log = false;
        for raw in text.lines() {
            let line = raw.trim();
            if line.is_empty() || is_rule(line) {
                continue;
            }
            if !in_log && line.eq_ignore_ascii_case("Log Messages") {
                in_log = true;
                snap.has_log_section = true;
                continue;
            }
            // A leveled log line without the banner (bfb-install keeps the part
            // from the first INFO/WARN/ERR line) also starts the log.
            if !in_log && level_token(line).is_some() {
                in_log = true;
            }
            if in_log {
                snap.log.push(line.to_string());
                continue;
            }
            let (key, value) = match line.split_once(char::is_whitespace) {
                Some((k, v)) => (k, v.trim()),
                None => (line, ""),
            };
            snap.fields.push((key.to_string(), value.to_string()));
        }
        snap
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The leading integer of a value such as `2 (0:basic, 1:advanced, 2:log)`.
    pub fn number(&self, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// `DEV_NAME`, e.g. `pcie-0000:04:00.2`.
    pub fn dev_name(&self) -> Option<&str> {
        self.get("DEV_NAME")
    }

    /// `DEV_INFO`, e.g. `BlueField-3(Rev 1)`.
    pub fn dev_info(&self) -> Option<&str> {
        self.get("DEV_INFO")
    }

    pub fn display_level(&self) -> Option<u64> {
        self.number("DISPLAY_LEVEL")
    }
}

fn is_rule(line: &str) -> bool {
    line.len() >= 3 && line.bytes().all(|b| b == b'-' || b == b'=')
}

/// The level of a ` LEVEL[MODULE]: text` line, if it has one.
fn level_token(line: &str) -> Option<LogKind> {
    let end = line.find(['[', ':', ' ']).unwrap_or(line.len());
    let rest = &line[end..];
    if !(rest.starts_with('[') || rest.starts_with(':')) {
        return None;
    }
    match &line[..end] {
        "INFO" => Some(LogKind::Info),
        "WARN" | "WARNING" => Some(LogKind::Warn),
        "ERR" | "ERROR" => Some(LogKind::Err),
        "ASSERT" => Some(LogKind::Assert),
        _ => None,
    }
}

/// What a DPU log line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    Info,
    Warn,
    Err,
    Assert,
    /// ` Exception(...): syndrome = 0x..`
    Exception,
    /// ` PANIC(...): PC = 0x..`
    Panic,
    /// `CRITICAL ERROR` anywhere (the installer's fatal message), any case.
    Critical,
    /// Register dumps after a crash, banners, anything else.
    Other,
}

impl LogKind {
    /// True for lines that mean the boot or the installation failed.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            LogKind::Err | LogKind::Assert | LogKind::Exception | LogKind::Panic | LogKind::Critical
        )
    }
}

pub fn classify_log_line(line: &str) -> LogKind {
    let line = line.trim();
    if line.to_ascii_uppercase().contains("CRITICAL ERROR") {
        return LogKind::Critical;
    }
    if line.contains("Exception(") {
        return LogKind::Exception;
    }
    if line.contains("PANIC(") {
        return LogKind::Panic;
    }
    level_token(line).unwrap_or(LogKind::Other)
}

/// Blocking access to one device's `misc` file. [`MiscFile`] is the real one.
pub trait MiscDevice: Send + Sync + 'static {
    fn rshim(&self) -> &str;
    /// Read one whole snapshot.
    fn read_text(&self) -> Result<String, RshimError>;
    /// Write one command line (`KEY VALUE\n`) in a single write.
    fn write_line(&self, line: &str) -> Result<(), RshimError>;
}

/// `<dev_root>/<rshim>/misc`, read and written with plain file I/O.
#[derive(Debug, Clone)]
pub struct MiscFile {
    pub rshim: String,
    pub path: PathBuf,
}

impl MiscDevice for MiscFile {
    fn rshim(&self) -> &str {
        &self.rshim
    }

    fn read_text(&self) -> Result<String, RshimError> {
        let mut buf = Vec::with_capacity(4096);
        std::fs::File::open(&self.path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(|e| self.read_error(e))?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn write_line(&self, line: &str) -> Result<(), RshimError> {
        let command = line.trim_end().to_string();
        let reject = |e: io::Error| {
            if e.kind() == io::ErrorKind::NotFound {
                return RshimError::NoDevice {
                    rshim: self.rshim.clone(),
                    path: self.path.clone(),
                };
            }
            RshimError::Command {
                rshim: self.rshim.clone(),
                path: self.path.clone(),
                command: command.clone(),
                reason: describe_errno(&e).map_or_else(|| e.to_string(), str::to_string),
            }
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(reject)?;
        let n = f.write(line.as_bytes()).map_err(reject)?;
        if n != line.len() {
            return Err(RshimError::Command {
                rshim: self.rshim.clone(),
                path: self.path.clone(),
                command,
                reason: format!("short write: {n} of {} bytes", line.len()),
            });
        }
        Ok(())
    }
}

impl MiscFile {
    fn read_error(&self, e: io::Error) -> RshimError {
        if e.kind() == io::ErrorKind::NotFound {
            RshimError::NoDevice {
                rshim: self.rshim.clone(),
                path: self.path.clone(),
            }
        } else {
            RshimError::Read {
                rshim: self.rshim.clone(),
                path: self.path.clone(),
                source: Arc::new(e),
            }
        }
    }
}

/// Async client over a [`MiscDevice`]: blocking calls run in `spawn_blocking`.
#[derive(Clone)]
pub struct MiscClient {
    dev: Arc<dyn MiscDevice>,
}

impl std::fmt::Debug for MiscClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiscClient")
            .field("rshim", &self.dev.rshim())
            .finish()
    }
}

impl MiscClient {
    pub fn new(dev: Arc<dyn MiscDevice>) -> MiscClient {
        MiscClient { dev }
    }

    /// The real `misc` file of `rshim` under `dev_root`.
    pub fn open(paths: &super::RshimPaths) -> MiscClient {
        MiscClient::new(Arc::new(MiscFile {
            rshim: paths.name.clone(),
            path: paths.misc.clone(),
        }))
    }

    pub fn rshim(&self) -> &str {
        self.dev.rshim()
    }

    pub async fn read_snapshot(&self) -> Result<MiscSnapshot, RshimError> {
        let dev = self.dev.clone();
        let text = tokio::task::spawn_blocking(move || dev.read_text())
            .await
            .map_err(|e| self.task_error(e))??;
        Ok(MiscSnapshot::parse(&text))
    }

    /// Write `KEY VALUE` (one command per write, as the driver requires).
    pub async fn command(&self, key: &str, value: &str) -> Result<(), RshimError> {
        let command = format!("{key} {value}");
        let invalid = |why| RshimError::InvalidCommand {
            rshim: self.rshim().to_string(),
            command: command.clone(),
            why,
        };
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid("key must be upper-case letters, digits and _"));
        }
        if value.is_empty() || value.bytes().any(|b| b == b'\n' || b == b'\r' || b == 0) {
            return Err(invalid("value must be one non-empty line"));
        }
        let dev = self.dev.clone();
        let line = format!("{command}\n");
        tokio::task::spawn_blocking(move || dev.write_line(&line))
            .await
            .map_err(|e| self.task_error(e))?
    }

    fn task_error(&self, e: tokio::task::JoinError) -> RshimError {
        RshimError::Task {
            rshim: self.rshim().to_string(),
            detail: e.to_string(),
        }
    }
}

#[cfg(test)]
#[path = "misc_tests.rs"]
mod tests;
