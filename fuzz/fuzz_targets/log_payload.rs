//! Stored payloads (block table, then raw or zstd data). First byte odd: any bytes against a
//! reference taken from the input, which must never panic or allocate past the reference's
//! length. Even: a valid payload built from the input with one byte changed where the input
//! says, which the checks must always refuse.
#![no_main]
use btm_log::{Codec, PayloadRef, check_payload, decode_payload, table_len};
use libfuzzer_sys::fuzz_target;

/// Payloads are at most 1 MiB raw in practice (64 MiB by the format); small keeps runs fast.
const MAX_RAW: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        if rest.len() < 36 {
            return;
        }
        let raw_len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as u64 % (MAX_RAW + 1);
        let p = PayloadRef {
            seg: 1,
            offset: 0,
            stored_len: (rest.len() - 36) as u64,
            raw_len,
            codec: if mode & 2 == 0 {
                Codec::Raw
            } else {
                Codec::Zstd
            },
            hash: rest[4..36].try_into().unwrap(),
        };
        let stored = &rest[36..];
        let checked = check_payload(&p, stored);
        let decoded = decode_payload(&p, stored.to_vec());
        assert_eq!(checked.is_ok(), decoded.is_ok());
        return;
    }
    // A valid payload of `raw`, then one byte flipped.
    if rest.len() < 5 {
        return;
    }
    let at = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
    let raw = &rest[4..];
    let zstd = mode & 2 == 2;
    let mut stored = btm_log::block_table(raw);
    assert_eq!(stored.len() as u64, table_len(raw.len() as u64));
    if zstd {
        stored.extend(zstd::bulk::compress(raw, 1).unwrap());
    } else {
        stored.extend_from_slice(raw);
    }
    let p = PayloadRef {
        seg: 1,
        offset: 0,
        stored_len: stored.len() as u64,
        raw_len: raw.len() as u64,
        codec: if zstd { Codec::Zstd } else { Codec::Raw },
        hash: *blake3::hash(raw).as_bytes(),
    };
    assert_eq!(decode_payload(&p, stored.clone()).as_deref(), Ok(raw));
    let at = at % stored.len();
    stored[at] ^= 1 << (mode >> 5);
    let decoded = decode_payload(&p, stored.clone());
    // A changed zstd frame may still decode to the same bytes (an unused bit); raw never.
    match decoded {
        Ok(got) => assert!(
            zstd && got == raw,
            "a changed payload decoded to other bytes"
        ),
        Err(_) => assert!(check_payload(&p, &stored).is_err()),
    }
});
