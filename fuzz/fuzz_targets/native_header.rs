//! The native block header parser never panics, and whatever it accepts re-encodes to the same
//! bytes.
#![no_main]

use kvtier_fs::format::{decode_header, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = decode_header(data) {
        let mut again = [0u8; HEADER_LEN];
        header.encode(&mut again);
        assert_eq!(&again[..], &data[..HEADER_LEN]);
        let payload = data.get(HEADER_LEN..).unwrap_or_default();
        let _ = header.check_payload(payload);
    }
});
