//! Client authentication: the server side of SCRAM-SHA-256 (RFC 5802/7677,
//! as PostgreSQL speaks it) and md5, checked against the stored secret of
//! config/secret.rs. Pure functions over message bodies; the I/O lives in
//! `frontend`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::Md5;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::secret::hex;
use crate::config::secret::ScramVerifier;

type HmacSha256 = Hmac<Sha256>;

/// What an md5 client must send for `stored` (= md5 + md5(password||user)) and `salt`.
pub fn md5_expected_response(stored: &str, salt: &[u8; 4]) -> String {
    let mut h = Md5::new();
    h.update(&stored.as_bytes()[3..]);
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

/// Compare without an early exit, so timing does not leak how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a SCRAM exchange failed. `Protocol` errors are client bugs (08P01);
/// `WrongPassword` is 28P01.
#[derive(Debug, PartialEq, Eq)]
pub enum ScramError {
    Protocol(String),
    WrongPassword,
}

/// The server side of one SCRAM-SHA-256 exchange.
pub struct ScramServer<'a> {
    verifier: &'a ScramVerifier,
    /// gs2 header the client sent ("n,," or "y,,"), checked in the final message.
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl<'a> ScramServer<'a> {
    pub fn new(verifier: &'a ScramVerifier) -> Self {
        ScramServer {
            verifier,
            gs2_header: String::new(),
            client_first_bare: String::new(),
            server_first: String::new(),
            nonce: String::new(),
        }
    }

    /// Take the client-first-message, return the server-first-message.
    pub fn first(&mut self, client_first: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(client_first)
            .map_err(|_| ScramError::Protocol("SCRAM message is not UTF-8".into()))?;
        let proto = |m: &str| ScramError::Protocol(m.to_string());
        let (cbind, rest) = msg
            .split_once(',')
            .ok_or_else(|| proto("malformed SCRAM client-first-message"))?;
        match cbind {
            "n" | "y" => {}
            c if c.starts_with("p=") => {
                return Err(proto(
                    "channel binding was requested but the proxy does not offer SCRAM-SHA-256-PLUS",
                ))
            }
            _ => return Err(proto("malformed SCRAM gs2 header")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or_else(|| proto("malformed SCRAM client-first-message"))?;
        if !authzid.is_empty() {
            return Err(proto("SCRAM authorization identities are not supported"));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or_else(|| proto("SCRAM client-first-message has no valid nonce"))?;
        let server_nonce = B64.encode(random_bytes::<18>());
        self.nonce = format!("{client_nonce}{server_nonce}");
        self.gs2_header = format!("{cbind},{authzid},");
        self.client_first_bare = bare.to_string();
        self.server_first = format!(
            "r={},s={},i={}",
            self.nonce,
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        Ok(self.server_first.clone())
    }

    /// Take the client-final-message, return the server-final-message if the
    /// proof is right.
    pub fn finish(&self, client_final: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(client_final)
            .map_err(|_| ScramError::Protocol("SCRAM message is not UTF-8".into()))?;
        let proto = |m: &str| ScramError::Protocol(m.to_string());
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or_else(|| proto("SCRAM client-final-message has no proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or_else(|| proto("SCRAM client-final-message has no channel binding"))?;
        if B64.decode(cbind).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(proto("SCRAM channel binding does not match"));
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or_else(|| proto("SCRAM client-final-message has no nonce"))?;
        if nonce != self.nonce {
            return Err(proto("SCRAM nonce does not match"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| proto("SCRAM proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::WrongPassword);
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature.iter())
            .map(|(p, s)| p ^ s)
            .collect();
        let stored = Sha256::digest(&client_key);
        if !constant_time_eq(&stored, &self.verifier.stored_key) {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(data);
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secret::md5_password_hash;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Drive our server against postgres-protocol's client (what
    /// tokio-postgres uses), so both ends are independent implementations.
    fn exchange(server_pw: &str, client_pw: &str) -> Result<(), ScramError> {
        let v = ScramVerifier::from_password(server_pw);
        let mut server = ScramServer::new(&v);
        let mut client = ScramSha256::new(client_pw.as_bytes(), ChannelBinding::unsupported());
        let server_first = server.first(client.message())?;
        client.update(server_first.as_bytes()).unwrap();
        let server_final = server.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .map_err(|e| ScramError::Protocol(e.to_string()))
    }

    #[test]
    fn scram_accepts_right_password() {
        exchange("app", "app").unwrap();
        exchange("pässwörd", "pässwörd").unwrap();
    }

    #[test]
    fn scram_rejects_wrong_password() {
        assert_eq!(exchange("app", "nope"), Err(ScramError::WrongPassword));
    }

    #[test]
    fn scram_rejects_garbage() {
        let v = ScramVerifier::from_password("x");
        let mut s = ScramServer::new(&v);
        assert!(matches!(s.first(b"garbage"), Err(ScramError::Protocol(_))));
        assert!(matches!(
            s.first(b"p=tls-server-end-point,,n=,r=abc"),
            Err(ScramError::Protocol(_))
        ));
        s.first(b"n,,n=,r=abc").unwrap();
        assert!(matches!(
            s.finish(b"c=biws,r=wrong,p=AAAA"),
            Err(ScramError::Protocol(_))
        ));
    }

    #[test]
    fn verifier_round_trip() {
        let s = postgres_protocol::password::scram_sha_256(b"secret");
        let v = ScramVerifier::parse(&s).unwrap();
        assert_eq!(v.iterations, 4096);
        assert!(ScramVerifier::parse("SCRAM-SHA-256$x").is_err());
    }

    #[test]
    fn md5_matches_postgres() {
        assert_eq!(md5_password_hash("app", "app").len(), 35);
        let stored = md5_password_hash("pw", "u");
        let salt = [1, 2, 3, 4];
        let expected = md5_expected_response(&stored, &salt);
        // the same as postgres-protocol's client computation
        assert_eq!(
            expected,
            postgres_protocol::authentication::md5_hash(b"u", b"pw", salt)
        );
    }
}
