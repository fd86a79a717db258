//! The `syslog` output: alerts to a SIEM or syslog relay as CEF (default)
//! or RFC 5424 records with structured data, over UDP, TCP or TLS. Record
//! layout and framing: [`rfc5424`]; the CEF text: [`cef`].
//!
//! Delivery, per transport:
//! - **tcp**, **tls**: one connection, opened at the first delivery and
//!   kept; a batch of alerts is written as one run of octet-counted records
//!   and flushed before the output commits. Syslog has no acknowledgement
//!   of its own, so "taken" means written into the connection: before each
//!   batch the connection is checked for a close from the receiver (a
//!   restarted rsyslog, an idle timeout) and opened again, so a batch is not
//!   written into a connection known to be dead; a connection that breaks
//!   while a batch is in flight is retried whole (the receiver may then see
//!   some records twice, with the same `externalId`/`id`).
//! - **udp**: one datagram per record; nothing confirms receipt, so alerts
//!   sent while the receiver is down are lost (a refused port seen by the
//!   kernel is retried). Prefer `tls`.
//!
//! Every connect and write is bounded by `timeout`: a receiver that does
//! not answer makes the output retry, never hang.

pub mod cef;
pub mod config;
pub mod rfc5424;
#[cfg(test)]
mod tests;

pub use config::{SyslogConfig, SyslogFormat, Transport};

use super::{AlertOutput, OutputError};
use futures::FutureExt;
use otwatch_proto::Alert;
use rfc5424::Header;
use rustls::pki_types::ServerName;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;

/// How long a new TCP or TLS connection must stay open before records are
/// written to it (see [`Syslog::connect`]).
const SETTLE: Duration = Duration::from_secs(1);

/// The largest UDP payload; a longer record is cut (and the cut logged).
const UDP_MAX: usize = 65_507;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

enum Connection {
    Udp(UdpSocket),
    Stream(Box<dyn Stream>),
}

pub(super) struct Syslog {
    name: String,
    host: String,
    port: u16,
    transport: Transport,
    timeout: Duration,
    header: Header,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connection: Option<Connection>,
}

impl Syslog {
    pub(super) fn open(name: &str, config: &SyslogConfig) -> anyhow::Result<Self> {
        config.check(name).map_err(anyhow::Error::msg)?;
        let (host, port) = config.host_port().expect("checked");
        let tls = match config.transport {
            Transport::Tls => {
                let client = config
                    .tls
                    .client_config(name, &[])
                    .map_err(anyhow::Error::msg)?;
                let server_name = config.server_name.clone().unwrap_or_else(|| host.clone());
                let server_name = ServerName::try_from(server_name)
                    .map_err(|e| anyhow::anyhow!("outputs.{name}.server_name: {e}"))?;
                Some((TlsConnector::from(client), server_name))
            }
            _ => None,
        };
        Ok(Syslog {
            name: name.to_string(),
            host,
            port,
            transport: config.transport,
            timeout: config.timeout,
            header: header(config),
            tls,
            connection: None,
        })
    }

    async fn connect(&self) -> Result<Connection, String> {
        let target = (self.host.as_str(), self.port);
        if self.transport == Transport::Udp {
            let addr = tokio::net::lookup_host(target)
                .await
                .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
                .next()
                .ok_or_else(|| format!("{} has no address", self.host))?;
            let local = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let socket = UdpSocket::bind(local)
                .await
                .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
            socket
                .connect(addr)
                .await
                .map_err(|e| format!("cannot address {addr}: {e}"))?;
            return Ok(Connection::Udp(socket));
        }
        let tcp = TcpStream::connect(target)
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", self.host, self.port))?;
        let _ = tcp.set_nodelay(true);
        let mut stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some((connector, server_name)) => {
                let tls = connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|e| {
                        format!("TLS handshake with {}:{} failed: {e}", self.host, self.port)
                    })?;
                Box::new(tls)
            }
        };
        // With TLS 1.3 the client's handshake ends before the receiver has
        // checked the client certificate, and a receiver at its connection
        // limit may accept and close at once: records written now would be
        // lost, each time. So a new connection must stay open for a moment
        // before it carries anything.
        let mut buf = [0u8; 512];
        let settle = SETTLE.min(self.timeout / 2);
        match tokio::time::timeout(settle, stream.read(&mut buf)).await {
            Err(_) => Ok(Connection::Stream(stream)),
            Ok(Ok(n)) if n > 0 => Ok(Connection::Stream(stream)),
            Ok(Ok(_)) => Err(format!(
                "{}:{} closed the connection right after accepting it (does it refuse the client certificate, or is it at its connection limit?)",
                self.host, self.port
            )),
            Ok(Err(e)) => Err(format!(
                "{}:{} broke the connection right after accepting it (does it refuse the client certificate?): {e}",
                self.host, self.port
            )),
        }
    }

    /// Writes every record over the open connection (opening it first).
    async fn send(&mut self, records: &[String]) -> Result<(), String> {
        if let Some(Connection::Stream(stream)) = &mut self.connection {
            if closed_by_peer(stream.as_mut()) {
                tracing::info!(output = %self.name, "the syslog receiver closed the connection; connecting again");
                self.connection = None;
            }
        }
        if self.connection.is_none() {
            self.connection = Some(self.connect().await?);
        }
        match self.connection.as_mut().expect("just connected") {
            Connection::Udp(socket) => {
                for record in records {
                    let mut bytes = record.as_bytes();
                    if bytes.len() > UDP_MAX {
                        tracing::warn!(output = %self.name, bytes = bytes.len(), "a syslog record is longer than a UDP datagram holds: cut to {UDP_MAX} bytes (use transport = \"tcp\" or \"tls\")");
                        bytes = &bytes[..UDP_MAX];
                    }
                    socket
                        .send(bytes)
                        .await
                        .map_err(|e| format!("cannot send to {}:{}: {e}", self.host, self.port))?;
                }
            }
            Connection::Stream(stream) => {
                let mut framed = Vec::new();
                for record in records {
                    framed.extend_from_slice(&rfc5424::octet_counted(record));
                }
                stream
                    .write_all(&framed)
                    .await
                    .and(stream.flush().await)
                    .map_err(|e| format!("cannot write to {}:{}: {e}", self.host, self.port))?;
            }
        }
        Ok(())
    }
}

/// What every record of the output configured as `config` shares.
pub(super) fn header(config: &SyslogConfig) -> Header {
    let hostname = config.hostname.clone().unwrap_or_else(|| {
        // A HOSTNAME is printable ASCII without spaces.
        let host: String = super::format::this_host()
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect();
        if host.is_empty() {
            "otwatch".into()
        } else {
            host
        }
    });
    Header {
        facility: config.facility_code().expect("checked"),
        hostname,
        app_name: config.app_name.clone(),
        sd_id: config.sd_id.clone(),
        format: config.format,
    }
}

/// True when the receiver has closed the connection (or it failed): a
/// read that completes at once with end of file or an error. Syslog
/// receivers send nothing, so a pending read means the connection is open.
fn closed_by_peer(stream: &mut dyn Stream) -> bool {
    let mut buf = [0u8; 512];
    match stream.read(&mut buf).now_or_never() {
        None => false,
        Some(Ok(0)) | Some(Err(_)) => true,
        Some(Ok(_)) => false,
    }
}

#[async_trait::async_trait]
impl AlertOutput for Syslog {
    async fn deliver(&mut self, alerts: &[Alert]) -> Result<(), OutputError> {
        if alerts.is_empty() {
            return Ok(());
        }
        let records: Vec<String> = alerts
            .iter()
            .map(|a| rfc5424::record(&self.header, a))
            .collect();
        let sent = tokio::time::timeout(self.timeout, self.send(&records)).await;
        let error = match sent {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => format!(
                "{}:{} did not take the records within {:?}",
                self.host, self.port, self.timeout
            ),
        };
        // Whatever state the connection is in, the next attempt starts afresh.
        self.connection = None;
        Err(OutputError::Transient(error))
    }
}
