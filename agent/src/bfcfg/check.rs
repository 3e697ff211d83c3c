//! The shape check of an operator's bf.cfg, run before the device is touched.
//!
//! The DPU's installer runs `bash -n` on bf.cfg and gives up on a file that
//! fails it, after the DPU was reset. This check refuses up front what that
//! would catch in practice, and more: bf.cfg is configuration, so at the top
//! level only these are accepted —
//!
//! - blank lines and `#` comments;
//! - assignments `NAME=value` (several on one line, optionally after
//!   `export`), the value a shell word: unquoted text, `'single'` or
//!   `"double"` quoted parts (which may span lines), `$(...)`, `${...}`,
//!   `` `...` `` and backslash escapes; an array `NAME=(a b c)`;
//! - functions `name() { ... }` / `function name { ... }` (the installer's
//!   hooks such as `bfb_modify_os`), whose bodies must balance their quotes,
//!   braces, command substitutions and here-documents.
//!
//! Anything else (a command, an unquoted `|`, `&`, `<`, `>` or `)` in a
//! value, an unterminated quote) is refused naming the line.

/// Why a bf.cfg was refused: the 1-based line and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub problem: String,
}

type Res<T> = Result<T, SyntaxError>;

mod code;

use code::Close;

struct Scanner<'a> {
    src: &'a [u8],
    pos: usize,
    line: usize,
    /// Here-documents announced on the current line: (delimiter, strip tabs).
    heredocs: Vec<(String, bool)>,
}

fn is_name_start(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphabetic()
}

fn is_name_char(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphanumeric()
}

/// bash's reserved words: not usable as function names.
const RESERVED: &[&str] = &[
    "if", "then", "else", "elif", "fi", "case", "esac", "for", "select", "while", "until", "do", "done",
    "in", "function", "time", "coproc",
];

/// Check `text` (see the module docs).
pub fn check(text: &str) -> Result<(), SyntaxError> {
    let mut s = Scanner {
        src: text.as_bytes(),
        pos: 0,
        line: 1,
        heredocs: Vec::new(),
    };
    s.top_level()
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn peek_at(&self, k: usize) -> Option<u8> {
        self.src.get(self.pos + k).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.pos += 1;
        if c == b'\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn err<T>(&self, line: usize, problem: impl Into<String>) -> Res<T> {
        Err(SyntaxError {
            line,
            problem: problem.into(),
        })
    }

    /// The text of the line `line_start` begins, for messages.
    fn line_text(&self, line_start: usize) -> String {
        let end = self.src[line_start..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(self.src.len(), |e| line_start + e);
        let t = String::from_utf8_lossy(&self.src[line_start..end]);
        let t = t.trim();
        if t.chars().count() > 60 {
            format!("{}...", t.chars().take(60).collect::<String>())
        } else {
            t.to_string()
        }
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.bump();
        }
    }

    fn skip_comment(&mut self) {
        while !matches!(self.peek(), None | Some(b'\n')) {
            self.bump();
        }
    }

    fn name(&mut self) -> Option<String> {
        if !self.peek().is_some_and(is_name_start) {
            return None;
        }
        let start = self.pos;
        while self.peek().is_some_and(is_name_char) {
            self.bump();
        }
        Some(String::from_utf8_lossy(&self.src[start..self.pos]).into_owned())
    }

    fn top_level(&mut self) -> Res<()> {
        loop {
            self.skip_blanks();
            match self.peek() {
                None => return Ok(()),
                Some(b'\n') => {
                    self.bump();
                    self.after_newline()?;
                    continue;
                }
                Some(b'#') => {
                    self.skip_comment();
                    continue;
                }
                Some(b';') => {
                    let line = self.line;
                    return self.err(line, "a `;` with no statement before it");
                }
                _ => {}
            }
            self.statement()?;
        }
    }

    /// One top-level statement: assignments or a function definition.
    fn statement(&mut self) -> Res<()> {
        let line = self.line;
        let line_start = self.src[..self.pos]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |p| p + 1);
        let not_assignment = |s: &Self| {
            s.err(
                line,
                format!(
                    "not an assignment (NAME=value) or a function: {:?}",
                    s.line_text(line_start)
                ),
            )
        };
        let save = (self.pos, self.line);
        let Some(first) = self.name() else {
            return not_assignment(self);
        };
        if first == "function" && matches!(self.peek(), Some(b' ' | b'\t')) {
            self.skip_blanks();
            let Some(fname) = self.name() else {
                return not_assignment(self);
            };
            if RESERVED.contains(&fname.as_str()) {
                return self.err(line, format!("`{fname}` is a reserved word, not a function name"));
            }
            self.skip_blanks();
            if self.peek() == Some(b'(') {
                self.bump();
                self.skip_blanks();
                if self.bump() != Some(b')') {
                    return not_assignment(self);
                }
            }
            return self.function_body(line);
        }
        if first == "export" && matches!(self.peek(), Some(b' ' | b'\t')) {
            self.skip_blanks();
        } else {
            (self.pos, self.line) = save;
        }
        // A function `name () {` or assignments `A=1 B=2`.
        let mut assigned = 0;
        loop {
            let Some(name) = self.name() else {
                return not_assignment(self);
            };
            match self.peek() {
                Some(b'=') => {
                    self.bump();
                    self.value(&name)?;
                    assigned += 1;
                }
                Some(b'+') if self.peek_at(1) == Some(b'=') => {
                    self.pos += 2;
                    self.value(&name)?;
                    assigned += 1;
                }
                _ if assigned == 0 => {
                    self.skip_blanks();
                    if self.peek() == Some(b'(') && RESERVED.contains(&name.as_str()) {
                        return self.err(line, format!("`{name}` is a reserved word, not a function name"));
                    }
                    if self.peek() == Some(b'(') {
                        self.bump();
                        self.skip_blanks();
                        if self.bump() != Some(b')') {
                            return not_assignment(self);
                        }
                        return self.function_body(line);
                    }
                    return not_assignment(self);
                }
                _ => return not_assignment(self),
            }
            self.skip_blanks();
            match self.peek() {
                None | Some(b'\n') => return Ok(()),
                Some(b'#') => {
                    self.skip_comment();
                    return Ok(());
                }
                Some(b';') => {
                    self.bump();
                    self.skip_blanks();
                    if matches!(self.peek(), None | Some(b'\n' | b'#')) {
                        return Ok(());
                    }
                    // Another statement on the same line.
                    return self.statement();
                }
                Some(_) => continue,
            }
        }
    }

    /// After a function header: blank lines or comments, then `{`, then the
    /// body up to its matching `}`.
    fn function_body(&mut self, header_line: usize) -> Res<()> {
        loop {
            self.skip_blanks();
            match self.peek() {
                Some(b'\n') => {
                    self.bump();
                }
                Some(b'#') => self.skip_comment(),
                Some(b'{') => {
                    self.bump();
                    break;
                }
                _ => return self.err(header_line, "a function definition must be followed by `{`"),
            }
        }
        self.code(header_line, Close::Brace)
    }

    /// An assignment's value, up to an unquoted blank, newline, `;` or `#`
    /// at a word start.
    fn value(&mut self, name: &str) -> Res<()> {
        if self.peek() == Some(b'(') {
            // An array: words up to `)`, across lines.
            let line = self.line;
            self.bump();
            loop {
                self.skip_blanks();
                match self.peek() {
                    None => {
                        return self.err(line, format!("the array assigned to {name} has no closing `)`"));
                    }
                    Some(b')') => {
                        self.bump();
                        return Ok(());
                    }
                    Some(b'\n') => {
                        self.bump();
                    }
                    Some(b'#') => self.skip_comment(),
                    // bash refuses a `;` inside an array; and `word` would
                    // stop at it without moving on.
                    Some(b';') => {
                        return self.err(self.line, format!("unquoted `;` in the array assigned to {name}"));
                    }
                    Some(_) => self.word(name, true)?,
                }
            }
        }
        self.word(name, false)
    }

    /// One shell word of a value.
    fn word(&mut self, name: &str, in_array: bool) -> Res<()> {
        loop {
            let line = self.line;
            match self.peek() {
                None | Some(b' ' | b'\t' | b'\n' | b';') => return Ok(()),
                Some(b')') if in_array => return Ok(()),
                Some(b'\'') => self.single_quoted()?,
                Some(b'"') => self.double_quoted()?,
                Some(b'`') => self.backquoted()?,
                Some(b'\\') => {
                    self.bump();
                    if self.bump().is_none() {
                        return self.err(line, "a `\\` at the end of the file");
                    }
                }
                Some(b'$') => self.dollar()?,
                Some(c @ (b'|' | b'&' | b'<' | b'>' | b'(' | b')')) => {
                    return self.err(
                        line,
                        format!(
                            "unquoted `{}` in the value of {name} (quote the value: {name}='...')",
                            c as char
                        ),
                    );
                }
                Some(_) => {
                    self.bump();
                }
            }
        }
    }

    fn single_quoted(&mut self) -> Res<()> {
        let line = self.line;
        self.bump();
        loop {
            match self.bump() {
                None => return self.err(line, "unterminated single quote (') opened here"),
                Some(b'\'') => return Ok(()),
                Some(_) => {}
            }
        }
    }

    fn double_quoted(&mut self) -> Res<()> {
        let line = self.line;
        self.bump();
        loop {
            match self.peek() {
                None => return self.err(line, "unterminated double quote (\") opened here"),
                Some(b'"') => {
                    self.bump();
                    return Ok(());
                }
                Some(b'\\') => {
                    self.bump();
                    self.bump();
                }
                Some(b'`') => self.backquoted()?,
                Some(b'$') => self.dollar_in(true)?,
                Some(_) => {
                    self.bump();
                }
            }
        }
    }

    fn backquoted(&mut self) -> Res<()> {
        let line = self.line;
        self.bump();
        loop {
            match self.bump() {
                None => return self.err(line, "unterminated backquote (`) opened here"),
                Some(b'`') => return Ok(()),
                Some(b'\\') => {
                    self.bump();
                }
                Some(_) => {}
            }
        }
    }

    /// `$(...)`, `$((...))`, `${...}`, `$'...'` or a plain `$`.
    fn dollar(&mut self) -> Res<()> {
        self.dollar_in(false)
    }

    /// The rest of `${...}` or `$[...]` up to its `close`: quotes and
    /// expansions inside it are the shell's; with `nest`, that opener nests.
    fn expansion(&mut self, line: usize, nest: Option<u8>, close: u8, unterminated: &str) -> Res<()> {
        let mut depth = 0usize;
        loop {
            match self.peek() {
                None => return self.err(line, unterminated),
                Some(b'\'') => self.single_quoted()?,
                Some(b'"') => self.double_quoted()?,
                Some(b'$') => self.dollar()?,
                Some(b'\\') => {
                    self.bump();
                    self.bump();
                }
                Some(b) => {
                    self.bump();
                    if Some(b) == nest {
                        depth += 1;
                    } else if b == close {
                        if depth == 0 {
                            return Ok(());
                        }
                        depth -= 1;
                    }
                }
            }
        }
    }

    /// [`Scanner::dollar`]; inside double quotes `$'` is no quote.
    fn dollar_in(&mut self, in_double: bool) -> Res<()> {
        let line = self.line;
        self.bump();
        match self.peek() {
            Some(b'(') => {
                self.bump();
                self.code(line, Close::Paren)
            }
            Some(b'{') => {
                self.bump();
                self.expansion(line, None, b'}', "unterminated `${` opened here")
            }
            Some(b'[') => {
                // The old arithmetic form `$[...]`; brackets inside it nest.
                self.bump();
                self.expansion(line, Some(b'['), b']', "unterminated `$[` opened here")
            }
            Some(b'\'') if !in_double => {
                // ANSI-C quoting: backslash escapes a quote.
                self.bump();
                loop {
                    match self.bump() {
                        None => return self.err(line, "unterminated $' quote opened here"),
                        Some(b'\\') => {
                            self.bump();
                        }
                        Some(b'\'') => return Ok(()),
                        Some(_) => {}
                    }
                }
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
