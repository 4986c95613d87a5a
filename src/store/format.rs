//! The byte layout of the snapshot and the log (see the module doc of
//! [`crate::store`] for the whole format and why it is crash-safe).
//!
//! Everything is little-endian. Nothing here touches a file: encoding appends
//! to a caller's buffer, decoding borrows from a buffer that holds a whole
//! file.

use zeroize::Zeroize;

/// Length of the file header (both files).
pub(crate) const HEADER_LEN: usize = 32;
/// Length of a frame's head: body length (u32) and CRC32 (u32).
pub(crate) const FRAME_HEAD: usize = 8;
/// Length of an entry's head: kind (u8), key length (u8), value length (u32).
pub(crate) const ENTRY_HEAD: usize = 6;
/// Largest frame body accepted when writing or reading.
pub(crate) const MAX_FRAME: usize = 1 << 30;
/// Longest key in bytes (it is stored in one byte).
pub(crate) const MAX_KEY: usize = 255;
/// Format version written and accepted.
pub(crate) const VERSION: u32 = 1;

/// Entry kind: the key now has this value.
pub(crate) const KIND_PUT: u8 = 1;
/// Entry kind: the key is gone (tombstone; log only).
pub(crate) const KIND_DEL: u8 = 2;

/// Which of the two files a header belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    Snapshot,
    Log,
}

impl FileKind {
    fn magic(self) -> &'static [u8; 8] {
        match self {
            FileKind::Snapshot => b"rotorsnp",
            FileKind::Log => b"rotorlog",
        }
    }
}

/// A decoded file header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// Generation: bumped by every compaction; a log belongs to the snapshot
    /// of the same generation, and every frame's CRC is seeded with it.
    pub generation: u64,
    /// Snapshot: number of records (frames) that follow. Log: 0.
    pub count: u64,
}

/// `magic[8] version:u32 generation:u64 count:u64 crc32:u32`, the CRC over
/// the 28 bytes before it.
pub(crate) fn encode_header(kind: FileKind, h: Header) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..8].copy_from_slice(kind.magic());
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&h.generation.to_le_bytes());
    out[20..28].copy_from_slice(&h.count.to_le_bytes());
    let crc = crc32fast::hash(&out[0..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// What [`decode_header`] says of a header whose checksum fails (the only
/// way a torn header write can look, since the CRC covers magic and version).
pub(crate) const HEADER_CRC_MISMATCH: &str = "header checksum mismatch";

/// Decodes a header; the error says what is wrong (for a `Corrupt` error at
/// offset 0).
pub(crate) fn decode_header(kind: FileKind, data: &[u8]) -> Result<Header, &'static str> {
    if data.len() < HEADER_LEN {
        return Err("file shorter than its header");
    }
    let crc = u32::from_le_bytes(data[28..32].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&data[0..28]) {
        return Err(HEADER_CRC_MISMATCH);
    }
    if &data[0..8] != kind.magic() {
        return Err(match kind {
            FileKind::Snapshot => "not a rotor snapshot (bad magic)",
            FileKind::Log => "not a rotor log (bad magic)",
        });
    }
    let version = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err("unsupported format version");
    }
    Ok(Header {
        generation: u64::from_le_bytes(data[12..20].try_into().expect("8 bytes")),
        count: u64::from_le_bytes(data[20..28].try_into().expect("8 bytes")),
    })
}

/// CRC32 of a frame: over the generation, the 4 length bytes and the body.
/// Seeding it with the generation makes a frame of another generation fail
/// its check, so stale frames can never be replayed over a newer snapshot.
fn frame_crc(generation: u64, len: [u8; 4], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&generation.to_le_bytes());
    h.update(&len);
    h.update(body);
    h.finalize()
}

/// The head (length, CRC) of a frame whose `body_len` body bytes went
/// through `body` (a CRC32 of the body alone), for a body streamed in
/// pieces: equal to what [`finish_frame`] writes for the same body.
pub(crate) fn frame_head(
    generation: u64,
    body_len: usize,
    body: &crc32fast::Hasher,
) -> [u8; FRAME_HEAD] {
    debug_assert!(body_len <= MAX_FRAME);
    let len = (body_len as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&generation.to_le_bytes());
    h.update(&len);
    h.combine(body);
    let mut head = [0u8; FRAME_HEAD];
    head[..4].copy_from_slice(&len);
    head[4..].copy_from_slice(&h.finalize().to_le_bytes());
    head
}

/// Makes room for `extra` more bytes without letting `Vec` reallocate
/// behind our back: a reallocation would free the old block with key
/// material still in it, so we copy into a new block and zeroize the old.
pub(crate) fn reserve_zeroizing(buf: &mut Vec<u8>, extra: usize) {
    if buf.capacity() - buf.len() >= extra {
        return;
    }
    let want = (buf.len() + extra).max(buf.capacity() * 2).max(4096);
    let mut bigger = Vec::with_capacity(want);
    bigger.extend_from_slice(buf);
    buf.as_mut_slice().zeroize();
    *buf = bigger;
}

/// Starts a frame in `buf`; returns where it starts (for [`finish_frame`]).
pub(crate) fn start_frame(buf: &mut Vec<u8>) -> usize {
    reserve_zeroizing(buf, FRAME_HEAD);
    let at = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEAD]);
    at
}

/// Appends one entry to the frame being built. The caller has checked the
/// key length (1..=[`MAX_KEY`]) and that the value fits in a u32.
pub(crate) fn push_entry(buf: &mut Vec<u8>, kind: u8, key: &str, value: &[u8]) {
    debug_assert!(!key.is_empty() && key.len() <= MAX_KEY);
    reserve_zeroizing(buf, ENTRY_HEAD + key.len() + value.len());
    buf.push(kind);
    buf.push(key.len() as u8);
    buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(value);
}

/// Body length of the frame started at `at`.
pub(crate) fn frame_body_len(buf: &[u8], at: usize) -> usize {
    buf.len() - at - FRAME_HEAD
}

/// Fills in the length and CRC of the frame started at `at`; the body is
/// everything after its head. The caller has checked the body length
/// against [`MAX_FRAME`].
pub(crate) fn finish_frame(buf: &mut [u8], at: usize, generation: u64) {
    let body_len = frame_body_len(buf, at);
    debug_assert!(body_len <= MAX_FRAME);
    let len = (body_len as u32).to_le_bytes();
    let crc = frame_crc(generation, len, &buf[at + FRAME_HEAD..]);
    buf[at..at + 4].copy_from_slice(&len);
    buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Result of reading the frame at some offset.
#[derive(Debug)]
pub(crate) enum Frame<'a> {
    /// A whole frame whose CRC checks; the next frame starts at `next`.
    Good { body: &'a [u8], next: usize },
    /// Not a valid frame. `end` is where the frame would end if its length
    /// field is to be believed and fits in the data (`None` otherwise).
    Bad {
        why: &'static str,
        end: Option<usize>,
    },
}

/// Reads the frame at `off` (`off < data.len()`).
pub(crate) fn read_frame(data: &[u8], off: usize, generation: u64) -> Frame<'_> {
    let rest = &data[off..];
    if rest.len() < FRAME_HEAD {
        return Frame::Bad {
            why: "incomplete frame head",
            end: None,
        };
    }
    let len_bytes: [u8; 4] = rest[0..4].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_FRAME {
        return Frame::Bad {
            why: "impossible frame length",
            end: None,
        };
    }
    if rest.len() - FRAME_HEAD < len {
        return Frame::Bad {
            why: "frame runs past the end of the file",
            end: None,
        };
    }
    let body = &rest[FRAME_HEAD..FRAME_HEAD + len];
    let next = off + FRAME_HEAD + len;
    if frame_crc(generation, len_bytes, body) != crc {
        return Frame::Bad {
            why: "frame checksum mismatch",
            end: Some(next),
        };
    }
    Frame::Good { body, next }
}

/// One entry of a frame body.
#[derive(Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub kind: u8,
    pub key: &'a str,
    pub value: &'a [u8],
}

/// Splits a frame body (whose CRC checked) into entries. A malformed body
/// behind a good CRC is not a torn write, so the caller treats it as
/// corruption.
pub(crate) fn entries(mut body: &[u8]) -> impl Iterator<Item = Result<Entry<'_>, &'static str>> {
    std::iter::from_fn(move || {
        if body.is_empty() {
            return None;
        }
        if body.len() < ENTRY_HEAD {
            body = &[];
            return Some(Err("entry head cut short inside a frame"));
        }
        let kind = body[0];
        let key_len = body[1] as usize;
        let value_len = u32::from_le_bytes(body[2..6].try_into().expect("4 bytes")) as usize;
        let rest = &body[ENTRY_HEAD..];
        if rest.len() < key_len || rest.len() - key_len < value_len {
            body = &[];
            return Some(Err("entry runs past the end of its frame"));
        }
        let result = match (kind, key_len, std::str::from_utf8(&rest[..key_len])) {
            (KIND_PUT | KIND_DEL, 1.., Ok(key)) => Ok(Entry {
                kind,
                key,
                value: &rest[key_len..key_len + value_len],
            }),
            (KIND_PUT | KIND_DEL, 0, _) => Err("entry with an empty key"),
            (KIND_PUT | KIND_DEL, _, Err(_)) => Err("entry key is not UTF-8"),
            _ => Err("unknown entry kind"),
        };
        body = &rest[key_len + value_len..];
        if result.is_err() {
            body = &[];
        }
        Some(result)
    })
}
