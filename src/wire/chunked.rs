//! A strict, incremental decoder of chunked bodies (RFC 9112 §7.1), for upstream
//! responses. The fast path re-encodes what it decodes, so the client only ever sees
//! framing claimsmith wrote: nothing the upstream put between chunks reaches it.

/// Why a chunked body was refused. The connection is closed, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("bad chunk size")]
    Size,
    #[error("chunk size too large")]
    Overflow,
    #[error("chunk extension or trailer section too long")]
    TooLong,
    #[error("missing CRLF in chunked framing")]
    Crlf,
}

/// Longest chunk extension accepted on one size line.
const MAX_EXTENSION: usize = 4096;
/// Largest trailer section accepted (trailers are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` counts them.
    Size,
    /// After the size: optional whitespace and `;extension` up to CR.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// The size being read, then the bytes left in the current chunk.
    size: u64,
    digits: u8,
    /// Bytes of the current extension, or of the whole trailer section.
    run: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size, size: 0, digits: 0, run: 0 }
    }
}

impl ChunkedDecoder {
    /// Whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, handing each piece of body data to `data`. Returns how
    /// many bytes were consumed: all of `input`, unless the body ended inside it.
    pub fn feed(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let n = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                data(&input[i..i + n]);
                i += n;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::Size, b) if b.is_ascii_hexdigit() => {
                    if self.size > u64::MAX >> 4 {
                        return Err(ChunkError::Overflow);
                    }
                    self.size = self.size << 4 | u64::from(hex(b));
                    self.digits = self.digits.saturating_add(1);
                    State::Size
                }
                (State::Size, b';' | b' ' | b'\t') if self.digits > 0 => {
                    self.run = 0;
                    State::Extension
                }
                (State::Size, b'\r') if self.digits > 0 => State::SizeLf,
                (State::Size, _) => return Err(ChunkError::Size),
                (State::Extension, b'\r') => State::SizeLf,
                (State::Extension, b) if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => {
                    self.run += 1;
                    if self.run > MAX_EXTENSION {
                        return Err(ChunkError::TooLong);
                    }
                    State::Extension
                }
                (State::Extension, _) => return Err(ChunkError::Size),
                (State::SizeLf, b'\n') if self.size == 0 => {
                    self.run = 0;
                    State::TrailerStart
                }
                (State::SizeLf, b'\n') => State::Data,
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => {
                    self.digits = 0;
                    State::Size
                }
                (State::TrailerStart, b'\r') => State::EndLf,
                (State::TrailerStart | State::TrailerLine, b) if b != b'\n' && b != b'\r' => {
                    self.run += 1;
                    if self.run > MAX_TRAILERS {
                        return Err(ChunkError::TooLong);
                    }
                    State::TrailerLine
                }
                (State::TrailerLine, b'\r') => State::TrailerLf,
                (State::TrailerLf, b'\n') => State::TrailerStart,
                (State::EndLf, b'\n') => {
                    self.state = State::Done;
                    return Ok(i);
                }
                (State::Done, _) => return Ok(i - 1),
                _ => return Err(ChunkError::Crlf),
            };
        }
        Ok(i)
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut used = 0;
        for part in input.chunks(piece) {
            let n = d.feed(part, |b| out.extend_from_slice(b))?;
            used += n;
            if d.is_done() {
                return Ok((out, used));
            }
        }
        assert!(!d.is_done());
        Ok((out, usize::MAX))
    }

    #[test]
    fn decodes_at_every_split() {
        let input = b"5\r\nhello\r\n6;name=\"v\"\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for piece in 1..input.len() {
            let (out, used) = decode_in_pieces(input, piece).unwrap();
            assert_eq!(out, b"hello world", "piece {piece}");
            assert_eq!(&input[used..], b"NEXT", "piece {piece}");
        }
    }

    #[test]
    fn upper_case_hex_and_empty_body() {
        assert_eq!(decode_in_pieces(b"A\r\n0123456789\r\n0\r\n\r\n", 64).unwrap().0, b"0123456789");
        assert_eq!(decode_in_pieces(b"0\r\n\r\n", 1).unwrap(), (Vec::new(), 5));
    }

    #[test]
    fn refuses_bad_framing() {
        let bad = |input: &[u8], e: ChunkError| assert_eq!(decode_in_pieces(input, 64).unwrap_err(), e, "{input:?}");
        bad(b"x\r\n", ChunkError::Size);
        bad(b"\r\n", ChunkError::Size);
        bad(b"-5\r\nhello\r\n", ChunkError::Size);
        bad(b"5\nhello\r\n", ChunkError::Size);
        bad(b"5\r\nhelloXX", ChunkError::Crlf);
        bad(b"5\r\nhello\n0\r\n\r\n", ChunkError::Crlf);
        bad(b"11111111111111111\r\n", ChunkError::Overflow);
        bad(b"0\r\n\n", ChunkError::Crlf);
        let long_ext = [b"1;".as_slice(), &[b'a'; 5000]].concat();
        bad(&long_ext, ChunkError::TooLong);
    }

    #[test]
    fn stops_at_the_end_of_the_body() {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let n = d.feed(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n", |b| out.extend_from_slice(b)).unwrap();
        assert!(d.is_done());
        assert_eq!(n, 13);
        assert_eq!(out, b"abc");
    }
}
