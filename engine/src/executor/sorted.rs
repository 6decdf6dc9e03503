//! Sorted runs on disk, for a sync's external sort: records are buffered
//! up to a byte budget, sorted by key and written as one file (a "run");
//! reading merges every run of a side back into one stream in key order.
//! Memory is the buffer plus a line per run, whatever the record count.
//!
//! A run file holds one line per record: the CRC-32 of the rest of the line
//! (8 hex digits), a tab, the key as a JSON string, a tab, the record as
//! JSON. It is written to a temporary name, synced and renamed, so a file
//! that exists under its final name is whole; the CRC catches a line changed
//! or damaged after that, which the merge would otherwise read as another
//! key (and, with `delete_missing`, a delete). Lines written before the CRC
//! (starting with the key's `"`) still read.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead as _, BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};

use serde_json::value::RawValue;

use crate::store::StoreError;

/// Bytes of records a side buffers before it writes a run.
pub(crate) const RUN_BYTES: usize = 8 << 20;

/// The file of run `n` of `side` (`source` or `target`) in `dir`.
pub(crate) fn run_path(dir: &Path, side: &str, n: u32) -> PathBuf {
    dir.join(format!("{side}-{n:05}.jsonl"))
}

/// Records waiting to be written as a run.
#[derive(Debug, Default)]
pub(crate) struct Buffer {
    records: Vec<(String, String)>,
    bytes: usize,
}

impl Buffer {
    pub(crate) fn push(&mut self, key: String, record: String) {
        self.bytes += key.len() + record.len() + 8;
        self.records.push((key, record));
    }

    pub(crate) fn is_full(&self) -> bool {
        self.bytes >= RUN_BYTES
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Sorts the records by key (stable: equal keys keep their order) and
    /// writes them as `path`, durably; empties the buffer.
    pub(crate) fn write_run(&mut self, path: &Path) -> std::io::Result<()> {
        self.records.sort_by(|a, b| a.0.cmp(&b.0));
        let temp = path.with_extension("partial");
        {
            let mut out = BufWriter::new(File::create(&temp)?);
            let mut line = Vec::new();
            for (key, record) in &self.records {
                line.clear();
                serde_json::to_writer(&mut line, key)?;
                // The record is JSON text already; it is written as is.
                line.push(b'\t');
                line.extend_from_slice(record.as_bytes());
                write!(out, "{:08x}\t", crc32fast::hash(&line))?;
                out.write_all(&line)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            out.get_ref().sync_all()?;
        }
        std::fs::rename(&temp, path)?;
        if let Some(dir) = path.parent() {
            // The rename is durable once the directory is.
            File::open(dir)?.sync_all()?;
        }
        self.records.clear();
        self.bytes = 0;
        Ok(())
    }
}

struct RunReader {
    lines: std::io::Lines<BufReader<File>>,
    path: PathBuf,
    /// The number of the last line read, from 1.
    line: u64,
}

impl RunReader {
    /// The next line's key and record. A line that cannot be read is a
    /// scratch-file error (the run can resume); one that does not check
    /// out is a corrupt entry (damage: the sync cannot trust the run).
    fn next(&mut self) -> Result<Option<(String, String)>, StoreError> {
        let Some(line) = self.lines.next() else { return Ok(None) };
        self.line += 1;
        let at = || format!("{} line {}", self.path.display(), self.line);
        let line = line
            .map_err(|e| StoreError::Scratch { path: at(), reason: format!("cannot read: {e}") })?;
        let corrupt = |reason: String| StoreError::Corrupt { key: at(), reason };
        // A line before CRCs starts with its key, a JSON string.
        let (body, checked) = match line.strip_prefix('"') {
            Some(_) => (line.as_str(), false),
            None => {
                let (crc, body) = line
                    .split_once('\t')
                    .ok_or_else(|| corrupt("a line without a checksum".into()))?;
                let crc = u32::from_str_radix(crc, 16)
                    .map_err(|_| corrupt("a line without a checksum".into()))?;
                if crc32fast::hash(body.as_bytes()) != crc {
                    return Err(corrupt(
                        "the line does not match its checksum; the sorted run was changed or damaged after it was written, \
                         and the sync stops rather than read a wrong key (which could become a wrong create or delete); start the run again"
                            .into(),
                    ));
                }
                (body, true)
            }
        };
        let (key, record) =
            body.split_once('\t').ok_or_else(|| corrupt("a line without a key".into()))?;
        let key: String =
            serde_json::from_str(key).map_err(|e| corrupt(format!("a bad key: {e}")))?;
        // A line without a CRC is checked here, so a torn file is an error,
        // not a bad record later. One with a CRC is what was written: JSON
        // the host checked or wrote itself.
        if !checked {
            let _: &RawValue =
                serde_json::from_str(record).map_err(|e| corrupt(format!("a bad record: {e}")))?;
        }
        Ok(Some((key, record.to_owned())))
    }
}

/// Every record of runs `0..runs` of `side`, merged in key order; records
/// with equal keys come in run order, then file order.
pub(crate) struct Merged {
    readers: Vec<RunReader>,
    heap: BinaryHeap<Reverse<(String, usize, String)>>,
}

impl Merged {
    pub(crate) fn open(dir: &Path, side: &str, runs: u32) -> Result<Merged, StoreError> {
        let mut readers = Vec::new();
        for n in 0..runs {
            let path = run_path(dir, side, n);
            let file = File::open(&path).map_err(|e| StoreError::Scratch {
                path: path.display().to_string(),
                reason: format!("cannot open a sorted run: {e}"),
            })?;
            readers.push(RunReader {
                lines: BufReader::with_capacity(64 << 10, file).lines(),
                path,
                line: 0,
            });
        }
        let mut merged = Merged { readers, heap: BinaryHeap::new() };
        for i in 0..merged.readers.len() {
            merged.refill(i)?;
        }
        Ok(merged)
    }

    fn refill(&mut self, i: usize) -> Result<(), StoreError> {
        if let Some((key, record)) = self.readers[i].next()? {
            self.heap.push(Reverse((key, i, record)));
        }
        Ok(())
    }

    /// The smallest key left.
    pub(crate) fn peek_key(&self) -> Option<&str> {
        self.heap.peek().map(|Reverse((key, _, _))| key.as_str())
    }

    /// The next record in key order.
    pub(crate) fn next(&mut self) -> Result<Option<(String, String)>, StoreError> {
        let Some(Reverse((key, i, record))) = self.heap.pop() else { return Ok(None) };
        self.refill(i)?;
        Ok(Some((key, record)))
    }

    /// Every record with the smallest key left.
    pub(crate) fn next_group(&mut self) -> Result<Option<(String, Vec<String>)>, StoreError> {
        let Some((key, first)) = self.next()? else { return Ok(None) };
        let mut records = vec![first];
        while self.peek_key() == Some(key.as_str()) {
            if let Some((_, record)) = self.next()? {
                records.push(record);
            }
        }
        Ok(Some((key, records)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, side: &str, n: u32, records: &[(&str, &str)]) -> std::io::Result<()> {
        let mut buffer = Buffer::default();
        for (k, r) in records {
            buffer.push((*k).to_owned(), (*r).to_owned());
        }
        buffer.write_run(&run_path(dir, side, n))
    }

    #[test]
    fn runs_merge_back_in_key_order_with_equal_keys_grouped()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        write(dir.path(), "s", 0, &[("c", "3"), ("a", "1"), ("e\tx\n", "{\"tab\":true}")])?;
        write(dir.path(), "s", 1, &[("b", "2"), ("c", "33"), ("d", "[4]")])?;
        let mut merged = Merged::open(dir.path(), "s", 2)?;
        let mut groups = Vec::new();
        while let Some(group) = merged.next_group()? {
            groups.push(group);
        }
        let keys: Vec<&str> = groups.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["a", "b", "c", "d", "e\tx\n"]);
        assert_eq!(
            groups[2].1,
            vec!["3".to_owned(), "33".to_owned()],
            "equal keys come together, in run order"
        );
        assert_eq!(
            groups[4].1,
            vec!["{\"tab\":true}".to_owned()],
            "keys with tabs and newlines survive"
        );
        Ok(())
    }

    #[test]
    fn no_runs_is_an_empty_stream_and_a_torn_run_is_an_error()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        assert!(Merged::open(dir.path(), "t", 0)?.next()?.is_none());
        std::fs::write(run_path(dir.path(), "t", 0), "\"a\"\t{\"cut\":")?;
        let err = Merged::open(dir.path(), "t", 1).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("a bad record"), "{err}");
        // A run with checksums, cut inside its last record: the checksum
        // catches it (the record is not parsed again).
        write(dir.path(), "c", 0, &[("a", "{\"n\":1}"), ("b", "{\"cut\":\"here\"}")])?;
        let path = run_path(dir.path(), "c", 0);
        let bytes = std::fs::read(&path)?;
        std::fs::write(&path, &bytes[..bytes.len() - 6])?;
        let mut merged = Merged::open(dir.path(), "c", 1)?;
        // Reading the first record reads the second ahead.
        let err = merged.next().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("line 2") && err.contains("checksum"), "{err}");
        Ok(())
    }

    #[test]
    fn a_flipped_byte_in_a_key_is_an_error_naming_the_file_and_line_not_another_key()
    -> Result<(), Box<dyn std::error::Error>> {
        // Regression: a flipped byte in a key read as another key, which
        // the merge, with delete_missing, turns into a delete.
        let dir = tempfile::tempdir()?;
        write(
            dir.path(),
            "t",
            0,
            &[("a@example.com", "1"), ("b@example.com", "2"), ("c@example.com", "3")],
        )?;
        let path = run_path(dir.path(), "t", 0);
        let mut bytes = std::fs::read(&path)?;
        let at = bytes.windows(2).position(|w| w == b"b@").ok_or("the second key")?;
        bytes[at] ^= 0x01; // `b@` becomes `c@`: still a key, the wrong one.
        std::fs::write(&path, &bytes)?;
        let mut merged = Merged::open(dir.path(), "t", 1)?;
        let mut keys = Vec::new();
        let err = loop {
            match merged.next() {
                Ok(Some((key, _))) => keys.push(key),
                Ok(None) => break String::new(),
                Err(e) => break e.to_string(),
            }
        };
        assert!(
            err.contains(&format!("{} line 2", path.display())) && err.contains("checksum"),
            "{err}"
        );
        assert!(
            keys.iter().all(|k| k == "a@example.com"),
            "no key after the damaged line came out: {keys:?}"
        );
        Ok(())
    }

    #[test]
    fn runs_written_before_checksums_still_read() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(run_path(dir.path(), "s", 0), "\"a\"\t{\"n\":1}\n\"b\"\t[2]\n")?;
        let mut merged = Merged::open(dir.path(), "s", 1)?;
        assert_eq!(merged.next()?, Some(("a".to_owned(), "{\"n\":1}".to_owned())));
        assert_eq!(merged.next()?, Some(("b".to_owned(), "[2]".to_owned())));
        assert_eq!(merged.next()?, None);
        Ok(())
    }
}
