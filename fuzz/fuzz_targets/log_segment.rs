//! A whole segment file from any bytes (seeded with real segments): open, verify, fold and
//! replay never panic and never write outside the target.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    btm_fuzz::exercise_log(data);
});
