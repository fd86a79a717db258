//! The agent's Modbus/TCP client: tokio-modbus, wrapped so that only the
//! four read functions are reachable.
//!
//! tokio-modbus's `Context` can send any request (its `Writer` trait and
//! `Client::call` write coils and registers). The context is private to
//! [`ReadOnlyClient`], which offers [`ReadOnlyClient::read`] for the four
//! read functions (1 read coils, 2 read discrete inputs, 3 read holding
//! registers, 4 read input registers) and nothing else. Nothing in the
//! `modbus` source names a write: `tests.rs` scans the source files for any
//! write path, and the end-to-end tests run against a device that records
//! every function code it receives.

use super::config::RegisterKind;
use super::plan::Read;
use std::net::SocketAddr;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::Slave;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    /// The connection failed (refused, reset, a timeout): reconnect.
    #[error("{0}")]
    Transport(String),
    /// The device answered with an exception (illegal address, busy, ...):
    /// the connection is fine, the read is not.
    #[error(
        "device answered {function} at {kind:?} {start}..+{count} with exception: {exception}"
    )]
    Exception {
        function: u8,
        kind: RegisterKind,
        start: u16,
        count: u16,
        exception: String,
    },
    /// An answer that does not fit the request (too few values).
    #[error("device answered {kind:?} {start}..+{count} with {got} value(s)")]
    Short {
        kind: RegisterKind,
        start: u16,
        count: u16,
        got: usize,
    },
}

impl ModbusError {
    /// Whether the connection must be dropped (anything but an exception
    /// answer: after a timeout or a malformed answer, a late or stray reply
    /// would be taken for the next one).
    pub fn breaks_connection(&self) -> bool {
        !matches!(self, ModbusError::Exception { .. })
    }
}

/// What one read returned: 16-bit registers or bits.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// A connection to one device (one unit id) that can only read.
pub struct ReadOnlyClient {
    context: Context,
}

impl ReadOnlyClient {
    /// Connects to `addr` for the device `unit_id`.
    pub async fn connect(addr: SocketAddr, unit_id: u8) -> std::io::Result<ReadOnlyClient> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let context = tokio_modbus::client::tcp::attach_slave(stream, Slave(unit_id));
        Ok(ReadOnlyClient { context })
    }

    /// Reads `read.count` registers or bits from `read.start` of its table.
    pub async fn read(&mut self, read: &Read) -> Result<Values, ModbusError> {
        let Read { kind, start, count } = *read;
        let (function, answer) = match kind {
            RegisterKind::Coil => (
                1,
                self.context
                    .read_coils(start, count)
                    .await
                    .map(|r| r.map(Values::Bits)),
            ),
            RegisterKind::DiscreteInput => (
                2,
                self.context
                    .read_discrete_inputs(start, count)
                    .await
                    .map(|r| r.map(Values::Bits)),
            ),
            RegisterKind::Holding => (
                3,
                self.context
                    .read_holding_registers(start, count)
                    .await
                    .map(|r| r.map(Values::Words)),
            ),
            RegisterKind::Input => (
                4,
                self.context
                    .read_input_registers(start, count)
                    .await
                    .map(|r| r.map(Values::Words)),
            ),
        };
        let values = answer
            .map_err(|e| ModbusError::Transport(e.to_string()))?
            .map_err(|exception| ModbusError::Exception {
                function,
                kind,
                start,
                count,
                exception: exception.to_string(),
            })?;
        // Bits come in whole bytes: only the first `count` are defined.
        let (values, got) = match values {
            Values::Bits(mut bits) => {
                let got = bits.len();
                bits.truncate(usize::from(count));
                (Values::Bits(bits), got)
            }
            Values::Words(words) => {
                let got = words.len();
                (Values::Words(words), got)
            }
        };
        if got < usize::from(count) {
            return Err(ModbusError::Short {
                kind,
                start,
                count,
                got,
            });
        }
        Ok(values)
    }
}
