//! Parsers that recognise logins and configuration changes in the messages
//! of common devices, so that they become ACCESS and CHANGE events instead
//! of LOG lines:
//!
//! | parser | message | event |
//! |---|---|---|
//! | `cisco_ios` | `%SEC_LOGIN-5-LOGIN_SUCCESS: Login Success [user: U] [Source: IP] ...` | ACCESS `login` |
//! | `cisco_ios` | `%SEC_LOGIN-4-LOGIN_FAILED: Login failed [user: U] [Source: IP] ...` | ACCESS `login_failed` |
//! | `cisco_ios` | `%SYS-5-CONFIG_I: Configured from console by U on vty0 (IP)` | CHANGE `config` |
//! | `cisco_ios` | `%PARSER-5-CFGLOG_LOGGEDCMD: User:U  logged command:CMD` | CHANGE `config` |
//! | `openssh` | `Accepted password for U from IP port N ssh2` (any method) | ACCESS `login` |
//! | `openssh` | `Failed password for [invalid user] U from IP port N ssh2`, `Invalid user U from IP` | ACCESS `login_failed` |
//! | `fortigate` | `... action="login" status="success" user="U" srcip=IP ...` | ACCESS `login` / `login_failed` |
//! | `fortigate` | `... cfgpath="system.interface" action="Edit" user="U" ...` | CHANGE `config` |
//!
//! What a parser finds goes into attributes: `user`, `peer` (the address
//! the login came from, as ACCESS events carry it), `method`, `path`,
//! `action`. The message itself stays the event's `text`.

use super::config::Parser;
use otwatch_proto::EventKind;

/// What a parser recognised in a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognized {
    pub kind: EventKind,
    /// `login`, `login_failed`, `config`.
    pub name: &'static str,
    /// Attributes found (`user`, `peer`, ...).
    pub attrs: Vec<(&'static str, String)>,
}

/// The first of `parsers` that recognises `msg` (sent by `app`).
pub fn recognize(parsers: &[Parser], app: Option<&str>, msg: &str) -> Option<Recognized> {
    parsers.iter().find_map(|p| match p {
        Parser::CiscoIos => cisco_ios(msg),
        Parser::Openssh => openssh(app, msg),
        Parser::Fortigate => fortigate(msg),
    })
}

/// The text between `start` and the next `end` after it.
fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(s[from..from + len].trim())
}

fn attrs(pairs: &[(&'static str, Option<&str>)]) -> Vec<(&'static str, String)> {
    pairs
        .iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (*k, v.to_string())))
        .collect()
}

fn cisco_ios(msg: &str) -> Option<Recognized> {
    let access = |name| {
        Some(Recognized {
            kind: EventKind::Access,
            name,
            attrs: attrs(&[
                ("user", between(msg, "[user: ", "]")),
                ("peer", between(msg, "[Source: ", "]")),
            ]),
        })
    };
    if msg.contains("%SEC_LOGIN-5-LOGIN_SUCCESS") {
        return access("login");
    }
    if msg.contains("%SEC_LOGIN-4-LOGIN_FAILED") {
        return access("login_failed");
    }
    if let Some(at) = msg.find("%SYS-5-CONFIG_I") {
        let rest = &msg[at..];
        let user = between(rest, " by ", " ").or_else(|| rest.split(" by ").nth(1));
        let peer = between(rest, "(", ")");
        return Some(Recognized {
            kind: EventKind::Change,
            name: "config",
            attrs: attrs(&[("user", user), ("peer", peer)]),
        });
    }
    if let Some(at) = msg.find("%PARSER-5-CFGLOG_LOGGEDCMD") {
        let rest = &msg[at..];
        return Some(Recognized {
            kind: EventKind::Change,
            name: "config",
            attrs: attrs(&[
                ("user", between(rest, "User:", " ")),
                (
                    "command",
                    rest.split("logged command:").nth(1).map(str::trim),
                ),
            ]),
        });
    }
    None
}

fn openssh(app: Option<&str>, msg: &str) -> Option<Recognized> {
    if app.is_some_and(|a| a != "sshd") {
        return None;
    }
    // `from IP port N`: the address is the word after the last " from ".
    fn peer(s: &str) -> Option<&str> {
        s.rsplit_once(" from ")
            .map(|(_, r)| r.split(' ').next().unwrap_or(""))
    }
    if let Some(rest) = msg.strip_prefix("Accepted ") {
        let (method, rest) = rest.split_once(" for ")?;
        let user = rest.rsplit_once(" from ").map(|(u, _)| u);
        return Some(Recognized {
            kind: EventKind::Access,
            name: "login",
            attrs: attrs(&[
                ("user", user),
                ("peer", peer(rest)),
                ("method", Some(method)),
            ]),
        });
    }
    if let Some(rest) = msg.strip_prefix("Failed ") {
        let (method, rest) = rest.split_once(" for ")?;
        let rest = rest.strip_prefix("invalid user ").unwrap_or(rest);
        let user = rest.rsplit_once(" from ").map(|(u, _)| u);
        return Some(Recognized {
            kind: EventKind::Access,
            name: "login_failed",
            attrs: attrs(&[
                ("user", user),
                ("peer", peer(rest)),
                ("method", Some(method)),
            ]),
        });
    }
    if let Some(rest) = msg.strip_prefix("Invalid user ") {
        let user = rest.rsplit_once(" from ").map(|(u, _)| u);
        return Some(Recognized {
            kind: EventKind::Access,
            name: "login_failed",
            attrs: attrs(&[("user", user), ("peer", peer(rest))]),
        });
    }
    None
}

/// The value of `key=` in FortiGate's `key=value key="quoted value"` text.
fn kv<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    let mut search = 0;
    while let Some(found) = msg[search..].find(key) {
        let at = search + found;
        let starts_word = at == 0 || msg.as_bytes()[at - 1] == b' ';
        let after = &msg[at + key.len()..];
        if starts_word {
            if let Some(value) = after.strip_prefix('=') {
                return Some(match value.strip_prefix('"') {
                    Some(q) => &q[..q.find('"').unwrap_or(q.len())],
                    None => value.split(' ').next().unwrap_or(""),
                });
            }
        }
        search = at + key.len();
    }
    None
}

fn fortigate(msg: &str) -> Option<Recognized> {
    if kv(msg, "logid").is_none() || kv(msg, "type") != Some("event") {
        return None;
    }
    let user = kv(msg, "user");
    let action = kv(msg, "action");
    if action == Some("login") {
        let ok = kv(msg, "status") == Some("success");
        let peer = kv(msg, "srcip").or_else(|| kv(msg, "ui").and_then(|ui| between(ui, "(", ")")));
        return Some(Recognized {
            kind: EventKind::Access,
            name: if ok { "login" } else { "login_failed" },
            attrs: attrs(&[
                ("user", user),
                ("peer", peer),
                ("method", kv(msg, "method")),
            ]),
        });
    }
    if let Some(path) = kv(msg, "cfgpath") {
        return Some(Recognized {
            kind: EventKind::Change,
            name: "config",
            attrs: attrs(&[
                ("user", user),
                ("path", Some(path)),
                ("action", action),
                ("peer", kv(msg, "ui").and_then(|ui| between(ui, "(", ")"))),
            ]),
        });
    }
    None
}
