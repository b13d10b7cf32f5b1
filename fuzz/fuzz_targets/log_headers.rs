//! The log's fixed-size headers (segment, record, trailer) from any bytes: no panic, and what
//! decodes encodes back to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    btm_log::testing::decode_headers(data);
});
