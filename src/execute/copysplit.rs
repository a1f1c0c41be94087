//! Splitting a COPY FROM STDIN data stream (text or CSV) into rows, and
//! finding a row's key field, so each row can go to its shard. Rows are
//! forwarded byte for byte; only the key field is decoded. The format
//! comes from the COPY statement (router::rewrite::CopyFormat).

use crate::router::rewrite::CopyFormat;

/// A row longer than this is refused (memory bound per session).
pub const MAX_ROW: usize = 16 * 1024 * 1024;

/// Cuts a byte stream into rows (each with its line end).
#[derive(Debug)]
pub struct RowSplitter {
    fmt: CopyFormat,
    buf: Vec<u8>,
    scanned: usize,
    in_quotes: bool,
    skip_next: bool,
}

impl RowSplitter {
    pub fn new(fmt: CopyFormat) -> Self {
        RowSplitter {
            fmt,
            buf: Vec::new(),
            scanned: 0,
            in_quotes: false,
            skip_next: false,
        }
    }

    /// Feed data; `row` is called for each complete row.
    pub fn push<E>(
        &mut self,
        data: &[u8],
        mut row: impl FnMut(&[u8]) -> Result<(), E>,
        too_long: impl Fn() -> E,
    ) -> Result<(), E> {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        let mut i = self.scanned;
        while i < self.buf.len() {
            let b = self.buf[i];
            if self.skip_next {
                self.skip_next = false;
            } else if self.fmt.csv {
                if self.in_quotes && b == self.fmt.escape && self.fmt.escape != self.fmt.quote {
                    self.skip_next = true;
                } else if b == self.fmt.quote {
                    self.in_quotes = !self.in_quotes;
                } else if b == b'\n' && !self.in_quotes {
                    row(&self.buf[start..=i])?;
                    start = i + 1;
                }
            } else if b == b'\\' {
                self.skip_next = true;
            } else if b == b'\n' {
                row(&self.buf[start..=i])?;
                start = i + 1;
            }
            i += 1;
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_ROW {
            return Err(too_long());
        }
        Ok(())
    }

    /// The last row when the data does not end with a newline.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let rest = std::mem::take(&mut self.buf);
        self.scanned = 0;
        (!rest.is_empty()).then_some(rest)
    }
}

/// Whether `row` is the end-of-data marker `\.`.
pub fn is_end_marker(row: &[u8]) -> bool {
    strip_eol(row) == b"\\."
}

fn strip_eol(row: &[u8]) -> &[u8] {
    let row = row.strip_suffix(b"\n").unwrap_or(row);
    row.strip_suffix(b"\r").unwrap_or(row)
}

/// Field `idx` of `row`, decoded (None for NULL).
pub fn field(fmt: &CopyFormat, row: &[u8], idx: usize) -> Result<Option<Vec<u8>>, String> {
    let row = strip_eol(row);
    if fmt.csv {
        csv_field(fmt, row, idx)
    } else {
        text_field(fmt, row, idx)
    }
}

fn text_field(fmt: &CopyFormat, row: &[u8], idx: usize) -> Result<Option<Vec<u8>>, String> {
    let mut n = 0;
    let mut start = 0;
    let mut i = 0;
    let mut bounds = None;
    while i <= row.len() {
        if i == row.len() || row[i] == fmt.delimiter {
            if n == idx {
                bounds = Some((start, i));
                break;
            }
            n += 1;
            start = i + 1;
        } else if row[i] == b'\\' {
            i += 1;
        }
        i += 1;
    }
    let (s, e) = bounds.ok_or_else(|| format!("missing data for column {}", idx + 1))?;
    let raw = &row[s..e.min(row.len())];
    if raw == fmt.null.as_slice() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' || i + 1 == raw.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (c - b'0') as u32;
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    Ok(Some(out))
}

fn csv_field(fmt: &CopyFormat, row: &[u8], idx: usize) -> Result<Option<Vec<u8>>, String> {
    let mut n = 0;
    let mut i = 0;
    loop {
        // One field starting at i.
        let mut value = Vec::new();
        let mut quoted = false;
        let start = i;
        while i < row.len() && row[i] != fmt.delimiter {
            if row[i] == fmt.quote {
                quoted = true;
                i += 1;
                while i < row.len() {
                    let b = row[i];
                    if b == fmt.escape
                        && i + 1 < row.len()
                        && (row[i + 1] == fmt.quote || row[i + 1] == fmt.escape)
                        && (fmt.escape != fmt.quote || row[i + 1] == fmt.quote)
                    {
                        value.push(row[i + 1]);
                        i += 2;
                    } else if b == fmt.quote {
                        i += 1;
                        break;
                    } else {
                        value.push(b);
                        i += 1;
                    }
                }
            } else {
                value.push(row[i]);
                i += 1;
            }
        }
        if n == idx {
            if !quoted && row[start..i] == *fmt.null {
                return Ok(None);
            }
            return Ok(Some(value));
        }
        if i >= row.len() {
            return Err(format!("missing data for column {}", idx + 1));
        }
        i += 1; // the delimiter
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(fmt: &CopyFormat, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut s = RowSplitter::new(fmt.clone());
        let mut out = Vec::new();
        for c in chunks {
            s.push(
                c,
                |r| {
                    out.push(r.to_vec());
                    Ok::<(), ()>(())
                },
                || (),
            )
            .unwrap();
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn splits_text_rows_across_chunks() {
        let f = CopyFormat::from_sql("copy t from stdin").unwrap();
        let r = rows(&f, &[b"1\ta\n2\tb", b" c\\\nd\n3", b"\tz"]);
        assert_eq!(
            r,
            vec![
                b"1\ta\n".to_vec(),
                b"2\tb c\\\nd\n".to_vec(),
                b"3\tz".to_vec()
            ]
        );
        assert_eq!(field(&f, &r[1], 0).unwrap(), Some(b"2".to_vec()));
        assert_eq!(field(&f, &r[1], 1).unwrap(), Some(b"b c\nd".to_vec()));
        assert_eq!(field(&f, b"\\N\tx\n", 0).unwrap(), None);
        assert_eq!(
            field(&f, b"a\\tb\\101\\x41\tx\n", 0).unwrap(),
            Some(b"a\tbAA".to_vec())
        );
        assert!(field(&f, b"1\n", 1).is_err());
        assert!(is_end_marker(b"\\.\n"));
    }

    #[test]
    fn splits_csv_with_quoted_newlines() {
        let f = CopyFormat::from_sql("copy t from stdin (format csv)").unwrap();
        let r = rows(&f, &[b"1,\"a\nb\"\n\"2\",\"x\"\"", b"y\"\n,z\n"]);
        assert_eq!(r.len(), 3, "{r:?}");
        assert_eq!(field(&f, &r[0], 1).unwrap(), Some(b"a\nb".to_vec()));
        assert_eq!(field(&f, &r[1], 0).unwrap(), Some(b"2".to_vec()));
        assert_eq!(field(&f, &r[1], 1).unwrap(), Some(b"x\"y".to_vec()));
        assert_eq!(field(&f, &r[2], 0).unwrap(), None);
        assert_eq!(field(&f, b"\"\",1\r\n", 0).unwrap(), Some(vec![]));
        assert_eq!(field(&f, b"a,1\r\n", 1).unwrap(), Some(b"1".to_vec()));
    }
}
