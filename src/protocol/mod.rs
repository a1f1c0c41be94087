//! The PostgreSQL wire protocol as shardwire needs it: framing, the few
//! decoders routing and session state need, and builders for the messages the
//! proxy itself sends.
//!
//! Frames are kept as raw bytes (`type byte + length + body`) so that the data
//! path forwards them without rebuilding. Messages the proxy *sends* are
//! encoded with pgwire's `messages` module (our pinned codec). Messages the
//! proxy *receives* from untrusted peers are decoded here with bounds-checked
//! readers: pgwire's decoders index past the end of a short body (they panic on
//! malformed input), and a client's garbage must never panic the proxy.

pub mod reader;

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};
use pgwire::messages::Message;

pub use reader::FrameReader;

/// Protocol 3.0, the only version PostgreSQL servers up to 17 speak and the
/// one we negotiate every client down to.
pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// PostgreSQL's own limit for a startup packet.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Message type bytes, frontend to backend.
pub mod fe {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const TERMINATE: u8 = b'X';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PASSWORD: u8 = b'p';
}

/// Message type bytes, backend to frontend.
pub mod be {
    pub const AUTHENTICATION: u8 = b'R';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const NO_DATA: u8 = b'n';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const DATA_ROW: u8 = b'D';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

/// A malformed message from a peer. The string says what was wrong.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what} message: {reason}")]
pub struct Malformed {
    pub what: &'static str,
    pub reason: &'static str,
}

fn malformed(what: &'static str, reason: &'static str) -> Malformed {
    Malformed { what, reason }
}

/// A bounds-checked cursor over a message body.
pub struct BodyReader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> BodyReader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        BodyReader { buf, what }
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    /// A NUL-terminated string, as raw bytes without the NUL.
    pub fn cstr_bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed(self.what, "unterminated string"))?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub fn cstr(&mut self) -> Result<&'a str, Malformed> {
        let what = self.what;
        std::str::from_utf8(self.cstr_bytes()?).map_err(|_| malformed(what, "invalid UTF-8"))
    }

    pub fn u8(&mut self) -> Result<u8, Malformed> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| malformed(self.what, "too short"))?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, Malformed> {
        Ok(i16::from_be_bytes(
            self.bytes(2)?.try_into().unwrap_or([0; 2]),
        ))
    }

    pub fn i32(&mut self) -> Result<i32, Malformed> {
        Ok(i32::from_be_bytes(
            self.bytes(4)?.try_into().unwrap_or([0; 4]),
        ))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(malformed(self.what, "too short"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
}

/// The body of a frame (everything after type byte and length).
#[inline]
pub fn body(frame: &[u8]) -> &[u8] {
    &frame[5..]
}

/// The frames of a buffer of whole frames (one the proxy built or
/// collected), each with its tag and length; a truncated last one is cut
/// at the end of the buffer.
pub fn frames(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + 5 > buf.len() {
            return None;
        }
        let len = i32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]).max(4);
        let end = (at + 1 + len as usize).min(buf.len());
        let frame = &buf[at..end];
        at = end;
        Some(frame)
    })
}

/// Start a frame of type `tag` in `out`; returns the offset to pass to
/// [`finish_frame`] once the body is written.
#[inline]
pub fn begin_frame(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    at
}

#[inline]
pub fn finish_frame(out: &mut BytesMut, len_at: usize) {
    let len = (out.len() - len_at) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Rebuild a frame of type `tag` whose body is `prefix` + `name\0` + `rest`
/// (a client's message with a statement's name changed, or one the proxy
/// makes for a named statement).
pub fn rebuild(tag: u8, prefix: &[u8], name: &str, rest: &[u8], out: &mut BytesMut) {
    let at = begin_frame(out, tag);
    out.put_slice(prefix);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(rest);
    finish_frame(out, at);
}

/// Encode any pgwire message into `out`. Encoding our own well-formed values
/// cannot fail except for absurd sizes, which we treat as a bug and drop.
pub fn encode<M: Message>(out: &mut BytesMut, msg: &M) {
    if let Err(e) = msg.encode(out) {
        tracing::error!(error = %e, "could not encode a protocol message");
    }
}

/// A PostgreSQL error or notice as the proxy sends it: severity, SQLSTATE,
/// message, and optional detail and hint.
#[derive(Debug, Clone)]
pub struct PgError {
    pub severity: &'static str,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        PgError {
            severity: "ERROR",
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        PgError {
            severity: "FATAL",
            ..Self::error(code, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let mut fields = vec![
            (b'S', self.severity.to_string()),
            (b'V', self.severity.to_string()),
            (b'C', self.code.to_string()),
            (b'M', self.message.clone()),
        ];
        if let Some(d) = &self.detail {
            fields.push((b'D', d.clone()));
        }
        if let Some(h) = &self.hint {
            fields.push((b'H', h.clone()));
        }
        encode(out, &ErrorResponse::new(fields));
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

/// SQLSTATE codes the proxy raises or looks for in a server's errors,
/// named as in PostgreSQL's errcodes.txt. Code outside this module names
/// them, never spells them (tests assert the literal codes clients see).
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CONNECTION_EXCEPTION: &str = "08000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const CONFIG_FILE_ERROR: &str = "F0000";
    pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
    pub const QUERY_CANCELED: &str = "57014";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    pub const T_R_SERIALIZATION_FAILURE: &str = "40001";
    pub const OBJECT_IN_USE: &str = "55006";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const NOT_NULL_VIOLATION: &str = "23502";
    pub const UNDEFINED_TABLE: &str = "42P01";
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    pub const SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION: &str = "08004";
    pub const UNDEFINED_COLUMN: &str = "42703";
    pub const INVALID_SCHEMA_NAME: &str = "3F000";
    pub const SUCCESSFUL_COMPLETION: &str = "00000";
    pub const WRONG_OBJECT_TYPE: &str = "42809";
    pub const INVALID_BINARY_REPRESENTATION: &str = "22P03";
    pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
    pub const INVALID_CURSOR_NAME: &str = "34000";
    pub const BAD_COPY_FILE_FORMAT: &str = "22P04";
    pub const DUPLICATE_OBJECT: &str = "42710";
}

/// An ErrorResponse with these fields (code, value).
pub fn error_response(out: &mut BytesMut, fields: Vec<(u8, String)>) {
    encode(out, &ErrorResponse::new(fields));
}

/// Fields of a server's ErrorResponse or NoticeResponse, decoded leniently
/// (used for logging and for turning backend errors into client errors).
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut r = BodyReader::new(body, "ErrorResponse");
    let mut fields = Vec::new();
    while let Ok(code) = r.u8() {
        if code == 0 {
            break;
        }
        match r.cstr_bytes() {
            Ok(v) => fields.push((code, String::from_utf8_lossy(v).into_owned())),
            Err(_) => break,
        }
    }
    fields
}

/// "SQLSTATE: message" of an ErrorResponse body, for logs and error chains.
pub fn describe_error(body: &[u8]) -> String {
    let fields = error_fields(body);
    let get = |c: u8| {
        fields
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    format!("{} {}: {}", get(b'S'), get(b'C'), get(b'M'))
}

/// A connection's transaction status, as ReadyForQuery reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxStatus {
    /// 'I': not in a transaction block.
    #[default]
    Idle,
    /// 'T': in a transaction block.
    InBlock,
    /// 'E': in a failed transaction block; statements are refused until
    /// it ends.
    Failed,
}

impl TxStatus {
    /// From ReadyForQuery's status byte; anything unknown is taken as
    /// idle, as the server only ever sends the three.
    pub fn from_byte(b: u8) -> Self {
        match b {
            b'T' => TxStatus::InBlock,
            b'E' => TxStatus::Failed,
            _ => TxStatus::Idle,
        }
    }

    /// The status of a ReadyForQuery frame (`Idle` when it has none).
    pub fn of_ready(frame: &[u8]) -> Self {
        Self::from_byte(body(frame).first().copied().unwrap_or(b'I'))
    }
}

pub fn ready_for_query(out: &mut BytesMut, status: TxStatus) {
    let status = match status {
        TxStatus::InBlock => TransactionStatus::Transaction,
        TxStatus::Failed => TransactionStatus::Error,
        TxStatus::Idle => TransactionStatus::Idle,
    };
    encode(out, &ReadyForQuery::new(status));
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    encode(
        out,
        &ParameterStatus::new(name.to_string(), value.to_string()),
    );
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    encode(out, &BackendKeyData::new(pid, SecretKey::I32(secret)));
}

pub fn authentication(out: &mut BytesMut, auth: Authentication) {
    encode(out, &auth);
}

/// A frame with an empty body (ParseComplete, BindComplete, CloseComplete...).
pub fn empty_frame(tag: u8) -> Bytes {
    Bytes::copy_from_slice(&[tag, 0, 0, 0, 4])
}

/// CommandComplete with `tag` ("SELECT 3", "SET", ...).
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    let at = begin_frame(out, be::COMMAND_COMPLETE);
    out.put_slice(tag.as_bytes());
    out.put_u8(0);
    finish_frame(out, at);
}

/// RowDescription of text columns.
pub fn row_description_text(out: &mut BytesMut, names: &[&str]) {
    let at = begin_frame(out, be::ROW_DESCRIPTION);
    out.put_i16(names.len() as i16);
    for name in names {
        out.put_slice(name.as_bytes());
        out.put_u8(0);
        out.put_i32(0); // table oid
        out.put_i16(0); // column number
        out.put_i32(25); // type text
        out.put_i16(-1);
        out.put_i32(-1);
        out.put_i16(0); // text format
    }
    finish_frame(out, at);
}

/// DataRow of text values (None is NULL).
pub fn data_row_text(out: &mut BytesMut, values: &[Option<&str>]) {
    let at = begin_frame(out, be::DATA_ROW);
    out.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v.as_bytes());
            }
            None => out.put_i32(-1),
        }
    }
    finish_frame(out, at);
}

/// The values of a DataRow frame (None is NULL).
pub fn data_row_values(frame: &[u8]) -> Result<Vec<Option<&[u8]>>, Malformed> {
    let mut r = BodyReader::new(body(frame), "DataRow");
    let n = r.i16()?;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let len = r.i32()?;
        out.push(if len < 0 {
            None
        } else {
            Some(r.bytes(len as usize)?)
        });
    }
    Ok(out)
}

/// The first value of a DataRow frame as text (None for NULL, a
/// malformed row or non-UTF-8).
pub fn first_text_value(frame: &[u8]) -> Option<String> {
    let values = data_row_values(frame).ok()?;
    let v = values.first().copied().flatten()?;
    String::from_utf8(v.to_vec()).ok()
}

/// A simple Query frame.
pub fn query_frame(out: &mut BytesMut, sql: &str) {
    let at = begin_frame(out, fe::QUERY);
    out.put_slice(sql.as_bytes());
    out.put_u8(0);
    finish_frame(out, at);
}

/// NegotiateProtocolVersion: we speak 3.0 and none of the `_pq_` options.
pub fn negotiate_protocol_version(out: &mut BytesMut, unsupported: &[String]) {
    let at = begin_frame(out, be::NEGOTIATE_PROTOCOL_VERSION);
    // The newest version we support, as a whole version number (what
    // PostgreSQL sends; libpq rejects anything below 3.0).
    out.put_i32(PROTOCOL_3_0);
    out.put_i32(unsupported.len() as i32);
    for o in unsupported {
        out.put_slice(o.as_bytes());
        out.put_u8(0);
    }
    finish_frame(out, at);
}

/// Quote a name as a SQL identifier ("a""b").
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quote a string as a SQL literal ('it''s').
pub fn quote_literal(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('\'');
    for c in s.chars() {
        if c == '\'' {
            q.push('\'');
        }
        q.push(c);
    }
    q.push('\'');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_reader_rejects_truncation() {
        let mut r = BodyReader::new(b"abc", "Parse");
        assert!(r.cstr().is_err());
        let mut r = BodyReader::new(b"a\0\x00", "Parse");
        assert_eq!(r.cstr().unwrap(), "a");
        assert!(r.i16().is_err());
    }

    #[test]
    fn frames_have_correct_length() {
        let mut out = BytesMut::new();
        query_frame(&mut out, "select 1");
        assert_eq!(&out[..], b"Q\0\0\0\x0dselect 1\0");
        PgError::error("42000", "boom").encode(&mut out);
        assert_eq!(out[14], b'E');
    }

    #[test]
    fn error_fields_are_read_leniently() {
        let f = error_fields(b"SERROR\0C42P01\0Mno table\0\0");
        assert_eq!(f.len(), 3);
        assert_eq!(
            describe_error(b"SERROR\0C42P01\0Mno table\0\0"),
            "ERROR 42P01: no table"
        );
        // truncated: no panic, partial result
        assert_eq!(error_fields(b"SERR").len(), 0);
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
