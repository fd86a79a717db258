//! Syslog on the wire: TCP framing (RFC 6587) and the two message formats
//! (RFC 3164 and RFC 5424), parsed leniently, since devices bend both.
//!
//! # Framing on TCP
//!
//! Each frame is told apart by its first byte:
//!
//! - **octet-counted**: `LEN SP MSG`, `LEN` the decimal length of `MSG` in
//!   bytes (at most 10 digits);
//! - **newline-framed** (non-transparent framing): `MSG LF`, a `CR` before
//!   the `LF` dropped. Anything not starting with a digit.
//!
//! A message longer than `max_message_bytes` is cut there and the rest of
//! its frame skipped; the frame's full length is returned with it. A count
//! that is not `digits SP` leaves the stream unreadable: an error, and the
//! connection is closed. On UDP each datagram is one message.
//!
//! # Formats
//!
//! - **RFC 5424**: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD
//!   [MSG]`, `-` for a nil field, SD `-` or `[id name="value" ...]...`,
//!   MSG optionally after a UTF-8 BOM.
//! - **RFC 3164**: `<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG`. When the
//!   timestamp is missing (many devices send `<PRI>` and text only), the rest
//!   is all MSG. When the token after the timestamp ends with `:` it is
//!   the tag (no hostname). A message with no `<PRI>` is `user.notice`
//!   (RFC 3164 4.3.3) and all MSG.
//!
//! Invalid UTF-8 is replaced (U+FFFD), never refused.

/// A parsed syslog message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub facility: u8,
    pub severity: u8,
    /// RFC 5424 (`true`) or RFC 3164 / free form.
    pub rfc5424: bool,
    /// The RFC 5424 timestamp, in ns since the epoch.
    pub ts_ns: Option<i64>,
    pub host: Option<String>,
    /// APP-NAME (5424) or TAG (3164).
    pub app: Option<String>,
    pub procid: Option<String>,
    pub msgid: Option<String>,
    /// Structured data as sent (5424).
    pub sd: Option<String>,
    pub msg: String,
}

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];
const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// The facility's name (`local4`).
pub fn facility_name(facility: u8) -> &'static str {
    FACILITIES
        .get(usize::from(facility))
        .copied()
        .unwrap_or("unknown")
}

/// The severity's name (`warning`).
pub fn severity_name(severity: u8) -> &'static str {
    SEVERITIES
        .get(usize::from(severity))
        .copied()
        .unwrap_or("unknown")
}

/// `<PRI>` at the start of `s`: (facility, severity, rest).
fn pri(s: &str) -> Option<(u8, u8, &str)> {
    let rest = s.strip_prefix('<')?;
    let end = rest.find('>')?;
    let digits = &rest[..end];
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u16 = digits.parse().ok()?;
    if value > 191 {
        return None;
    }
    Some(((value / 8) as u8, (value % 8) as u8, &rest[end + 1..]))
}

/// The next space-separated token and what follows it.
fn token(s: &str) -> (&str, &str) {
    match s.find(' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

fn nil(field: &str) -> Option<String> {
    (field != "-" && !field.is_empty()).then(|| field.to_string())
}

/// Parses one message (a datagram's payload or a frame).
pub fn parse(bytes: &[u8]) -> Message {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches(['\n', '\r', '\0']);
    let Some((facility, severity, rest)) = pri(text) else {
        return Message {
            facility: 1,
            severity: 5,
            msg: text.trim().to_string(),
            ..Message::default()
        };
    };
    let mut m = match rest.strip_prefix("1 ") {
        Some(rest) => parse_5424(rest),
        None => parse_3164(rest),
    };
    m.facility = facility;
    m.severity = severity;
    m
}

fn parse_5424(s: &str) -> Message {
    let (ts, s) = token(s);
    let (host, s) = token(s);
    let (app, s) = token(s);
    let (procid, s) = token(s);
    let (msgid, s) = token(s);
    let (sd, msg) = structured_data(s);
    let msg = msg.strip_prefix('\u{feff}').unwrap_or(msg);
    Message {
        rfc5424: true,
        ts_ns: chrono::DateTime::parse_from_rfc3339(ts)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt()),
        host: nil(host),
        app: nil(app),
        procid: nil(procid),
        msgid: nil(msgid),
        sd: nil(sd),
        msg: msg.trim().to_string(),
        ..Message::default()
    }
}

/// Splits RFC 5424's STRUCTURED-DATA (`-` or `[...]...`, with `\]`
/// escapes inside values) from the MSG after it.
fn structured_data(s: &str) -> (&str, &str) {
    if !s.starts_with('[') {
        let (sd, rest) = token(s);
        return (sd, rest);
    }
    let bytes = s.as_bytes();
    let (mut i, mut in_element, mut in_value, mut escaped) = (0, false, false, false);
    while i < bytes.len() {
        let b = bytes[i];
        if escaped {
            escaped = false;
        } else if in_value {
            match b {
                b'\\' => escaped = true,
                b'"' => in_value = false,
                _ => {}
            }
        } else if in_element {
            match b {
                b'"' => in_value = true,
                b']' => in_element = false,
                _ => {}
            }
        } else if b == b'[' {
            in_element = true;
        } else {
            break;
        }
        i += 1;
    }
    let (sd, rest) = s.split_at(i);
    (sd, rest.strip_prefix(' ').unwrap_or(rest))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Length of an RFC 3164 timestamp (`Mmm dd hh:mm:ss`, the day
/// space-padded or not, optionally with fractions) at the start of `s`.
fn timestamp_3164(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.len() < 14 || !MONTHS.contains(&s.get(..3)?) || b[3] != b' ' {
        return None;
    }
    let mut i = 4;
    if b[i] == b' ' {
        i += 1;
    }
    let day_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if !(1..=2).contains(&(i - day_start)) || b.get(i) != Some(&b' ') {
        return None;
    }
    i += 1;
    let time = s.get(i..i + 8)?.as_bytes();
    let shape = time.iter().enumerate().all(|(k, c)| {
        if k == 2 || k == 5 {
            *c == b':'
        } else {
            c.is_ascii_digit()
        }
    });
    if !shape {
        return None;
    }
    i += 8;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    Some(i)
}

/// A 3164 TAG at the start of `s` (`app:`, `app[123]:`): (app, pid, MSG).
fn tag_3164(s: &str) -> Option<(&str, Option<&str>, &str)> {
    let end = s.find([':', '[', ' '])?;
    let app = &s[..end];
    if app.is_empty()
        || app.len() > 48
        || !app
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_./".contains(&c))
    {
        return None;
    }
    let rest = &s[end..];
    let (pid, rest) = match rest.strip_prefix('[') {
        Some(r) => {
            let close = r.find(']')?;
            (Some(&r[..close]), &r[close + 1..])
        }
        None => (None, rest),
    };
    let msg = rest.strip_prefix(':')?;
    Some((app, pid, msg.strip_prefix(' ').unwrap_or(msg)))
}

fn parse_3164(s: &str) -> Message {
    let Some(len) = timestamp_3164(s) else {
        return Message {
            msg: s.trim().to_string(),
            ..Message::default()
        };
    };
    let rest = s[len..].trim_start();
    let (first, after) = token(rest);
    // `host tag: msg`, or `tag: msg` from a device that leaves its name out.
    let (host, rest) = if first.ends_with(':') || first.ends_with("]:") {
        (None, rest)
    } else {
        (Some(first), after)
    };
    let (app, procid, msg) = match tag_3164(rest) {
        Some((app, pid, msg)) => (Some(app), pid, msg),
        None => (None, None, rest),
    };
    Message {
        host: host.and_then(nil),
        app: app.map(str::to_string),
        procid: procid.and_then(nil),
        msg: msg.trim().to_string(),
        ..Message::default()
    }
}

/// A frame read off a TCP stream: its first `max_message_bytes` bytes, and
/// its full length when it was longer.
#[derive(Debug, PartialEq)]
pub struct Frame {
    pub bytes: Vec<u8>,
    pub truncated_from: Option<usize>,
}

/// Why a TCP stream cannot be read on.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FramingError {
    #[error("an octet count is not followed by a space or has more than 10 digits: {0:?}")]
    BadCount(String),
}

#[derive(Debug)]
enum State {
    /// At a frame's start.
    Start,
    /// In an octet-counted frame with `left` bytes to come.
    Counted {
        left: usize,
        kept: Vec<u8>,
        total: usize,
    },
    /// In a newline-framed frame, `total` bytes read so far.
    Line { kept: Vec<u8>, total: usize },
}

/// Splits a TCP stream into frames (RFC 6587), bytes pushed as they come.
/// It holds at most one frame's first `max_message_bytes` bytes plus what
/// one read brought.
#[derive(Debug)]
pub struct Framer {
    max: usize,
    buf: Vec<u8>,
    state: State,
}

impl Framer {
    pub fn new(max_message_bytes: usize) -> Framer {
        Framer {
            max: max_message_bytes,
            buf: Vec::new(),
            state: State::Start,
        }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if the bytes pushed hold one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FramingError> {
        loop {
            match &mut self.state {
                State::Start => {
                    // Blank lines between frames are not messages.
                    let blank = self
                        .buf
                        .iter()
                        .take_while(|b| matches!(b, b'\n' | b'\r' | b'\0' | b' '))
                        .count();
                    self.buf.drain(..blank);
                    let Some(&first) = self.buf.first() else {
                        return Ok(None);
                    };
                    if !first.is_ascii_digit() {
                        self.state = State::Line {
                            kept: Vec::new(),
                            total: 0,
                        };
                        continue;
                    }
                    let digits = self.buf.iter().take_while(|b| b.is_ascii_digit()).count();
                    if digits > 10 {
                        return Err(self.bad_count(digits));
                    }
                    if digits == self.buf.len() {
                        return Ok(None);
                    }
                    if self.buf[digits] != b' ' {
                        return Err(self.bad_count(digits + 1));
                    }
                    let total: usize = std::str::from_utf8(&self.buf[..digits])
                        .ok()
                        .and_then(|d| d.parse().ok())
                        .ok_or_else(|| self.bad_count(digits))?;
                    self.buf.drain(..=digits);
                    self.state = State::Counted {
                        left: total,
                        kept: Vec::with_capacity(total.min(self.max)),
                        total,
                    };
                }
                State::Counted { left, kept, total } => {
                    let take = (*left).min(self.buf.len());
                    let keep = take.min(self.max.saturating_sub(kept.len()));
                    kept.extend_from_slice(&self.buf[..keep]);
                    self.buf.drain(..take);
                    *left -= take;
                    if *left > 0 {
                        return Ok(None);
                    }
                    let frame = Frame {
                        bytes: std::mem::take(kept),
                        truncated_from: (*total > self.max).then_some(*total),
                    };
                    self.state = State::Start;
                    return Ok(Some(frame));
                }
                State::Line { kept, total } => {
                    let end = self.buf.iter().position(|b| *b == b'\n');
                    let take = end.unwrap_or(self.buf.len());
                    let keep = take.min(self.max.saturating_sub(kept.len()));
                    kept.extend_from_slice(&self.buf[..keep]);
                    *total += take;
                    self.buf.drain(..take);
                    if end.is_none() {
                        return Ok(None);
                    }
                    self.buf.drain(..1);
                    let mut bytes = std::mem::take(kept);
                    let mut total = *total;
                    if bytes.last() == Some(&b'\r') && total == bytes.len() {
                        bytes.pop();
                        total -= 1;
                    }
                    self.state = State::Start;
                    return Ok(Some(Frame {
                        truncated_from: (total > bytes.len()).then_some(total),
                        bytes,
                    }));
                }
            }
        }
    }

    /// At the stream's end: a newline-framed message whose newline never
    /// came (a sender that closes right after its last message).
    pub fn finish(&mut self) -> Option<Frame> {
        match std::mem::replace(&mut self.state, State::Start) {
            State::Line { mut kept, total } => {
                let keep = self.buf.len().min(self.max.saturating_sub(kept.len()));
                kept.extend_from_slice(&self.buf[..keep]);
                let total = total + self.buf.len();
                self.buf.clear();
                Some(Frame {
                    truncated_from: (total > kept.len()).then_some(total),
                    bytes: kept,
                })
            }
            State::Start if !self.buf.is_empty() && !self.buf[0].is_ascii_digit() => {
                self.state = State::Line {
                    kept: Vec::new(),
                    total: 0,
                };
                self.finish()
            }
            _ => None,
        }
    }

    fn bad_count(&self, len: usize) -> FramingError {
        let shown = &self.buf[..len.min(self.buf.len()).min(16)];
        FramingError::BadCount(String::from_utf8_lossy(shown).into_owned())
    }
}
