//! Quoted history in replies: what to drop, what to keep as context.
//!
//! A reply usually carries the whole thread below the new text; the agent
//! has that history already (the Claude session is resumed), so a quote at
//! the end is replaced by one `[quoted text removed]` line. A quote followed
//! by the sender's own text is an inline reply: it stays, as `> ` lines, so
//! the answers keep their questions. Forwarded messages are kept.
//!
//! Input is a list of [`Segment`]s: from the HTML renderer
//! ([`super::html`], which knows the clients' quote containers) or from
//! plain text (lines starting with `>`). Both then get the same rules:
//! an attribution line ("On … wrote:") just before a dropped quote goes with
//! it, and an Outlook header block ("From: … Sent: … To: …", with or without
//! a `____` or `-----Original Message-----` line) starts a quote that runs
//! to the end. Pure and linear in the input; called by [`super::parse`].

#![deny(clippy::indexing_slicing)]

/// What replaces quoted history at the end of a message.
pub const QUOTE_REMOVED: &str = "[quoted text removed]";

/// A run of text that is, or is not, quoted history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segment {
    /// Quoted history (not the sender's own text).
    pub quoted: bool,
    /// The text (for plain text, quoted lines keep their `>`).
    pub text: String,
}

/// Final text of an HTML body rendered by [`super::html::render`].
pub(crate) fn join_html(segments: Vec<Segment>) -> String {
    join(segments, false)
}

/// Strip quoted history from a plain-text body.
pub fn strip_plain(text: &str) -> String {
    // Some clients (Yahoo) quote without `>`: an attribution line followed
    // only by unprefixed text starts a quote that runs to the end.
    let (own, unprefixed_quote) = match unprefixed_quote_start(text) {
        Some(at) => (text.get(..at).unwrap_or(text), text.get(at..)),
        None => (text, None),
    };
    let mut segments: Vec<Segment> = Vec::new();
    for line in own.lines() {
        let t = line.trim_start();
        // Blank lines do not end a quote; they are merged away below.
        let quoted = if t.is_empty() {
            segments.last().is_some_and(|s| s.quoted)
        } else {
            t.starts_with('>')
        };
        match segments.last_mut() {
            Some(s) if s.quoted == quoted => {
                s.text.push('\n');
                s.text.push_str(line);
            }
            _ => segments.push(Segment {
                quoted,
                text: line.to_owned(),
            }),
        }
    }
    if let Some(q) = unprefixed_quote {
        segments.push(Segment {
            quoted: true,
            text: prefix(q),
        });
    }
    join(segments, true)
}

/// Byte offset of the last attribution line when no `>` line follows it
/// but some text does.
fn unprefixed_quote_start(text: &str) -> Option<usize> {
    let mut offset = 0usize;
    let mut found: Option<usize> = None;
    let mut quoted_after = false;
    let mut text_after = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if is_attribution(t) && t.len() > "wrote:".len() {
            found = Some(offset);
            quoted_after = false;
            text_after = false;
        } else if found.is_some() && !t.is_empty() {
            if t.starts_with('>') {
                quoted_after = true;
            } else {
                text_after = true;
            }
        }
        offset += line.len();
    }
    found.filter(|_| text_after && !quoted_after)
}

fn join(segments: Vec<Segment>, prefixed: bool) -> String {
    // Normalise, drop empty runs, merge neighbours of the same kind.
    let mut segs: Vec<Segment> = Vec::with_capacity(segments.len());
    for s in segments {
        let text = normalise(&s.text);
        if text.is_empty() {
            continue;
        }
        match segs.last_mut() {
            Some(last) if last.quoted == s.quoted => {
                last.text.push('\n');
                last.text.push_str(&text);
            }
            _ => segs.push(Segment {
                quoted: s.quoted,
                text,
            }),
        }
    }

    // An Outlook header block in the sender's text starts a quote that runs
    // to the end of the message.
    if let Some(i) = segs
        .iter()
        .position(|s| !s.quoted && outlook_block_start(&s.text).is_some())
    {
        let tail: Vec<Segment> = segs.split_off(i);
        let mut quoted_tail = String::new();
        for (k, s) in tail.into_iter().enumerate() {
            let text = if k == 0 {
                let at = outlook_block_start(&s.text).unwrap_or(0);
                let (own, quote) = s.text.split_at(at.min(s.text.len()));
                let own = own.trim_end();
                if !own.is_empty() {
                    segs.push(Segment {
                        quoted: false,
                        text: own.to_owned(),
                    });
                }
                quote.to_owned()
            } else {
                s.text
            };
            if !quoted_tail.is_empty() {
                quoted_tail.push('\n');
            }
            quoted_tail.push_str(&text);
        }
        // Outlook's quote lines are not `>`-prefixed even in plain text.
        segs.push(Segment {
            quoted: true,
            text: if prefixed {
                prefix(&quoted_tail)
            } else {
                quoted_tail
            },
        });
    }

    let last_own = segs.iter().rposition(|s| !s.quoted);
    let mut out: Vec<String> = Vec::with_capacity(segs.len() + 1);
    let mut removed = false;
    for (i, s) in segs.into_iter().enumerate() {
        let trailing = last_own.is_none_or(|l| i > l);
        if !s.quoted {
            out.push(s.text);
        } else if trailing && !is_forward(&s.text) {
            removed = true;
        } else if prefixed {
            out.push(trim_empty_quote_lines(&s.text));
        } else {
            out.push(prefix(&s.text));
        }
    }
    if removed {
        // An attribution line just before the removed quote goes with it.
        if let Some(last) = out.last_mut() {
            let cut = attribution_start(last);
            if let Some(cut) = cut {
                last.truncate(cut);
                let trimmed = last.trim_end().len();
                last.truncate(trimmed);
                if last.is_empty() {
                    out.pop();
                }
            }
        }
        out.push(QUOTE_REMOVED.to_owned());
    }
    out.join("\n\n")
}

/// Trim line ends, collapse runs of blank lines to one, trim the ends.
fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0usize;
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        out.push_str(line);
    }
    out
}

/// Drop leading and trailing lines holding only `>` markers.
fn trim_empty_quote_lines(text: &str) -> String {
    let empty = |l: &&str| l.trim().chars().all(|c| c == '>' || c.is_whitespace());
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| !empty(l)).unwrap_or(lines.len());
    let end = lines
        .iter()
        .rposition(|l| !empty(l))
        .map_or(start, |e| e + 1);
    lines.get(start..end).unwrap_or_default().join("\n")
}

fn prefix(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.is_empty() {
                ">".to_owned()
            } else {
                format!("> {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_forward(quoted: &str) -> bool {
    let head: String = quoted
        .lines()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    [
        "forwarded message",
        "begin forwarded message",
        "weitergeleitete nachricht",
        "message transféré",
    ]
    .iter()
    .any(|m| head.contains(m))
}

/// Byte offset where an attribution ("On Mon, 2 Mar 2026, Alice wrote:")
/// ending `text` starts: its whole last paragraph when that is a short
/// attribution (clients wrap it over two or three lines), else its last line.
fn attribution_start(text: &str) -> Option<usize> {
    let trimmed = text.trim_end();
    let para_start = trimmed.rfind("\n\n").map_or(0, |i| i + 2);
    let para = trimmed.get(para_start..)?;
    if para.lines().count() <= 3 && is_attribution(&para.replace('\n', " ")) {
        return Some(para_start);
    }
    let line_start = trimmed.rfind('\n').map_or(0, |i| i + 1);
    is_attribution(trimmed.get(line_start..)?).then_some(line_start)
}

fn is_attribution(line: &str) -> bool {
    let l = line.trim().trim_matches('*').trim().to_lowercase();
    if l.len() > 400 {
        return false;
    }
    [
        "wrote:",
        "writes:",
        "a écrit :",
        "a écrit:",
        "schrieb:",
        "escribió:",
        "ha scritto:",
        "scrisse:",
        "schreef:",
        "skrev:",
        "escreveu:",
        "napisał:",
        "kirjoitti:",
        "написал:",
        "написала:",
    ]
    .iter()
    .any(|end| l.ends_with(end))
}

/// Byte offset of an Outlook-style header block of a quoted message:
/// `From:` followed within a few lines by `Sent:`/`Date:` and
/// `To:`/`Subject:` (or their German and French forms), or a lone
/// `-----Original Message-----`. A forwarded block is not a quote.
fn outlook_block_start(text: &str) -> Option<usize> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .scan(0usize, |off, l| {
            let start = *off;
            *off += l.len() + 1;
            Some((start, l))
        })
        .collect();
    let key = |l: &str| -> String {
        l.trim()
            .trim_start_matches(['*', '_', '>', ' '])
            .replace('*', "")
            .to_lowercase()
    };
    for (i, (off, line)) in lines.iter().enumerate() {
        let k = key(line);
        if k.starts_with("-----original message-----")
            || k.starts_with("----- original message -----")
        {
            return Some(*off);
        }
        let is_from = ["from:", "von:", "de :", "de:"]
            .iter()
            .any(|p| k.starts_with(p));
        if !is_from {
            continue;
        }
        let window: Vec<String> = lines
            .iter()
            .skip(i + 1)
            .take(6)
            .map(|(_, l)| key(l))
            .collect();
        let has_date = window.iter().any(|w| {
            [
                "sent:",
                "date:",
                "gesendet:",
                "datum:",
                "envoyé :",
                "envoyé:",
                "date :",
            ]
            .iter()
            .any(|p| w.starts_with(p))
        });
        let has_to = window.iter().any(|w| {
            [
                "to:", "subject:", "an:", "betreff:", "à :", "objet :", "à:", "objet:",
            ]
            .iter()
            .any(|p| w.starts_with(p))
        });
        if !(has_date && has_to) {
            continue;
        }
        let forward_subject = window.iter().any(|w| {
            ["subject:", "betreff:", "objet :", "objet:"]
                .iter()
                .any(|p| {
                    w.strip_prefix(p).is_some_and(|s| {
                        let s = s.trim_start();
                        s.starts_with("fw:")
                            || s.starts_with("fwd:")
                            || s.starts_with("wg:")
                            || s.starts_with("tr:")
                    })
                })
        });
        // The line before: a separator belongs to the block; a forward
        // banner means this is not a quote.
        let prev = i.checked_sub(1).and_then(|p| {
            lines
                .iter()
                .take(p + 1)
                .rev()
                .find(|(_, l)| !l.trim().is_empty())
        });
        if let Some((_, p)) = prev {
            let pk = p.trim().to_lowercase();
            if pk.contains("forwarded message") || pk.contains("weitergeleitete nachricht") {
                continue;
            }
        }
        if forward_subject {
            continue;
        }
        if let Some((poff, p)) = prev {
            let pt = p.trim();
            if (pt.len() >= 10 && pt.chars().all(|c| c == '_')) || pt.eq_ignore_ascii_case("---") {
                return Some(*poff);
            }
        }
        return Some(*off);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_plain_quote_is_removed_with_its_attribution() {
        let t = "Yes, ship it.\n\nOn Mon, 2 Mar 2026 at 10:15, Alice <alice@example.com> wrote:\n> Shall we ship?\n>\n> Alice\n";
        assert_eq!(strip_plain(t), "Yes, ship it.\n\n[quoted text removed]");
        let wrapped = "Yes.\n\nOn Mon, 2 Mar 2026 at 10:15 AM Alice Example <\nalice@example.com> wrote:\n\n> q\n";
        assert_eq!(strip_plain(wrapped), "Yes.\n\n[quoted text removed]");
    }

    #[test]
    fn inline_plain_reply_keeps_the_questions() {
        let t = "See below.\n\n> First?\nYes.\n\n> Second?\nNo.\n\n> bye\n";
        assert_eq!(
            strip_plain(t),
            "See below.\n\n> First?\n\nYes.\n\n> Second?\n\nNo.\n\n[quoted text removed]"
        );
    }

    #[test]
    fn outlook_plain_header_block() {
        let t = "Done.\n\n________________________________\nFrom: Alice <alice@example.com>\nSent: Monday, March 2, 2026 10:15 AM\nTo: airut <airut@example.com>\nSubject: RE: job\n\nold text\n";
        assert_eq!(strip_plain(t), "Done.\n\n[quoted text removed]");
        let fwd = "FYI\n\n________________________________\nFrom: Alice\nSent: Monday\nTo: Bob\nSubject: FW: job\n\nold text\n";
        assert!(strip_plain(fwd).contains("old text"));
    }

    #[test]
    fn unprefixed_quote_after_attribution() {
        let t = " CSV is enough.\n\n    On Monday, March 2, 2026, airut <a@example.net> wrote:  \n \n Should it be CSV?\n";
        assert_eq!(
            strip_plain(t).trim(),
            "CSV is enough.\n\n[quoted text removed]"
        );
    }

    #[test]
    fn only_quote_or_no_quote() {
        assert_eq!(strip_plain("> all quoted\n"), QUOTE_REMOVED);
        assert_eq!(strip_plain("just text\n\nmore"), "just text\n\nmore");
        assert_eq!(strip_plain(""), "");
    }
}
