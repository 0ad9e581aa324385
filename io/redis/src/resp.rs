//! The thin RESP2 codec of the data path: commands are encoded as small prefixes around bytes
//! the caller writes itself (a row goes to the socket straight from the primary region), and
//! replies are decoded from a buffered reader that hands bulk payloads straight into the
//! caller's buffer (a loaded row is read from the socket into its primary slot).
//!
//! It speaks only what the tier sends and receives: arrays of bulk strings out; simple strings,
//! errors, integers, bulk strings (nil included) and arrays in. Every length is checked before
//! anything is read or allocated; a malformed reply is [`RespError::Protocol`], after which the
//! connection is dropped (nothing after a bad byte can be trusted to belong to a request).
//! Nothing here panics on any input (the `resp_reply` fuzz target feeds it arbitrary bytes).

use std::fmt;
use std::io::{self, Read};

/// The longest line (type byte to CRLF) a reply header or a simple string/error may take.
pub const MAX_LINE: usize = 1024;
/// The longest bulk string accepted: Redis's own `proto-max-bulk-len` default (512 MiB).
pub const MAX_BULK: u64 = 512 << 20;
/// The most elements an array reply may announce.
pub const MAX_ARRAY: i64 = 1 << 20;
/// How deep arrays may nest when a reply is skipped as a whole.
pub const MAX_DEPTH: usize = 8;

/// One reply header. A bulk string's payload is not read yet: the caller reads it with
/// [`RespReader::read_into`] / [`RespReader::skip`] and then [`RespReader::end_bulk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+...`: a status (`OK`).
    Simple(String),
    /// `-...`: an error (`OOM ...`, `MOVED 3999 127.0.0.1:6381`, `WRONGTYPE ...`).
    Error(String),
    /// `:n`.
    Int(i64),
    /// `$-1` (or `*-1`): no value.
    Nil,
    /// `$n`: `n` payload bytes follow, then CRLF.
    Bulk(u64),
    /// `*n`: `n` replies follow.
    Array(u64),
}

/// Why a reply could not be read.
#[derive(Debug)]
pub enum RespError {
    /// The connection failed or timed out (the reader's own error).
    Io(io::Error),
    /// The bytes are not a reply this codec accepts.
    Protocol(&'static str),
}

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespError::Io(e) => write!(f, "connection: {e}"),
            RespError::Protocol(what) => write!(f, "protocol error: {what}"),
        }
    }
}

impl std::error::Error for RespError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RespError::Io(e) => Some(e),
            RespError::Protocol(_) => None,
        }
    }
}

impl From<io::Error> for RespError {
    fn from(e: io::Error) -> Self {
        RespError::Io(e)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Appends `*n\r\n`: a command of `n` arguments follows.
pub fn put_array(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    put_decimal(out, n as u64);
    out.extend_from_slice(b"\r\n");
}

/// Appends one whole bulk-string argument.
pub fn put_bulk(out: &mut Vec<u8>, arg: &[u8]) {
    put_bulk_len(out, arg.len() as u64);
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

/// Appends `$len\r\n`: the caller sends the `len` payload bytes and [`CRLF`] itself.
pub fn put_bulk_len(out: &mut Vec<u8>, len: u64) {
    out.push(b'$');
    put_decimal(out, len);
    out.extend_from_slice(b"\r\n");
}

/// The terminator of a bulk payload the caller sent itself.
pub const CRLF: &[u8] = b"\r\n";

/// Appends a whole command (`args` as bulk strings).
pub fn put_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    put_array(out, args.len());
    for arg in args {
        put_bulk(out, arg);
    }
}

fn put_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// A buffered reply reader over a byte stream (a socket). Reads that fit the buffer go
/// through it; a bulk payload larger than what is buffered is read from the stream straight
/// into the caller's buffer.
#[derive(Debug)]
pub struct RespReader<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// Payload bytes (plus the CRLF, counted apart) of the bulk being read.
    bulk_left: u64,
    in_bulk: bool,
}

/// Size of the reader's buffer.
pub const READ_BUF: usize = 64 << 10;

impl<R: Read> RespReader<R> {
    /// A reader over `inner`.
    pub fn new(inner: R) -> Self {
        RespReader { inner, buf: vec![0u8; READ_BUF].into_boxed_slice(), pos: 0, end: 0, bulk_left: 0, in_bulk: false }
    }

    /// The stream (e.g. to write requests on the same socket).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Bytes received and not consumed yet (a reply the caller did not ask for).
    pub fn buffered(&self) -> usize {
        self.end - self.pos
    }

    fn fill(&mut self) -> Result<(), RespError> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        let n = loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RespError::Io(e)),
            }
        };
        if n == 0 {
            return Err(RespError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        self.end += n;
        Ok(())
    }

    /// One CRLF-terminated line, without its CRLF (bounded by [`MAX_LINE`]); the line stays
    /// in the buffer until the next read.
    fn line(&mut self) -> Result<(usize, usize), RespError> {
        let mut scanned = 0;
        loop {
            let window = &self.buf[self.pos + scanned..self.end];
            if let Some(i) = window.windows(2).position(|w| w == b"\r\n") {
                let start = self.pos;
                let len = scanned + i;
                self.pos += len + 2;
                return Ok((start, len));
            }
            scanned = (self.end - self.pos).saturating_sub(1);
            if scanned >= MAX_LINE {
                return Err(RespError::Protocol("line too long"));
            }
            // Keep the partial line at the front so a line never straddles the buffer's end.
            if self.pos > 0 && self.end == self.buf.len() {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            }
            self.fill()?;
        }
    }

    /// Reads the next reply's header. A bulk payload must be consumed before the next call.
    pub fn reply(&mut self) -> Result<Reply, RespError> {
        if self.in_bulk {
            return Err(RespError::Protocol("bulk payload not consumed"));
        }
        if self.pos == self.end {
            self.fill()?;
        }
        let (start, len) = self.line()?;
        let line = &self.buf[start..start + len];
        let Some((&kind, body)) = line.split_first() else {
            return Err(RespError::Protocol("empty line"));
        };
        match kind {
            b'+' => Ok(Reply::Simple(text(body))),
            b'-' => Ok(Reply::Error(text(body))),
            b':' => Ok(Reply::Int(parse_int(body)?)),
            b'$' => match parse_int(body)? {
                -1 => Ok(Reply::Nil),
                n if n >= 0 && (n as u64) <= MAX_BULK => {
                    self.bulk_left = n as u64;
                    self.in_bulk = true;
                    Ok(Reply::Bulk(n as u64))
                }
                _ => Err(RespError::Protocol("bad bulk length")),
            },
            b'*' => match parse_int(body)? {
                -1 => Ok(Reply::Nil),
                n if (0..=MAX_ARRAY).contains(&n) => Ok(Reply::Array(n as u64)),
                _ => Err(RespError::Protocol("bad array length")),
            },
            _ => Err(RespError::Protocol("unknown reply type")),
        }
    }

    /// Reads exactly `dst.len()` payload bytes of the current bulk string into `dst`: what is
    /// buffered is copied, the rest is read from the stream straight into `dst`.
    pub fn read_into(&mut self, dst: &mut [u8]) -> Result<(), RespError> {
        if !self.in_bulk || (dst.len() as u64) > self.bulk_left {
            return Err(RespError::Protocol("read past the bulk payload"));
        }
        let buffered = (self.end - self.pos).min(dst.len());
        dst[..buffered].copy_from_slice(&self.buf[self.pos..self.pos + buffered]);
        self.pos += buffered;
        let mut done = buffered;
        while done < dst.len() {
            match self.inner.read(&mut dst[done..]) {
                Ok(0) => return Err(RespError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RespError::Io(e)),
            }
        }
        self.bulk_left -= dst.len() as u64;
        Ok(())
    }

    /// Skips `n` payload bytes of the current bulk string.
    pub fn skip(&mut self, mut n: u64) -> Result<(), RespError> {
        if !self.in_bulk || n > self.bulk_left {
            return Err(RespError::Protocol("skip past the bulk payload"));
        }
        self.bulk_left -= n;
        while n > 0 {
            if self.pos == self.end {
                self.fill()?;
            }
            let take = ((self.end - self.pos) as u64).min(n) as usize;
            self.pos += take;
            n -= take as u64;
        }
        Ok(())
    }

    /// Payload bytes of the current bulk string not read yet.
    pub fn bulk_left(&self) -> u64 {
        if self.in_bulk {
            self.bulk_left
        } else {
            0
        }
    }

    /// Skips what is left of the current bulk payload and reads its CRLF.
    pub fn end_bulk(&mut self) -> Result<(), RespError> {
        if !self.in_bulk {
            return Err(RespError::Protocol("no bulk payload to end"));
        }
        self.skip(self.bulk_left)?;
        while self.end - self.pos < 2 {
            self.fill()?;
        }
        if &self.buf[self.pos..self.pos + 2] != b"\r\n" {
            return Err(RespError::Protocol("bulk payload not followed by CRLF"));
        }
        self.pos += 2;
        self.in_bulk = false;
        Ok(())
    }

    /// A whole bulk payload of at most `max` bytes, as a vector (small control replies).
    pub fn bulk_vec(&mut self, len: u64, max: usize) -> Result<Vec<u8>, RespError> {
        if len > max as u64 {
            return Err(RespError::Protocol("bulk reply too long"));
        }
        let mut v = vec![0u8; len as usize];
        self.read_into(&mut v)?;
        self.end_bulk()?;
        Ok(v)
    }

    /// Reads and discards one whole reply (arrays included, to [`MAX_DEPTH`]); returns its
    /// header.
    pub fn skip_reply(&mut self) -> Result<Reply, RespError> {
        let reply = self.reply()?;
        self.skip_rest(&reply, 0)?;
        Ok(reply)
    }

    fn skip_rest(&mut self, reply: &Reply, depth: usize) -> Result<(), RespError> {
        match reply {
            Reply::Bulk(_) => self.end_bulk(),
            Reply::Array(n) => {
                if depth >= MAX_DEPTH {
                    return Err(RespError::Protocol("arrays nested too deep"));
                }
                for _ in 0..*n {
                    let inner = self.reply()?;
                    self.skip_rest(&inner, depth + 1)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// A decimal `i64` as RESP writes it: an optional `-`, then 1 to 19 digits.
fn parse_int(body: &[u8]) -> Result<i64, RespError> {
    const BAD: RespError = RespError::Protocol("bad integer");
    let (neg, digits) = match body.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, body),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    let mut n: i64 = 0;
    for &d in digits {
        n = n.checked_mul(10).and_then(|n| n.checked_add(i64::from(d - b'0'))).ok_or(BAD)?;
    }
    Ok(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that hands out at most `chunk` bytes per read, to exercise every boundary.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.data.len().min(self.chunk).min(out.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn commands_encode_as_redis_expects() {
        let mut out = Vec::new();
        put_command(&mut out, &[b"SET", b"k", b"value", b"NX"]);
        assert_eq!(out, b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n$2\r\nNX\r\n");
        out.clear();
        put_bulk_len(&mut out, 1234567890123);
        put_array(&mut out, 0);
        assert_eq!(out, b"$1234567890123\r\n*0\r\n");
    }

    #[test]
    fn replies_decode_at_every_chunking() {
        let wire = b"+OK\r\n-OOM command not allowed\r\n:42\r\n:-7\r\n$-1\r\n*-1\r\n$5\r\nhello\r\n$0\r\n\r\n*2\r\n:1\r\n$2\r\nab\r\n";
        for chunk in 1..wire.len() + 1 {
            let mut r = RespReader::new(Trickle { data: wire, chunk });
            assert_eq!(r.reply().unwrap(), Reply::Simple("OK".into()));
            assert_eq!(r.reply().unwrap(), Reply::Error("OOM command not allowed".into()));
            assert_eq!(r.reply().unwrap(), Reply::Int(42));
            assert_eq!(r.reply().unwrap(), Reply::Int(-7));
            assert_eq!(r.reply().unwrap(), Reply::Nil);
            assert_eq!(r.reply().unwrap(), Reply::Nil);
            assert_eq!(r.reply().unwrap(), Reply::Bulk(5));
            let mut dst = [0u8; 3];
            r.read_into(&mut dst).unwrap();
            assert_eq!(&dst, b"hel");
            assert_eq!(r.bulk_left(), 2);
            r.end_bulk().unwrap();
            assert_eq!(r.reply().unwrap(), Reply::Bulk(0));
            r.end_bulk().unwrap();
            assert_eq!(r.skip_reply().unwrap(), Reply::Array(2));
            assert!(matches!(r.reply(), Err(RespError::Io(_))), "end of stream");
        }
    }

    #[test]
    fn large_payloads_go_straight_into_the_destination() {
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        put_bulk(&mut wire, &payload);
        wire.extend_from_slice(b":1\r\n");
        let mut r = RespReader::new(&wire[..]);
        assert_eq!(r.reply().unwrap(), Reply::Bulk(payload.len() as u64));
        let mut dst = vec![0u8; payload.len()];
        r.read_into(&mut dst).unwrap();
        r.end_bulk().unwrap();
        assert_eq!(dst, payload);
        assert_eq!(r.reply().unwrap(), Reply::Int(1));
    }

    #[test]
    fn malformed_replies_are_protocol_errors() {
        for bad in [
            &b"?x\r\n"[..],
            b"\r\n",
            b":\r\n",
            b":12a\r\n",
            b":99999999999999999999\r\n",
            b"$-2\r\n",
            b"$99999999999\r\n",
            b"*-5\r\n",
            b"$3\r\nabcd\r\n",
        ] {
            let mut r = RespReader::new(bad);
            let got = r.reply().and_then(|h| {
                if let Reply::Bulk(_) = h {
                    r.end_bulk()?;
                }
                Ok(h)
            });
            assert!(matches!(got, Err(RespError::Protocol(_))), "{:?}: {got:?}", String::from_utf8_lossy(bad));
        }
        let long = vec![b'+'; MAX_LINE + 10];
        assert!(matches!(RespReader::new(&long[..]).reply(), Err(RespError::Protocol("line too long"))));
        let mut nested = Vec::new();
        for _ in 0..MAX_DEPTH + 1 {
            nested.extend_from_slice(b"*1\r\n");
        }
        nested.extend_from_slice(b":1\r\n");
        assert!(RespReader::new(&nested[..]).skip_reply().is_err());
        let mut r = RespReader::new(&b"$3\r\nabc\r\n"[..]);
        r.reply().unwrap();
        assert!(r.reply().is_err(), "a header while a payload is pending");
        assert!(r.read_into(&mut [0u8; 4]).is_err(), "past the payload");
    }
}
