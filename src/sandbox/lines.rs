//! Splits a byte stream (container stdout or stderr, arriving in chunks of
//! any size) into lines.
//!
//! Lines may be of any length: a chunk boundary inside a line is invisible
//! to the caller. One bound protects the server's memory: a line that grows
//! past [`MAX_PIECE`] without a newline is handed out in pieces of that size
//! (each recorded, so nothing is lost), marked as continued. Bytes are
//! decoded as UTF-8 with replacement only when a line is complete, so a
//! multi-byte character split across chunks survives.

#![deny(clippy::indexing_slicing)]

/// Largest piece of one line held in memory (32 MiB).
pub const MAX_PIECE: usize = 32 * 1024 * 1024;

/// One line (without its `\n`), or a piece of an overlong one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The text, lossily decoded.
    pub text: String,
    /// Whether the line goes on in the next piece (only for overlong lines).
    pub continued: bool,
}

/// Accumulates chunks and yields complete lines.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max_piece: usize,
}

// === impl LineSplitter ===

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter::with_max_piece(MAX_PIECE)
    }
}

impl LineSplitter {
    /// A splitter that cuts lines longer than `max_piece` bytes into pieces.
    pub fn with_max_piece(max_piece: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max_piece: max_piece.max(1),
        }
    }

    /// Adds a chunk; calls `out` for every line it completes.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut impl FnMut(Line)) {
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n') {
            let (head, rest) = chunk.split_at(pos);
            let rest = rest.get(1..).unwrap_or_default();
            if self.buf.is_empty() {
                self.emit_pieces(head, out);
            } else {
                self.buf.extend_from_slice(head);
                let line = std::mem::take(&mut self.buf);
                self.emit_pieces(&line, out);
            }
            chunk = rest;
        }
        self.buf.extend_from_slice(chunk);
        while self.buf.len() > self.max_piece {
            let rest = self.buf.split_off(self.max_piece);
            let piece = std::mem::replace(&mut self.buf, rest);
            out(Line {
                text: decode(&piece),
                continued: true,
            });
        }
    }

    /// Flushes a trailing line without a newline (at end of stream).
    pub fn finish(&mut self, out: &mut impl FnMut(Line)) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            out(Line {
                text: decode(&line),
                continued: false,
            });
        }
    }

    fn emit_pieces(&self, mut line: &[u8], out: &mut impl FnMut(Line)) {
        while line.len() > self.max_piece {
            let (piece, rest) = line.split_at(self.max_piece);
            out(Line {
                text: decode(piece),
                continued: true,
            });
            line = rest;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out(Line {
            text: decode(line),
            continued: false,
        });
    }
}

fn decode(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize) -> Vec<Line> {
        let mut s = LineSplitter::with_max_piece(max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut |l| out.push(l));
        }
        s.finish(&mut |l| out.push(l));
        out
    }

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn lines_across_chunks_and_a_trailing_partial() {
        let lines = split(&[b"ab", b"c\nde", b"f\n\ng"], 100);
        assert_eq!(texts(&lines), ["abc", "def", "", "g"]);
        assert!(lines.iter().all(|l| !l.continued));
    }

    #[test]
    fn utf8_split_across_chunks_survives_and_bad_bytes_are_replaced() {
        let e = "é".as_bytes();
        let lines = split(&[&e[..1], &e[1..], b"\n\xff\xfe\n"], 100);
        assert_eq!(texts(&lines), ["é", "\u{fffd}\u{fffd}"]);
    }

    #[test]
    fn overlong_lines_come_in_pieces_and_nothing_is_lost() {
        let long = vec![b'x'; 25];
        let mut chunk = long.clone();
        chunk.extend_from_slice(b"\nok\n");
        for chunks in [vec![&chunk[..]], chunk.chunks(3).collect::<Vec<_>>()] {
            let lines = split(&chunks, 10);
            let joined: String = lines
                .iter()
                .take_while(|l| l.text != "ok")
                .map(|l| l.text.as_str())
                .collect();
            assert_eq!(joined.len(), 25);
            assert_eq!(lines.last().map(|l| l.text.as_str()), Some("ok"));
            let pieces = lines.iter().filter(|l| l.continued).count();
            assert_eq!(pieces, 2, "{lines:?}");
        }
    }

    #[test]
    fn crlf_is_one_line_end() {
        assert_eq!(texts(&split(&[b"a\r\nb\r\n"], 100)), ["a", "b"]);
    }
}
