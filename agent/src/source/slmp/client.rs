//! The agent's SLMP client: one TCP connection to a MELSEC CPU (or its
//! Ethernet module), 3E binary frames, one request at a time. It sends
//! only what [`ReadRequest`] can express (batch reads and the CPU model
//! read): it has no write, remote RUN/STOP or file function at all.
//!
//! Written for the agent rather than taken from crates.io: `melsec_mc`
//! and `slmp_client` both carry writes and remote operations (a read-only
//! promise would rest on not calling them), `slmp_client` is blocking
//! `std::net` code last released in 2021, and `melsec_mc` brings global
//! registries of command and error tables loaded at start. The read subset
//! here is under 200 lines and is checked against pymcprotocol through the
//! test server.

use super::frame::{self, Device, FrameError, ReadRequest, Series, HEADER_LEN};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum SlmpError {
    /// The connection failed or an answer was malformed: reconnect.
    #[error("{0}")]
    Transport(String),
    /// The CPU refused the request (end code): the connection is fine.
    #[error("{request} refused by the CPU with end code {end_code:04X}")]
    Refused { request: String, end_code: u16 },
}

impl SlmpError {
    pub fn breaks_connection(&self) -> bool {
        matches!(self, SlmpError::Transport(_))
    }
}

/// A connection that can only read.
pub struct SlmpClient {
    stream: TcpStream,
    series: Series,
    /// Monitoring timer, in units of 250 ms.
    timer: u16,
}

impl SlmpClient {
    /// Connects; `timeout` also sets the CPU's monitoring timer.
    pub async fn connect(
        addr: SocketAddr,
        series: Series,
        timeout: std::time::Duration,
    ) -> std::io::Result<SlmpClient> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let timer = (timeout.as_millis() / 250).clamp(1, u128::from(u16::MAX)) as u16;
        Ok(SlmpClient {
            stream,
            series,
            timer,
        })
    }

    pub async fn read_words(&mut self, head: Device, count: u16) -> Result<Vec<u16>, SlmpError> {
        let data = self.exchange(ReadRequest::Words { head, count }).await?;
        frame::decode_words(&data, count).map_err(|e| SlmpError::Transport(e.to_string()))
    }

    pub async fn read_bits(&mut self, head: Device, count: u16) -> Result<Vec<bool>, SlmpError> {
        let data = self.exchange(ReadRequest::Bits { head, count }).await?;
        frame::decode_bits(&data, count).map_err(|e| SlmpError::Transport(e.to_string()))
    }

    /// The CPU's model name and code.
    pub async fn read_type_name(&mut self) -> Result<(String, u16), SlmpError> {
        let data = self.exchange(ReadRequest::TypeName).await?;
        frame::decode_type_name(&data).map_err(|e| SlmpError::Transport(e.to_string()))
    }

    /// Sends one request and returns its response data.
    async fn exchange(&mut self, request: ReadRequest) -> Result<Vec<u8>, SlmpError> {
        let transport = |e: std::io::Error| SlmpError::Transport(e.to_string());
        self.stream
            .write_all(&request.encode(self.series, self.timer))
            .await
            .map_err(transport)?;
        let mut header = [0u8; HEADER_LEN];
        self.stream
            .read_exact(&mut header)
            .await
            .map_err(transport)?;
        let len =
            frame::response_data_len(&header).map_err(|e| SlmpError::Transport(e.to_string()))?;
        let mut rest = vec![0u8; len];
        self.stream.read_exact(&mut rest).await.map_err(transport)?;
        match frame::response_data(&rest) {
            Ok(data) => Ok(data.to_vec()),
            Err(FrameError::EndCode(end_code)) => Err(SlmpError::Refused {
                request: describe(&request),
                end_code,
            }),
            Err(e) => Err(SlmpError::Transport(e.to_string())),
        }
    }
}

fn describe(request: &ReadRequest) -> String {
    match request {
        ReadRequest::Words { head, count } => format!("word read of {count} from {head}"),
        ReadRequest::Bits { head, count } => format!("bit read of {count} from {head}"),
        ReadRequest::TypeName => "CPU model read".into(),
    }
}
