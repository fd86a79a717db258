//! The record frame of a segment file, and reading frames back: whole and
//! verified, header only, or searching for the next intact frame after
//! damage.
//!
//! ```text
//! record  := len: u32 LE | crc: u32 LE | payload (len bytes)
//! payload := hlen: u32 LE | header (hlen bytes, JSON) | Arrow IPC stream
//! header  := {"offset": N, "group": G, "rows": R, "producer": {"producer": P, "last_seq": S}?}
//! ```
//! `crc` is CRC32C of the payload. `offset` is the record's offset in its
//! topic: frames carry it so that records after a damaged stretch keep
//! their offsets, however many records the damage swallowed. `group` is the
//! first offset of the group commit the record was written in: a frame of a
//! later group on disk proves that every earlier group was fsync'd (the
//! writer starts a group only after the previous one's fsync returned),
//! which is how recovery tells acknowledged data from a torn last write.
//! (Segments written before these fields existed lack them; their records
//! are numbered by position.)

use crate::ProducerMark;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes before the payload: `len` and `crc`.
pub(crate) const FRAME_HEAD: u64 = 8;
/// The longest header a frame may have; longer means the frame is damaged.
const MAX_HEADER: usize = 64 * 1024;
/// How much the search for the next intact frame reads at a time.
const SEARCH_WINDOW: usize = 1 << 20;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct RecordHeader {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<ProducerMark>,
    pub rows: u32,
}

/// A payload body encoded by the appender: the Arrow IPC stream and its CRC,
/// computed off the writer thread. The writer adds the header (which holds
/// the offset, known only when it writes) and combines the CRCs.
pub(crate) struct Body {
    pub ipc: Vec<u8>,
    pub crc: u32,
    pub rows: u32,
    pub producer: Option<ProducerMark>,
}

/// The bytes of one frame: head, header and body, ready to write.
pub(crate) fn frame(offset: u64, group: u64, body: &Body) -> (Vec<u8>, usize) {
    let header = serde_json::to_vec(&RecordHeader {
        offset: Some(offset),
        group: Some(group),
        producer: body.producer.clone(),
        rows: body.rows,
    })
    .expect("a record header serializes");
    let mut prefix = Vec::with_capacity(4 + header.len());
    prefix.extend_from_slice(&(header.len() as u32).to_le_bytes());
    prefix.extend_from_slice(&header);
    let len = prefix.len() + body.ipc.len();
    let crc = crc32c::crc32c_combine(crc32c::crc32c(&prefix), body.crc, body.ipc.len());
    let mut head = Vec::with_capacity(FRAME_HEAD as usize + prefix.len());
    head.extend_from_slice(&(len as u32).to_le_bytes());
    head.extend_from_slice(&crc.to_le_bytes());
    head.extend_from_slice(&prefix);
    (head, FRAME_HEAD as usize + len)
}

/// The header of a payload and where its IPC stream starts.
pub(crate) fn decode_header(payload: &[u8]) -> Result<(RecordHeader, usize), String> {
    if payload.len() < 4 {
        return Err("payload shorter than its header length".into());
    }
    let hlen = u32::from_le_bytes(payload[..4].try_into().unwrap()) as usize;
    if hlen > MAX_HEADER {
        return Err(format!("header length {hlen} is implausible"));
    }
    let header = payload
        .get(4..4 + hlen)
        .ok_or("header longer than the payload")?;
    let header: RecordHeader =
        serde_json::from_slice(header).map_err(|e| format!("bad record header: {e}"))?;
    Ok((header, 4 + hlen))
}

/// What is found at a position of a segment.
pub(crate) enum Frame {
    /// An intact frame of `size` bytes in all.
    Record {
        size: u64,
        header: RecordHeader,
        /// The payload, when it was read (whole reads).
        payload: Option<Vec<u8>>,
    },
    /// The end of the data.
    End,
    /// A short, implausible or (for whole reads) CRC-failing frame.
    Bad(String),
}

/// Reads the frame at `pos` of `file`, whose data ends at `end`. `whole`:
/// read and verify the payload; otherwise only the header is read (cheap,
/// for building indexes; the CRC is checked when the record is read).
pub(crate) fn read_at(file: &File, pos: u64, end: u64, whole: bool) -> io::Result<Frame> {
    if pos >= end {
        return Ok(Frame::End);
    }
    if end - pos < FRAME_HEAD + 4 {
        return Ok(Frame::Bad("short record header".into()));
    }
    let mut head = [0u8; FRAME_HEAD as usize + 4];
    file.read_exact_at(&mut head, pos)?;
    let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as u64;
    let crc = u32::from_le_bytes(head[4..8].try_into().unwrap());
    let hlen = u32::from_le_bytes(head[8..12].try_into().unwrap()) as u64;
    if len < 4 || pos + FRAME_HEAD + len > end {
        return Ok(Frame::Bad("short record payload".into()));
    }
    if hlen as usize > MAX_HEADER || hlen + 4 > len {
        return Ok(Frame::Bad(format!("header length {hlen} is implausible")));
    }
    let size = FRAME_HEAD + len;
    if whole {
        let mut payload = vec![0u8; len as usize];
        file.read_exact_at(&mut payload, pos + FRAME_HEAD)?;
        if crc32c::crc32c(&payload) != crc {
            return Ok(Frame::Bad("CRC mismatch".into()));
        }
        return Ok(match decode_header(&payload) {
            Ok((header, _)) => Frame::Record {
                size,
                header,
                payload: Some(payload),
            },
            Err(reason) => Frame::Bad(reason),
        });
    }
    let mut header = vec![0u8; hlen as usize];
    file.read_exact_at(&mut header, pos + FRAME_HEAD + 4)?;
    Ok(match serde_json::from_slice(&header) {
        Ok(header) => Frame::Record {
            size,
            header,
            payload: None,
        },
        Err(e) => Frame::Bad(format!("bad record header: {e}")),
    })
}

/// The next intact frame (CRC verified) strictly after `from` and before
/// `end`, searching byte by byte: where damage ends. Frames that lack an
/// offset in their header (written before frames carried one) are not
/// accepted: after damage their offsets could not be known.
pub(crate) fn next_intact(
    file: &File,
    from: u64,
    end: u64,
) -> io::Result<Option<(u64, RecordHeader)>> {
    let mut window = Vec::new();
    let mut window_at = from + 1;
    let mut candidate = from + 1;
    while candidate + FRAME_HEAD + 4 < end {
        // Keep at least the 13 bytes of a frame head and the header's first
        // byte of the candidate in the window.
        if candidate + FRAME_HEAD + 5 > window_at + window.len() as u64 {
            window_at = candidate;
            let n = (SEARCH_WINDOW as u64).min(end - window_at) as usize;
            window.resize(n, 0);
            file.read_exact_at(&mut window, window_at)?;
            if window.len() < FRAME_HEAD as usize + 5 {
                return Ok(None);
            }
        }
        let at = (candidate - window_at) as usize;
        let len = u32::from_le_bytes(window[at..at + 4].try_into().unwrap()) as u64;
        let hlen = u32::from_le_bytes(window[at + 8..at + 12].try_into().unwrap()) as u64;
        let plausible = len >= 4
            && candidate + FRAME_HEAD + len <= end
            && hlen as usize <= MAX_HEADER
            && hlen + 4 <= len
            && window[at + 12] == b'{';
        if plausible {
            if let Frame::Record { header, .. } = read_at(file, candidate, end, true)? {
                if header.offset.is_some() {
                    return Ok(Some((candidate, header)));
                }
            }
        }
        candidate += 1;
    }
    Ok(None)
}
