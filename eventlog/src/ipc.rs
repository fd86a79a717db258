//! One record batch as an Arrow IPC stream: the payload format every event
//! log implementation stores (a schema message, one batch, the end marker),
//! so a record can be read without any other context.

use crate::Result;
use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

/// `batch` as a complete IPC stream.
pub(crate) fn encode(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut ipc = Vec::with_capacity(1024);
    let mut writer = StreamWriter::try_new(&mut ipc, batch.schema_ref())?;
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(ipc)
}

/// The first batch of an IPC stream, or why it cannot be read.
pub(crate) fn decode(ipc: &[u8]) -> std::result::Result<RecordBatch, String> {
    let mut reader = StreamReader::try_new(ipc, None).map_err(|e| e.to_string())?;
    reader
        .next()
        .ok_or("no record batch in the record")?
        .map_err(|e| e.to_string())
}
