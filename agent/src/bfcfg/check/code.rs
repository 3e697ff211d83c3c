//! The shell code of function bodies and `$(...)`: checked for balance only
//! (quotes, braces, parentheses, `case ... esac`, here-documents, operators
//! with no command before them); bash's own grammar is `bash -n`'s job.

use super::{Res, Scanner};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Close {
    Brace,
    Paren,
}

impl Scanner<'_> {
    /// At the start of a line: skip the bodies of here-documents announced
    /// on the line that just ended.
    pub(super) fn after_newline(&mut self) -> Res<()> {
        for (delim, strip_tabs) in std::mem::take(&mut self.heredocs) {
            let opened = self.line - 1;
            loop {
                if self.peek().is_none() {
                    return self.err(
                        opened,
                        format!("here-document without its closing line `{delim}`"),
                    );
                }
                let start = self.pos;
                self.skip_comment(); // to the end of the line
                let mut l = &self.src[start..self.pos];
                if strip_tabs {
                    while let [b'\t', rest @ ..] = l {
                        l = rest;
                    }
                }
                let done = l == delim.as_bytes();
                self.bump();
                if done {
                    break;
                }
            }
        }
        Ok(())
    }

    /// `word` stands here as a whole word.
    fn keyword(&self, word: &str) -> bool {
        self.src[self.pos..].starts_with(word.as_bytes())
            && matches!(
                self.src.get(self.pos + word.len()),
                None | Some(b' ' | b'\t' | b'\n' | b';')
            )
    }

    /// True where a reserved word (`{`, `}`) may stand: the previous
    /// non-blank character ends a command (or opens a group).
    fn command_position(&self) -> bool {
        let before = self.src[..self.pos]
            .iter()
            .rev()
            .find(|&&c| c != b' ' && c != b'\t');
        let blank_before = matches!(
            self.src.get(self.pos.wrapping_sub(1)),
            Some(b' ' | b'\t' | b'\n' | b';')
        ) || self.pos == 0;
        blank_before && matches!(before, None | Some(b';' | b'\n' | b'&' | b'|' | b'{'))
    }

    /// `<<DELIM`, `<<-DELIM`, `<<'DELIM'`, `<<"DELIM"`; `<<<` is a here-string.
    fn heredoc_operator(&mut self) -> Res<()> {
        let line = self.line;
        self.pos += 2;
        if self.peek() == Some(b'<') {
            self.bump();
            return Ok(());
        }
        let strip_tabs = self.peek() == Some(b'-');
        if strip_tabs {
            self.bump();
        }
        self.skip_blanks();
        let mut delim = Vec::new();
        loop {
            match self.peek() {
                Some(q @ (b'\'' | b'"')) => {
                    self.bump();
                    loop {
                        match self.bump() {
                            None | Some(b'\n') => {
                                return self.err(line, "unterminated quote in a here-document delimiter");
                            }
                            Some(c) if c == q => break,
                            Some(c) => delim.push(c),
                        }
                    }
                }
                Some(b'\\') => {
                    self.bump();
                    if let Some(c) = self.bump() {
                        delim.push(c);
                    }
                }
                Some(c) if !c.is_ascii_whitespace() && !b";|&<>()".contains(&c) => {
                    self.bump();
                    delim.push(c);
                }
                _ => break,
            }
        }
        if delim.is_empty() {
            return self.err(line, "`<<` without a here-document delimiter");
        }
        self.heredocs
            .push((String::from_utf8_lossy(&delim).into_owned(), strip_tabs));
        Ok(())
    }

    /// Shell code up to the `close` that balances it: a function body's
    /// `}` or a command substitution's `)`. Tracks quotes, nested `{ }` and
    /// `( )`, comments and here-documents.
    pub(super) fn code(&mut self, opened: usize, close: Close) -> Res<()> {
        let mut braces = 0usize;
        let mut parens = 0usize;
        let mut word_start = true;
        let mut has_command = false;
        // Inside `case ... esac`, where patterns end with a bare `)`.
        let mut cases = 0usize;
        let start = self.pos;
        loop {
            let line = self.line;
            let Some(c) = self.peek() else {
                return self.err(
                    opened,
                    match close {
                        Close::Brace => "function body without its closing `}`",
                        Close::Paren => "unterminated `$(` opened here",
                    },
                );
            };
            match c {
                b'\'' => self.single_quoted()?,
                b'"' => self.double_quoted()?,
                b'`' => self.backquoted()?,
                b'$' => self.dollar()?,
                b'\\' => {
                    self.bump();
                    if self.bump().is_none() {
                        return self.err(line, "a `\\` at the end of the file");
                    }
                }
                b'#' if word_start => self.skip_comment(),
                b'\n' => {
                    self.bump();
                    self.after_newline()?;
                }
                b'<' if self.peek_at(1) == Some(b'<') => self.heredoc_operator()?,
                b'{' if word_start && matches!(self.peek_at(1), Some(b' ' | b'\t' | b'\n')) => {
                    braces += 1;
                    self.bump();
                }
                b'}' if self.command_position() => {
                    self.bump();
                    if braces == 0 {
                        if close == Close::Brace {
                            if !has_command {
                                return self.err(opened, "a function body with no command in it");
                            }
                            if parens > 0 {
                                return self.err(opened, "a `(` in this function body is never closed");
                            }
                            return Ok(());
                        }
                        return self.err(line, "a `}` that closes nothing inside `$(`");
                    }
                    braces -= 1;
                }
                b'(' => {
                    parens += 1;
                    self.bump();
                }
                b')' => {
                    self.bump();
                    if parens == 0 {
                        if close == Close::Paren {
                            if braces > 0 {
                                return self.err(opened, "a `{` in this `$(` is never closed");
                            }
                            return Ok(());
                        }
                        if cases == 0 {
                            return self.err(line, "a `)` that closes nothing");
                        }
                        // A `case` pattern: `a)`.
                    } else {
                        parens -= 1;
                    }
                }
                b';' | b'|' | b'&' => {
                    // An operator needs a command before it (`;;` ends a case item).
                    let before = self.src[start..self.pos]
                        .iter()
                        .rev()
                        .find(|&&b| b != b' ' && b != b'\t');
                    let double = self.peek_at(1) == Some(c);
                    if matches!(before, None | Some(b'\n' | b';' | b'(' | b'{' | b'|' | b'&')) {
                        return self.err(line, format!("a `{}` with no command before it", c as char));
                    }
                    if double && c == b';' && cases == 0 {
                        return self.err(line, "`;;` outside a `case`");
                    }
                    self.bump();
                    if double {
                        self.bump();
                    }
                }
                b'c' if word_start && self.keyword("case") => {
                    cases += 1;
                    self.pos += 4;
                }
                b'e' if word_start && self.keyword("esac") => {
                    cases = cases.saturating_sub(1);
                    self.pos += 4;
                }
                _ => {
                    self.bump();
                }
            }
            if !matches!(c, b' ' | b'\t' | b'\n' | b';' | b'#' | b'}') {
                has_command = true;
            }
            word_start = matches!(
                self.src.get(self.pos.wrapping_sub(1)),
                Some(b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'(' | b'{')
            );
        }
    }
}
