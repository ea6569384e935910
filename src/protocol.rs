//! The controller's line protocol (SPEC §2) as pure code: commands to bytes, bytes to frames.
//!
//! Nothing here does I/O or reads a clock. [`Decoder`] takes bytes in whatever pieces the port
//! delivers, splits them into lines (`\n` or `\r\n`), caps line length, and turns each status
//! reply into one [`Reading`]. Two builds of the firmware answer: MrCoffeeBot 6105f59 (its last
//! commit, with the 1 s heater timeout) in one line, `W+2.01,T+21.0,B+0`, and 05a9a00 (no
//! heater timeout) in three lines, `W+…`, `T+…`, `B+…`. Each reply is recognised on its own and
//! says which form it had ([`ReplyFormat`]); the two are never mixed into one reading. The boot
//! banner is found anywhere in a line, because a watchdog reboot can cut a reply short and
//! print the banner on the same line. Every sentinel of the firmware becomes "no valid
//! reading" (`None`), never a number.

use std::collections::VecDeque;

/// Longest line kept, in bytes. The largest legal line is a one-line reply whose `W+` and `T+`
/// both carry the ~310-character decimal of `DBL_MAX` (a build that answers before its first
/// sensor reading); anything longer is garbage and is skipped whole.
pub const MAX_LINE: usize = 700;

/// A command line the host sends to the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// `S+?`: report the sensors and the heater state.
    Status,
    /// `B+1`: heater on (must be repeated within 1 s or the controller switches it off).
    HeaterOn,
    /// `B+0`: heater off.
    HeaterOff,
    /// `RESET`: ask the controller to reboot. No reply is ever guaranteed.
    Reset,
}

impl Command {
    /// The bytes to write, newline included. Never more than the controller's 16-byte FIFO.
    pub fn line(self) -> &'static [u8] {
        match self {
            Command::Status => b"S+?\n",
            Command::HeaterOn => b"B+1\n",
            Command::HeaterOff => b"B+0\n",
            Command::Reset => b"RESET\n",
        }
    }

    /// Whether the controller answers this command with a status reply.
    pub fn expects_reply(self) -> bool {
        !matches!(self, Command::Reset)
    }

    /// The command a received line spells, with or without its `\n` or `\r\n`; `None` for any
    /// other line. The inverse of [`Command::line`], for the simulated controller.
    pub fn parse(line: &[u8]) -> Option<Command> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        [
            Command::Status,
            Command::HeaterOn,
            Command::HeaterOff,
            Command::Reset,
        ]
        .into_iter()
        .find(|command| command.line().strip_suffix(b"\n") == Some(line))
    }
}

/// The shape of a status reply, which tells the firmware builds apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyFormat {
    /// `W+…,T+…,B+…` on one line: MrCoffeeBot 6105f59, whose heater goes off 1 s after the
    /// last `B+1`.
    OneLine,
    /// `W+…`, `T+…`, `B+…` on three lines: MrCoffeeBot 05a9a00, which has no heater timeout
    /// (the relay stays on until `B+0` or a 5 s watchdog reboot).
    ThreeLines,
}

impl ReplyFormat {
    /// The label used in the state JSON, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyFormat::OneLine => "one_line",
            ReplyFormat::ThreeLines => "three_lines",
        }
    }

    /// The firmware build that answers in this form.
    pub fn build(self) -> &'static str {
        match self {
            ReplyFormat::OneLine => "6105f59",
            ReplyFormat::ThreeLines => "05a9a00",
        }
    }

    /// Whether the build switches its heater off by itself 1 s after the last `B+1`.
    pub fn has_heater_timeout(self) -> bool {
        matches!(self, ReplyFormat::OneLine)
    }
}

/// One complete status reply, sentinels already turned into `None`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// Distance from the sensor to the water surface in inches (`W+`); `None` if a sentinel.
    pub water_distance_in: Option<f64>,
    /// Hot-plate temperature in °C (`T+`); `None` if a sentinel (CRC error, DBL_MAX, inf, nan,
    /// ovf). Range checks (−20…125 °C) and the suspect 85.0 after a boot are the core's call.
    pub temperature_c: Option<f64>,
    /// The heater state the controller reports after the command (`B+`).
    pub heater_on: bool,
    /// Whether the reply came as one line or three (which build answered).
    pub format: ReplyFormat,
}

/// What the decoder makes of the byte stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// A complete, well-formed reply (one line or three).
    Reading(Reading),
    /// The boot banner; `firmware` is e.g. `MrCoffeeBot v2.0`.
    Banner {
        /// Name and version as printed, without ` Booted.`.
        firmware: String,
    },
    /// A line (or partial reply) that was skipped; counted by the caller.
    Rejected(Rejected),
}

/// Why a line or partial reply was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Longer than [`MAX_LINE`]; the whole line up to the next newline was dropped.
    TooLong,
    /// Not a line of the protocol (wrapped buffer, noise, an unsupported firmware's reply).
    Garbage,
    /// A reply line out of order (e.g. `T+` without `W+` before it), or a reply cut short.
    OutOfSequence,
    /// A one-line reply (`W+…,`) with other fields than `W+`, `T+`, `B+` in that order.
    Malformed,
}

/// Splits a byte stream into lines and assembles replies. Feed it with [`Decoder::push`], then
/// call [`Decoder::next_frame`] until it returns `None` ("need more bytes", not an error).
///
/// Memory stays bounded whatever the input: at most [`MAX_LINE`] + 1 bytes of the current line,
/// plus the frames decoded from the last [`Decoder::push`] until they are taken.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The current line without its `\n`; while `overlong`, only its last [`TAIL`] bytes.
    line: Vec<u8>,
    /// The current line has grown past [`MAX_LINE`]; it is dropped at the next `\n`.
    overlong: bool,
    /// The reply assembled so far.
    reply: Partial,
    /// Frames decoded and not yet taken.
    frames: VecDeque<Frame>,
}

/// How far a three-line reply has got (a one-line reply is decoded in one go).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum Partial {
    /// Waiting for `W+`.
    #[default]
    Idle,
    /// `W+` seen.
    Water(Option<f64>),
    /// `W+` and `T+` seen.
    WaterTemp(Option<f64>, Option<f64>),
}

/// The banner's fixed start; it may follow a cut line.
const BANNER_START: &[u8] = b"MrCoffeeBot v";
/// The banner's fixed end.
const BANNER_END: &[u8] = b" Booted.";
/// Longest version text accepted between [`BANNER_START`] and [`BANNER_END`].
const MAX_VERSION: usize = 32;
/// Bytes kept from the end of an overlong line, so that a banner glued to its end is still seen.
const TAIL: usize = 64;

impl Decoder {
    /// A decoder with no partial line or reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes as the port delivered them (any split, any size) and decodes every line
    /// they complete. Take the frames with [`Decoder::next_frame`] after each push.
    pub fn push(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.end_line();
                continue;
            }
            self.line.push(byte);
            // One byte more than MAX_LINE is allowed for the `\r` of a `\r\n`.
            if self.line.len() > MAX_LINE + 1 {
                self.overlong = true;
                let cut = self.line.len() - TAIL;
                self.line.drain(..cut);
            }
        }
    }

    /// The next complete frame, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        self.frames.pop_front()
    }

    /// Bytes allocated for the partial line (its capacity, not just its length), so that
    /// tests and fuzz targets outside this module can check the memory bound.
    #[doc(hidden)]
    pub fn buffered(&self) -> usize {
        self.line.capacity()
    }

    /// Forgets any partial line, partial reply and frames not yet taken (after the port was
    /// reopened).
    pub fn reset(&mut self) {
        self.line.clear();
        self.overlong = false;
        self.reply = Partial::Idle;
        self.frames.clear();
    }

    /// Decodes the line in `self.line`, which just met its `\n`.
    fn end_line(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if self.overlong || line.len() > MAX_LINE {
            self.overlong = false;
            self.reply = Partial::Idle;
            self.frames.push_back(Frame::Rejected(Rejected::TooLong));
            let tail = line.len().saturating_sub(TAIL);
            if let Some((_, firmware)) = find_banner(&line[tail..]) {
                self.frames.push_back(Frame::Banner { firmware });
            }
        } else {
            self.decode_line(&line);
        }
        // Keep the allocation for the next line.
        line.clear();
        self.line = line;
    }

    /// Decodes one complete line of at most [`MAX_LINE`] bytes, without its line ending.
    fn decode_line(&mut self, line: &[u8]) {
        if let Some((prefix, firmware)) = find_banner(line) {
            let cut = !trim(prefix).is_empty();
            if cut || self.reply != Partial::Idle {
                self.frames
                    .push_back(Frame::Rejected(Rejected::OutOfSequence));
            }
            self.reply = Partial::Idle;
            self.frames.push_back(Frame::Banner { firmware });
            return;
        }
        let line = trim(line);
        if line.is_empty() {
            return;
        }
        let frame = match self.reply_line(line) {
            Ok(frame) => frame,
            Err(rejected) => {
                self.reply = Partial::Idle;
                Some(Frame::Rejected(rejected))
            }
        };
        self.frames.extend(frame);
    }

    /// Advances the reply with one non-empty, non-banner line.
    fn reply_line(&mut self, line: &[u8]) -> Result<Option<Frame>, Rejected> {
        let (tag, value) = match line {
            [tag @ (b'W' | b'T' | b'B'), b'+', value @ ..] => (*tag, value),
            _ => return Err(Rejected::Garbage),
        };
        if line.contains(&b',') {
            // A one-line reply. One that starts while a three-line reply is partial means the
            // partial one was cut short: report that, then decode this one on its own.
            let cut = std::mem::replace(&mut self.reply, Partial::Idle) != Partial::Idle;
            if cut {
                self.frames
                    .push_back(Frame::Rejected(Rejected::OutOfSequence));
            }
            return parse_one_line(line).map(|r| Some(Frame::Reading(r)));
        }
        match (tag, self.reply) {
            (b'W', previous) => {
                let water = parse_value(value)?;
                self.reply = Partial::Water(water);
                // A new reply while one was partial: the old one was cut short.
                Ok((previous != Partial::Idle).then_some(Frame::Rejected(Rejected::OutOfSequence)))
            }
            (b'T', Partial::Water(water)) => {
                let temperature = parse_value(value)?;
                self.reply = Partial::WaterTemp(water, temperature);
                Ok(None)
            }
            (b'B', Partial::WaterTemp(water, temperature)) => {
                let heater_on = parse_heater(value)?;
                self.reply = Partial::Idle;
                Ok(Some(Frame::Reading(Reading {
                    water_distance_in: water,
                    temperature_c: temperature,
                    heater_on,
                    format: ReplyFormat::ThreeLines,
                })))
            }
            (b'T', _) => parse_value(value).and(Err(Rejected::OutOfSequence)),
            _ => parse_heater(value).and(Err(Rejected::OutOfSequence)),
        }
    }
}

/// Decodes `W+<water>,T+<temperature>,B+<0|1>`: exactly three fields in that order. A field
/// that is not a number (or `0`/`1`) is [`Rejected::Garbage`]; any other shape is
/// [`Rejected::Malformed`]. Nothing of a malformed line is used.
fn parse_one_line(line: &[u8]) -> Result<Reading, Rejected> {
    let mut fields = line.split(|&b| b == b',');
    let mut field = |tag: &[u8]| {
        fields
            .next()
            .and_then(|f| f.strip_prefix(tag))
            .ok_or(Rejected::Malformed)
    };
    let water = field(b"W+")?;
    let temperature = field(b"T+")?;
    let heater = field(b"B+")?;
    if fields.next().is_some() {
        return Err(Rejected::Malformed);
    }
    Ok(Reading {
        water_distance_in: parse_value(water)?,
        temperature_c: parse_value(temperature)?,
        heater_on: parse_heater(heater)?,
        format: ReplyFormat::OneLine,
    })
}

/// Finds the boot banner anywhere in `line`: the bytes before it and the firmware name
/// (e.g. `MrCoffeeBot v2.0`). Whatever follows ` Booted.` is ignored.
fn find_banner(line: &[u8]) -> Option<(&[u8], String)> {
    let start = find(line, BANNER_START)?;
    let rest = &line[start + BANNER_START.len()..];
    let version_len = find(rest, BANNER_END)?;
    let version = &rest[..version_len];
    let printable = |b: &u8| b.is_ascii_graphic();
    if version.is_empty() || version.len() > MAX_VERSION || !version.iter().all(printable) {
        return None;
    }
    let name = &line[start..start + BANNER_START.len() + version_len];
    // Only ASCII graphic bytes and the ASCII start: always valid UTF-8.
    let firmware = String::from_utf8_lossy(name).into_owned();
    Some((&line[..start], firmware))
}

/// Position of the first occurrence of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `bytes` without ASCII white space at either end.
fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace());
    match (start, end) {
        (Some(start), Some(end)) => &bytes[start..=end],
        _ => &[],
    }
}

/// The heater state after `B+`: exactly `0` or `1`.
fn parse_heater(value: &[u8]) -> Result<bool, Rejected> {
    match value {
        b"0" => Ok(false),
        b"1" => Ok(true),
        _ => Err(Rejected::Garbage),
    }
}

/// A sensor value after `W+` or `T+`: `Ok(None)` for a sentinel (CRC failure `-1000.0`,
/// `DBL_MAX` or anything beyond ±1e300, `inf`, `nan`, `ovf`), `Err` if it is not a number.
fn parse_value(value: &[u8]) -> Result<Option<f64>, Rejected> {
    let text = std::str::from_utf8(value).map_err(|_| Rejected::Garbage)?;
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    if unsigned.eq_ignore_ascii_case("ovf") {
        return Ok(None);
    }
    // Rust's parser also takes `inf`, `infinity` and `nan` in any case, with a sign.
    let number: f64 = text.parse().map_err(|_| Rejected::Garbage)?;
    let sentinel = !number.is_finite() || number.abs() > 1e300 || number == CRC_ERROR;
    Ok((!sentinel).then_some(number))
}

/// What the firmware prints for the temperature when the sensor's CRC check fails.
const CRC_ERROR: f64 = -1000.0;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Vec<Frame> {
        decoder.push(bytes);
        std::iter::from_fn(|| decoder.next_frame()).collect()
    }

    #[test]
    fn overlong_line_keeps_only_a_bounded_tail() {
        let mut decoder = Decoder::new();
        decoder.push(&[b'x'; 10_000]);
        assert!(decoder.line.len() <= MAX_LINE + 1);
        assert!(decoder.overlong);
        assert_eq!(
            decode_all(&mut decoder, b"\n"),
            [Frame::Rejected(Rejected::TooLong)]
        );
        assert!(decoder.line.is_empty() && !decoder.overlong);
    }

    #[test]
    fn value_parsing() {
        assert_eq!(parse_value(b"3.52"), Ok(Some(3.52)));
        assert_eq!(parse_value(b"-1000.0"), Ok(None));
        assert_eq!(parse_value(b"-1000"), Ok(None));
        assert_eq!(parse_value(b"1e301"), Ok(None));
        assert_eq!(parse_value(b"-1e301"), Ok(None));
        assert_eq!(parse_value(b"1e300"), Ok(Some(1e300)));
        for sentinel in [
            "inf", "-inf", "INF", "Infinity", "nan", "NaN", "-nan", "ovf", "OVF",
        ] {
            assert_eq!(parse_value(sentinel.as_bytes()), Ok(None), "{sentinel}");
        }
        for garbage in ["", "abc", "1.2.3", " 5", "0x10", "ovfl", "--1", "\u{ff}"] {
            assert_eq!(
                parse_value(garbage.as_bytes()),
                Err(Rejected::Garbage),
                "{garbage:?}"
            );
        }
        assert_eq!(parse_value(&[0xff, b'1']), Err(Rejected::Garbage));
    }

    fn one_line(water: Option<f64>, temperature: Option<f64>, heater_on: bool) -> Frame {
        Frame::Reading(Reading {
            water_distance_in: water,
            temperature_c: temperature,
            heater_on,
            format: ReplyFormat::OneLine,
        })
    }

    #[test]
    fn one_line_replies_of_6105f59() {
        let mut decoder = Decoder::new();
        assert_eq!(
            decode_all(
                &mut decoder,
                b"W+1.98,T+21.0,B+0
W+2.01,T+85.0,B+1
"
            ),
            [
                one_line(Some(1.98), Some(21.0), false),
                one_line(Some(2.01), Some(85.0), true)
            ]
        );
        assert_eq!(
            decode_all(
                &mut decoder,
                b"W+72.01,T+-1000.0,B+0
"
            ),
            [one_line(Some(72.01), None, false)]
        );
    }

    #[test]
    fn malformed_one_line_replies_are_skipped_whole() {
        let mut decoder = Decoder::new();
        for bad in [
            &b"W+1.98,T+21.0
"[..],
            b"W+1.98,T+21.0,B+0,X+1
",
            b"W+1.98,B+0,T+21.0
",
            b"W+1.98,T+21.0,B+2
",
            b"W+1.98,T+2x.0,B+0
",
            b"W+,T+21.0,B+0
",
            b"W+1.98,,B+0
",
            b"T+21.0,W+1.98,B+0
",
        ] {
            let frames = decode_all(&mut decoder, bad);
            assert_eq!(frames.len(), 1, "{:?}", String::from_utf8_lossy(bad));
            assert!(
                matches!(frames[0], Frame::Rejected(_)),
                "{:?} gave {frames:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            decode_all(
                &mut decoder,
                b"W+1.98,T+21.0,B+0
"
            ),
            [one_line(Some(1.98), Some(21.0), false)]
        );
    }

    #[test]
    fn formats_are_never_mixed_into_one_reading() {
        let mut decoder = Decoder::new();
        // A three-line reply cut after its W+, then a one-line reply: the partial one is
        // reported, the one-line reply stands alone.
        assert_eq!(
            decode_all(
                &mut decoder,
                b"W+3.00
W+1.98,T+21.0,B+1
T+50.0
B+1
"
            ),
            [
                Frame::Rejected(Rejected::OutOfSequence),
                one_line(Some(1.98), Some(21.0), true),
                Frame::Rejected(Rejected::OutOfSequence),
                Frame::Rejected(Rejected::OutOfSequence),
            ]
        );
    }

    #[test]
    fn a_reply_cut_by_a_watchdog_reboot() {
        let mut decoder = Decoder::new();
        assert_eq!(
            decode_all(
                &mut decoder,
                b"W+\xb2MrCoffeeBot v2.0 Booted.\nW+2.01,T+21.0,B+0\n"
            ),
            [
                Frame::Rejected(Rejected::OutOfSequence),
                Frame::Banner {
                    firmware: "MrCoffeeBot v2.0".to_owned()
                },
                one_line(Some(2.01), Some(21.0), false),
            ]
        );
    }

    proptest! {
        /// Random bytes in random chunks: the partial line stays bounded and every reading
        /// decoded is finite (and nothing panics).
        #[test]
        fn random_bytes_stay_bounded_and_finite(chunks in prop::collection::vec(
            prop::collection::vec(any::<u8>(), 0..600), 0..30)) {
            let mut decoder = Decoder::new();
            for chunk in &chunks {
                decoder.push(chunk);
                prop_assert!(decoder.line.len() <= MAX_LINE + 1);
                while let Some(frame) = decoder.next_frame() {
                    if let Frame::Reading(reading) = frame {
                        prop_assert!(reading.temperature_c.is_none_or(f64::is_finite));
                        prop_assert!(reading.water_distance_in.is_none_or(f64::is_finite));
                    }
                }
            }
            prop_assert!(decoder.line.capacity() <= 2 * (MAX_LINE + 2));
        }
    }
}
