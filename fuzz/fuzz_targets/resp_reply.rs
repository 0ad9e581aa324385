//! The Redis tier's RESP decoder never panics on any byte stream, read in chunks of any size,
//! and decodes every command its encoder writes back to the same arguments.
#![no_main]

use std::io::Read;

use kvtier_redis::resp::{put_command, Reply, RespReader};
use libfuzzer_sys::fuzz_target;

/// Hands out at most `chunk` bytes per read, so every boundary is hit.
struct Chunks<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Chunks<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.len().min(self.chunk).min(out.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let chunk = usize::from(first % 32) + 1;
    // Arbitrary bytes as a reply stream.
    let mut r = RespReader::new(Chunks { data: rest, chunk });
    let mut dst = [0u8; 16];
    for _ in 0..10_000 {
        match r.reply() {
            Ok(Reply::Bulk(len)) => {
                let take = (len as usize).min(dst.len()).min(usize::from(first));
                if r.read_into(&mut dst[..take]).is_err() || r.end_bulk().is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    // The same bytes as the arguments of a command (split at 0xff): encoded, then decoded.
    let args: Vec<&[u8]> = rest.split(|&b| b == 0xff).collect();
    let mut wire = Vec::new();
    put_command(&mut wire, &args);
    let mut r = RespReader::new(Chunks { data: &wire, chunk });
    assert_eq!(r.reply().unwrap(), Reply::Array(args.len() as u64));
    for arg in &args {
        assert_eq!(r.reply().unwrap(), Reply::Bulk(arg.len() as u64));
        let got = r.bulk_vec(arg.len() as u64, usize::MAX).unwrap();
        assert_eq!(&got[..], *arg);
    }
    assert!(r.reply().is_err(), "nothing after the command");
});
