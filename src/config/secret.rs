//! What a configured password is stored as: the password itself, a
//! SCRAM-SHA-256 verifier or an md5 hash, parsed and checked when the
//! config is loaded. The exchanges that check a client against it are in
//! frontend/auth.rs.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use md5::{Digest, Md5};

/// A SCRAM-SHA-256 verifier, as in `pg_authid.rolpassword`.
#[derive(Clone)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(..)")
    }
}

impl ScramVerifier {
    /// Parse `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            "is not a valid SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)"
                .to_string()
        };
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
        let (iter_salt, keys) = rest.split_once('$').ok_or_else(bad)?;
        let (iters, salt) = iter_salt.split_once(':').ok_or_else(bad)?;
        let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
        let iterations: u32 = iters.parse().map_err(|_| bad())?;
        let salt = B64.decode(salt).map_err(|_| bad())?;
        let stored_key: [u8; 32] = B64
            .decode(stored)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(bad)?;
        let server_key: [u8; 32] = B64
            .decode(server)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(bad)?;
        if iterations == 0 {
            return Err(bad());
        }
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Derive a verifier from a plain password with a fresh random salt
    /// (SASLprep and PBKDF2 done by postgres-protocol, as libpq does).
    pub fn from_password(password: &str) -> Self {
        let s = postgres_protocol::password::scram_sha_256(password.as_bytes());
        // postgres-protocol always produces the canonical format.
        Self::parse(&s).expect("postgres-protocol produced an invalid SCRAM verifier")
    }
}

/// What the proxy holds to check a user's password.
#[derive(Debug, Clone)]
pub enum StoredSecret {
    /// The password itself: works with every method; the SCRAM verifier is
    /// derived once at load so each login does not pay for PBKDF2.
    Plain {
        password: String,
        scram: ScramVerifier,
    },
    Scram(ScramVerifier),
    /// `md5` + md5(password || username), as PostgreSQL stores it.
    Md5(String),
}

impl StoredSecret {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.starts_with("SCRAM-SHA-256$") {
            return Ok(StoredSecret::Scram(ScramVerifier::parse(s)?));
        }
        if s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(StoredSecret::Md5(s.to_ascii_lowercase()));
        }
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(StoredSecret::Plain {
            password: s.to_string(),
            scram: ScramVerifier::from_password(s),
        })
    }

    pub fn scram(&self) -> Option<&ScramVerifier> {
        match self {
            StoredSecret::Plain { scram, .. } | StoredSecret::Scram(scram) => Some(scram),
            StoredSecret::Md5(_) => None,
        }
    }

    /// `md5` + md5(password || user), if this secret can produce it.
    pub fn md5_hash(&self, user: &str) -> Option<String> {
        match self {
            StoredSecret::Plain { password, .. } => Some(md5_password_hash(password, user)),
            StoredSecret::Md5(h) => Some(h.clone()),
            StoredSecret::Scram(_) => None,
        }
    }
}

pub fn md5_password_hash(password: &str, user: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
