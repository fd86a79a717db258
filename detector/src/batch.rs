//! Reading an `events` record batch into the flat slices the models loop
//! over, and grouping its rows by key without hashing per row.
//!
//! The string columns the detector groups on (site, agent, asset, kind, name)
//! are dictionaries: each distinct string is looked at once per batch, and
//! rows are handled through their integer keys. Plain `Utf8` columns are
//! accepted too and dictionary-encoded first.

use crate::DetectorError;
use arrow::array::{Array, ArrayRef, AsArray, MapArray, StringArray};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Int32Type, TimeUnit, TimestampNanosecondType, UInt64Type};
use arrow::record_batch::RecordBatch;
use otwatch_proto::arrow::col;
use otwatch_proto::EventKind;

/// Kind codes per row: the protobuf enum values.
pub(crate) const CYCLE: u8 = EventKind::Cycle as u8;
pub(crate) const SAMPLE: u8 = EventKind::Sample as u8;
pub(crate) const STATE: u8 = EventKind::State as u8;
pub(crate) const CHANGE: u8 = EventKind::Change as u8;
pub(crate) const ALARM: u8 = EventKind::Alarm as u8;
pub(crate) const ACCESS: u8 = EventKind::Access as u8;

/// A dictionary-encoded string column: per-row keys into `values`.
pub(crate) struct Dict {
    pub keys: ScalarBuffer<i32>,
    pub values: StringArray,
}

impl Dict {
    fn read(batch: &RecordBatch, name: &str) -> Result<Dict, DetectorError> {
        let array = column(batch, name)?;
        let wanted = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let array: ArrayRef = if array.data_type() == &wanted {
            array.clone()
        } else {
            arrow::compute::cast(array, &wanted)
                .map_err(|e| DetectorError::Schema(format!("column {name}: {e}")))?
        };
        let dict = array.as_dictionary::<Int32Type>();
        if dict.keys().null_count() > 0 {
            return Err(DetectorError::Schema(format!(
                "column {name} has null rows"
            )));
        }
        let values = dict
            .values()
            .as_string_opt::<i32>()
            .ok_or_else(|| {
                DetectorError::Schema(format!("column {name}: dictionary values are not Utf8"))
            })?
            .clone();
        Ok(Dict {
            keys: dict.keys().values().clone(),
            values,
        })
    }

    /// Number of dictionary entries (distinct strings, at most).
    pub fn entries(&self) -> usize {
        self.values.len()
    }

    /// The string of row `row`.
    pub fn str(&self, row: usize) -> &str {
        self.values.value(self.keys[row] as usize)
    }

    /// The string of dictionary entry `key` (null entries read as "").
    pub fn value(&self, key: usize) -> &str {
        if self.values.is_valid(key) {
            self.values.value(key)
        } else {
            ""
        }
    }
}

/// The columns of one batch, ready for the models.
pub(crate) struct Columns {
    pub rows: usize,
    pub site: Dict,
    pub agent: Dict,
    pub asset: Dict,
    pub name: Dict,
    /// Kind code of each dictionary entry of the `kind` column.
    kind_codes: Vec<u8>,
    kind_keys: ScalarBuffer<i32>,
    pub seq: ScalarBuffer<u64>,
    pub ts: ScalarBuffer<i64>,
    pub value: ScalarBuffer<f64>,
    pub value_nulls: Option<NullBuffer>,
    pub text: StringArray,
    pub attrs: MapArray,
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, DetectorError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| DetectorError::Schema(format!("no column {name}")))
}

impl Columns {
    pub fn read(batch: &RecordBatch) -> Result<Columns, DetectorError> {
        let kind = Dict::read(batch, col::KIND)?;
        let kind_codes = (0..kind.values.len())
            .map(|k| otwatch_proto::parse_kind(kind.value(k)).map_or(0, |k| k as u8))
            .collect();
        let ts = column(batch, col::TS)?;
        let ts = match ts.data_type() {
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                ts.as_primitive::<TimestampNanosecondType>()
            }
            other => {
                return Err(DetectorError::Schema(format!(
                    "column ts is {other}, not a timestamp in ns"
                )))
            }
        };
        let seq = column(batch, col::SEQ)?
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| DetectorError::Schema("column seq is not UInt64".into()))?;
        let value = column(batch, col::VALUE)?
            .as_primitive_opt::<arrow::datatypes::Float64Type>()
            .ok_or_else(|| DetectorError::Schema("column value is not Float64".into()))?;
        let text = column(batch, col::TEXT)?;
        let text = match text.as_string_opt::<i32>() {
            Some(t) => t.clone(),
            None => arrow::compute::cast(text, &DataType::Utf8)
                .map_err(|e| DetectorError::Schema(format!("column text: {e}")))?
                .as_string::<i32>()
                .clone(),
        };
        let attrs = column(batch, col::ATTRS)?
            .as_map_opt()
            .ok_or_else(|| DetectorError::Schema("column attrs is not a map".into()))?
            .clone();
        Ok(Columns {
            rows: batch.num_rows(),
            site: Dict::read(batch, col::SITE)?,
            agent: Dict::read(batch, col::AGENT)?,
            asset: Dict::read(batch, col::ASSET)?,
            name: Dict::read(batch, col::NAME)?,
            kind_codes,
            kind_keys: kind.keys,
            seq: seq.values().clone(),
            ts: ts.values().clone(),
            value: value.values().clone(),
            value_nulls: value.nulls().cloned(),
            text,
            attrs,
        })
    }

    /// Kind code of every row, into `out`.
    pub fn kinds(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend(self.kind_keys.iter().map(|&k| self.kind_codes[k as usize]));
    }

    /// The `value` column into `out`, NaN where a row has no value or a
    /// non-finite one, so the models test one float instead of a bitmap.
    pub fn values_into(&self, out: &mut Vec<f64>) {
        out.clear();
        out.extend(
            self.value
                .iter()
                .map(|&v| if v.is_finite() { v } else { f64::NAN }),
        );
        let Some(nulls) = self.value_nulls.as_ref().filter(|n| n.null_count() > 0) else {
            return;
        };
        // 64 rows per step; only words with a null in them are looked into.
        for (chunk, bits) in nulls.inner().bit_chunks().iter_padded().enumerate() {
            let mut missing = !bits;
            while missing != 0 {
                let row = chunk * 64 + missing.trailing_zeros() as usize;
                if let Some(v) = out.get_mut(row) {
                    *v = f64::NAN;
                }
                missing &= missing - 1;
            }
        }
    }

    pub fn text(&self, row: usize) -> Option<&str> {
        self.text.is_valid(row).then(|| self.text.value(row))
    }

    /// The value of attribute `key` of `row`.
    pub fn attr(&self, row: usize, key: &str) -> Option<&str> {
        if !self.attrs.is_valid(row) {
            return None;
        }
        let offsets = self.attrs.value_offsets();
        let keys = self.attrs.keys().as_string_opt::<i32>()?;
        let values = self.attrs.values().as_string_opt::<i32>()?;
        (offsets[row] as usize..offsets[row + 1] as usize)
            .find(|&i| keys.value(i) == key)
            .and_then(|i| values.is_valid(i).then(|| values.value(i)))
    }
}

/// Groups rows by a dense key, the way a radix partition does: one pass
/// computes where each row goes (`dest`), then the caller copies the columns
/// it needs in one fused pass, reading the batch sequentially and writing into
/// per-key runs of reused buffers. The models then loop over contiguous,
/// cache-hot slices instead of hopping through a cold batch by row index.
///
/// Group `g` (key `groups[g].0`) holds slots `groups[g].1..groups[g].2`.
/// Within a group, rows keep their original (time) order. Rows whose key is
/// `SKIP` go nowhere (`dest` is `SKIP`).
#[derive(Debug, Default)]
pub(crate) struct Groups {
    pub groups: Vec<(u32, usize, usize)>,
    /// Slot of each source row, or `SKIP`.
    pub dest: Vec<u32>,
    /// Number of slots (grouped rows).
    pub len: usize,
    counts: Vec<u32>,
    packed: Vec<u64>,
}

pub(crate) const SKIP: u32 = u32::MAX;

/// Above this many keys per row, a sort replaces the counting pass (whose
/// cost grows with the number of possible keys).
const COUNTING_KEYS_PER_ROW: usize = 4;

impl Groups {
    /// Groups `keys` (each `< range` or `SKIP`): a stable counting sort when
    /// the key range is small next to the batch, a sort of (key, row) pairs
    /// otherwise.
    pub fn build(&mut self, keys: &[u32], range: usize) {
        self.groups.clear();
        self.dest.clear();
        if range <= COUNTING_KEYS_PER_ROW * keys.len() + 4096 {
            self.counts.clear();
            self.counts.resize(range, 0);
            for &k in keys {
                if k != SKIP {
                    self.counts[k as usize] += 1;
                }
            }
            // Counts become each key's next free slot.
            let mut total = 0usize;
            for (k, c) in self.counts.iter_mut().enumerate() {
                let n = *c as usize;
                if n > 0 {
                    self.groups.push((k as u32, total, total + n));
                }
                *c = total as u32;
                total += n;
            }
            self.len = total;
            let counts = &mut self.counts;
            self.dest.extend(keys.iter().map(|&k| {
                if k == SKIP {
                    SKIP
                } else {
                    let slot = &mut counts[k as usize];
                    *slot += 1;
                    *slot - 1
                }
            }));
        } else {
            self.dest.resize(keys.len(), SKIP);
            self.packed.clear();
            self.packed.extend(
                keys.iter()
                    .enumerate()
                    .filter(|(_, &k)| k != SKIP)
                    .map(|(row, &k)| (u64::from(k) << 32) | row as u64),
            );
            // Unstable is fine: the row index in the low bits makes every
            // element distinct and keeps each key's rows in order.
            self.packed.sort_unstable();
            let mut start = 0;
            for (i, &p) in self.packed.iter().enumerate() {
                self.dest[(p as u32) as usize] = i as u32;
                let key = (p >> 32) as u32;
                let next = self.packed.get(i + 1).map(|&q| (q >> 32) as u32);
                if next != Some(key) {
                    self.groups.push((key, start, i + 1));
                    start = i + 1;
                }
            }
            self.len = self.packed.len();
        }
    }
}

/// Sizes a reused buffer to `len` slots. Every slot is overwritten by the
/// scatter that follows, so the old contents are not cleared (no memset per batch).
pub(crate) fn slots<T: Copy + Default>(buffer: &mut Vec<T>, len: usize) -> &mut [T] {
    buffer.resize(len, T::default());
    &mut buffer[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grouped(keys: &[u32], range: usize) -> Vec<(u32, Vec<u32>)> {
        let mut g = Groups::default();
        g.build(keys, range);
        let mut rows = vec![0; g.len];
        for (r, &d) in g.dest.iter().enumerate() {
            if d != SKIP {
                rows[d as usize] = r as u32;
            }
        }
        g.groups
            .iter()
            .map(|&(k, a, b)| (k, rows[a..b].to_vec()))
            .collect()
    }

    #[test]
    fn both_grouping_paths_give_stable_groups_in_key_order() {
        let keys = [3, 1, SKIP, 3, 0, 1, 3];
        let want = vec![(0, vec![4]), (1, vec![1, 5]), (3, vec![0, 3, 6])];
        assert_eq!(grouped(&keys, 4), want);
        assert_eq!(grouped(&keys, 1 << 30), want);
    }
}
