//! iCalendar text read one component at a time, so that a large calendar is never held whole.
//!
//! The text comes from a reader (a file, an HTTP body) and is read at most
//! [`MAX_BYTES`] + 1 bytes far, line by line: folded lines are joined (RFC 5545 §3.1), and each
//! child component of the root `VCALENDAR` (a `VEVENT`, a `VTIMEZONE`, …) is handed out as its
//! own unfolded text, which the `icalendar` parser then reads. The calendar's own properties are
//! checked by the same parser, a few kilobytes at a time. It asks what parsing the whole text
//! at once asked: one root `VCALENDAR`, closed, nothing after it, and every component and
//! property in it well-formed (so a download cut short is refused, not half used).
//!
//! Peak memory is one component's text and its parse, not the calendar's: a 2,300-event
//! calendar read whole took about 4.5 MB of heap at its peak, and glibc kept most of it.

use std::io::{self, BufRead};

use super::calendar::MAX_BYTES;

/// Why reading stopped early.
#[derive(Debug)]
pub(super) enum Stop {
    /// The reader failed.
    Io(io::Error),
    /// A line is not UTF-8.
    NotText,
    /// The text is no iCalendar document.
    Invalid(String),
}

/// Calendar-level properties are checked when this many bytes of them are waiting.
const PROPERTIES_CHECKED_AT: usize = 4096;

/// The root's child components, one at a time (see the module doc).
pub(super) struct Components<R> {
    reader: io::Take<R>,
    /// The physical line being read.
    raw: Vec<u8>,
    /// The logical line being joined: the last physical line that is not a continuation.
    held: String,
    holding: bool,
    /// The logical line handed out.
    line: String,
    /// The component being collected, unfolded, one line each.
    block: String,
    /// Calendar-level properties not yet checked, inside a `BEGIN:VCALENDAR` line.
    properties: String,
    /// The root's name as written, once its `BEGIN` was read.
    root: Option<String>,
    /// The root's `END` was read.
    closed: bool,
    /// Bytes read.
    bytes: usize,
    /// `BEGIN:VEVENT` lines read, at any depth.
    vevents: usize,
}

impl<R: BufRead> Components<R> {
    /// Reads from `reader`, at most [`MAX_BYTES`] + 1 bytes.
    pub(super) fn new(reader: R) -> Self {
        Components {
            reader: reader.take(MAX_BYTES as u64 + 1),
            raw: Vec::new(),
            held: String::new(),
            holding: false,
            line: String::new(),
            block: String::new(),
            properties: String::from("BEGIN:VCALENDAR\n"),
            root: None,
            closed: false,
            bytes: 0,
            vevents: 0,
        }
    }

    /// Bytes read so far.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// `BEGIN:VEVENT` lines read so far (all of them once the text is read to its end).
    pub(super) fn vevents(&self) -> usize {
        self.vevents
    }

    /// The next child component of the root, as unfolded text from its `BEGIN` to its `END`;
    /// `None` once the root is closed and the text has ended.
    pub(super) fn next_component(&mut self) -> Result<Option<&str>, Stop> {
        loop {
            if !self.next_line()? {
                return match (&self.root, self.closed) {
                    (_, true) => Ok(None),
                    (None, _) => Err(invalid("no BEGIN:VCALENDAR")),
                    (Some(_), false) => Err(invalid("the calendar ends before its END")),
                };
            }
            if self.line.is_empty() {
                continue;
            }
            if self.closed {
                return Err(invalid("text after the calendar's END"));
            }
            let Some(root) = &self.root else {
                match begin(&self.line) {
                    Some(name) if name.eq_ignore_ascii_case("VCALENDAR") => {
                        self.root = Some(name.to_owned());
                        continue;
                    }
                    _ => return Err(invalid("no BEGIN:VCALENDAR")),
                }
            };
            if let Some(name) = end(&self.line) {
                if name != root {
                    return Err(invalid("mismatching END of the calendar"));
                }
                self.closed = true;
                self.check_properties()?;
                continue;
            }
            if begin(&self.line).is_some() {
                self.collect()?;
                return Ok(Some(&self.block));
            }
            self.properties.push_str(&self.line);
            self.properties.push('\n');
            if self.properties.len() >= PROPERTIES_CHECKED_AT {
                self.check_properties()?;
            }
        }
    }

    /// Reads the rest of the text without keeping it, counting its bytes and `VEVENT`s (so
    /// that a refused text is refused for its first reason in the order: too large, not text,
    /// too many events); whether all of it was UTF-8.
    pub(super) fn drain(&mut self) -> Result<bool, Stop> {
        let mut text = true;
        while self.next_raw()? {
            text &= std::str::from_utf8(&self.raw).is_ok();
        }
        Ok(text)
    }

    /// The component whose `BEGIN` is in `line`, into `block`.
    fn collect(&mut self) -> Result<(), Stop> {
        self.block.clear();
        self.block.push_str(&self.line);
        self.block.push('\n');
        let mut depth = 1usize;
        while depth > 0 {
            if !self.next_line()? {
                return Err(invalid("the calendar ends inside a component"));
            }
            if self.line.is_empty() {
                continue;
            }
            if begin(&self.line).is_some() {
                depth += 1;
            } else if end(&self.line).is_some() {
                depth -= 1;
            }
            self.block.push_str(&self.line);
            self.block.push('\n');
        }
        Ok(())
    }

    /// Checks the calendar-level properties read since the last check.
    fn check_properties(&mut self) -> Result<(), Stop> {
        const HEAD: usize = "BEGIN:VCALENDAR\n".len();
        if self.properties.len() == HEAD {
            return Ok(());
        }
        self.properties.push_str("END:VCALENDAR\n");
        let checked = icalendar::parser::read_calendar_simple(&self.properties)
            .map(drop)
            .map_err(|e| invalid(&format!("{:?}", e.code)));
        self.properties.truncate(HEAD);
        checked
    }

    /// The next logical line (folded lines joined) into `line`; false at the end.
    fn next_line(&mut self) -> Result<bool, Stop> {
        loop {
            if !self.next_raw()? {
                if self.holding {
                    self.holding = false;
                    std::mem::swap(&mut self.line, &mut self.held);
                    return Ok(true);
                }
                return Ok(false);
            }
            let text = std::str::from_utf8(&self.raw).map_err(|_| Stop::NotText)?;
            if self.holding {
                if let Some(rest) = text.strip_prefix([' ', '\t']) {
                    self.held.push_str(rest);
                    continue;
                }
                std::mem::swap(&mut self.line, &mut self.held);
                self.held.clear();
                self.held.push_str(text);
                return Ok(true);
            }
            self.held.clear();
            self.held.push_str(text);
            self.holding = true;
        }
    }

    /// The next physical line, without its line ending, into `raw`; false at the end.
    fn next_raw(&mut self) -> Result<bool, Stop> {
        self.raw.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.raw)
            .map_err(Stop::Io)?;
        if n == 0 {
            return Ok(false);
        }
        self.bytes += n;
        if self.raw.last() == Some(&b'\n') {
            self.raw.pop();
        }
        if self.raw.last() == Some(&b'\r') {
            self.raw.pop();
        }
        let trimmed = self.raw.trim_ascii_end();
        if trimmed.eq_ignore_ascii_case(b"BEGIN:VEVENT") {
            self.vevents += 1;
        }
        Ok(true)
    }
}

/// The component a `BEGIN:` line opens.
fn begin(line: &str) -> Option<&str> {
    after_prefix(line, "BEGIN:")
}

/// The component an `END:` line closes.
fn end(line: &str) -> Option<&str> {
    after_prefix(line, "END:")
}

fn after_prefix<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    let head = line.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &line[prefix.len()..])
}

fn invalid(reason: &str) -> Stop {
    Stop::Invalid(reason.lines().next().unwrap_or_default().to_owned())
}
