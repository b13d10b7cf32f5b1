//! What a bucket returns, from any bytes: payload objects (header, block table, data), record
//! objects (with the name they were fetched by, so the checks behind the hash run), pointers,
//! owners and object names, sealed objects of a keyed store, and packs with the pack index a
//! layout-3 record carries. Nothing may panic; what decodes must be what was encoded.
#![no_main]
use btm_remote::layout::{
    self, Owner, Pointer, RecordObj, check_volume_name, decode_object_header, parse_hex32,
    parse_pointer_name,
};
use btm_remote::pack::{self, PackIndex};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => {
            // A payload object: its claimed total length comes from the listing, not the body.
            if rest.len() < 8 {
                return;
            }
            let total = u64::from_le_bytes(rest[..8].try_into().unwrap());
            let body = &rest[8..];
            let hash = *blake3::hash(body).as_bytes();
            if let Ok(p) = decode_object_header(body, &hash, total) {
                assert!(p.raw_len <= 64 << 20);
                let range = layout::object_table_range(p.raw_len);
                assert!(range.end >= range.start);
                if total == body.len() as u64 {
                    let stored = body[body.len() - p.stored_len as usize..].to_vec();
                    let _ = btm_log::decode_payload(&p, stored);
                }
            }
        }
        1 => {
            // Named by the whole object (version 1) or by header and metadata (version 2,
            // whose pack index follows).
            for key in [RecordObj::key(rest), RecordObj::key(RecordObj::named_part(rest))] {
                if let Ok(r) = RecordObj::decode(rest, &key) {
                    assert_eq!(r.encode(), rest);
                    let _ = btm_log::Meta::decode(&r.meta);
                }
            }
            // Version 3 is named by its inflated header and metadata: any name is taken here,
            // to reach the inflation and the index behind it.
            let any = |_: &[u8]| [0u8; 32];
            if let Ok(r) = RecordObj::decode_with(rest, &[0; 32], any)
                && r.compressed
            {
                let again = RecordObj::decode_with(&r.encode(), &[0; 32], any);
                assert_eq!(again.as_ref(), Ok(&r));
                let _ = btm_log::Meta::decode(&r.meta);
            }
        }
        4 => {
            // A pack index (length-prefixed), then a pack: every entry the index accepts is
            // read from the pack by range and decoded like a payload object.
            if rest.len() < 4 {
                return;
            }
            let n = (u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize).min(rest.len() - 4);
            let (index, pack) = rest[4..].split_at(n);
            if let Ok(idx) = PackIndex::decode(index) {
                assert_eq!(idx.encode(), index);
                for (hash, loc) in idx.locations() {
                    assert!(loc.offset >= 8 && loc.offset + loc.len <= pack::max_pack_len());
                    let Some(entry) = pack.get(loc.offset as usize..(loc.offset + loc.len) as usize)
                    else {
                        continue;
                    };
                    if let Ok(p) = decode_object_header(entry, &hash, entry.len() as u64) {
                        let stored = entry[entry.len() - p.stored_len as usize..].to_vec();
                        let _ = btm_log::decode_payload(&p, stored);
                    }
                }
            }
        }
        2 => {
            if let Ok(p) = serde_json::from_slice::<Pointer>(rest) {
                let again = serde_json::to_vec(&p).unwrap();
                assert_eq!(serde_json::from_slice::<Pointer>(&again).unwrap(), p);
            }
            let _ = serde_json::from_slice::<Owner>(rest);
            // The same bytes as a sealed object of a keyed store: refused without a panic,
            // and sealing them opens to them again.
            let key = btm_remote::RemoteKey::from_secret(&[7; 32]);
            let path = "volumes/v/heights/x.sealed";
            assert!(key.open(path, rest).is_err());
            assert_eq!(key.open(path, &key.seal(path, rest)).unwrap(), rest);
        }
        _ => {
            let s = String::from_utf8_lossy(rest);
            if let Some((h, key)) = parse_pointer_name(&s) {
                let name = layout::pointer_path("v", h, &key);
                let file = name.filename().unwrap();
                assert_eq!(parse_pointer_name(file), Some((h, key)));
            }
            let _ = parse_hex32(&s);
            if check_volume_name(&s).is_ok() {
                assert!(!s.contains('/') && s != "." && s != "..", "{s:?}");
            }
        }
    }
});
