//! The DPU's boot log (the ~1 KB chip buffer read through `misc`), the
//! console, and a longer history for tests.

use std::collections::VecDeque;
use std::fmt;

/// Size of the chip's log buffer; the oldest lines are dropped beyond it.
pub const LOG_CAPACITY: usize = 1024;
/// Bytes of console output kept.
pub const CONSOLE_CAPACITY: usize = 64 * 1024;
/// Lines of history kept for [`crate::SimHandle::history`].
pub const HISTORY_LINES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Err,
    Assert,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Err => "ERR",
            Level::Assert => "ASSERT",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    Misc,
    Bl1,
    Bl2,
    Bl2r,
    Bl31,
    Uefi,
    Psc,
}

impl fmt::Display for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Module::Misc => "MISC",
            Module::Bl1 => "BL1",
            Module::Bl2 => "BL2",
            Module::Bl2r => "BL2R",
            Module::Bl31 => "BL31",
            Module::Uefi => "UEFI",
            Module::Psc => "PSC",
        })
    }
}

/// One log line as rshim prints it: ` LEVEL[MODULE]: text`.
pub fn msg(level: Level, module: Module, text: &str) -> String {
    format!(" {level}[{module}]: {text}")
}

/// A BL31 panic as rshim prints it: the PANIC line, then register lines.
pub fn panic_lines(pc: u32) -> Vec<String> {
    let mut lines = vec![format!(" PANIC({}): PC = 0x{pc:x}", Module::Bl31)];
    let regs: [(&str, u64); 4] = [
        ("elr_el3", u64::from(pc)),
        ("esr_el3", 0x9600_0010),
        ("far_el3", 0xdead_beef_0000),
        ("scr_el3", 0x0000_0000_0000_0731),
    ];
    lines.extend(regs.iter().map(|(name, v)| format!("   {name:<16}0x{v:x}")));
    lines
}

/// The chip's log ring: whole lines, at most [`LOG_CAPACITY`] bytes (each
/// line counted with its newline); the oldest lines go first.
#[derive(Debug, Default)]
pub struct LogRing {
    lines: VecDeque<String>,
    bytes: usize,
}

impl LogRing {
    pub fn push(&mut self, line: String) {
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > LOG_CAPACITY {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len() + 1,
                None => break,
            }
        }
    }

    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    pub fn clear(&mut self) {
        self.lines.clear();
        self.bytes = 0;
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// The last [`CONSOLE_CAPACITY`] bytes of console output.
#[derive(Debug, Default)]
pub struct Console {
    text: String,
}

impl Console {
    pub fn push_line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        if self.text.len() > CONSOLE_CAPACITY {
            let mut cut = self.text.len() - CONSOLE_CAPACITY;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
        }
    }

    pub fn snapshot(&self) -> Vec<u8> {
        self.text.as_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_use_the_rshim_format() {
        assert_eq!(
            msg(Level::Info, Module::Misc, "Linux up"),
            " INFO[MISC]: Linux up"
        );
        assert_eq!(
            msg(Level::Err, Module::Bl2, "image 3 CRC mismatch"),
            " ERR[BL2]: image 3 CRC mismatch"
        );
        let p = panic_lines(0xfff0_1234);
        assert_eq!(p[0], " PANIC(BL31): PC = 0xfff01234");
        assert!(p[1].starts_with("   elr_el3         0x"), "{:?}", p[1]);
    }

    #[test]
    fn ring_drops_the_oldest_lines_beyond_one_kilobyte() {
        let mut ring = LogRing::default();
        for i in 0..100 {
            ring.push(format!(" INFO[MISC]: line {i:03}"));
        }
        let lines: Vec<&str> = ring.lines().collect();
        let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
        assert!(bytes <= LOG_CAPACITY, "{bytes}");
        assert!(bytes > LOG_CAPACITY - 30, "ring should be nearly full: {bytes}");
        assert_eq!(*lines.last().unwrap(), " INFO[MISC]: line 099");
        assert!(!lines.contains(&" INFO[MISC]: line 000"));
        ring.clear();
        assert!(ring.is_empty());
    }

    #[test]
    fn console_keeps_the_tail() {
        let mut c = Console::default();
        for i in 0..10_000 {
            c.push_line(&format!("console line {i}"));
        }
        let snap = String::from_utf8(c.snapshot()).unwrap();
        assert!(snap.len() <= CONSOLE_CAPACITY);
        assert!(snap.ends_with("console line 9999\n"));
        assert!(!snap.contains("console line 0\n"));
    }
}
