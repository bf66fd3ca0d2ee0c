//! Slack mrkdwn from text Baton does not control. Commit messages, author names, release and app
//! names, reasons and the promoter's answers come from people and git hosts; put into a message
//! as they are, `<!here>` would ping the channel and `<https://evil|view diff>` would show a link
//! saying one thing and going elsewhere. Every such text enters a message through [`escape`]
//! (Slack's rule: `&`, `<` and `>` as `&amp;`, `&lt;` and `&gt;`), or through [`code`] and
//! [`bold`], which also keep the text from closing the span it sits in. Baton's own markup (its
//! formatting, the mention of the person who asked) is written around the escaped text, so it
//! keeps working.

use std::borrow::Cow;

/// `text` with Slack's control characters escaped (`&` → `&amp;`, `<` → `&lt;`, `>` → `&gt;`),
/// so it shows as written: no mention, link or channel ping can come out of it. Text that looks
/// escaped already (`&lt;`) is escaped again and shows as typed.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `text` as inline code: `` `text` ``, escaped. mrkdwn has no escape for a backtick, so one in
/// the text becomes `ˋ` (U+02CB) rather than ending the span early, and a line break becomes a
/// space (a code span does not cross lines).
pub fn code(text: &str) -> String {
    format!("`{}`", escape(&one_line(text, &['`'], 'ˋ')))
}

/// `text` in bold: `*text*`, escaped. An asterisk in the text becomes `∗` (U+2217) rather than
/// ending the bold early, a backtick becomes `ˋ` so it cannot open a code span past the bold's
/// end, and a line break becomes a space.
pub fn bold(text: &str) -> String {
    let text = one_line(text, &['`'], 'ˋ');
    format!("*{}*", escape(&one_line(&text, &['*'], '∗')))
}

/// A mention of the Slack user `user_id` (`<@U…>`), the one mention Baton writes itself. The id
/// comes from Slack's signed request; it is escaped all the same, so an odd one shows as text
/// instead of becoming some other control sequence.
pub fn mention(user_id: &str) -> String {
    format!("<@{}>", escape(user_id))
}

/// `text` on one line, each of `from` replaced by `to`.
fn one_line<'t>(text: &'t str, from: &[char], to: char) -> Cow<'t, str> {
    let replaced = |c: char| from.contains(&c) || c == '\n' || c == '\r';
    if !text.contains(replaced) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| match c {
                '\n' | '\r' => ' ',
                c if from.contains(&c) => to,
                c => c,
            })
            .collect(),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Text that must reach Slack as text: channel pings, a disguised link, a user mention, and
    /// text already escaped.
    pub(crate) const HOSTILE: [&str; 5] = ["<!here>", "<!channel>", "<https://evil|view diff>", "<@U123>", "&lt;"];

    /// Panics when `mrkdwn` holds a control sequence or an `&` that starts no escape: every
    /// `<` and `>` must belong to one of Baton's own mentions or links (`allowed`). (Whether
    /// `&lt;` typed by a user shows as typed, `&amp;lt;`, each test checks in its own output.)
    pub(crate) fn assert_inert(mrkdwn: &str, allowed: &[&str]) {
        let mut rest = mrkdwn.to_owned();
        for own in allowed {
            rest = rest.replace(own, "");
        }
        assert!(!rest.contains(['<', '>']), "a control sequence in: {mrkdwn}");
        for (at, _) in rest.match_indices('&') {
            let entity = &rest[at..];
            assert!(
                ["&amp;", "&lt;", "&gt;"].iter().any(|e| entity.starts_with(e)),
                "an unescaped `&` at {at} in: {mrkdwn}"
            );
        }
    }

    #[test]
    fn escape_follows_slacks_rules() {
        assert_eq!(escape("<!here>"), "&lt;!here&gt;");
        assert_eq!(escape("<!channel>"), "&lt;!channel&gt;");
        assert_eq!(escape("<https://evil|view diff>"), "&lt;https://evil|view diff&gt;");
        assert_eq!(escape("<@U123>"), "&lt;@U123&gt;");
        assert_eq!(escape("&lt;"), "&amp;lt;", "shows as typed");
        assert_eq!(escape("fix: a && b -> c"), "fix: a &amp;&amp; b -&gt; c");
        assert!(matches!(escape("plain text"), Cow::Borrowed("plain text")));
    }

    #[test]
    fn code_and_bold_cannot_be_closed_from_inside() {
        assert_eq!(code("r1"), "`r1`");
        assert_eq!(code("r1` *approved* `<!here>"), "`r1ˋ *approved* ˋ&lt;!here&gt;`");
        assert_eq!(code("two\nlines"), "`two lines`");
        assert_eq!(bold("acme/shop"), "*acme/shop*");
        assert_eq!(bold("shop* into *production"), "*shop∗ into ∗production*");
        assert_eq!(bold("a`b<!here>"), "*aˋb&lt;!here&gt;*");
        assert_eq!(bold("x\r\ny"), "*x  y*");
        for text in HOSTILE {
            assert_inert(&code(text), &[]);
            assert_inert(&bold(text), &[]);
        }
    }

    #[test]
    fn baton_s_own_mention_still_works() {
        assert_eq!(mention("U0ALICE"), "<@U0ALICE>");
        assert_eq!(mention("U1><!here"), "<@U1&gt;&lt;!here>");
    }
}
