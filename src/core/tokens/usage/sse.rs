//! Incremental `text/event-stream` decoding (WHATWG HTML, "Server-sent events",
//! the event stream interpretation), with bounded memory.
//!
//! Works on bytes: `\r` and `\n` never occur inside a UTF-8 sequence, so lines can
//! be split before decoding, and a sequence split across chunks is rejoined in
//! the line buffer. Only `data` and `event` fields matter here; `id`, `retry` and
//! unknown fields are ignored.

use super::MAX_EVENT_BYTES;

/// Bytes of a dropped event kept (its end) so usage at the end of an oversized
/// event can still be salvaged.
const TAIL_BYTES: usize = 8 * 1024;
/// Buffer capacity kept between events; a rare big event does not pin its
/// memory for the rest of the stream.
const KEEP_CAPACITY: usize = 16 * 1024;
const BOM: &[u8] = b"\xEF\xBB\xBF";
const BOM_DONE: u8 = u8::MAX;

/// What the decoder hands its sink.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// A dispatched event. `name` is the `event` field ("" when absent; the
    /// spec's default "message" is left to the caller). `data` has the data lines
    /// joined with `\n`; it may hold invalid UTF-8.
    Message { name: &'a str, data: &'a [u8] },
    /// An event dropped for exceeding [`MAX_EVENT_BYTES`]: its name (if its
    /// `event` line came before the cap was hit) and its last bytes, raw.
    Dropped { name: &'a str, tail: &'a [u8] },
}

#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// The current line when a chunk ended inside it.
    line: Vec<u8>,
    /// Data lines of the current event, each followed by `\n`.
    data: Vec<u8>,
    /// The current event's `event` field.
    name: Vec<u8>,
    /// The last line ended with `\r`: a `\n` next (maybe in the next chunk) belongs to it.
    after_cr: bool,
    /// BOM bytes matched at the stream start, or `BOM_DONE` once past it.
    bom: u8,
    /// Skipping an oversized event up to its blank line.
    discarding: bool,
    /// While discarding: the current line has bytes (so its end is not a blank line).
    discard_line_open: bool,
    tail: Vec<u8>,
    dropped: u32,
}

impl Decoder {
    /// Events dropped for exceeding [`MAX_EVENT_BYTES`].
    pub(crate) fn dropped(&self) -> u32 {
        self.dropped
    }

    /// Bytes currently buffered (for tests of the memory bound).
    #[cfg(test)]
    pub(super) fn buffered(&self) -> usize {
        self.line.len() + self.data.len() + self.name.len() + self.tail.len()
    }

    pub(crate) fn feed(&mut self, mut chunk: &[u8], sink: &mut dyn FnMut(Event<'_>)) {
        // A leading UTF-8 BOM is not part of the first line; it may arrive split.
        while self.bom < BOM.len() as u8 {
            let Some((&b, rest)) = chunk.split_first() else {
                return;
            };
            if BOM.get(usize::from(self.bom)) == Some(&b) {
                self.bom += 1;
                chunk = rest;
            } else {
                let matched = usize::from(self.bom);
                self.bom = BOM_DONE;
                self.feed_lines(BOM.get(..matched).unwrap_or_default(), sink);
            }
        }
        self.bom = BOM_DONE;
        self.feed_lines(chunk, sink);
    }

    /// End of stream. Unlike a browser, which discards an unterminated event, this
    /// dispatches it: a proxy sees streams cut short, and a complete last `data`
    /// line is worth reading.
    pub(crate) fn finish(&mut self, sink: &mut dyn FnMut(Event<'_>)) {
        if self.bom != BOM_DONE {
            let matched = usize::from(self.bom);
            self.bom = BOM_DONE;
            self.feed_lines(BOM.get(..matched).unwrap_or_default(), sink);
        }
        self.after_cr = false;
        if !self.discarding && !self.line.is_empty() {
            self.end_line(&[], sink);
        }
        if self.discarding {
            self.end_discard(sink);
        } else {
            self.dispatch(sink);
        }
        self.line.clear();
        self.data.clear();
        self.name.clear();
    }

    fn feed_lines(&mut self, mut rest: &[u8], sink: &mut dyn FnMut(Event<'_>)) {
        while let Some((&first, after_first)) = rest.split_first() {
            if self.after_cr {
                self.after_cr = false;
                if first == b'\n' {
                    rest = after_first;
                    continue;
                }
            }
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.push_partial(rest);
                    return;
                }
                Some(i) => {
                    let (line, end) = rest.split_at(i);
                    self.after_cr = end.first() == Some(&b'\r');
                    rest = end.get(1..).unwrap_or_default();
                    self.end_line(line, sink);
                }
            }
        }
    }

    fn held(&self) -> usize {
        self.line.len() + self.data.len() + self.name.len()
    }

    /// The start or middle of a line whose end is in a later chunk.
    fn push_partial(&mut self, bytes: &[u8]) {
        if self.discarding {
            self.discard_line_open = true;
            self.keep_tail(bytes);
        } else if self.held() + bytes.len() > MAX_EVENT_BYTES {
            self.start_discard(bytes, true);
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    /// A line ended; `line` is its part in the current chunk (after any buffered part).
    fn end_line(&mut self, line: &[u8], sink: &mut dyn FnMut(Event<'_>)) {
        if self.discarding {
            let blank = line.is_empty() && !self.discard_line_open;
            self.discard_line_open = false;
            if blank {
                self.end_discard(sink);
            } else {
                self.keep_tail(line);
                self.keep_tail(b"\n");
            }
            return;
        }
        // The cap counts whole raw lines, so where chunks split cannot change which
        // events are dropped (a partial line is checked the same way).
        if self.held() + line.len() > MAX_EVENT_BYTES {
            self.start_discard(line, false);
            return;
        }
        if self.line.is_empty() {
            // Common case: the whole line is in this chunk, no copy.
            self.process_line(line, sink);
            return;
        }
        let mut buf = std::mem::take(&mut self.line);
        buf.extend_from_slice(line);
        self.process_line(&buf, sink);
        buf.clear();
        if buf.capacity() > KEEP_CAPACITY {
            buf.shrink_to(KEEP_CAPACITY);
        }
        self.line = buf;
    }

    fn process_line(&mut self, line: &[u8], sink: &mut dyn FnMut(Event<'_>)) {
        let Some(&first) = line.first() else {
            self.dispatch(sink);
            return;
        };
        if first == b':' {
            return; // comment (keep-alives)
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = line.get(i + 1..).unwrap_or_default();
                (
                    line.get(..i).unwrap_or_default(),
                    value.strip_prefix(b" ").unwrap_or(value),
                )
            }
            None => (line, &[][..]),
        };
        match field {
            // Bounded: end_line checked data + name + this whole line against the cap.
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.name.clear();
                self.name.extend_from_slice(value);
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, sink: &mut dyn FnMut(Event<'_>)) {
        if self.data.pop().is_some() {
            // Event names are ASCII in practice; a garbled one reads as unnamed.
            let name = std::str::from_utf8(&self.name).unwrap_or("");
            sink(Event::Message {
                name,
                data: &self.data,
            });
            self.data.clear();
            if self.data.capacity() > KEEP_CAPACITY {
                self.data.shrink_to(KEEP_CAPACITY);
            }
        }
        self.name.clear();
    }

    /// The current event outgrew the cap: forget it (keeping its tail and name)
    /// and skip to its blank line. `rest` is the part of the current line not
    /// yet in a buffer; `line_open` says whether that line continues.
    fn start_discard(&mut self, rest: &[u8], line_open: bool) {
        self.dropped = self.dropped.saturating_add(1);
        self.discarding = true;
        self.discard_line_open = line_open;
        self.tail.clear();
        let data = std::mem::take(&mut self.data);
        self.keep_tail(&data);
        let line = std::mem::take(&mut self.line);
        self.keep_tail(&line);
        self.keep_tail(rest);
        if !line_open {
            self.keep_tail(b"\n");
        }
    }

    fn end_discard(&mut self, sink: &mut dyn FnMut(Event<'_>)) {
        self.discarding = false;
        self.discard_line_open = false;
        let name = std::str::from_utf8(&self.name).unwrap_or("");
        sink(Event::Dropped {
            name,
            tail: &self.tail,
        });
        self.name.clear();
        self.tail = Vec::new();
    }

    /// Appends to the dropped event's tail, keeping between TAIL_BYTES and
    /// 2 * TAIL_BYTES of its end (amortised: no shift per byte).
    fn keep_tail(&mut self, bytes: &[u8]) {
        if bytes.len() >= TAIL_BYTES {
            self.tail.clear();
            self.tail
                .extend_from_slice(bytes.get(bytes.len() - TAIL_BYTES..).unwrap_or(bytes));
        } else {
            self.tail.extend_from_slice(bytes);
            if self.tail.len() > 2 * TAIL_BYTES {
                self.tail.drain(..self.tail.len() - TAIL_BYTES);
            }
        }
    }
}
