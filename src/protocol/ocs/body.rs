//! Request and reply bodies: zlib (what agents send and expect back), gzip or plain XML,
//! within size limits that stop a zlib bomb.

use std::io::{Read, Write};

use super::CodecError;

/// Largest compressed body accepted: a large inventory is a few hundred KB.
pub const MAX_BODY: usize = 8 << 20;
/// Largest body after inflating: stops a small zlib bomb from taking the server's memory.
pub const MAX_INFLATED: usize = 32 << 20;

/// How a body was encoded; replies use the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Zlib,
    Gzip,
    Plain,
}

/// The XML of a request body, and how it was encoded: zlib first (what agents send), then
/// gzip, then plain XML.
pub fn decode_body(body: &[u8]) -> Result<(Vec<u8>, Encoding), CodecError> {
    decode_body_within(body, MAX_INFLATED)
}

/// [`decode_body`] with a lower bound on the inflated size (at most `MAX_INFLATED`), for
/// callers that decode small bodies in place and hand larger ones to a thread that may
/// take longer.
pub fn decode_body_within(
    body: &[u8],
    max_inflated: usize,
) -> Result<(Vec<u8>, Encoding), CodecError> {
    let max_inflated = max_inflated.min(MAX_INFLATED);
    if body.len() > MAX_BODY {
        return Err(CodecError::TooLarge(body.len()));
    }
    let inflate = |reader: &mut dyn Read| -> Result<Option<Vec<u8>>, CodecError> {
        let mut out = Vec::new();
        match reader.take(max_inflated as u64 + 1).read_to_end(&mut out) {
            Ok(_) if out.len() > max_inflated => Err(CodecError::InflatesTooFar),
            Ok(_) if !out.is_empty() => Ok(Some(out)),
            _ => Ok(None),
        }
    };
    if let Some(xml) = zlib_inflate(body, max_inflated)? {
        return Ok((xml, Encoding::Zlib));
    }
    if let Some(xml) = inflate(&mut flate2::read::GzDecoder::new(body))? {
        return Ok((xml, Encoding::Gzip));
    }
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    if body[start..].starts_with(b"<") {
        return Ok((body.to_vec(), Encoding::Plain));
    }
    Err(CodecError::Undecodable)
}

/// Replies up to this size are sent in stored (uncompressed) deflate blocks, which every
/// inflater reads: a PROLOG reply is under a kilobyte, and compressing it cost more than
/// everything else the server does for it (resetting a compressor clears about 160 KB of
/// tables: 319,000 of a PROLOG's 863,000 instructions under callgrind). Larger bodies (a
/// long list of packages, a stored inventory) are compressed.
pub const STORED_UP_TO: usize = 16 << 10;

/// `xml` encoded as `encoding`.
pub fn encode_body(xml: &str, encoding: Encoding) -> Vec<u8> {
    let data = xml.as_bytes();
    // Writing into a Vec cannot fail.
    match encoding {
        Encoding::Zlib if data.len() <= STORED_UP_TO => {
            let mut out = Vec::with_capacity(data.len() + 16);
            // The header agents expect (deflate, 32 KiB window, default level); the level
            // bits are informational, and stored blocks are valid at any level.
            out.extend_from_slice(&[0x78, 0x9c]);
            stored_blocks(data, &mut out);
            out.extend_from_slice(&adler32(data).to_be_bytes());
            out
        }
        Encoding::Zlib => zlib_deflate(data),
        Encoding::Gzip if data.len() <= STORED_UP_TO => {
            let mut out = Vec::with_capacity(data.len() + 32);
            // Magic, deflate, no flags, no time, no extra flags, unknown OS (as flate2).
            out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
            stored_blocks(data, &mut out);
            let mut crc = flate2::Crc::new();
            crc.update(data);
            out.extend_from_slice(&crc.sum().to_le_bytes());
            out.extend_from_slice(&crc.amount().to_le_bytes());
            out
        }
        Encoding::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            let _ = encoder.write_all(data);
            encoder.finish().unwrap_or_default()
        }
        Encoding::Plain => data.to_vec(),
    }
}

/// `data` as deflate stored blocks (RFC 1951 3.2.4), the last one marked final.
fn stored_blocks(data: &[u8], out: &mut Vec<u8>) {
    // A stored block holds at most 65,535 bytes (its length is 16 bits).
    const BLOCK: usize = u16::MAX as usize;
    let mut chunks = data.chunks(BLOCK).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
        return;
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        // At most BLOCK, so it fits.
        let len = u16::try_from(chunk.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
}

/// The Adler-32 checksum of `data` (RFC 1950), which ends a zlib stream.
fn adler32(data: &[u8]) -> u32 {
    // The largest prime below 2^16, and the most bytes summed before `b` could overflow.
    const MOD: u32 = 65_521;
    const NMAX: usize = 5_552;
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(NMAX) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

// A compressor's state is hundreds of kilobytes to allocate and clear: each thread keeps one
// and resets it, for bodies past `STORED_UP_TO` (stored inventories, long replies).
thread_local! {
    static DEFLATE: std::cell::RefCell<flate2::Compress> =
        std::cell::RefCell::new(flate2::Compress::new(flate2::Compression::default(), true));
}

/// `data` as a zlib stream (RFC 1950), as OCS agents expect replies.
fn zlib_deflate(data: &[u8]) -> Vec<u8> {
    DEFLATE.with(|cell| {
        let mut deflate = cell.borrow_mut();
        deflate.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        loop {
            let consumed = usize::try_from(deflate.total_in()).unwrap_or(data.len());
            let status = deflate.compress_vec(
                &data[consumed.min(data.len())..],
                &mut out,
                flate2::FlushCompress::Finish,
            );
            match status {
                Ok(flate2::Status::StreamEnd) | Err(_) => return out,
                Ok(_) => out.reserve(out.capacity().max(64)),
            }
        }
    })
}

/// The content of a zlib stream; `None` when `body` is not one.
fn zlib_inflate(body: &[u8], max_inflated: usize) -> Result<Option<Vec<u8>>, CodecError> {
    use miniz_oxide::inflate::TINFLStatus;
    use miniz_oxide::inflate::core::inflate_flags::{
        TINFL_FLAG_COMPUTE_ADLER32, TINFL_FLAG_PARSE_ZLIB_HEADER,
        TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
    };
    use miniz_oxide::inflate::core::{DecompressorOxide, decompress};
    thread_local! {
        // A few kilobytes of tables, kept per thread: made afresh, they cost a PROLOG a
        // 10 KB clear and a 10 KB copy (under callgrind).
        static INFLATE: std::cell::RefCell<Box<DecompressorOxide>> =
            std::cell::RefCell::new(Box::default());
    }
    // The output is its own window (no 32 KiB window cleared per request, as flate2's
    // `Decompress::reset` does: 33,000 instructions a PROLOG, more than its TLS record).
    const FLAGS: u32 = TINFL_FLAG_PARSE_ZLIB_HEADER
        | TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF
        | TINFL_FLAG_COMPUTE_ADLER32;
    INFLATE.with(|cell| {
        let mut inflater = cell.borrow_mut();
        inflater.init();
        let mut out = vec![0u8; body.len().saturating_mul(4).clamp(256, max_inflated.max(1))];
        let (mut read, mut written) = (0, 0);
        loop {
            let (status, in_used, out_used) = decompress(
                &mut inflater,
                &body[read.min(body.len())..],
                &mut out,
                written,
                FLAGS,
            );
            read += in_used;
            written += out_used;
            match status {
                TINFLStatus::Done => {
                    out.truncate(written);
                    return Ok((!out.is_empty()).then_some(out));
                }
                TINFLStatus::HasMoreOutput if out.len() >= max_inflated => {
                    return Err(CodecError::InflatesTooFar);
                }
                TINFLStatus::HasMoreOutput => {
                    let grown = out.len().saturating_mul(2).min(max_inflated);
                    out.resize(grown, 0);
                }
                _ => return Ok(None),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ocs::UNIX_PROLOG;

    #[test]
    fn bodies_decode_from_zlib_gzip_or_plain_and_replies_match() {
        for encoding in [Encoding::Zlib, Encoding::Gzip, Encoding::Plain] {
            let body = encode_body(UNIX_PROLOG, encoding);
            let (xml, found) = decode_body(&body).unwrap();
            assert_eq!(found, encoding);
            assert_eq!(xml, UNIX_PROLOG.as_bytes());
        }
        assert_eq!(
            &encode_body("x", Encoding::Zlib)[..2],
            &[0x78, 0x9c],
            "zlib header as agents expect"
        );
        assert_eq!(
            decode_body(b"\x00\x01garbage"),
            Err(CodecError::Undecodable)
        );
    }

    /// Small replies go out in stored blocks, larger ones compressed: both read back by
    /// flate2's own decoders (zlib and gzip), empty and multi-block ones too.
    #[test]
    fn stored_and_compressed_replies_read_back_with_their_checksums() {
        use std::io::Read as _;
        let long = "<PARAM/>".repeat(STORED_UP_TO / 8 + 10);
        let exact = "x".repeat(STORED_UP_TO);
        for xml in ["", "<REPLY/>", exact.as_str(), long.as_str()] {
            let zlib = encode_body(xml, Encoding::Zlib);
            let mut back = String::new();
            flate2::read::ZlibDecoder::new(&zlib[..])
                .read_to_string(&mut back)
                .unwrap();
            assert_eq!(back, xml);
            let gzip = encode_body(xml, Encoding::Gzip);
            let mut back = String::new();
            flate2::read::GzDecoder::new(&gzip[..])
                .read_to_string(&mut back)
                .unwrap();
            assert_eq!(back, xml);
        }
        assert!(
            encode_body(&long, Encoding::Zlib).len() < long.len() / 4,
            "compressed"
        );
        // Past one stored block's 65,535 bytes, as another encoder would see it.
        let mut blocks = Vec::new();
        stored_blocks(&vec![7u8; 70_000], &mut blocks);
        assert_eq!((blocks[0], blocks.len()), (0, 70_000 + 10));
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    #[test]
    fn a_zlib_bomb_and_an_oversized_body_are_refused() {
        let bomb = encode_body(&"A".repeat(MAX_INFLATED + 10), Encoding::Zlib);
        assert!(bomb.len() < 100_000, "small on the wire: {}", bomb.len());
        assert_eq!(decode_body(&bomb), Err(CodecError::InflatesTooFar));
        assert_eq!(
            decode_body(&vec![b'<'; MAX_BODY + 1]),
            Err(CodecError::TooLarge(MAX_BODY + 1))
        );
    }
}
