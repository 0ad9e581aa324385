//! Gives the crate's binaries the identity of the sources they are built from
//! (`KVTIER_CLI_SOURCE_ID`): `kvtier bench core` hands the measurement to the
//! `kvtier-bench-core` binary next to it only when both carry the same identity, so a binary
//! left over from an earlier build (`cargo run` builds only the binary it runs) never measures
//! old code. The identity covers what the core bench's figures depend on: this crate's and
//! kvtier-core's sources, and the lock file.

use std::fs;
use std::path::Path;

const INPUTS: [&str; 6] = ["src", "build.rs", "Cargo.toml", "../core/src", "../core/Cargo.toml", "../Cargo.lock"];

fn main() {
    let mut hash = Fnv1a::default();
    for input in INPUTS {
        println!("cargo:rerun-if-changed={input}");
        add(Path::new(input), &mut hash);
    }
    println!("cargo:rustc-env=KVTIER_CLI_SOURCE_ID={:016x}", hash.0);
}

/// Feeds `path` (a file, or every file under a directory in name order) into `hash`, each
/// file as its path then its contents. A missing input (a packaged crate has no `../core`)
/// adds nothing.
fn add(path: &Path, hash: &mut Fnv1a) {
    if path.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(path).into_iter().flatten().flatten().map(|e| e.path()).collect();
        entries.sort();
        for entry in entries {
            add(&entry, hash);
        }
    } else if let Ok(bytes) = fs::read(path) {
        hash.write(path.to_string_lossy().as_bytes());
        hash.write(&(bytes.len() as u64).to_le_bytes());
        hash.write(&bytes);
    }
}

/// 64-bit FNV-1a: tells sources apart, nothing more is asked of it.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}
