//! A small SLMP 3E binary server (a simulated MELSEC CPU) for tests and the
//! demo: device memory that its owner sets directly, served to whoever
//! connects. It answers what the agent's client sends (batch reads in word
//! and bit units, both device formats, the CPU model read) and refuses every
//! other command with end code C059, recording each command it receives, so
//! a test can check that nothing but reads arrived. It has no write command:
//! memory changes only through [`SlmpServer::set_words`] and friends.
//! [`SlmpServer::set_answering`] makes it a CPU that has stopped answering:
//! requests are taken and recorded, and no response comes back.
//!
//! pymcprotocol, a second implementation of the client side, reads from it
//! in `tests.rs`, so the server is checked against it and the agent's client
//! against the server. Unset devices read as 0.

use super::frame::{
    decode_device, encode_bits, Device, Series, CMD_BATCH_READ, CMD_READ_TYPE_NAME,
    END_CODE_BAD_COMMAND, END_CODE_BAD_DEVICE, HEADER_LEN, MAX_READ_BITS, MAX_READ_WORDS,
    REQUEST_SUBHEADER, RESPONSE_SUBHEADER,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// End code for a read of more points than one request may take.
pub const END_CODE_TOO_MANY_POINTS: u16 = 0xC051;

#[derive(Debug)]
struct Memory {
    /// Word devices, by (code, number).
    words: HashMap<(u8, u32), u16>,
    /// Bit devices, by (code, number).
    bits: HashMap<(u8, u32), bool>,
    model: (String, u16),
    /// Whether requests get a response.
    answering: bool,
    /// (command, subcommand) of every request, in order of first arrival.
    commands: Vec<(u16, u16)>,
}

/// A running server; dropping it closes its port and every connection.
pub struct SlmpServer {
    pub addr: SocketAddr,
    memory: Arc<Mutex<Memory>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlmpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SlmpServer {
    /// Listens on `addr` (port 0 for any free port).
    pub async fn start(addr: SocketAddr) -> std::io::Result<SlmpServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let memory = Arc::new(Mutex::new(Memory {
            words: HashMap::new(),
            bits: HashMap::new(),
            model: ("R04CPU".into(), 0x4800),
            answering: true,
            commands: Vec::new(),
        }));
        let shared = memory.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the accept task drops
            // them all, as a CPU that loses power does.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            connections.spawn(serve(stream, shared.clone()));
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(SlmpServer { addr, memory, task })
    }

    /// Sets word devices from `head` on (`"D100"`, `"SD203"`, `"W1A0"`); a
    /// bit device takes 16 bits per word, lowest first.
    pub fn set_words(&self, head: &str, values: &[u16]) {
        let head = Device::parse(head).expect("a valid device");
        let mut m = self.memory.lock().unwrap();
        for (i, v) in values.iter().enumerate() {
            let i = i as u32;
            if head.ty.bit {
                for b in 0..16 {
                    m.bits
                        .insert((head.ty.code, head.number + 16 * i + b), v & (1 << b) != 0);
                }
            } else {
                m.words.insert((head.ty.code, head.number + i), *v);
            }
        }
    }

    /// Sets bit devices from `head` on (`"M0"`, `"X1F"`).
    pub fn set_bits(&self, head: &str, values: &[bool]) {
        let head = Device::parse(head).expect("a valid device");
        let mut m = self.memory.lock().unwrap();
        for (i, v) in values.iter().enumerate() {
            m.bits.insert((head.ty.code, head.number + i as u32), *v);
        }
    }

    /// Sets the CPU model name and code the model read returns.
    pub fn set_model(&self, name: &str, code: u16) {
        self.memory.lock().unwrap().model = (name.to_string(), code);
    }

    /// Whether requests get a response (`false`: a CPU that hangs, whose
    /// clients time out).
    pub fn set_answering(&self, answering: bool) {
        self.memory.lock().unwrap().answering = answering;
    }

    /// (command, subcommand) of every request received so far, each once, in
    /// order of first arrival.
    pub fn commands(&self) -> Vec<(u16, u16)> {
        self.memory.lock().unwrap().commands.clone()
    }
}

/// Answers one connection's requests until it closes or sends garbage.
async fn serve(mut stream: TcpStream, memory: Arc<Mutex<Memory>>) {
    let _ = stream.set_nodelay(true);
    loop {
        let mut header = [0u8; HEADER_LEN];
        if stream.read_exact(&mut header).await.is_err() || header[..2] != REQUEST_SUBHEADER {
            return;
        }
        let len = usize::from(u16::from_le_bytes([header[7], header[8]]));
        if !(6..=4096).contains(&len) {
            return;
        }
        let mut body = vec![0u8; len];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let command = u16::from_le_bytes([body[2], body[3]]);
        let subcommand = u16::from_le_bytes([body[4], body[5]]);
        let answer = {
            let mut m = memory.lock().unwrap();
            if !m.commands.contains(&(command, subcommand)) {
                m.commands.push((command, subcommand));
            }
            if !m.answering {
                continue;
            }
            answer(&m, command, subcommand, &body[6..])
        };
        let (end_code, data) = match answer {
            Ok(data) => (0u16, data),
            Err(end_code) => {
                // Error information: the refused request's route and command.
                let mut info = header[2..7].to_vec();
                info.extend_from_slice(&command.to_le_bytes());
                info.extend_from_slice(&subcommand.to_le_bytes());
                (end_code, info)
            }
        };
        let mut response = Vec::with_capacity(HEADER_LEN + 2 + data.len());
        response.extend_from_slice(&RESPONSE_SUBHEADER);
        response.extend_from_slice(&header[2..7]);
        response.extend_from_slice(&((2 + data.len()) as u16).to_le_bytes());
        response.extend_from_slice(&end_code.to_le_bytes());
        response.extend_from_slice(&data);
        if stream.write_all(&response).await.is_err() {
            return;
        }
    }
}

/// The response data of a request, or its end code.
fn answer(m: &Memory, command: u16, subcommand: u16, data: &[u8]) -> Result<Vec<u8>, u16> {
    match (command, subcommand) {
        (CMD_READ_TYPE_NAME, 0x0000) => {
            let mut out = format!("{:<16}", m.model.0).into_bytes();
            out.truncate(16);
            out.extend_from_slice(&m.model.1.to_le_bytes());
            Ok(out)
        }
        (CMD_BATCH_READ, 0x0000..=0x0003) => {
            let series = if subcommand >= 2 {
                Series::IqR
            } else {
                Series::Q
            };
            let bit_units = subcommand % 2 == 1;
            let (head, used) = decode_device(series, data).ok_or(END_CODE_BAD_DEVICE)?;
            let count = data
                .get(used..used + 2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .ok_or(END_CODE_BAD_DEVICE)?;
            let bit = |n: u32| m.bits.get(&(head.ty.code, n)).copied().unwrap_or(false);
            if bit_units {
                if !head.ty.bit {
                    return Err(END_CODE_BAD_DEVICE);
                }
                if count == 0 || count > MAX_READ_BITS {
                    return Err(END_CODE_TOO_MANY_POINTS);
                }
                let bits: Vec<bool> = (0..u32::from(count))
                    .map(|i| bit(head.number + i))
                    .collect();
                return Ok(encode_bits(&bits));
            }
            if count == 0 || count > MAX_READ_WORDS {
                return Err(END_CODE_TOO_MANY_POINTS);
            }
            let mut out = Vec::with_capacity(2 * usize::from(count));
            for i in 0..u32::from(count) {
                let word = if head.ty.bit {
                    // 16 bits per word from the head device, lowest first.
                    (0..16).fold(0u16, |w, b| {
                        w | (u16::from(bit(head.number + 16 * i + b)) << b)
                    })
                } else {
                    m.words
                        .get(&(head.ty.code, head.number + i))
                        .copied()
                        .unwrap_or(0)
                };
                out.extend_from_slice(&word.to_le_bytes());
            }
            Ok(out)
        }
        _ => Err(END_CODE_BAD_COMMAND),
    }
}
