//! Store records and page files decoded from arbitrary bytes: runs, steps,
//! item groups and remembered deliveries decode or fail with an error, and
//! what decodes encodes back to itself; a page is read back exactly as the
//! page file holds it where its pointer says, or not at all (out of the
//! file, a CRC that does not match, not UTF-8), never a panic.
//!
//! Input: a flags byte, 16 bytes of offset and length, two of a length `n`
//! (all big-endian), `n` bytes of sled value, then the page file.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use weft::store::fuzzing;

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Some((numbers, rest)) = rest.split_first_chunk::<16>() else { return };
    let Some((n, rest)) = rest.split_first_chunk::<2>() else { return };
    let n = u16::from_be_bytes(*n);
    let (value, file) = rest.split_at(usize::from(n).min(rest.len()));
    let offset = u64::from_be_bytes(numbers[..8].try_into().unwrap_or_default());
    let len = u64::from_be_bytes(numbers[8..].try_into().unwrap_or_default());

    // The sled value as a stored record of each kind.
    for reencode in [fuzzing::reencode_run, fuzzing::reencode_step, fuzzing::reencode_items] {
        if let Ok(once) = reencode(value) {
            let twice = reencode(&once).unwrap_or_else(|e| panic!("{e}: re-encoded {once:?}"));
            assert_eq!(twice, once, "a record does not encode back to itself");
        }
    }
    let tolerance = Duration::from_secs(u64::from(flags) * 60);
    let _ = fuzzing::delivery_expired(value, tolerance, offset);

    // The sled value as a page pointer: as it is, or made from the numbers
    // (kept near the file so that some are inside it).
    let near = |n: u64| n % (file.len() as u64 + 2);
    let pointer = match flags % 4 {
        0 => value.to_vec(),
        1 => fuzzing::page_pointer(near(offset), near(len), None),
        2 => {
            let (offset, len) = (near(offset), near(len));
            let crc = page(file, offset, len).map_or(0, crc32fast::hash);
            // Mostly the right CRC, sometimes one bit off.
            let flip = if flags & 4 != 0 { 1 << (flags >> 3) } else { 0 };
            fuzzing::page_pointer(offset, len, Some(crc ^ flip))
        }
        _ => fuzzing::page_pointer(offset, len, Some(u32::from(n))),
    };
    std::fs::write(page_file(), file).unwrap_or_else(|e| panic!("writing the page file: {e}"));
    let read = fuzzing::read_page(&page_file(), b"run/00001/000000007", &pointer);
    match (read, expected(&pointer, file)) {
        (Ok(records), Some(expected)) => assert_eq!(records.as_bytes(), expected),
        (Ok(records), None) => panic!("read {records:?} through {pointer:?}, which is no page"),
        (Err(e), Some(expected)) => panic!("{e} through {pointer:?} for {expected:?}"),
        (Err(_), None) => {}
    }
}

/// What a sled value reads as, by the format `PagePointer` documents: `#`,
/// offset, length and CRC-32 (big-endian) or `@`, offset and length point
/// into the page file; anything else is the page itself (older stores).
fn expected<'a>(value: &'a [u8], file: &'a [u8]) -> Option<&'a [u8]> {
    let number =
        |at: usize| value.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
    let bytes = match (value.first(), value.len()) {
        (Some(b'#'), 21) => {
            let bytes = page(file, number(1)?, number(9)?)?;
            let crc = u32::from_be_bytes(value[17..21].try_into().ok()?);
            (crc32fast::hash(bytes) == crc).then_some(bytes)?
        }
        (Some(b'@'), 17) => page(file, number(1)?, number(9)?)?,
        _ => value,
    };
    std::str::from_utf8(bytes).ok().map(str::as_bytes)
}

fn page(file: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    file.get(start..end)
}

/// One page file per process, rewritten for each input.
fn page_file() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("weft-fuzz-page-{}.json", std::process::id()))
    })
    .clone()
}
