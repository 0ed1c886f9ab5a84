//! What a batch is made of: commands (routed by a key's hash slot) and the
//! replies that come back.

use redis_protocol::redis_keyslot;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};

use super::RedisError;

/// A script given to [`super::ClusterClient::connect`]: its index in that
/// list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScriptId(pub usize);

/// One command and the hash slot that routes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    slot: u16,
    /// `Some`: `argv` is `numkeys keys… args…`, sent as `EVALSHA <sha> argv…`
    /// with the sha of this connection's copy of the script.
    script: Option<ScriptId>,
    argv: Vec<Vec<u8>>,
}

impl Command {
    /// `argv` (command name first), sent to the master of
    /// `routing_key`'s slot (`{hash tags}` honoured).
    pub fn new(routing_key: &[u8], argv: Vec<Vec<u8>>) -> Command {
        Command {
            slot: redis_keyslot(routing_key),
            script: None,
            argv,
        }
    }

    /// `EVALSHA` of `script` with these keys and args, routed by `keys[0]`
    /// (every key of one call must share its slot, or Redis refuses with
    /// CROSSSLOT; a call without keys goes to slot 0's master).
    pub fn script(script: ScriptId, keys: &[&[u8]], args: Vec<Vec<u8>>) -> Command {
        let mut argv = Vec::with_capacity(1 + keys.len() + args.len());
        argv.push(keys.len().to_string().into_bytes());
        argv.extend(keys.iter().map(|k| k.to_vec()));
        argv.extend(args);
        Command {
            slot: redis_keyslot(keys.first().copied().unwrap_or(b"")),
            script: Some(script),
            argv,
        }
    }

    /// The hash slot (0..16384) this command is routed by.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// Appends the command's RESP encoding to `out`; `shas[i]` is script
    /// `i`'s sha.
    pub(super) fn encode(&self, shas: &[String], out: &mut Vec<u8>) -> Result<(), RedisError> {
        // Redis answers nothing at all to an empty command, which would
        // shift every later reply of the pipeline onto the wrong command.
        if self.argv.is_empty() {
            return Err(RedisError::Protocol("an empty command".into()));
        }
        let mut parts = Vec::with_capacity(self.argv.len() + 2);
        if let Some(ScriptId(id)) = self.script {
            let sha = shas
                .get(id)
                .ok_or_else(|| RedisError::Protocol(format!("no script {id}")))?;
            parts.push(BorrowedFrame::BulkString(b"EVALSHA"));
            parts.push(BorrowedFrame::BulkString(sha.as_bytes()));
        }
        parts.extend(self.argv.iter().map(|a| BorrowedFrame::BulkString(a)));
        encode_argv(&parts, out)
    }
}

/// Appends `parts` as one RESP array (a command) to `out`.
pub(super) fn encode_argv(parts: &[BorrowedFrame], out: &mut Vec<u8>) -> Result<(), RedisError> {
    let frame = BorrowedFrame::Array(parts);
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    encode_borrowed(&mut out[start..], &frame, false)
        .map(|_| ())
        .map_err(|e| RedisError::Protocol(e.to_string()))
}

/// A command's reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    Status(String),
    /// An error reply that belongs to this command (a script's own error,
    /// WRONGTYPE…); the batch itself succeeded.
    Error(String),
    Array(Vec<Reply>),
}

impl From<OwnedFrame> for Reply {
    fn from(frame: OwnedFrame) -> Reply {
        match frame {
            OwnedFrame::Null => Reply::Nil,
            OwnedFrame::Integer(i) => Reply::Int(i),
            OwnedFrame::BulkString(b) => Reply::Bulk(b),
            OwnedFrame::SimpleString(s) => Reply::Status(String::from_utf8_lossy(&s).into_owned()),
            OwnedFrame::Error(e) => Reply::Error(e),
            OwnedFrame::Array(items) => Reply::Array(items.into_iter().map(Reply::from).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_routes_by_first_key_and_encodes_evalsha() {
        let cmd = Command::script(ScriptId(1), &[b"u:{abc}", b"c:{abc}"], vec![b"x".to_vec()]);
        assert_eq!(cmd.slot(), Command::new(b"abc", vec![]).slot());
        let mut out = Vec::new();
        cmd.encode(&["s0".into(), "s1".into()], &mut out).unwrap();
        assert_eq!(
            out,
            b"*6\r\n$7\r\nEVALSHA\r\n$2\r\ns1\r\n$1\r\n2\r\n$7\r\nu:{abc}\r\n$7\r\nc:{abc}\r\n$1\r\nx\r\n"
        );
        assert!(matches!(
            Command::new(b"k", vec![]).encode(&[], &mut out),
            Err(RedisError::Protocol(_))
        ));
        let missing = Command::script(ScriptId(5), &[b"k"], vec![]);
        assert!(matches!(
            missing.encode(&[], &mut out),
            Err(RedisError::Protocol(_))
        ));
    }
}
