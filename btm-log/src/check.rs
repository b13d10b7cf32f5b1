//! The checks a record must pass, written once for every reader: open (headers and metadata of
//! every record), later reads of a record's metadata, and verify (every byte). What differs
//! between them is only what they do with a failure: at the end of a log a failed checksum is a
//! torn append, anywhere else it is damage.

use super::error::LogError;
use super::format::{MetaError, PayloadRef, RecHeader};
use super::record::{FileId, display_path};

/// The error of a metadata block of the record of `height` that decodes badly; `corrupt`
/// names the record.
pub(crate) fn meta_error(
    height: u64,
    e: MetaError,
    corrupt: impl Fn(String) -> LogError,
) -> LogError {
    match e {
        MetaError::Malformed(why) => corrupt(format!("malformed metadata: {why}")),
        MetaError::UnsafePath(path, reason) => LogError::UnsafePath {
            height,
            path: display_path(&path),
            reason,
        },
    }
}

/// The chain: heights increase, and each record names the one before it (`prev`: its height
/// and record hash); the first record of a log names none.
pub(crate) fn check_chain(
    prev: Option<(u64, &[u8; 32])>,
    header: &RecHeader,
) -> Result<(), String> {
    match prev {
        Some((height, _)) if header.height <= height => Err(format!(
            "height {} follows height {height}: heights must increase",
            header.height
        )),
        Some((height, hash)) if header.prev_hash != *hash => Err(format!(
            "hash chain broken: the record does not follow the record of height {height}"
        )),
        None if header.prev_hash != [0u8; 32] => Err(
            "the first record of the log points at a previous record (segments missing?)".into(),
        ),
        _ => Ok(()),
    }
}

/// A data extent's payload with the first extent (file id, offset) that uses it.
pub(crate) type Use = (PayloadRef, FileId, u64);

/// Whether a data extent's payload `p` is one the record at segment `seg` stores in its payload
/// section `section` (else an earlier record's), checking that it does not run past it.
pub(crate) fn is_own(
    seg: u64,
    section: (u64, u64),
    id: FileId,
    offset: u64,
    p: &PayloadRef,
) -> Result<bool, String> {
    let (ps, pe) = section;
    let end = p
        .offset
        .checked_add(p.stored_len)
        .ok_or_else(|| format!("payload of file id {id} at {offset} overflows"))?;
    if p.seg == seg && p.offset >= ps && p.offset < pe {
        if end > pe {
            return Err(format!(
                "data of file id {id} at offset {offset} runs past the payload section"
            ));
        }
        return Ok(true);
    }
    Ok(false)
}

/// Checks a record's own payloads, as (offset, stored length) sorted by offset and each once:
/// none overlaps another, and in version 1 they tile the section `section` (a version-2
/// writer may leave the payloads of files that vanished during the cut unused).
pub(crate) fn check_own(
    section: (u64, u64),
    version: u16,
    own: impl Iterator<Item = (u64, u64)>,
) -> Result<(), String> {
    let (ps, pe) = section;
    let gaps = version >= 2;
    let mut at = ps;
    for (offset, len) in own {
        if offset < at || (offset > at && !gaps) {
            return Err(format!("payloads overlap or leave a gap at offset {at}"));
        }
        at = offset + len;
    }
    if at != pe && !gaps {
        return Err(format!(
            "payload section has {} bytes no extent uses",
            pe - at
        ));
    }
    Ok(())
}

/// Sorts a record's own payloads by offset, keeps each once (with the first extent that uses
/// it), and checks them (see [`check_own`]); returns how many extents used one again.
pub(crate) fn own_layout(
    section: (u64, u64),
    version: u16,
    own: &mut Vec<Use>,
) -> Result<u64, String> {
    own.sort_by_key(|(p, _, _)| p.offset);
    let before = own.len();
    own.dedup_by(|(a, _, _), (b, _, _)| a == b);
    check_own(
        section,
        version,
        own.iter().map(|(p, _, _)| (p.offset, p.stored_len)),
    )?;
    Ok((before - own.len()) as u64)
}
