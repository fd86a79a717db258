//! Which reads one poll of a device takes, and how each tag's value comes
//! out of their answers.
//!
//! Tags of one table (holding, input, coil, discrete input) are sorted by
//! address and joined into one read while the read stays within
//! `max_registers_per_request` (at most 125 registers) or
//! `max_bits_per_request` (at most 2000 bits) and the addresses between two
//! tags left unread are at most `max_gap`: as few requests as the protocol
//! and the device allow. Overlapping tags share their registers.

use super::config::{ByteOrder, DataType, ModbusDeviceConfig, RegisterKind};

/// One read: a table, its first address and how many registers or bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub kind: RegisterKind,
    pub start: u16,
    pub count: u16,
}

/// Where a tag's registers are in the answers: which read, and the offset
/// of its first register or bit in that read's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub read: usize,
    pub offset: usize,
}

/// The reads of one poll, and each tag's slot (in the device's tag order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub reads: Vec<Read>,
    pub slots: Vec<Slot>,
}

impl Plan {
    pub fn new(device: &ModbusDeviceConfig) -> Plan {
        let mut order: Vec<usize> = (0..device.tags.len()).collect();
        order.sort_by_key(|&i| (device.tags[i].kind, device.tags[i].address));
        let mut reads: Vec<Read> = Vec::new();
        let mut slots = vec![Slot { read: 0, offset: 0 }; device.tags.len()];
        for i in order {
            let tag = &device.tags[i];
            let width = u32::from(tag.data_type().width());
            let start = u32::from(tag.address);
            let max = u32::from(if tag.kind.is_bit() {
                device.max_bits_per_request
            } else {
                device.max_registers_per_request
            });
            let joins = reads
                .last()
                .filter(|r| r.kind == tag.kind)
                .is_some_and(|r| {
                    let (r_start, r_end) =
                        (u32::from(r.start), u32::from(r.start) + u32::from(r.count));
                    start <= r_end + u32::from(device.max_gap)
                        && (start + width).max(r_end) - r_start <= max
                });
            if joins {
                let r = reads.last_mut().expect("joins an existing read");
                let end = (u32::from(r.start) + u32::from(r.count)).max(start + width);
                r.count = (end - u32::from(r.start)) as u16;
            } else {
                reads.push(Read {
                    kind: tag.kind,
                    start: tag.address,
                    count: width as u16,
                });
            }
            let read = reads.len() - 1;
            slots[i] = Slot {
                read,
                offset: (start - u32::from(reads[read].start)) as usize,
            };
        }
        Plan { reads, slots }
    }
}

/// The number a tag's registers hold (before scale and offset): `words` are
/// the tag's registers as read, `ty` a register type.
pub fn decode(words: &[u16], ty: DataType, order: ByteOrder) -> f64 {
    // Bytes as they came over the wire, then rearranged to big-endian
    // (A first): both rearrangements undo themselves.
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    if matches!(order, ByteOrder::CDAB | ByteOrder::DCBA) && words.len() > 1 {
        let mut reversed: Vec<u8> = Vec::with_capacity(bytes.len());
        for pair in bytes.chunks(2).rev() {
            reversed.extend_from_slice(pair);
        }
        bytes = reversed;
    }
    if matches!(order, ByteOrder::BADC | ByteOrder::DCBA) {
        for pair in bytes.chunks_mut(2) {
            pair.swap(0, 1);
        }
    }
    let b = |n: usize| -> [u8; 8] {
        let mut out = [0u8; 8];
        out[8 - n..].copy_from_slice(&bytes[..n]);
        out
    };
    match ty {
        DataType::U16 => f64::from(u16::from_be_bytes([bytes[0], bytes[1]])),
        DataType::I16 => f64::from(i16::from_be_bytes([bytes[0], bytes[1]])),
        DataType::U32 => f64::from(u32::from_be_bytes(bytes[..4].try_into().unwrap())),
        DataType::I32 => f64::from(i32::from_be_bytes(bytes[..4].try_into().unwrap())),
        DataType::F32 => f64::from(f32::from_be_bytes(bytes[..4].try_into().unwrap())),
        DataType::U64 => u64::from_be_bytes(b(8)) as f64,
        DataType::I64 => i64::from_be_bytes(b(8)) as f64,
        DataType::F64 => f64::from_be_bytes(b(8)),
        DataType::Bool => f64::from(u8::from(words.first().is_some_and(|w| *w != 0))),
    }
}
