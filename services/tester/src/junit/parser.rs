//! The parser: the XML events, and the text streamed between them, become a [`JunitSummary`].
//! A stack of open elements gives each its role (suite, case, failure, output or other); a
//! case's outcome, time and, for the first failed cases, its detail are gathered while it is
//! open and counted when it closes.

use std::io::{BufRead, Read};
use std::time::Duration;

use quick_xml::XmlVersion;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::reader::Reader;

use super::capture::{Capture, assemble_output, truncate};
use super::source::{Position, Source, stream_error, xml_error};
use super::{FailedCase, FailureKind, JunitError, JunitLimits, JunitSummary, ParseStats};

/// What an open element means to the summary.
#[derive(Debug)]
enum Role {
    /// The `<testsuites>` root.
    Suites,
    /// A `<testsuite>`, the root or nested.
    Suite,
    /// A `<testcase>`.
    Case,
    /// A `<failure>` or `<error>` directly in a case: its body is the failure's detail.
    Failure,
    /// A case's own `<system-out>` or `<system-err>`.
    Output(Stream),
    /// Anything else; its text is skipped. The name is kept for error messages.
    Other(Box<str>),
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Out,
    Err,
}

#[derive(Debug)]
struct Frame {
    role: Role,
    /// Where the element opened, for "not closed" errors.
    line: u64,
}

impl Frame {
    fn name(&self) -> &str {
        match &self.role {
            Role::Suites => "testsuites",
            Role::Suite => "testsuite",
            Role::Case => "testcase",
            Role::Failure => "failure",
            Role::Output(Stream::Out) => "system-out",
            Role::Output(Stream::Err) => "system-err",
            Role::Other(name) => name,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Skipped,
    Failed(FailureKind),
}

/// The case being read. Reused from case to case so a passing case allocates little.
#[derive(Debug)]
struct CaseState {
    name: String,
    class: Option<String>,
    duration: Option<Duration>,
    outcome: Outcome,
    message: Option<String>,
    type_name: Option<String>,
    /// Whether this case would be kept in detail if it fails; if not, nothing is captured.
    keep_detail: bool,
    body: Capture,
    stdout: Capture,
    stderr: Capture,
}

/// Where text read from the report goes.
enum Sink<'a> {
    /// Outside the root element: only whitespace may be there.
    Outside { root_seen: bool },
    /// Inside the root, not wanted.
    Discard,
    /// Part of a failed case's detail.
    Keep(&'a mut Capture),
}

impl Sink<'_> {
    fn accept(&mut self, data: &[u8], at: Position) -> Result<(), JunitError> {
        match self {
            Self::Discard => Ok(()),
            Self::Keep(capture) => {
                capture.push(data);
                Ok(())
            }
            Self::Outside { root_seen } => {
                let Some(stray) = data.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n')) else {
                    return Ok(());
                };
                let at = Position {
                    offset: at.offset + stray as u64,
                    line: at.line + memchr::memchr_iter(b'\n', &data[..stray]).count() as u64,
                };
                let found = &data[stray..data.len().min(stray + 24)];
                Err(at.malformed(if *root_seen {
                    format!("text after the root element: {:?}", String::from_utf8_lossy(found))
                } else if found.starts_with(&[0xFF, 0xFE]) || found.starts_with(&[0xFE, 0xFF]) {
                    "the report is UTF-16 encoded; only UTF-8 reports are supported".to_owned()
                } else {
                    format!(
                        "not an XML document: expected `<`, found {:?}",
                        String::from_utf8_lossy(found)
                    )
                }))
            }
        }
    }
}

pub(super) struct Parser<'l> {
    limits: &'l JunitLimits,
    summary: JunitSummary,
    stack: Vec<Frame>,
    root_seen: bool,
    case: CaseState,
    case_time: Option<Duration>,
    suite_time: Option<Duration>,
    root_time: Option<Duration>,
    stats: ParseStats,
}

impl<'l> Parser<'l> {
    pub(super) fn new(limits: &'l JunitLimits) -> Self {
        Self {
            limits,
            summary: JunitSummary::default(),
            stack: Vec::new(),
            root_seen: false,
            case: CaseState {
                name: String::new(),
                class: None,
                duration: None,
                outcome: Outcome::Passed,
                message: None,
                type_name: None,
                keep_detail: false,
                body: Capture::new(limits.max_output_bytes),
                stdout: Capture::new(limits.max_output_bytes),
                stderr: Capture::new(limits.max_output_bytes),
            },
            case_time: None,
            suite_time: None,
            root_time: None,
            stats: ParseStats::default(),
        }
    }

    pub(super) fn run<R: Read>(
        mut self,
        xml: &mut Reader<Source<R>>,
    ) -> Result<(JunitSummary, ParseStats), JunitError> {
        let mut buffer = Vec::new();
        loop {
            self.pump(xml)?;
            let at = xml.get_ref().position();
            xml.get_mut().tag_start = Some(at.offset);
            self.stats.max_event_buffer = self.stats.max_event_buffer.max(buffer.capacity());
            buffer.clear();
            let event = xml.read_event_into(&mut buffer);
            xml.get_mut().tag_start = None;
            let event = event.map_err(|error| xml_error(xml.get_ref(), error, at))?;
            match event {
                Event::Start(tag) => self.open(&tag, at)?,
                Event::Empty(tag) => {
                    self.open(&tag, at)?;
                    self.close(at)?;
                }
                Event::End(_) => self.close(at)?,
                Event::Text(text) => self.sink().accept(text.as_bytes(), at)?,
                Event::CData(data) => self.sink().accept(data.as_bytes(), at)?,
                Event::GeneralRef(reference) => {
                    let resolved = resolve_reference(&reference, at)?;
                    let mut utf8 = [0; 4];
                    let text = match resolved {
                        Resolved::Char(c) => c.encode_utf8(&mut utf8),
                        Resolved::Str(s) => s,
                    };
                    self.sink().accept(text.as_bytes(), at)?;
                }
                Event::Decl(_) | Event::PI(_) | Event::DocType(_) | Event::Comment(_) => {}
                Event::Eof => return self.finish(at),
            }
        }
    }

    /// Where text at the current place in the report goes.
    fn sink(&mut self) -> Sink<'_> {
        let Some(frame) = self.stack.last() else {
            return Sink::Outside {
                root_seen: self.root_seen,
            };
        };
        if !self.case.keep_detail {
            return Sink::Discard;
        }
        match frame.role {
            Role::Failure => Sink::Keep(&mut self.case.body),
            Role::Output(Stream::Out) => Sink::Keep(&mut self.case.stdout),
            Role::Output(Stream::Err) => Sink::Keep(&mut self.case.stderr),
            _ => Sink::Discard,
        }
    }

    /// Streams the text (and CDATA sections) up to the next markup or entity reference into the
    /// current sink, so a body of any size goes through a fixed buffer.
    fn pump<R: Read>(&mut self, xml: &mut Reader<Source<R>>) -> Result<(), JunitError> {
        loop {
            let at = xml.get_ref().position();
            if at.offset == 0 {
                // A UTF-8 byte order mark may open the document.
                let bom = match xml.get_mut().peek(UTF8_BOM.len()) {
                    Ok(head) => head.starts_with(UTF8_BOM),
                    Err(error) => return Err(stream_error(xml.get_ref(), error, at)),
                };
                if bom {
                    xml.stream().consume(UTF8_BOM.len());
                    continue;
                }
            }
            let mut stream = xml.stream();
            let available = match stream.fill_buf() {
                Ok(available) => available,
                Err(error) => return Err(stream_error(stream.get_ref(), error, at)),
            };
            let text_len = match memchr::memchr2(b'<', b'&', available) {
                Some(0) if available[0] == b'&' => return Ok(()),
                Some(0) => {
                    let head = match stream.get_mut().peek(CDATA_OPEN.len()) {
                        Ok(head) => head,
                        Err(error) => return Err(stream_error(stream.get_ref(), error, at)),
                    };
                    if !head.starts_with(CDATA_OPEN) || self.stack.is_empty() {
                        return Ok(()); // markup, for the XML parser
                    }
                    stream.consume(CDATA_OPEN.len());
                    drop(stream);
                    self.pump_cdata(xml, at)?;
                    continue;
                }
                Some(text_len) => text_len,
                None => available.len(),
            };
            if text_len == 0 {
                return Ok(()); // end of input
            }
            let result = self.sink().accept(&available[..text_len], at);
            stream.consume(text_len);
            result?;
        }
    }

    /// Streams a CDATA section's content, after its `<![CDATA[`, into the current sink.
    fn pump_cdata<R: Read>(&mut self, xml: &mut Reader<Source<R>>, opened: Position) -> Result<(), JunitError> {
        loop {
            let at = xml.get_ref().position();
            let mut stream = xml.stream();
            let available = match stream.get_mut().peek(CDATA_CLOSE.len()) {
                Ok(available) => available,
                Err(error) => return Err(stream_error(stream.get_ref(), error, at)),
            };
            if available.len() < CDATA_CLOSE.len() {
                return Err(opened.malformed("unexpected end of file: a CDATA section is not closed (`]]>` missing)"));
            }
            let (text_len, close_len) = match memchr::memmem::find(available, CDATA_CLOSE) {
                Some(end) => (end, CDATA_CLOSE.len()),
                // Keep the last two bytes: they may be the start of a `]]>` split across reads.
                None => (available.len() - (CDATA_CLOSE.len() - 1), 0),
            };
            let result = self.sink().accept(&available[..text_len], at);
            stream.consume(text_len + close_len);
            result?;
            if close_len > 0 {
                return Ok(());
            }
        }
    }

    fn open(&mut self, tag: &BytesStart<'_>, at: Position) -> Result<(), JunitError> {
        let local_name = tag.local_name();
        let name = local_name.as_ref();
        let parent = self.stack.last().map(|frame| &frame.role);
        let role = match (parent, name) {
            (None, _) if self.root_seen => {
                return Err(at.malformed(format!(
                    "a second root element <{}>; a report has one <testsuites> or <testsuite> root",
                    name
                )));
            }
            (None, "testsuites") => Role::Suites,
            (None | Some(Role::Suites | Role::Suite), "testsuite") => Role::Suite,
            (None, _) => {
                return Err(at.malformed(format!(
                    "the root element is <{}>, expected <testsuites> or <testsuite>",
                    name
                )));
            }
            (Some(Role::Suites | Role::Suite), "testcase") => Role::Case,
            (Some(Role::Case), "failure") => Role::Failure,
            (Some(Role::Case), "error") => Role::Failure,
            (Some(Role::Case), "system-out") => Role::Output(Stream::Out),
            (Some(Role::Case), "system-err") => Role::Output(Stream::Err),
            // Also <skipped>, <properties>, suite-level output, and Surefire's and nextest's
            // <flakyFailure>/<rerunFailure>: reruns that do not decide the case's outcome.
            _ => Role::Other(name.into()),
        };
        let attributes = Attributes::read(tag, at)?;
        match (&role, name) {
            (Role::Suites, _) => self.root_time = attributes.time,
            (Role::Suite, _) => {
                self.summary.suites += 1;
                if matches!(parent, None | Some(Role::Suites)) {
                    add_time(&mut self.suite_time, attributes.time);
                }
            }
            (Role::Case, _) => self.start_case(attributes),
            (Role::Failure, kind) if !matches!(self.case.outcome, Outcome::Failed(_)) => {
                let kind = if kind == "error" {
                    FailureKind::Error
                } else {
                    FailureKind::Failure
                };
                self.case.outcome = Outcome::Failed(kind);
                let limit = self.limits.max_message_bytes;
                self.case.message = (attributes.message.as_deref().map(str::trim))
                    .filter(|message| !message.is_empty())
                    .map(|message| truncate(message, limit));
                self.case.type_name = attributes.type_name.map(|type_name| truncate(type_name.trim(), limit));
            }
            (Role::Other(_), "skipped")
                if matches!(parent, Some(Role::Case)) && self.case.outcome == Outcome::Passed =>
            {
                self.case.outcome = Outcome::Skipped;
            }
            _ => {}
        }
        self.root_seen = true;
        self.stack.push(Frame { role, line: at.line });
        Ok(())
    }

    fn start_case(&mut self, attributes: Attributes) {
        let limit = self.limits.max_message_bytes;
        let case = &mut self.case;
        case.name.clear();
        if let Some(name) = attributes.name {
            case.name.push_str(&truncate(&name, limit));
        }
        case.class = attributes.class.map(|class| truncate(&class, limit));
        case.duration = attributes.time;
        case.outcome = Outcome::Passed;
        case.message = None;
        case.type_name = None;
        case.keep_detail = self.summary.failed_cases.len() < self.limits.max_failed_cases;
        case.body.clear();
        case.stdout.clear();
        case.stderr.clear();
    }

    fn close(&mut self, at: Position) -> Result<(), JunitError> {
        let frame = self
            .stack
            .pop()
            .ok_or_else(|| at.malformed("a closing tag with no element open"))?;
        if let Role::Case = frame.role {
            self.finish_case();
        }
        Ok(())
    }

    fn finish_case(&mut self) {
        let summary = &mut self.summary;
        let case = &mut self.case;
        summary.tests += 1;
        add_time(&mut self.case_time, case.duration);
        let kind = match case.outcome {
            Outcome::Passed => {
                if summary.passed_names.len() < self.limits.max_passed_names {
                    summary
                        .passed_names
                        .push(super::case_name(case.class.as_deref(), &case.name));
                } else {
                    summary.passed_names_omitted += 1;
                }
                return;
            }
            Outcome::Skipped => {
                summary.skipped += 1;
                return;
            }
            Outcome::Failed(kind) => kind,
        };
        match kind {
            FailureKind::Failure => summary.failures += 1,
            FailureKind::Error => summary.errors += 1,
        }
        if !case.keep_detail {
            summary.failed_cases_omitted += 1;
            return;
        }
        let body = case.body.text();
        let message = case.message.take().or_else(|| {
            let first_line = body.as_deref()?.lines().map(str::trim).find(|line| !line.is_empty())?;
            Some(truncate(first_line, self.limits.max_message_bytes))
        });
        let output = assemble_output(
            [
                (None, body, case.body.truncated),
                (Some("--- system-out ---\n"), case.stdout.text(), case.stdout.truncated),
                (Some("--- system-err ---\n"), case.stderr.text(), case.stderr.truncated),
            ],
            self.limits.max_output_bytes,
        );
        summary.failed_cases.push(FailedCase {
            name: case.name.clone(),
            class: case.class.take(),
            kind,
            message,
            type_name: case.type_name.take(),
            output,
            duration: case.duration,
        });
    }

    fn finish(mut self, at: Position) -> Result<(JunitSummary, ParseStats), JunitError> {
        if let Some(frame) = self.stack.last() {
            return Err(at.malformed(format!(
                "unexpected end of file: <{}> opened on line {} is not closed (is the report truncated?)",
                frame.name(),
                frame.line
            )));
        }
        if !self.root_seen {
            return Err(at.malformed(if at.offset == 0 {
                "the report is empty"
            } else {
                "no root element: expected <testsuites> or <testsuite>"
            }));
        }
        self.summary.duration = self.case_time.or(self.root_time).or(self.suite_time);
        // The capture buffers are reused from case to case: their capacity is their high-water mark.
        let captures = [&self.case.body, &self.case.stdout, &self.case.stderr];
        self.stats.max_capture = captures
            .iter()
            .map(|capture| capture.bytes.capacity())
            .max()
            .unwrap_or(0);
        Ok((self.summary, self.stats))
    }
}

const UTF8_BOM: &[u8] = &[0xEF, 0xBB, 0xBF];
const CDATA_OPEN: &[u8] = b"<![CDATA[";
const CDATA_CLOSE: &[u8] = b"]]>";

/// The attributes the summary uses, decoded; every attribute is checked for bad entities.
#[derive(Debug, Default)]
struct Attributes {
    name: Option<String>,
    class: Option<String>,
    time: Option<Duration>,
    message: Option<String>,
    type_name: Option<String>,
}

impl Attributes {
    fn read(tag: &BytesStart<'_>, at: Position) -> Result<Self, JunitError> {
        let mut attributes = Self::default();
        let tag_name = || tag.local_name().as_ref().to_owned();
        for attribute in tag.attributes() {
            let attribute =
                attribute.map_err(|error| at.malformed(format!("bad attribute in <{}>: {error}", tag_name())))?;
            let value = attribute.normalized_value(XmlVersion::Implicit1_0).map_err(|error| {
                at.malformed(format!(
                    "bad value of attribute `{}` in <{}>: {error}",
                    attribute.key.as_ref(),
                    tag_name()
                ))
            })?;
            match attribute.key.as_ref() {
                "name" => attributes.name = Some(value.into_owned()),
                "classname" => attributes.class = Some(value.into_owned()),
                "time" => attributes.time = parse_seconds(&value),
                "message" => attributes.message = Some(value.into_owned()),
                "type" => attributes.type_name = Some(value.into_owned()).filter(|t| !t.trim().is_empty()),
                _ => {}
            }
        }
        Ok(attributes)
    }
}

enum Resolved {
    Char(char),
    Str(&'static str),
}

fn resolve_reference(reference: &BytesRef<'_>, at: Position) -> Result<Resolved, JunitError> {
    match reference.resolve_char_ref() {
        Ok(Some(c)) => Ok(Resolved::Char(c)),
        Ok(None) => quick_xml::escape::resolve_xml_entity(reference)
            .map(Resolved::Str)
            .ok_or_else(|| at.malformed(format!("unknown entity `&{};`", &**reference))),
        Err(error) => Err(at.malformed(format!("bad character reference `&{};`: {error}", &**reference))),
    }
}

/// A `time` attribute as a duration: decimal seconds, maybe with `,` thousands separators
/// (Surefire in some locales). Anything else is no duration, never an error.
fn parse_seconds(value: &str) -> Option<Duration> {
    let value = value.trim();
    let seconds = if value.contains(',') {
        let (integer, fraction) = value.split_once('.').unwrap_or((value, ""));
        let mut groups = integer.split(',');
        let first = groups.next()?;
        if first.is_empty() || first.len() > 3 || !groups.all(|group| group.len() == 3) {
            return None;
        }
        let digits: String = integer.chars().filter(|c| *c != ',').collect();
        if fraction.is_empty() {
            digits
        } else {
            format!("{digits}.{fraction}")
        }
    } else {
        value.to_owned()
    };
    if !seconds.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None; // no signs, exponents, `inf` or `NaN`
    }
    Duration::try_from_secs_f64(seconds.parse().ok()?).ok()
}

fn add_time(total: &mut Option<Duration>, time: Option<Duration>) {
    if let Some(time) = time {
        *total = Some(total.unwrap_or_default().saturating_add(time));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::junit::parse_report;
    use crate::junit::tests::{FIXTURES, counts, malformed, millis, names, parse, parse_ok};

    #[test]
    fn counts_cases_not_the_suites_claims() {
        let summary = parse_ok(
            r#"<testsuites tests="100" failures="0" errors="0">
                <testsuite name="outer" tests="1" failures="0">
                  <testsuite name="inner">
                    <testcase name="a"/>
                    <testcase name="b"><failure/></testcase>
                  </testsuite>
                  <testcase name="c"><skipped/><error message="late"/></testcase>
                  <testcase name="d"><failure message="first"/><error message="second"/></testcase>
                </testsuite>
              </testsuites>"#,
        );
        assert_eq!(counts(&summary), [2, 4, 2, 1, 0]);
        assert_eq!(names(&summary), ["b", "c", "d"]);
        assert_eq!(summary.failed_cases[0].message, None);
        assert_eq!(
            summary.failed_cases[1].kind,
            FailureKind::Error,
            "a failure outranks a skip"
        );
        assert_eq!(
            summary.failed_cases[2].kind,
            FailureKind::Failure,
            "the first failure decides"
        );
        assert_eq!(summary.failed_cases[2].message.as_deref(), Some("first"));
        assert_eq!(summary.duration, None);
    }

    #[test]
    fn bare_testsuite_root_and_surefire_reruns() {
        let summary = parse_ok(
            r#"<?xml version="1.0"?>
            <!-- generated -->
            <testsuite name="s" time="2.5">
              <testcase name="flaky"><flakyFailure message="m"/><flakyError message="e"/></testcase>
              <testcase name="broken"><failure message="third try"/><rerunFailure message="first"/><rerunFailure/></testcase>
              <testcase name="namespaced"><x:failure xmlns:x="urn:x" message="prefixes are ignored"/></testcase>
            </testsuite>"#,
        );
        assert_eq!(counts(&summary), [1, 3, 2, 0, 0]);
        assert_eq!(summary.failed_cases[0].message.as_deref(), Some("third try"));
        assert_eq!(summary.duration, millis(2500), "no case time: the suite's");
    }

    #[test]
    fn an_empty_root_is_an_empty_passing_run() {
        for xml in [
            "<testsuites/>",
            "\u{feff}<testsuite name=\"none\" tests=\"0\"></testsuite>\n",
        ] {
            let summary = parse_ok(xml);
            assert_eq!(
                summary,
                JunitSummary {
                    suites: summary.suites,
                    ..JunitSummary::default()
                }
            );
            assert!(summary.passed());
        }
    }

    #[test]
    fn durations_fall_back_and_tolerate_odd_times() {
        let root =
            parse_ok(r#"<testsuites time="9"><testsuite time="4"><testcase time="x"/></testsuite></testsuites>"#);
        assert_eq!(root.duration, millis(9_000));
        let suites = parse_ok(
            r#"<testsuites><testsuite time="1.5"><testsuite time="1"/></testsuite><testsuite time="2"/></testsuites>"#,
        );
        assert_eq!(
            suites.duration,
            millis(3_500),
            "nested suites are inside their parent's time"
        );

        assert_eq!(parse_seconds("0.25"), millis(250));
        assert_eq!(parse_seconds(" 12 "), millis(12_000));
        assert_eq!(parse_seconds("1,234.5"), millis(1_234_500));
        assert_eq!(parse_seconds("12,345,678"), millis(12_345_678_000));
        for odd in [
            "", "0,5", "1,23.4", ",123", "-1", "+1", "1e3", "NaN", "inf", "1.2.3", "PT1S", "١",
        ] {
            assert_eq!(parse_seconds(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn entities_are_decoded_everywhere() {
        let summary = parse_ok(
            "<testsuite><testcase name=\"a&amp;b &#x3C;&#62;\" classname=\"&quot;q&apos;\">\
             <failure message=\"x &lt; y\">body &lt;tag&gt; &#x1F600; &amp;&amp; <![CDATA[&lt; raw]]></failure>\
             </testcase></testsuite>",
        );
        let case = &summary.failed_cases[0];
        assert_eq!(case.name, "a&b <>");
        assert_eq!(case.class.as_deref(), Some("\"q'"));
        assert_eq!(case.message.as_deref(), Some("x < y"));
        assert_eq!(case.output.as_deref(), Some("body <tag> 😀 && &lt; raw"));
    }

    fn failing_cases(count: usize, body: &str) -> String {
        let mut xml = String::from("<testsuite>");
        for i in 0..count {
            xml.push_str(&format!(
                r#"<testcase name="t{i}"><failure message="m{i}">{body}</failure></testcase>"#
            ));
        }
        xml + "</testsuite>"
    }

    #[test]
    fn keeps_only_the_first_failed_cases() {
        let limits = JunitLimits {
            max_failed_cases: 2,
            ..JunitLimits::default()
        };
        let summary = parse_report(failing_cases(5, "trace").as_bytes(), &limits).unwrap();
        assert_eq!(summary.failures, 5);
        assert_eq!(names(&summary), ["t0", "t1"]);
        assert_eq!(summary.failed_cases_omitted, 3);

        let none = JunitLimits {
            max_failed_cases: 0,
            ..JunitLimits::default()
        };
        let summary = parse_report(failing_cases(3, "trace").as_bytes(), &none).unwrap();
        assert_eq!(
            (
                summary.failures,
                summary.failed_cases.len(),
                summary.failed_cases_omitted
            ),
            (3, 0, 3)
        );
    }

    #[test]
    fn malformed_reports_are_errors_with_a_position() {
        let cases: [(&[u8], &str); 18] = [
            (b"", "the report is empty"),
            (b" \n\t ", "no root element"),
            (
                b"Tests passed: 12, failed: 0",
                "not an XML document: expected `<`, found \"Tests passed",
            ),
            (b"\x7fELF\x02\x01\x01\x00\x00\x00", "not an XML document"),
            (b"\xFF\xFE<\x00t\x00", "UTF-16"),
            (b"{\"tests\": 3}", "not an XML document"),
            (b"<html><body>404</body></html>", "the root element is <html>"),
            (
                b"<testsuite><testcase name=\"a\">",
                "<testcase> opened on line 1 is not closed",
            ),
            (
                b"<testsuite><testcase name=\"a\"></testsuite>",
                "expected `</testcase>`, but `</testsuite>` was found",
            ),
            (b"<testsuite><testcase name=\"a", "invalid XML"),
            (
                b"<testsuite></testsuite><testsuite/>",
                "a second root element <testsuite>",
            ),
            (b"<testsuite/>trailing", "text after the root element"),
            (
                b"<testsuite><testcase><failure>&nbsp;</failure></testcase></testsuite>",
                "unknown entity `&nbsp;`",
            ),
            (b"<testsuite>&#0;</testsuite>", "bad character reference `&#0;`"),
            (b"<testsuite>a & b</testsuite>", "invalid XML"),
            (
                b"<testsuite name=\"&bogus;\"/>",
                "bad value of attribute `name` in <testsuite>",
            ),
            (b"<testsuite a=\"1\" a=\"2\"/>", "bad attribute in <testsuite>"),
            (
                b"<testsuite><system-out><![CDATA[never closed",
                "a CDATA section is not closed",
            ),
        ];
        for (xml, expected) in cases {
            let (message, _) = malformed(xml);
            assert!(
                message.contains(expected),
                "{:?}: {message:?} lacks {expected:?}",
                String::from_utf8_lossy(xml)
            );
        }
    }

    #[test]
    fn a_truncated_report_is_never_a_panic_or_a_success() {
        for fixture in FIXTURES {
            let end = fixture.trim_end().rfind('<').unwrap();
            for cut in (0..end).filter(|cut| fixture.is_char_boundary(*cut)) {
                let error = parse(&fixture[..cut]).expect_err("a truncated report");
                assert!(matches!(error, JunitError::Malformed { .. }), "cut at {cut}: {error:?}");
            }
        }
    }
}
