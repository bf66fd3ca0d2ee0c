//! Bounded text: what is kept of a failed case's name, message, body and output is a prefix of
//! at most its limit's bytes, cut at a character boundary and marked [`TRUNCATION_MARKER`], so
//! the size of a report never sets the memory it takes.

use super::TRUNCATION_MARKER;

/// A prefix of a text body, at most `limit` bytes.
#[derive(Debug, Default)]
pub(super) struct Capture {
    pub(super) bytes: Vec<u8>,
    limit: usize,
    pub(super) truncated: bool,
}

impl Capture {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            bytes: Vec::new(),
            limit,
            truncated: false,
        }
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.truncated = false;
    }

    pub(super) fn push(&mut self, mut data: &[u8]) {
        if self.bytes.is_empty() {
            // Leading blank lines are indentation, not output: keep the room for the text.
            let start = data.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(data.len());
            data = &data[start..];
        }
        let room = self.limit - self.bytes.len();
        if data.len() > room {
            self.truncated = true;
            data = &data[..room];
        }
        self.bytes.extend_from_slice(data);
    }

    /// The captured text with XML line ends (`\r\n`, `\r` → `\n`), trailing whitespace trimmed.
    /// Invalid UTF-8 is replaced rather than refused: output is for people, not for parsing.
    pub(super) fn text(&self) -> Option<String> {
        let mut bytes = self.bytes.as_slice();
        if self.truncated
            && let Err(error) = std::str::from_utf8(bytes)
            && error.error_len().is_none()
        {
            // The cut fell inside a character: drop its first bytes.
            bytes = &bytes[..error.valid_up_to()];
        }
        let text = String::from_utf8_lossy(bytes);
        let text = if text.contains('\r') {
            text.replace("\r\n", "\n").replace('\r', "\n")
        } else {
            text.into_owned()
        };
        let text = text.trim_end();
        (!text.is_empty()).then(|| text.to_owned())
    }
}

/// Cuts `text` to at most `limit` bytes at a character boundary, marking the cut.
pub(super) fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let cut = text.floor_char_boundary(limit);
    format!("{}{TRUNCATION_MARKER}", &text[..cut])
}

/// Joins a failed case's output sections in priority order within `limit` bytes.
pub(super) fn assemble_output<const N: usize>(
    sections: [(Option<&str>, Option<String>, bool); N],
    limit: usize,
) -> Option<String> {
    let mut output = String::new();
    for (heading, text, truncated) in sections {
        let Some(text) = text else { continue };
        if !output.is_empty() {
            output.push('\n');
        }
        output.push_str(heading.unwrap_or_default());
        let room = limit.saturating_sub(output.len());
        let cut = text.floor_char_boundary(room);
        output.push_str(&text[..cut]);
        if cut < text.len() || truncated {
            output.push_str(TRUNCATION_MARKER);
            break;
        }
    }
    (!output.is_empty()).then_some(output)
}

#[cfg(test)]
mod tests {
    use crate::junit::{JunitLimits, TRUNCATION_MARKER, parse_report};

    #[test]
    fn line_ends_are_normalised_and_bad_utf8_replaced() {
        let summary = parse_report(
            &b"<testsuite><testcase name=\"a\"><failure>one\r\ntwo\rthree \xFF\xFE end</failure></testcase></testsuite>"[..],
            &JunitLimits::default(),
        )
        .unwrap();
        assert_eq!(
            summary.failed_cases[0].output.as_deref(),
            Some("one\ntwo\nthree \u{FFFD}\u{FFFD} end")
        );
    }

    #[test]
    fn truncates_messages_and_output_at_char_boundaries() {
        let limits = JunitLimits {
            max_message_bytes: 10,
            max_output_bytes: 40,
            ..JunitLimits::default()
        };
        let long = "é".repeat(50); // two bytes each
        let xml = format!(
            r#"<testsuite><testcase name="{long}"><failure message="{long}">{long}</failure>
               <system-out>{long}</system-out></testcase>
               <testcase name="b"><error>short body</error><system-out>{long}</system-out></testcase></testsuite>"#
        );
        let summary = parse_report(xml.as_bytes(), &limits).unwrap();
        let first = &summary.failed_cases[0];
        let cut = format!("{}{TRUNCATION_MARKER}", "é".repeat(5));
        assert_eq!(first.name, cut);
        assert_eq!(first.message.as_deref(), Some(cut.as_str()));
        assert_eq!(
            first.output,
            Some(format!("{}{TRUNCATION_MARKER}", "é".repeat(20))),
            "the body comes first"
        );

        let second = &summary.failed_cases[1];
        assert_eq!(second.message.as_deref(), Some("short body"));
        let output = second.output.as_deref().unwrap();
        assert_eq!(
            output,
            format!("short body\n--- system-out ---\n{}{TRUNCATION_MARKER}", "é".repeat(5))
        );
    }
}
