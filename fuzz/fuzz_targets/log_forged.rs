//! A log forged by whoever can write its directory: records of any metadata and payload bytes
//! with every hash right, so only the readers' own checks stand between them and replay
//! (hostile paths, overlapping or out-of-bounds payloads, absurd sizes, broken namespaces).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let records = btm_fuzz::decode_forged(data);
    btm_fuzz::exercise_log(&btm_log::testing::forged_segment(&records));
});
