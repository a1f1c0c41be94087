//! The one decoder of Bind messages, for every path that looks into one:
//! routing a Bind by its key parameters (ordinary, lanes, fenced writes,
//! transactions over several shards) and re-sending its parameters to
//! several shards (scatter portals).
//!
//! Decoding checks the whole message once and allocates nothing; the
//! parameters are then read with the types of the statement the Bind
//! names (declared in its Parse or described by the server), so routing
//! can decode each key by its type.

use super::statements::ParamTypes;
use crate::protocol::{BodyReader, Malformed};
use crate::router::Param;

/// A Bind body, checked, in its parts.
#[derive(Debug, Clone, Copy)]
pub struct Bind<'a> {
    /// The portal name (without its terminator).
    pub portal: &'a [u8],
    /// The client's statement name.
    pub statement: &'a str,
    /// The parameter part as sent: format codes (count first), then the
    /// values (count first), for a Bind the proxy builds from it.
    pub params_part: &'a [u8],
    /// The result format codes as sent (count first).
    results_part: &'a [u8],
}

impl<'a> Bind<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Bind<'a>, Malformed> {
        let mut r = BodyReader::new(body, "Bind");
        let portal = r.cstr_bytes()?;
        let statement = r.cstr()?;
        let params_start = body.len() - r.remaining().len();
        let nformats = r.i16()?.max(0);
        for _ in 0..nformats {
            r.i16()?;
        }
        let nparams = r.i16()?.max(0);
        for _ in 0..nparams {
            let len = r.i32()?;
            if len > 0 {
                r.bytes(len as usize)?;
            }
        }
        let params_end = body.len() - r.remaining().len();
        let results_start = params_end;
        let nresults = r.i16()?.max(0);
        for _ in 0..nresults {
            r.i16()?;
        }
        let results_end = body.len() - r.remaining().len();
        Ok(Bind {
            portal,
            statement,
            params_part: &body[params_start..params_end],
            results_part: &body[results_start..results_end],
        })
    }

    /// The parameter values with their formats and, from `types` (the
    /// named statement's), their type OIDs (0 where nothing is known).
    pub fn params(&self, types: Option<&ParamTypes>) -> Vec<Param<'a>> {
        // Checked by `decode`: nothing here fails.
        let mut r = BodyReader::new(self.params_part, "Bind");
        let nformats = r.i16().unwrap_or(0).max(0) as usize;
        let formats = r.bytes(2 * nformats).unwrap_or_default();
        let format = |i: usize| -> i16 {
            let at = match nformats {
                0 => return 0,
                1 => 0,
                _ => i,
            };
            formats
                .get(2 * at..2 * at + 2)
                .map_or(0, |f| i16::from_be_bytes([f[0], f[1]]))
        };
        let nparams = r.i16().unwrap_or(0).max(0) as usize;
        let mut params = Vec::with_capacity(nparams.min(1024));
        for i in 0..nparams {
            let Ok(len) = r.i32() else {
                break;
            };
            let value = if len < 0 {
                None
            } else {
                match r.bytes(len as usize) {
                    Ok(v) => Some(v),
                    Err(_) => break,
                }
            };
            params.push(Param {
                value,
                binary: format(i) == 1,
                type_oid: types.map_or(0, |t| t.of(i)),
            });
        }
        params
    }

    /// The result format codes.
    pub fn result_formats(&self) -> Vec<i16> {
        self.results_part
            .get(2..)
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(
        portal: &[u8],
        stmt: &str,
        formats: &[i16],
        values: &[Option<&[u8]>],
        results: &[i16],
    ) -> Vec<u8> {
        let mut b = portal.to_vec();
        b.push(0);
        b.extend_from_slice(stmt.as_bytes());
        b.push(0);
        b.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        for f in formats {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b.extend_from_slice(&(results.len() as i16).to_be_bytes());
        for f in results {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b
    }

    #[test]
    fn one_format_for_all() {
        let seven = 7i32.to_be_bytes();
        let body = bind(b"", "s", &[1], &[Some(&seven), None], &[]);
        let b = Bind::decode(&body).unwrap();
        assert_eq!((b.portal, b.statement), (&b""[..], "s"));
        let params = b.params(None);
        assert_eq!(params.len(), 2);
        assert!(params[0].binary && params[1].binary);
        assert_eq!(params[0].value, Some(&seven[..]));
        assert_eq!(params[0].type_oid, 0);
        assert!(params[1].value.is_none());
        assert!(b.result_formats().is_empty());
    }

    #[test]
    fn formats_per_parameter_and_results() {
        let body = bind(b"p", "", &[0, 1], &[Some(b"42"), Some(b"")], &[1, 0]);
        let b = Bind::decode(&body).unwrap();
        assert_eq!((b.portal, b.statement), (&b"p"[..], ""));
        let params = b.params(None);
        assert!(!params[0].binary && params[1].binary);
        assert_eq!(params[0].value, Some(&b"42"[..]));
        assert_eq!(params[1].value, Some(&b""[..]));
        assert_eq!(b.result_formats(), [1, 0]);
        // The parameter part is what follows the names, up to the results.
        assert_eq!(b.params_part.len(), 2 + 4 + 2 + 4 + 2 + 4);
    }

    #[test]
    fn types_come_from_the_statement() {
        // Parse body after the name: SQL, 2 types (float8, unspecified).
        let mut parse = b"select $1, $2\0".to_vec();
        parse.extend_from_slice(&2i16.to_be_bytes());
        parse.extend_from_slice(&701i32.to_be_bytes());
        parse.extend_from_slice(&0i32.to_be_bytes());
        let types = ParamTypes::from_parse(&parse);
        let body = bind(
            b"",
            "s",
            &[1],
            &[Some(&3f64.to_be_bytes()), Some(b"x"), Some(b"y")],
            &[],
        );
        let b = Bind::decode(&body).unwrap();
        let oids: Vec<u32> = b.params(Some(&types)).iter().map(|p| p.type_oid).collect();
        assert_eq!(oids, [701, 0, 0]);
        // The server's description fills in what the Parse left open.
        let mut desc = vec![b't', 0, 0, 0, 0];
        desc.extend_from_slice(&3i16.to_be_bytes());
        for t in [701i32, 20, 25] {
            desc.extend_from_slice(&t.to_be_bytes());
        }
        let len = (desc.len() - 1) as i32;
        desc[1..5].copy_from_slice(&len.to_be_bytes());
        types.describe(&desc);
        let oids: Vec<u32> = b.params(Some(&types)).iter().map(|p| p.type_oid).collect();
        assert_eq!(oids, [701, 20, 25]);
    }

    #[test]
    fn malformed_is_an_error() {
        let body = bind(b"p", "s", &[0], &[Some(b"42")], &[1]);
        for cut in 0..body.len() {
            assert!(Bind::decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Bind::decode(b"\0s\0\0").is_err());
    }
}

/// A Bind's parameter part (formats, then values, as in
/// [`Bind::params_part`]) with only the parameters `pick` (client indexes,
/// in their new order), each with its own format code: the part for one
/// shard's piece of a split statement. None if a pick is out of range.
pub fn pick_params(params_part: &[u8], pick: &[usize]) -> Option<Vec<u8>> {
    let mut r = BodyReader::new(params_part, "Bind");
    let nformats = r.i16().ok()?.max(0) as usize;
    let formats = r.bytes(2 * nformats).ok()?;
    let nparams = r.i16().ok()?.max(0) as usize;
    let mut values: Vec<Option<&[u8]>> = Vec::with_capacity(nparams.min(4096));
    for _ in 0..nparams {
        let len = r.i32().ok()?;
        values.push(if len < 0 {
            None
        } else {
            Some(r.bytes(len as usize).ok()?)
        });
    }
    let format = |i: usize| -> [u8; 2] {
        match nformats {
            0 => [0, 0],
            1 => [formats[0], formats[1]],
            _ => [formats[2 * i], formats[2 * i + 1]],
        }
    };
    let mut out = Vec::with_capacity(params_part.len());
    out.extend_from_slice(&(pick.len() as i16).to_be_bytes());
    for &i in pick {
        if nformats > 1 && i >= nformats {
            return None;
        }
        out.extend_from_slice(&format(i));
    }
    out.extend_from_slice(&(pick.len() as i16).to_be_bytes());
    for &i in pick {
        match values.get(i)? {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    Some(out)
}

/// Parse's parameter types (count, then OIDs) for the parameters `pick`:
/// a type the client left out is 0 (the server infers it).
pub fn pick_types(param_types: &[u8], pick: &[usize]) -> Vec<u8> {
    let n = param_types
        .get(..2)
        .map_or(0, |b| i16::from_be_bytes([b[0], b[1]]).max(0) as usize);
    let oid = |i: usize| -> [u8; 4] {
        if i >= n {
            return [0; 4];
        }
        param_types
            .get(2 + 4 * i..6 + 4 * i)
            .map_or([0; 4], |b| [b[0], b[1], b[2], b[3]])
    };
    let mut out = Vec::with_capacity(2 + 4 * pick.len());
    out.extend_from_slice(&(pick.len() as i16).to_be_bytes());
    for &i in pick {
        out.extend_from_slice(&oid(i));
    }
    out
}

#[cfg(test)]
mod pick_tests {
    use super::*;

    #[test]
    fn picked_parameters_keep_their_values_and_formats() {
        // Formats: text, binary, text; values "a", NULL, "ccc".
        let mut part = vec![0, 3, 0, 0, 0, 1, 0, 0, 0, 3];
        part.extend_from_slice(&[0, 0, 0, 1, b'a']);
        part.extend_from_slice(&[255, 255, 255, 255]);
        part.extend_from_slice(&[0, 0, 0, 3, b'c', b'c', b'c']);
        let picked = pick_params(&part, &[2, 1]).unwrap();
        let mut want = vec![0, 2, 0, 0, 0, 1, 0, 2];
        want.extend_from_slice(&[0, 0, 0, 3, b'c', b'c', b'c']);
        want.extend_from_slice(&[255, 255, 255, 255]);
        assert_eq!(picked, want);
        assert!(pick_params(&part, &[3]).is_none());
        // One format for all: each picked parameter gets it.
        let part = [0, 1, 0, 1, 0, 1, 0, 0, 0, 1, 7];
        assert_eq!(
            pick_params(&part, &[0]).unwrap(),
            [0, 1, 0, 1, 0, 1, 0, 0, 0, 1, 7]
        );
        // Types: two declared, the third left to the server.
        let types = [0, 2, 0, 0, 0, 23, 0, 0, 0, 25];
        assert_eq!(pick_types(&types, &[1, 2]), [0, 2, 0, 0, 0, 25, 0, 0, 0, 0]);
    }
}
