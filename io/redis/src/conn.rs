//! One connection to one server (node), as the data path uses it: send a pipeline of requests
//! given as byte slices (a row is one of them, written from the primary region as it is), then
//! read the replies one by one, a bulk payload straight into its destination.
//!
//! Two implementations behind one interface:
//! - **thin** (plain TCP or a unix socket): our own handshake (`AUTH`, `SELECT`), `writev` of
//!   the request slices, and the [`RespReader`]: no copy of a value
//!   in user space either way;
//! - **crate**: a [`redis::Connection`] (its handshake, and TLS with the `tls` feature): requests
//!   go out through `send_packed_command` slice by slice, replies come back as
//!   [`redis::Value`]s, a loaded value parsed into a vector and copied from there.
//!
//! Every read, write and connect is bounded by the tier's timeout. Any failure (a timeout
//! included) makes the connection unusable: its owner drops it, so a reply that arrives late
//! is never read as the answer to a later request.

use std::io::{self, IoSlice, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo};

use crate::config::ClientKind;
use crate::resp::{self, Reply, RespError, RespReader};

/// The byte stream under a thin connection.
#[derive(Debug)]
pub enum Socket {
    /// TCP (`TCP_NODELAY` set).
    Tcp(TcpStream),
    /// A unix socket.
    Unix(UnixStream),
}

impl io::Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write_vectored(bufs),
            Socket::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connection to one node.
pub enum Conn {
    /// Our codec on our socket.
    Thin(Box<RespReader<Socket>>),
    /// The `redis` crate's connection, with the bulk payload of the last reply.
    Crate {
        /// The connection.
        con: Box<redis::Connection>,
        /// The last bulk reply's payload, and how much of it was read.
        bulk: Option<(Vec<u8>, usize)>,
    },
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Thin(_) => "Conn::Thin",
            Conn::Crate { .. } => "Conn::Crate",
        })
    }
}

/// `writev` limit per call (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

impl Conn {
    /// Connects to `info` (one node) with `kind`'s code, within `timeout` for each step.
    /// TLS addresses always use the crate's connection.
    pub fn connect(info: &ConnectionInfo, kind: ClientKind, timeout: Duration) -> io::Result<Conn> {
        let thin = kind == ClientKind::Thin && !matches!(info.addr, ConnectionAddr::TcpTls { .. });
        if !thin {
            let client = redis::Client::open(info.clone()).map_err(to_io)?;
            let con = client.get_connection_with_timeout(timeout).map_err(to_io)?;
            con.set_read_timeout(Some(timeout)).map_err(to_io)?;
            con.set_write_timeout(Some(timeout)).map_err(to_io)?;
            return Ok(Conn::Crate { con: Box::new(con), bulk: None });
        }
        let socket = match &info.addr {
            ConnectionAddr::Tcp(host, port) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}:{port} resolves to nothing"));
                let mut stream = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            stream = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let stream = stream.ok_or(last)?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                Socket::Tcp(stream)
            }
            ConnectionAddr::Unix(path) => {
                let stream = UnixStream::connect(path)?;
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                Socket::Unix(stream)
            }
            ConnectionAddr::TcpTls { .. } => unreachable!("TLS goes through the crate"),
        };
        let mut conn = Conn::Thin(Box::new(RespReader::new(socket)));
        let r = &info.redis;
        if let Some(password) = &r.password {
            let mut req = Vec::new();
            match &r.username {
                Some(user) => resp::put_command(&mut req, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => resp::put_command(&mut req, &[b"AUTH", password.as_bytes()]),
            }
            conn.expect_ok(&req, "AUTH")?;
        }
        if r.db != 0 {
            let mut req = Vec::new();
            resp::put_command(&mut req, &[b"SELECT", r.db.to_string().as_bytes()]);
            conn.expect_ok(&req, "SELECT")?;
        }
        Ok(conn)
    }

    fn expect_ok(&mut self, req: &[u8], what: &str) -> io::Result<()> {
        self.send(&[req])?;
        match self.reply().map_err(resp_to_io)? {
            Reply::Simple(_) => Ok(()),
            Reply::Error(e) => Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("{what}: {e}"))),
            other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("{what}: unexpected reply {other:?}"))),
        }
    }

    /// Sends the request bytes `parts`, in order, as they are (no copy on the thin path).
    pub fn send(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        match self {
            Conn::Thin(reader) => {
                let socket = reader.get_mut();
                for chunk in parts.chunks(IOV_MAX) {
                    let mut slices: Vec<IoSlice<'_>> = chunk.iter().map(|p| IoSlice::new(p)).collect();
                    let mut slices = &mut slices[..];
                    while !slices.is_empty() {
                        match socket.write_vectored(slices) {
                            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                            Ok(n) => IoSlice::advance_slices(&mut slices, n),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(())
            }
            Conn::Crate { con, .. } => {
                for part in parts {
                    con.send_packed_command(part).map_err(to_io)?;
                }
                Ok(())
            }
        }
    }

    /// The next reply's header (see [`RespReader::reply`]).
    pub fn reply(&mut self) -> Result<Reply, RespError> {
        match self {
            Conn::Thin(reader) => reader.reply(),
            Conn::Crate { con, bulk } => {
                if bulk.is_some() {
                    return Err(RespError::Protocol("bulk payload not consumed"));
                }
                let value = match con.recv_response() {
                    Ok(v) => v,
                    Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                        return Err(RespError::Io(to_io(e)))
                    }
                    Err(e) => match e.code() {
                        Some(code) => return Ok(Reply::Error(format!("{code} {}", e.detail().unwrap_or("")))),
                        None => return Err(RespError::Protocol("the redis crate could not parse a reply")),
                    },
                };
                Ok(match value {
                    redis::Value::Nil => Reply::Nil,
                    redis::Value::Int(i) => Reply::Int(i),
                    redis::Value::Okay => Reply::Simple("OK".into()),
                    redis::Value::SimpleString(s) => Reply::Simple(s),
                    redis::Value::ServerError(e) => Reply::Error(format!("{} {}", e.code(), e.details().unwrap_or(""))),
                    redis::Value::BulkString(v) => {
                        let len = v.len() as u64;
                        *bulk = Some((v, 0));
                        Reply::Bulk(len)
                    }
                    _ => return Err(RespError::Protocol("unexpected reply type")),
                })
            }
        }
    }

    /// Reads `dst.len()` bytes of the current bulk payload into `dst`.
    pub fn read_into(&mut self, dst: &mut [u8]) -> Result<(), RespError> {
        match self {
            Conn::Thin(reader) => reader.read_into(dst),
            Conn::Crate { bulk, .. } => {
                let Some((v, pos)) = bulk else { return Err(RespError::Protocol("no bulk payload")) };
                let src = v.get(*pos..*pos + dst.len()).ok_or(RespError::Protocol("read past the bulk payload"))?;
                dst.copy_from_slice(src);
                *pos += dst.len();
                Ok(())
            }
        }
    }

    /// Skips the rest of the current bulk payload and its terminator.
    pub fn end_bulk(&mut self) -> Result<(), RespError> {
        match self {
            Conn::Thin(reader) => reader.end_bulk(),
            Conn::Crate { bulk, .. } => match bulk.take() {
                Some(_) => Ok(()),
                None => Err(RespError::Protocol("no bulk payload to end")),
            },
        }
    }

    /// A whole bulk payload of at most `max` bytes (after [`Reply::Bulk`]): the reader's
    /// [`RespReader::bulk_vec`], or the crate's payload itself (no copy).
    pub fn bulk_vec(&mut self, len: u64, max: usize) -> Result<Vec<u8>, RespError> {
        match self {
            Conn::Thin(reader) => reader.bulk_vec(len, max),
            Conn::Crate { bulk, .. } => {
                if len > max as u64 {
                    return Err(RespError::Protocol("bulk reply too long"));
                }
                match bulk.take() {
                    Some((v, 0)) if v.len() as u64 == len => Ok(v),
                    Some(_) => Err(RespError::Protocol("bulk payload partly read")),
                    None => Err(RespError::Protocol("no bulk payload")),
                }
            }
        }
    }

    /// Reads one reply that must not be an array and discards it (a bulk payload included).
    pub fn skip_reply(&mut self) -> Result<Reply, RespError> {
        let reply = self.reply()?;
        match reply {
            Reply::Bulk(_) => self.end_bulk()?,
            Reply::Array(_) => return Err(RespError::Protocol("unexpected array reply")),
            _ => {}
        }
        Ok(reply)
    }
}

fn to_io(e: redis::RedisError) -> io::Error {
    if e.is_timeout() {
        io::Error::new(io::ErrorKind::TimedOut, e.to_string())
    } else {
        io::Error::other(e.to_string())
    }
}

/// A reply error as an `io::Error` (for start-up and control paths that report one).
pub fn resp_to_io(e: RespError) -> io::Error {
    match e {
        RespError::Io(e) => e,
        RespError::Protocol(what) => io::Error::new(io::ErrorKind::InvalidData, what),
    }
}

/// Whether `e` is a timeout (as opposed to a refused or reset connection).
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
}
