//! A client's named prepared statements, kept by the proxy so they survive
//! transaction pooling: each is stored as the Parse frame that creates it on
//! any backend, under a proxy-chosen name derived from its content.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use foldhash::HashMap;
use sha2::{Digest, Sha256};

use crate::protocol::{self, fe, BodyReader, Malformed};
use crate::router::control::{self, Effects};

/// A prepared statement as the proxy re-creates it on backends.
#[derive(Debug)]
pub struct Statement {
    /// Name on the backends: `sw_` + a hash of query, parameter types and
    /// schema generation, so
    /// two clients preparing the same statement share one server-side copy,
    /// and different statements can never collide under one name.
    pub server_name: Arc<str>,
    /// A Parse frame creating the statement under `server_name`.
    pub parse_frame: Bytes,
    /// The statement's SQL text (for routing its Binds).
    pub sql: Arc<str>,
    /// Its parameters' types (for decoding the keys of its Binds).
    pub types: Arc<ParamTypes>,
    /// Whether its batches may run on a lane (see session::lanes).
    pub lane: AtomicU8,
    /// What running it may do to the server session (session::state).
    pub effects: Effects,
    /// The schema generation at which its result columns were last known
    /// to be those the client was told (see `needs_shape_check`).
    verified: AtomicU64,
    /// Its result columns changed since the client prepared it: every run
    /// fails as PostgreSQL's would, until the client prepares it again.
    stale: AtomicBool,
}

impl Statement {
    /// A schema change passed through the proxy since its result columns
    /// were last checked, and the client was told what they were: before
    /// it runs on a server that may prepare it afresh (with the new
    /// columns, where PostgreSQL alone would refuse the older plan), its
    /// columns are described there and compared (session::extended).
    pub fn needs_shape_check(&self) -> bool {
        self.types.shape().is_some()
            && self.verified.load(Ordering::Relaxed) != crate::backend::conn::schema_generation()
    }

    /// Its result columns were found unchanged at `generation`.
    pub fn shape_verified(&self, generation: u64) {
        self.verified.store(generation, Ordering::Relaxed);
    }

    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }

    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }
}

/// The client's statements by the client's own names (looked up at every
/// Bind; the names are the client's, hashed with a per-process random seed).
#[derive(Default)]
pub struct Statements {
    by_client_name: HashMap<String, Arc<Statement>>,
}

impl Statements {
    /// Record a client Parse (with a non-empty name) and return the statement.
    /// A client re-using a name without closing it gets the new definition
    /// (PostgreSQL would raise 42P05; replacing is the lenient choice that no
    /// driver depends on either way).
    pub fn define(&mut self, client_name: &str, parse_body_after_name: &[u8]) -> Arc<Statement> {
        // The schema generation is part of the name: a statement prepared
        // after a migration is never served by the plan another client's
        // same SQL got before it (backend::conn::schema_changed).
        let generation = crate::backend::conn::schema_generation();
        let digest = Sha256::new()
            .chain_update(generation.to_le_bytes())
            .chain_update(parse_body_after_name)
            .finalize();
        let mut name = String::with_capacity(3 + 32);
        name.push_str("sw_");
        for b in &digest[..16] {
            name.push_str(&format!("{b:02x}"));
        }
        let mut frame = BytesMut::with_capacity(6 + name.len() + parse_body_after_name.len());
        let at = protocol::begin_frame(&mut frame, fe::PARSE);
        frame.put_slice(name.as_bytes());
        frame.put_u8(0);
        frame.put_slice(parse_body_after_name);
        protocol::finish_frame(&mut frame, at);
        let sql: Arc<str> = parse_sql(parse_body_after_name).into();
        let stmt = Arc::new(Statement {
            server_name: name.into(),
            parse_frame: frame.freeze(),
            effects: control::effects(sql.as_bytes()),
            sql,
            types: Arc::new(ParamTypes::from_parse(parse_body_after_name)),
            lane: AtomicU8::new(0),
            verified: AtomicU64::new(generation),
            stale: AtomicBool::new(false),
        });
        self.by_client_name
            .insert(client_name.to_string(), stmt.clone());
        stmt
    }

    pub fn get(&self, client_name: &str) -> Option<&Arc<Statement>> {
        self.by_client_name.get(client_name)
    }

    pub fn remove(&mut self, client_name: &str) {
        self.by_client_name.remove(client_name);
    }

    pub fn clear(&mut self) {
        self.by_client_name.clear();
    }

    pub fn len(&self) -> usize {
        self.by_client_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client_name.is_empty()
    }
}

/// What the proxy knows of a statement's parameter types: routing decodes
/// a key parameter by its type (router::params), and a binary float8 is
/// not an int8 of the same length.
#[derive(Debug, Default)]
pub struct ParamTypes {
    /// The OIDs the client's Parse declared (0: left to the server).
    declared: Box<[u32]>,
    /// The server's ParameterDescription, once it answered a Describe of
    /// the statement the client sent. Set once: a statement's parameter
    /// types do not change while it exists (a client re-preparing a name
    /// gets a new `ParamTypes`).
    described: OnceLock<Box<[u32]>>,
    /// Its result columns when first described (`result_shape`).
    shape: OnceLock<u64>,
}

impl ParamTypes {
    /// From a Parse body after the statement name: the SQL, the count of
    /// parameter types and the OIDs (what is malformed counts as 0).
    pub fn from_parse(parse_body_after_name: &[u8]) -> ParamTypes {
        let mut r = BodyReader::new(parse_body_after_name, "Parse");
        let declared = match (r.cstr_bytes(), r.i16()) {
            (Ok(_), Ok(n)) => (0..n.max(0))
                .map_while(|_| r.i32().ok().map(|t| t as u32))
                .collect(),
            _ => Box::default(),
        };
        ParamTypes {
            declared,
            described: OnceLock::new(),
            shape: OnceLock::new(),
        }
    }

    /// The type of parameter `i` (zero-based): declared, else described,
    /// else 0.
    pub fn of(&self, i: usize) -> u32 {
        match self.declared.get(i) {
            Some(&t) if t != 0 => t,
            _ => self
                .described
                .get()
                .and_then(|d| d.get(i).copied())
                .unwrap_or(0),
        }
    }

    /// Note the server's RowDescription or NoData for the statement
    /// (`frame`, the whole message), the first time it is described.
    pub fn describe_result(&self, frame: &[u8]) {
        let _ = self.shape.set(result_shape(frame));
    }

    /// Its result columns as first described (`result_shape`).
    pub fn shape(&self) -> Option<u64> {
        self.shape.get().copied()
    }

    /// Note the server's ParameterDescription (`frame`, the whole message).
    pub fn describe(&self, frame: &[u8]) {
        let mut r = BodyReader::new(protocol::body(frame), "ParameterDescription");
        let Ok(n) = r.i16() else {
            return;
        };
        let types: Box<[u32]> = (0..n.max(0))
            .map_while(|_| r.i32().ok().map(|t| t as u32))
            .collect();
        let _ = self.described.set(types);
    }
}

/// What PostgreSQL compares when it checks that a cached plan's result
/// did not change (the columns' names, types and type modifiers, in
/// order), as a hash of a RowDescription; NoData is 0. The table and
/// column a result column came from are left out, as PostgreSQL does.
pub fn result_shape(frame: &[u8]) -> u64 {
    if frame.first() != Some(&protocol::be::ROW_DESCRIPTION) {
        return 0;
    }
    let mut r = BodyReader::new(protocol::body(frame), "RowDescription");
    let mut hasher = Sha256::new();
    let n = r.i16().unwrap_or(0);
    hasher.update(n.to_le_bytes());
    for _ in 0..n.max(0) {
        let (Ok(name), Ok(_table), Ok(_column), Ok(ty), Ok(_len), Ok(typmod), Ok(_format)) = (
            r.cstr_bytes(),
            r.i32(),
            r.i16(),
            r.i32(),
            r.i16(),
            r.i32(),
            r.i16(),
        ) else {
            break;
        };
        hasher.update(name);
        hasher.update([0]);
        hasher.update(ty.to_le_bytes());
        hasher.update(typmod.to_le_bytes());
    }
    let digest = hasher.finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) | 1
}

/// The SQL text of a Parse body after the statement name (empty if malformed).
pub fn parse_sql(parse_body_after_name: &[u8]) -> String {
    let mut r = BodyReader::new(parse_body_after_name, "Parse");
    r.cstr().map(str::to_string).unwrap_or_default()
}

/// Split a message body that starts with one name (Parse, Close, Describe
/// after its type byte) into the name and the rest.
pub fn split_name<'a>(
    body: &'a [u8],
    what: &'static str,
) -> Result<(&'a str, &'a [u8]), Malformed> {
    let mut r = BodyReader::new(body, what);
    let name = r.cstr()?;
    Ok((name, r.remaining()))
}

pub use crate::protocol::rebuild;

/// A client's Bind of `portal`, with its statement renamed to the server's
/// name; `rest` is the Bind's body after the statement name.
pub fn rename_bind(portal: &[u8], server_name: &str, rest: &[u8], out: &mut BytesMut) {
    let at = protocol::begin_frame(out, fe::BIND);
    out.put_slice(portal);
    out.put_u8(0);
    out.put_slice(server_name.as_bytes());
    out.put_u8(0);
    out.put_slice(rest);
    protocol::finish_frame(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_same_server_name() {
        let mut s = Statements::default();
        let a = s.define("a", b"select 1\0\0\0");
        let b = s.define("b", b"select 1\0\0\0");
        let c = s.define("c", b"select 2\0\0\0");
        assert_eq!(a.server_name, b.server_name);
        assert_eq!(&*a.sql, "select 1");
        assert_ne!(a.server_name, c.server_name);
        assert!(a.server_name.len() < 63, "fits NAMEDATALEN");
        // Parse frame: 'P', len, name\0, query\0, types
        let f = &a.parse_frame;
        assert_eq!(f[0], b'P');
        let len = i32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
        assert_eq!(len + 1, f.len());
        let (name, rest) = split_name(&f[5..], "Parse").unwrap();
        assert_eq!(name, &*a.server_name);
        assert_eq!(rest, b"select 1\0\0\0");
    }

    #[test]
    fn rebuild_bind() {
        let mut out = BytesMut::new();
        rebuild(b'B', b"portal\0", "sw_x", b"\0\0\0\0\0\0", &mut out);
        assert_eq!(&out[5..], b"portal\0sw_x\0\0\0\0\0\0\0");
        let mut renamed = BytesMut::new();
        rename_bind(b"portal", "sw_x", b"\0\0\0\0\0\0", &mut renamed);
        assert_eq!(renamed, out);
        renamed.clear();
        rename_bind(b"", "sw_x", b"", &mut renamed);
        assert_eq!(&renamed[..], b"B\0\0\0\x0a\0sw_x\0");
    }
}
