//! The report's bytes as the XML parser and the text pump read them: a read-ahead buffer that
//! can peek past a read's end, counts lines for error positions and stops a report over
//! [`JunitLimits::max_bytes`], a tag over [`JunitLimits::max_tag_bytes`] or a read still going
//! after [`JunitLimits::max_read_time`]; and the reading of what stopped it back into a
//! [`JunitError`].

use std::io::{self, BufRead, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{JunitError, JunitLimits};

/// Bytes read ahead of the parser; also the room [`Source::peek`] has to look ahead.
const CHUNK_BYTES: usize = 64 * 1024;

/// The report's bytes, as the XML parser and the text pump see them. Owns the read buffer so it
/// can look a few bytes ahead across reads (to spot `<![CDATA[`), count lines for error
/// positions, and stop a report that crosses the size limit or a tag that crosses the tag limit.
pub(super) struct Source<R> {
    inner: R,
    buffer: Box<[u8]>,
    /// Start of the unconsumed bytes in `buffer`.
    pos: usize,
    /// End of the bytes read into `buffer`.
    filled: usize,
    eof: bool,
    /// Bytes read from `inner`.
    read: u64,
    /// Bytes consumed by the parser: the offset of the next byte.
    consumed: u64,
    /// The 1-based line of the next byte.
    line: u64,
    max_bytes: u64,
    max_tag_bytes: u64,
    max_read_time: Duration,
    /// When reading must be over: [`JunitLimits::max_read_time`] after the source was made
    /// (`None` when that is too far off to represent).
    deadline: Option<Instant>,
    /// Where the markup being parsed started, while the XML parser reads one.
    pub(super) tag_start: Option<u64>,
    /// Why reading stopped, when it stopped on a limit rather than an I/O error.
    stop: Option<Stop>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    TooLarge,
    TagTooLarge,
    TimedOut,
}

impl Stop {
    fn io_error(self) -> io::Error {
        io::Error::other(match self {
            Self::TooLarge => "the JUnit report exceeds its size limit",
            Self::TagTooLarge => "a tag in the JUnit report exceeds its size limit",
            Self::TimedOut => "the JUnit report was not read within its time limit",
        })
    }
}

impl<R: Read> Source<R> {
    pub(super) fn new(inner: R, limits: &JunitLimits) -> Self {
        Self {
            inner,
            buffer: vec![0; CHUNK_BYTES].into_boxed_slice(),
            pos: 0,
            filled: 0,
            eof: false,
            read: 0,
            consumed: 0,
            line: 1,
            max_bytes: limits.max_bytes,
            max_tag_bytes: u64::try_from(limits.max_tag_bytes).unwrap_or(u64::MAX),
            max_read_time: limits.max_read_time,
            deadline: Instant::now().checked_add(limits.max_read_time),
            tag_start: None,
            stop: None,
        }
    }

    pub(super) fn position(&self) -> Position {
        Position {
            offset: self.consumed,
            line: self.line,
        }
    }

    /// Returns at least `want` unconsumed bytes (fewer only at the end of the input).
    pub(super) fn peek(&mut self, want: usize) -> io::Result<&[u8]> {
        let want = want.min(self.buffer.len());
        while self.filled - self.pos < want && !self.eof {
            if self.pos > 0 {
                self.buffer.copy_within(self.pos..self.filled, 0);
                self.filled -= self.pos;
                self.pos = 0;
            }
            self.read_more()?;
        }
        Ok(&self.buffer[self.pos..self.filled])
    }

    /// Reads once into the free end of `buffer`, unless the time to read is up.
    fn read_more(&mut self) -> io::Result<()> {
        if let Some(stop) = self.stop {
            return Err(stop.io_error());
        }
        if self.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            self.stop = Some(Stop::TimedOut);
            return Err(Stop::TimedOut.io_error());
        }
        loop {
            match self.inner.read(&mut self.buffer[self.filled..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.filled += n;
                    self.read += n as u64;
                    if self.read > self.max_bytes {
                        self.stop = Some(Stop::TooLarge);
                        return Err(Stop::TooLarge.io_error());
                    }
                    return Ok(());
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for Source<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Some(stop) = self.stop {
            return Err(stop.io_error());
        }
        if self.pos == self.filled && !self.eof {
            self.pos = 0;
            self.filled = 0;
            self.read_more()?;
        }
        let mut end = self.filled;
        if let Some(start) = self.tag_start {
            // Hand out at most one byte past the tag limit: a longer tag comes back for more.
            let used = self.consumed - start;
            if used > self.max_tag_bytes {
                self.stop = Some(Stop::TagTooLarge);
                return Err(Stop::TagTooLarge.io_error());
            }
            let allowed = usize::try_from(self.max_tag_bytes - used)
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            end = end.min(self.pos.saturating_add(allowed));
        }
        Ok(&self.buffer[self.pos..end])
    }

    fn consume(&mut self, amount: usize) {
        let amount = amount.min(self.filled - self.pos);
        let consumed = &self.buffer[self.pos..self.pos + amount];
        self.line += memchr::memchr_iter(b'\n', consumed).count() as u64;
        self.pos += amount;
        self.consumed += amount as u64;
    }
}

/// A place in the report, for error messages.
#[derive(Debug, Clone, Copy)]
pub(super) struct Position {
    pub(super) offset: u64,
    pub(super) line: u64,
}

impl Position {
    pub(super) fn malformed(self, message: impl Into<String>) -> JunitError {
        JunitError::Malformed {
            path: None,
            line: self.line,
            offset: self.offset,
            message: message.into(),
        }
    }
}

/// Maps an error from the XML parser, which may be the source's own limit in disguise.
pub(super) fn xml_error<R>(source: &Source<R>, error: quick_xml::Error, at: Position) -> JunitError {
    match error {
        quick_xml::Error::Io(error) => {
            let error =
                Arc::try_unwrap(error).unwrap_or_else(|shared| io::Error::new(shared.kind(), shared.to_string()));
            stream_error(source, error, at)
        }
        error => at.malformed(format!("invalid XML: {error}")),
    }
}

pub(super) fn stream_error<R>(source: &Source<R>, error: io::Error, at: Position) -> JunitError {
    match source.stop {
        Some(Stop::TooLarge) => JunitError::TooLarge {
            path: None,
            bytes: source.read,
            limit: source.max_bytes,
        },
        Some(Stop::TagTooLarge) => at.malformed(format!(
            "a tag is larger than the limit of {} bytes (JunitLimits::max_tag_bytes)",
            source.max_tag_bytes
        )),
        Some(Stop::TimedOut) => JunitError::TimedOut {
            path: None,
            limit: source.max_read_time,
        },
        None if error.kind() == io::ErrorKind::InvalidData => at.malformed(format!("invalid text: {error}")),
        None => JunitError::Io {
            path: None,
            source: error,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, BufReader, Read};
    use std::time::{Duration, Instant};

    use crate::junit::tests::{FIXTURES, PYTEST, malformed, parse, parse_ok};
    use crate::junit::{JunitError, JunitLimits, parse_report};

    /// Bytes one at a time: every token and CDATA delimiter gets split across reads.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let Some((&first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            let Some(slot) = out.first_mut() else { return Ok(0) };
            *slot = first;
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn reading_in_tiny_pieces_gives_the_same_summary() {
        for fixture in FIXTURES {
            let trickled = parse_report(
                BufReader::with_capacity(1, Trickle(fixture.as_bytes())),
                &JunitLimits::default(),
            );
            assert_eq!(trickled.unwrap(), parse_ok(fixture));
        }
    }

    #[test]
    fn errors_point_at_the_offending_line() {
        let (message, line) = malformed("<testsuites>\n  <testsuite>\n    <testcase name=\"a\">\n  </testsuite>\n");
        assert!(message.contains("`</testsuite>` was found"), "{message}");
        assert_eq!(line, 4);
        let (_, line) = malformed("<testsuite>\n\n  <!-- x -->\n  <failure>&oops;</failure></testsuite>");
        assert_eq!(line, 4);
        // The first `&gt` of the pytest fixture opens its fifth line.
        let error = parse(PYTEST.replace("&gt;", "&gt").as_str()).unwrap_err();
        assert_eq!(error.metric_label(), "malformed");
        let text = error.to_string();
        assert!(
            text.starts_with("malformed JUnit report <stream>, line 5 (byte "),
            "{text}"
        );
    }

    /// A byte every few milliseconds: a report that would take minutes to read.
    struct Slow<'a>(&'a [u8]);

    impl Read for Slow<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(Duration::from_millis(5));
            Trickle(self.0).read(out).inspect(|&n| self.0 = &self.0[n..])
        }
    }

    #[test]
    fn a_read_past_the_time_limit_is_refused() {
        let limits = JunitLimits {
            max_read_time: Duration::from_millis(100),
            ..JunitLimits::default()
        };
        let started = Instant::now();
        match parse_report(BufReader::with_capacity(1, Slow(PYTEST.as_bytes())), &limits) {
            Err(error @ JunitError::TimedOut { path: None, limit }) => {
                assert_eq!(limit, limits.max_read_time);
                assert_eq!(error.metric_label(), "timed_out");
                assert!(error.to_string().contains("time limit of 0.1 s"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn a_tag_over_the_tag_limit_is_refused() {
        let limits = JunitLimits {
            max_tag_bytes: 1024,
            ..JunitLimits::default()
        };
        let xml = format!(r#"<testsuite><testcase name="{}"/></testsuite>"#, "n".repeat(4096));
        match parse_report(xml.as_bytes(), &limits) {
            Err(JunitError::Malformed { message, offset, .. }) => {
                assert!(message.contains("max_tag_bytes"), "{message}");
                assert_eq!(offset, 11);
            }
            other => panic!("{other:?}"),
        }
        // Text is streamed, so it is not held to the tag limit.
        let xml = format!("<testsuite><system-out>{}</system-out></testsuite>", "o".repeat(4096));
        assert_eq!(parse_report(xml.as_bytes(), &limits).unwrap().suites, 1);
    }
}
