//! Rendering query results as text for the SQL front ends.
//!
//! - [`OutputFormat::Table`]: Arrow's pretty-printed table, for people.
//! - [`OutputFormat::Csv`]: a header line, then one line per row; timestamps
//!   in RFC 3339, nulls empty. CSV has no nested values, so nested cells
//!   (the `attrs` map, lists, structs) hold their JSON text.
//! - [`OutputFormat::Json`]: JSON lines, one object per row with every column
//!   present (nulls as `null`), maps as objects.
//!
//! [`format_batches`] renders a whole result; [`BatchWriter`] renders a
//! stream of batches as they come (CSV and JSON exactly as
//! [`format_batches`] would; tables in frames of up to
//! [`TABLE_FRAME_ROWS`] rows, since a frame's column widths need its rows).

use crate::HistoryError;
use arrow::array::{Array, ArrayRef, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::json::writer::LineDelimited;
use std::str::FromStr;
use std::sync::Arc;

/// How [`format_batches`] renders results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// An aligned text table.
    #[default]
    Table,
    /// Comma-separated values with a header line.
    Csv,
    /// JSON lines: one object per row.
    Json,
}

impl OutputFormat {
    /// The name accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Table => "table",
            OutputFormat::Csv => "csv",
            OutputFormat::Json => "json",
        }
    }
}

impl std::fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OutputFormat {
    type Err = HistoryError;

    /// Accepts `table`, `csv`, `json` (also `jsonl`, `ndjson`), in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(OutputFormat::Table),
            "csv" => Ok(OutputFormat::Csv),
            "json" | "jsonl" | "ndjson" => Ok(OutputFormat::Json),
            _ => Err(HistoryError::UnknownFormat(s.to_owned())),
        }
    }
}

/// Renders batches (all with one schema) in `format`. No batches render as
/// an empty string (an empty frame for [`OutputFormat::Table`]).
pub fn format_batches(
    batches: &[RecordBatch],
    format: OutputFormat,
) -> Result<String, HistoryError> {
    let err = |source| HistoryError::Format {
        format: format.name(),
        source,
    };
    let bytes = match format {
        OutputFormat::Table => {
            return arrow::util::pretty::pretty_format_batches(batches)
                .map(|table| table.to_string() + "\n")
                .map_err(err)
        }
        OutputFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(Vec::new());
            for batch in batches {
                writer.write(&flatten_nested(batch)?).map_err(err)?;
            }
            writer.into_inner()
        }
        OutputFormat::Json => json_lines(batches).map_err(err)?,
    };
    String::from_utf8(bytes).map_err(|e| err(arrow::error::ArrowError::ExternalError(Box::new(e))))
}

/// Most rows [`BatchWriter`] holds back to lay out one text table frame.
pub const TABLE_FRAME_ROWS: usize = 1000;

/// Writes a result to `out` batch by batch, in `format`, holding at most
/// one table frame ([`TABLE_FRAME_ROWS`] rows) back.
pub struct BatchWriter<W: std::io::Write> {
    out: W,
    format: OutputFormat,
    /// Whether the CSV header is out.
    header_written: bool,
    /// Rows held back for the next table frame.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    /// Whether anything was written (an empty table still gets its frame).
    wrote: bool,
}

impl<W: std::io::Write> BatchWriter<W> {
    /// A writer of `format` onto `out`.
    pub fn new(out: W, format: OutputFormat) -> Self {
        BatchWriter {
            out,
            format,
            header_written: false,
            pending: Vec::new(),
            pending_rows: 0,
            wrote: false,
        }
    }

    /// Writes (or, for a table, perhaps holds back) one batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), HistoryError> {
        let err = |source| HistoryError::Format {
            format: self.format.name(),
            source,
        };
        match self.format {
            OutputFormat::Table => {
                self.pending_rows += batch.num_rows();
                self.pending.push(batch.clone());
                if self.pending_rows >= TABLE_FRAME_ROWS {
                    self.flush_frame()?;
                }
                return Ok(());
            }
            OutputFormat::Csv => {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(!self.header_written)
                    .build(&mut self.out);
                writer.write(&flatten_nested(batch)?).map_err(err)?;
                self.header_written = true;
            }
            OutputFormat::Json => {
                let bytes = json_lines(std::slice::from_ref(batch)).map_err(err)?;
                self.out
                    .write_all(&bytes)
                    .map_err(|source| HistoryError::Output { source })?;
            }
        }
        self.wrote = true;
        Ok(())
    }

    /// Writes what is held back and flushes `out`; returns it.
    pub fn finish(mut self) -> Result<W, HistoryError> {
        if self.format == OutputFormat::Table && (!self.pending.is_empty() || !self.wrote) {
            self.flush_frame()?;
        }
        self.out
            .flush()
            .map_err(|source| HistoryError::Output { source })?;
        Ok(self.out)
    }

    fn flush_frame(&mut self) -> Result<(), HistoryError> {
        let text = format_batches(&self.pending, OutputFormat::Table)?;
        self.out
            .write_all(text.as_bytes())
            .map_err(|source| HistoryError::Output { source })?;
        self.pending.clear();
        self.pending_rows = 0;
        self.wrote = true;
        Ok(())
    }
}

fn json_lines(batches: &[RecordBatch]) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, LineDelimited>(Vec::new());
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    Ok(writer.into_inner())
}

/// Replaces every nested column of `batch` by a string column holding each
/// value's JSON text (null stays null), for CSV.
fn flatten_nested(batch: &RecordBatch) -> Result<RecordBatch, HistoryError> {
    if !batch.columns().iter().any(|c| c.data_type().is_nested()) {
        return Ok(batch.clone());
    }
    let err = |source| HistoryError::Format {
        format: "csv",
        source,
    };
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if column.data_type().is_nested() {
            fields.push(Arc::new(Field::new(field.name(), DataType::Utf8, true)));
            columns.push(nested_as_json(column).map_err(err)?);
        } else {
            fields.push(Arc::clone(field));
            columns.push(Arc::clone(column));
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(err)
}

/// JSON text of every value of a nested column. Encodes the column as JSON
/// lines of a one-column object `{"v":...}` and keeps the value part, which
/// reuses arrow-json's encoders for every nested type.
fn nested_as_json(column: &ArrayRef) -> Result<ArrayRef, arrow::error::ArrowError> {
    const PREFIX: &str = "{\"v\":";
    let schema = Arc::new(Schema::new(vec![Field::new(
        "v",
        column.data_type().clone(),
        true,
    )]));
    let one = RecordBatch::try_new(schema, vec![Arc::clone(column)])?;
    let text = String::from_utf8(json_lines(std::slice::from_ref(&one))?)
        .map_err(|e| arrow::error::ArrowError::ExternalError(Box::new(e)))?;
    let mut out = StringBuilder::with_capacity(column.len(), text.len());
    for (i, line) in text.lines().enumerate() {
        let value = line
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_suffix('}'))
            .ok_or_else(|| {
                arrow::error::ArrowError::JsonError(format!("unexpected encoding {line:?}"))
            })?;
        if column.is_null(i) {
            out.append_null();
        } else {
            out.append_value(value);
        }
    }
    Ok(Arc::new(out.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_by_name() {
        assert_eq!(
            "table".parse::<OutputFormat>().unwrap(),
            OutputFormat::Table
        );
        assert_eq!("CSV".parse::<OutputFormat>().unwrap(), OutputFormat::Csv);
        assert_eq!(
            "ndjson".parse::<OutputFormat>().unwrap(),
            OutputFormat::Json
        );
        let err = "xml".parse::<OutputFormat>().unwrap_err().to_string();
        assert!(err.contains("\"xml\""), "{err}");
    }
}
