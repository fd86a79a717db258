//! MC protocol (SLMP) 3E frames in binary code: the requests the agent may
//! send, the answers, and device names. Shared by the client and the small
//! server of [`super::server`].
//!
//! # Wire format (all multi-byte fields little-endian, except the subheader)
//!
//! ```text
//! request  := 50 00 | network u8 | pc u8 | module_io u16 | station u8
//!             | length u16 (bytes from the timer to the end)
//!             | timer u16 (monitoring timer, units of 250 ms)
//!             | command u16 | subcommand u16 | request data
//! response := D0 00 | network u8 | pc u8 | module_io u16 | station u8
//!             | length u16 (bytes from the end code to the end)
//!             | end code u16 (0 = success) | response data
//!             (on failure: network, pc, module_io, station, command,
//!              subcommand of the refused request: 9 bytes)
//! ```
//!
//! Access route of a directly connected CPU: network 0, pc 0xFF, module_io
//! 0x03FF, station 0.
//!
//! The only commands defined here, and so the only ones the agent can send:
//!
//! | command | subcommand | what | request data | response data |
//! |---|---|---|---|---|
//! | 0401 | 0000 / 0002 | batch read, word units | device, count u16 | count × u16 |
//! | 0401 | 0001 / 0003 | batch read, bit units | device, count u16 | ⌈count/2⌉ bytes, two bits each: high nibble first |
//! | 0101 | 0000 | read CPU model | (none) | model name (16 ASCII bytes, space padded), model code u16 |
//!
//! A device is `number u24 | code u8` with subcommands 0000/0001 (MELSEC
//! Q/L, iQ-F, and iQ-R in compatible mode) and `number u32 | code u16` with
//! 0002/0003 (MELSEC iQ-R). One batch read covers at most
//! [`MAX_READ_WORDS`] words or [`MAX_READ_BITS`] bits.

/// Subheader of a 3E request and of its response.
pub const REQUEST_SUBHEADER: [u8; 2] = [0x50, 0x00];
pub const RESPONSE_SUBHEADER: [u8; 2] = [0xD0, 0x00];
/// Batch read (word or bit units, per subcommand).
pub const CMD_BATCH_READ: u16 = 0x0401;
/// Read CPU model name.
pub const CMD_READ_TYPE_NAME: u16 = 0x0101;
/// Most words one batch read returns.
pub const MAX_READ_WORDS: u16 = 960;
/// Most bits one batch read returns.
pub const MAX_READ_BITS: u16 = 7168;
/// Bytes of a 3E header up to and including the length field.
pub const HEADER_LEN: usize = 9;
/// Largest response the client accepts: a full word read and its end code.
pub const MAX_RESPONSE_DATA: usize = 2 + 2 * MAX_READ_WORDS as usize;
/// End code a server answers an unsupported command with ("command or
/// subcommand specified wrong").
pub const END_CODE_BAD_COMMAND: u16 = 0xC059;
/// End code for a device or range the server cannot read.
pub const END_CODE_BAD_DEVICE: u16 = 0xC056;

/// How devices are encoded in a request: which subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Series {
    /// MELSEC Q, L, iQ-F (FX5) and iQ-R in compatible mode: 3-byte device
    /// numbers, 1-byte codes (subcommands 0000 / 0001).
    #[default]
    Q,
    /// MELSEC iQ-R: 4-byte device numbers, 2-byte codes (0002 / 0003).
    IqR,
}

/// A device family (`D`, `M`, `X`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceType {
    pub name: &'static str,
    /// Binary device code.
    pub code: u8,
    /// A bit device (read in bit units) rather than a word device.
    pub bit: bool,
    /// Numbered in hexadecimal (`X1F`, `B10`, `W1A0`).
    pub hex: bool,
}

/// The devices the agent reads. Longer names first, so `SD` is not read as
/// `S` + `D...`.
pub const DEVICE_TYPES: [DeviceType; 13] = [
    DeviceType {
        name: "SM",
        code: 0x91,
        bit: true,
        hex: false,
    },
    DeviceType {
        name: "SD",
        code: 0xA9,
        bit: false,
        hex: false,
    },
    DeviceType {
        name: "SB",
        code: 0xA1,
        bit: true,
        hex: true,
    },
    DeviceType {
        name: "SW",
        code: 0xB5,
        bit: false,
        hex: true,
    },
    DeviceType {
        name: "X",
        code: 0x9C,
        bit: true,
        hex: true,
    },
    DeviceType {
        name: "Y",
        code: 0x9D,
        bit: true,
        hex: true,
    },
    DeviceType {
        name: "M",
        code: 0x90,
        bit: true,
        hex: false,
    },
    DeviceType {
        name: "L",
        code: 0x92,
        bit: true,
        hex: false,
    },
    DeviceType {
        name: "F",
        code: 0x93,
        bit: true,
        hex: false,
    },
    DeviceType {
        name: "B",
        code: 0xA0,
        bit: true,
        hex: true,
    },
    DeviceType {
        name: "D",
        code: 0xA8,
        bit: false,
        hex: false,
    },
    DeviceType {
        name: "W",
        code: 0xB4,
        bit: false,
        hex: true,
    },
    DeviceType {
        name: "R",
        code: 0xAF,
        bit: false,
        hex: false,
    },
];

/// One device: family and number (`D100` is `D`, 100; `X1F` is `X`, 31).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Device {
    pub ty: DeviceType,
    pub number: u32,
}

/// Largest device number a 3-byte field holds.
const MAX_DEVICE_NUMBER: u32 = 0xFF_FFFF;

impl Device {
    /// Parses `D100`, `SD203`, `X1F`, `m8000` (case does not matter).
    pub fn parse(text: &str) -> Result<Device, String> {
        let upper = text.trim().to_ascii_uppercase();
        let ty = DEVICE_TYPES
            .iter()
            .find(|t| {
                upper.starts_with(t.name)
                    && upper[t.name.len()..]
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_hexdigit())
            })
            .ok_or_else(|| {
                format!(
                    "{text:?} is not a device this agent reads ({})",
                    DEVICE_TYPES.map(|t| t.name).join(", ")
                )
            })?;
        let digits = &upper[ty.name.len()..];
        let number = u32::from_str_radix(digits, if ty.hex { 16 } else { 10 }).map_err(|_| {
            format!(
                "{text:?}: {digits:?} is not a {} device number",
                if ty.hex { "hexadecimal" } else { "decimal" }
            )
        })?;
        if number > MAX_DEVICE_NUMBER {
            return Err(format!("{text:?}: device number above {MAX_DEVICE_NUMBER}"));
        }
        Ok(Device { ty: *ty, number })
    }

    /// The device `n` places further.
    pub fn offset(self, n: u32) -> Device {
        Device {
            number: self.number + n,
            ..self
        }
    }

    fn encode(self, series: Series, out: &mut Vec<u8>) {
        match series {
            Series::Q => {
                out.extend_from_slice(&self.number.to_le_bytes()[..3]);
                out.push(self.ty.code);
            }
            Series::IqR => {
                out.extend_from_slice(&self.number.to_le_bytes());
                out.extend_from_slice(&u16::from(self.ty.code).to_le_bytes());
            }
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ty.hex {
            write!(f, "{}{:X}", self.ty.name, self.number)
        } else {
            write!(f, "{}{}", self.ty.name, self.number)
        }
    }
}

/// Decodes a device field of a request (the server's side), or `None` for
/// an unknown code.
pub fn decode_device(series: Series, data: &[u8]) -> Option<(Device, usize)> {
    let (number, code, len) = match series {
        Series::Q => {
            let d = data.get(..4)?;
            (
                u32::from_le_bytes([d[0], d[1], d[2], 0]),
                u16::from(d[3]),
                4,
            )
        }
        Series::IqR => {
            let d = data.get(..6)?;
            (
                u32::from_le_bytes([d[0], d[1], d[2], d[3]]),
                u16::from_le_bytes([d[4], d[5]]),
                6,
            )
        }
    };
    let ty = DEVICE_TYPES.iter().find(|t| u16::from(t.code) == code)?;
    Some((Device { ty: *ty, number }, len))
}

/// Every request the agent can make. There is no other way to build a
/// request frame: a write cannot be expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRequest {
    /// Batch read of `count` words from `head` (a word device, or a bit
    /// device 16 bits per word).
    Words { head: Device, count: u16 },
    /// Batch read of `count` bits from `head` (a bit device).
    Bits { head: Device, count: u16 },
    /// The CPU's model name and code.
    TypeName,
}

impl ReadRequest {
    /// (command, subcommand) of the request in `series`.
    pub fn command(&self, series: Series) -> (u16, u16) {
        match (self, series) {
            (ReadRequest::Words { .. }, Series::Q) => (CMD_BATCH_READ, 0x0000),
            (ReadRequest::Bits { .. }, Series::Q) => (CMD_BATCH_READ, 0x0001),
            (ReadRequest::Words { .. }, Series::IqR) => (CMD_BATCH_READ, 0x0002),
            (ReadRequest::Bits { .. }, Series::IqR) => (CMD_BATCH_READ, 0x0003),
            (ReadRequest::TypeName, _) => (CMD_READ_TYPE_NAME, 0x0000),
        }
    }

    /// The whole request frame; `timer` is the monitoring timer in units of
    /// 250 ms (how long the CPU may take before it answers with an error).
    pub fn encode(&self, series: Series, timer: u16) -> Vec<u8> {
        let (command, subcommand) = self.command(series);
        let mut body = Vec::with_capacity(16);
        body.extend_from_slice(&timer.to_le_bytes());
        body.extend_from_slice(&command.to_le_bytes());
        body.extend_from_slice(&subcommand.to_le_bytes());
        match *self {
            ReadRequest::Words { head, count } | ReadRequest::Bits { head, count } => {
                head.encode(series, &mut body);
                body.extend_from_slice(&count.to_le_bytes());
            }
            ReadRequest::TypeName => {}
        }
        let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
        frame.extend_from_slice(&REQUEST_SUBHEADER);
        frame.extend_from_slice(&[0x00, 0xFF, 0xFF, 0x03, 0x00]);
        frame.extend_from_slice(&(body.len() as u16).to_le_bytes());
        frame.extend_from_slice(&body);
        frame
    }
}

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a 3E binary response (subheader {0:02X?})")]
    Subheader([u8; 2]),
    #[error("response announces {0} bytes, more than any read returns ({MAX_RESPONSE_DATA})")]
    TooLong(usize),
    #[error("response of {got} bytes is shorter than the {expected} its request needs")]
    Short { expected: usize, got: usize },
    #[error("the CPU answered with end code {0:04X}")]
    EndCode(u16),
}

/// The length of the rest of a response, from its header.
pub fn response_data_len(header: &[u8; HEADER_LEN]) -> Result<usize, FrameError> {
    if header[..2] != RESPONSE_SUBHEADER {
        return Err(FrameError::Subheader([header[0], header[1]]));
    }
    let len = usize::from(u16::from_le_bytes([header[7], header[8]]));
    if len > MAX_RESPONSE_DATA {
        return Err(FrameError::TooLong(len));
    }
    if len < 2 {
        return Err(FrameError::Short {
            expected: 2,
            got: len,
        });
    }
    Ok(len)
}

/// The response data after a successful end code (`rest` is what follows
/// the header).
pub fn response_data(rest: &[u8]) -> Result<&[u8], FrameError> {
    let end_code = u16::from_le_bytes([rest[0], rest[1]]);
    if end_code != 0 {
        return Err(FrameError::EndCode(end_code));
    }
    Ok(&rest[2..])
}

fn need(data: &[u8], expected: usize) -> Result<(), FrameError> {
    if data.len() < expected {
        return Err(FrameError::Short {
            expected,
            got: data.len(),
        });
    }
    Ok(())
}

/// `count` words of a word read's response data.
pub fn decode_words(data: &[u8], count: u16) -> Result<Vec<u16>, FrameError> {
    need(data, 2 * usize::from(count))?;
    Ok(data
        .chunks_exact(2)
        .take(usize::from(count))
        .map(|w| u16::from_le_bytes([w[0], w[1]]))
        .collect())
}

/// `count` bits of a bit read's response data: two per byte, the first in
/// the high nibble.
pub fn decode_bits(data: &[u8], count: u16) -> Result<Vec<bool>, FrameError> {
    let count = usize::from(count);
    need(data, count.div_ceil(2))?;
    Ok((0..count)
        .map(|i| {
            let byte = data[i / 2];
            if i % 2 == 0 {
                byte & 0x10 != 0
            } else {
                byte & 0x01 != 0
            }
        })
        .collect())
}

/// Bits packed as a bit read's response data (the server's side).
pub fn encode_bits(bits: &[bool]) -> Vec<u8> {
    bits.chunks(2)
        .map(|pair| (u8::from(pair[0]) << 4) | u8::from(pair.get(1).copied().unwrap_or(false)))
        .collect()
}

/// The model name (trimmed) and model code of a type-name response.
pub fn decode_type_name(data: &[u8]) -> Result<(String, u16), FrameError> {
    need(data, 18)?;
    let name = String::from_utf8_lossy(&data[..16])
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_string();
    Ok((name, u16::from_le_bytes([data[16], data[17]])))
}
