//! A record's metadata block (namespace ops and extent table) from any bytes: no panic, no
//! unbounded allocation, and a block that decodes encodes back to itself.
#![no_main]
use btm_log::Meta;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Meta::decode(data) {
        let again = m.encode();
        assert_eq!(again.len(), m.encoded_len());
        assert_eq!(
            Meta::decode(&again).expect("re-encoded metadata decodes"),
            m
        );
    }
});
