//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL
//! speaks it, checked against a stored verifier ([`crate::users`]).
//!
//! pgwire's own SCRAM handler needs the salted password, from which a
//! client key, and so a login, follows; this one needs only StoredKey and
//! ServerKey, like PostgreSQL.
//!
//! # Messages
//!
//! ```text
//! client-first  gs2-header client-first-bare      gs2-header: "n,," or "y,,"
//!               client-first-bare = "n=" user "," "r=" client-nonce
//! server-first  "r=" client-nonce server-nonce "," "s=" base64(salt) "," "i=" iterations
//! client-final  "c=" base64(gs2-header) "," "r=" nonce "," "p=" base64(ClientProof)
//! server-final  "v=" base64(ServerSignature)
//!
//! AuthMessage     = client-first-bare "," server-first "," client-final-without-proof
//! ClientSignature = HMAC(StoredKey, AuthMessage)
//! ClientKey       = ClientProof XOR ClientSignature     (accepted when SHA-256(ClientKey) = StoredKey)
//! ServerSignature = HMAC(ServerKey, AuthMessage)
//! ```
//!
//! The user name in client-first-bare is ignored (libpq sends it empty):
//! the user is the one of the startup message. Channel binding
//! (`SCRAM-SHA-256-PLUS`, `p=` headers) is not offered; `y,,` (the client
//! could bind but the server does not offer it) is accepted.
//!
//! An unknown user goes through the same exchange with a salt derived from
//! its name and a key nobody has, so the answer (and its timing) never
//! tells whether a user exists: every failure is "password authentication
//! failed".

use crate::users::{hmac_sha256, sha256, Verifier, DEFAULT_ITERATIONS};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ring::rand::SecureRandom;

/// The one mechanism offered.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Longest SCRAM message accepted (client messages are ~100 bytes).
const MAX_MESSAGE: usize = 4096;

/// Why an exchange failed. `Protocol` is a client speaking SCRAM wrongly;
/// `WrongPassword` covers a wrong password and an unknown user alike.
#[derive(Debug, PartialEq, Eq)]
pub enum ScramError {
    Protocol(&'static str),
    WrongPassword,
}

/// An exchange after the server's first message, waiting for the client's
/// final one.
pub struct ServerFirstSent {
    verifier: Verifier,
    /// False for an unknown user: the exchange runs to its end and fails.
    known: bool,
    gs2_header: String,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

/// Answers a client-first message: returns the server-first message and
/// the state that checks the client's proof. `verifier` is `None` for an
/// unknown user; `mock_key` (secret, per endpoint) makes its salt stable.
pub fn server_first(
    client_first: &[u8],
    user: &str,
    verifier: Option<&Verifier>,
    mock_key: &[u8; 32],
) -> Result<(String, ServerFirstSent), ScramError> {
    if client_first.len() > MAX_MESSAGE {
        return Err(ScramError::Protocol("client-first-message too long"));
    }
    let text = std::str::from_utf8(client_first)
        .map_err(|_| ScramError::Protocol("client-first-message is not UTF-8"))?;
    let (gs2_header, bare) = split_gs2_header(text)?;
    let client_nonce = bare
        .split(',')
        .find_map(|attr| attr.strip_prefix("r="))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
        .ok_or(ScramError::Protocol(
            "client-first-message has no valid nonce",
        ))?;
    if bare.starts_with("m=") {
        return Err(ScramError::Protocol("SCRAM extensions are not supported"));
    }

    let (verifier, known) = match verifier {
        Some(v) => (v.clone(), true),
        None => (mock_verifier(user, mock_key), false),
    };
    let mut server_nonce = [0u8; 18];
    ring::rand::SystemRandom::new()
        .fill(&mut server_nonce)
        .map_err(|_| ScramError::Protocol("no randomness for the server nonce"))?;
    let nonce = format!("{client_nonce}{}", BASE64.encode(server_nonce));
    let server_first = format!(
        "r={nonce},s={},i={}",
        BASE64.encode(&verifier.salt),
        verifier.iterations
    );
    Ok((
        server_first.clone(),
        ServerFirstSent {
            verifier,
            known,
            gs2_header: gs2_header.to_string(),
            nonce,
            client_first_bare: bare.to_string(),
            server_first,
        },
    ))
}

impl ServerFirstSent {
    /// Checks the client-final message; on success returns the
    /// server-final message (which proves to the client that the server
    /// holds the verifier).
    pub fn client_final(self, client_final: &[u8]) -> Result<String, ScramError> {
        if client_final.len() > MAX_MESSAGE {
            return Err(ScramError::Protocol("client-final-message too long"));
        }
        let text = std::str::from_utf8(client_final)
            .map_err(|_| ScramError::Protocol("client-final-message is not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Protocol("client-final-message has no proof"))?;
        let mut attrs = without_proof.split(',');
        let binding =
            attrs
                .next()
                .and_then(|a| a.strip_prefix("c="))
                .ok_or(ScramError::Protocol(
                    "client-final-message has no channel binding",
                ))?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Protocol("client-final-message has no nonce"))?;
        if BASE64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Protocol("channel binding does not match"));
        }
        if nonce != self.nonce {
            return Err(ScramError::Protocol("nonce does not match"));
        }
        let proof: [u8; 32] = BASE64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Protocol("the proof is not 32 bytes of base64"))?;

        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for (k, (p, s)) in client_key
            .iter_mut()
            .zip(proof.iter().zip(client_signature.iter()))
        {
            *k = p ^ s;
        }
        let matches = ring_constant_time_eq(&sha256(&client_key), &self.verifier.stored_key);
        if !(matches && self.known) {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)))
    }
}

/// Splits `gs2-header` ("n,," or "y,,", no authorization identity) from
/// client-first-bare.
fn split_gs2_header(text: &str) -> Result<(&str, &str), ScramError> {
    let header_len = match text.as_bytes() {
        [b'n' | b'y', b',', b',', ..] => 3,
        [b'p', b'=', ..] => {
            return Err(ScramError::Protocol(
                "channel binding (SCRAM-SHA-256-PLUS) is not offered",
            ))
        }
        [b'n' | b'y', b',', b'a', b'=', ..] => {
            return Err(ScramError::Protocol(
                "authorization identities are not supported",
            ))
        }
        _ => return Err(ScramError::Protocol("malformed gs2 header")),
    };
    Ok(text.split_at(header_len))
}

/// A verifier for a user that does not exist: a salt that stays the same
/// for the name (so probing twice does not reveal it) and keys nobody has.
fn mock_verifier(user: &str, mock_key: &[u8; 32]) -> Verifier {
    let salt = hmac_sha256(mock_key, user.as_bytes());
    Verifier {
        iterations: DEFAULT_ITERATIONS,
        salt: salt[..16].to_vec(),
        stored_key: hmac_sha256(mock_key, b"stored"),
        server_key: hmac_sha256(mock_key, b"server"),
    }
}

fn ring_constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::salted_password;

    /// A client, as libpq computes its messages (RFC 5802 section 3).
    fn client_final(
        password: &str,
        gs2: &str,
        client_first_bare: &str,
        server_first: &str,
    ) -> String {
        let attrs: Vec<&str> = server_first.split(',').collect();
        let nonce = attrs[0].strip_prefix("r=").unwrap();
        let salt = BASE64.decode(attrs[1].strip_prefix("s=").unwrap()).unwrap();
        let iterations: u32 = attrs[2].strip_prefix("i=").unwrap().parse().unwrap();
        let salted = salted_password(password, &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        let without_proof = format!("c={},r={nonce}", BASE64.encode(gs2));
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        format!("{without_proof},p={}", BASE64.encode(proof))
    }

    fn exchange(
        password: &str,
        stored: Option<&Verifier>,
        gs2: &str,
    ) -> Result<String, ScramError> {
        let bare = "n=,r=rOprNGfwEbeRWgbNEkqO";
        let first = format!("{gs2}{bare}");
        let (server_first, state) = server_first(first.as_bytes(), "analyst", stored, &[7; 32])?;
        assert!(server_first.starts_with("r=rOprNGfwEbeRWgbNEkqO"));
        state.client_final(client_final(password, gs2, bare, &server_first).as_bytes())
    }

    #[test]
    fn the_right_password_logs_in_and_the_server_proves_itself() {
        let v = Verifier::derive("pencil", b"0123456789abcdef", 4096);
        let server_final = exchange("pencil", Some(&v), "n,,").unwrap();
        assert!(server_final.starts_with("v="));
        exchange("pencil", Some(&v), "y,,").unwrap();
    }

    #[test]
    fn a_wrong_password_and_an_unknown_user_fail_alike() {
        let v = Verifier::derive("pencil", b"0123456789abcdef", 4096);
        assert_eq!(
            exchange("pencil2", Some(&v), "n,,"),
            Err(ScramError::WrongPassword)
        );
        assert_eq!(
            exchange("pencil", None, "n,,"),
            Err(ScramError::WrongPassword)
        );
        // The unknown user's salt is stable, so probing twice reveals nothing.
        let a = server_first(b"n,,n=,r=abc", "ghost", None, &[7; 32])
            .unwrap()
            .0;
        let b = server_first(b"n,,n=,r=abd", "ghost", None, &[7; 32])
            .unwrap()
            .0;
        assert_eq!(a.split(',').nth(1), b.split(',').nth(1));
    }

    #[test]
    fn protocol_errors_are_named() {
        let v = Verifier::derive("pencil", b"0123456789abcdef", 4096);
        let first = |m: &str| server_first(m.as_bytes(), "u", Some(&v), &[0; 32]).err();
        assert_eq!(
            first("p=tls-server-end-point,,n=,r=x"),
            Some(ScramError::Protocol(
                "channel binding (SCRAM-SHA-256-PLUS) is not offered"
            ))
        );
        assert!(first("n,,n=").is_some());
        assert!(first("x,,n=,r=abc").is_some());
        let (_, state) = server_first(b"n,,n=,r=abc", "u", Some(&v), &[0; 32]).unwrap();
        assert_eq!(
            state.client_final(b"c=biws,r=other,p=AAAA").err(),
            Some(ScramError::Protocol("nonce does not match"))
        );
    }
}
