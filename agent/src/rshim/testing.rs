//! A fake `misc` device for tests: renders snapshots like the driver does,
//! honours DISPLAY_LEVEL and CLEAR_ON_READ, records commands, and lets a test
//! play the DPU by appending log lines.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::{MiscDevice, RshimError};

#[derive(Debug, Default)]
pub struct FakeMiscState {
    pub dev_name: String,
    pub display_level: u8,
    pub clear_on_read: bool,
    pub drop_mode: bool,
    /// Seconds (300 unless changed).
    pub boot_timeout: u32,
    /// The chip's log buffer.
    pub log: Vec<String>,
    /// Every command written, in order (`KEY VALUE`).
    pub commands: Vec<String>,
    /// Keys the device rejects with EINVAL.
    pub reject: HashSet<String>,
    /// Reads so far.
    pub reads: usize,
}

#[derive(Debug, Clone)]
pub struct FakeMisc {
    rshim: String,
    pub state: Arc<Mutex<FakeMiscState>>,
}

impl FakeMisc {
    pub fn new(rshim: &str) -> FakeMisc {
        let state = FakeMiscState {
            dev_name: "pcie-0000:04:00.2".into(),
            boot_timeout: 300,
            ..Default::default()
        };
        FakeMisc {
            rshim: rshim.to_string(),
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeMiscState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The DPU prints a line.
    pub fn log(&self, line: &str) {
        self.lock().log.push(line.to_string());
    }

    pub fn commands(&self) -> Vec<String> {
        self.lock().commands.clone()
    }

    pub fn reject(&self, key: &str) {
        self.lock().reject.insert(key.to_string());
    }

    pub fn reads(&self) -> usize {
        self.lock().reads
    }
}

impl MiscDevice for FakeMisc {
    fn rshim(&self) -> &str {
        &self.rshim
    }

    fn read_text(&self) -> Result<String, RshimError> {
        let mut s = self.lock();
        s.reads += 1;
        let mut out = format!(
            "DISPLAY_LEVEL   {} (0:basic, 1:advanced, 2:log)\nBF_MODE         DPU mode\n\
             BOOT_TIMEOUT    {} (seconds)\n\
             DROP_MODE       {} (0:normal, 1:drop)\nDEV_NAME        {}\nDEV_INFO        BlueField-3(Rev 1)\n",
            s.display_level, s.boot_timeout, s.drop_mode as u8, s.dev_name
        );
        if s.display_level >= 1 {
            out.push_str(&format!(
                "CLEAR_ON_READ   {} (0:no, 1:yes)\n",
                s.clear_on_read as u8
            ));
        }
        if s.display_level >= 2 {
            out.push_str("---------------------------------------\n             Log Messages\n");
            out.push_str("---------------------------------------\n");
            for l in &s.log {
                out.push_str(&format!(" {}\n", l.trim_start()));
            }
            if s.clear_on_read {
                s.log.clear();
            }
        }
        Ok(out)
    }

    fn write_line(&self, line: &str) -> Result<(), RshimError> {
        let mut s = self.lock();
        let command = line.trim_end().to_string();
        s.commands.push(command.clone());
        let (key, value) = command.split_once(' ').unwrap_or((&command, ""));
        if s.reject.contains(key) {
            return Err(RshimError::Command {
                rshim: self.rshim.clone(),
                path: "misc".into(),
                command,
                reason: "EINVAL: unknown key or invalid value (or device in drop mode)".into(),
            });
        }
        match key {
            "DISPLAY_LEVEL" => s.display_level = value.parse().unwrap_or(0),
            "CLEAR_ON_READ" => s.clear_on_read = value == "1",
            "DROP_MODE" => s.drop_mode = value == "1",
            "BOOT_TIMEOUT" => s.boot_timeout = value.parse().unwrap_or(s.boot_timeout),
            _ => {}
        }
        Ok(())
    }
}
