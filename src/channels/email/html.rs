//! HTML mail bodies to markdown-ish text, with quoted history recognised.
//!
//! Owns a small forgiving tokenizer and a renderer that keeps a stack of
//! open elements, so that the quote containers mail clients write (Gmail
//! `gmail_quote`, Outlook `divRplyFwdMsg` and
//! `mail-editor-reference-message-container`, Yahoo `yahoo_quoted`,
//! Thunderbird `moz-cite-prefix`, `<blockquote type="cite">`) are known
//! while their text is written. The output is a list of segments, quoted or
//! not; [`super::quotes`] decides what to keep. Never builds a tree, never
//! recurses, caps the element stack: the input is hostile.
//! Called by [`super::parse`].

#![deny(clippy::indexing_slicing)]

use super::quotes::Segment;

/// Elements deeper than this are rendered but not tracked.
const MAX_DEPTH: usize = 256;

/// Render `html` into segments (quoted or not), in document order.
pub(crate) fn render(html: &str) -> Vec<Segment> {
    let mut r = Renderer::default();
    let mut rest = html;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            r.text(rest);
            break;
        };
        let (text, tail) = rest.split_at(lt);
        if !text.is_empty() {
            r.text(text);
        }
        rest = r.markup(tail);
    }
    r.finish()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Other,
    Block,
    Paragraph,
    Heading(u8),
    List { ordered: bool },
    Item,
    Pre,
    Code,
    Bold,
    Italic,
    Link,
    Table,
    Row,
    Cell { header: bool },
    Skip,
}

struct Open {
    name: String,
    kind: Kind,
    quote: bool,
    /// Where this element's output starts (segment index, byte offset).
    mark: (usize, usize),
    href: Option<String>,
}

#[derive(Default)]
struct TableState {
    rows: Vec<Vec<String>>,
    row: Vec<String>,
    has_header: bool,
}

#[derive(Default)]
struct Renderer {
    segments: Vec<Segment>,
    cur: Segment,
    stack: Vec<Open>,
    /// Open quote containers on the stack.
    quote_depth: usize,
    /// Past an "everything below is quoted" marker.
    boundary: bool,
    pre: usize,
    skip: usize,
    pending_space: bool,
    lists: Vec<(bool, u32)>,
    tables: Vec<TableState>,
    /// Untracked elements (beyond MAX_DEPTH), counted so their end tags
    /// do not close tracked ones.
    overflow: usize,
}

// === impl Renderer ===

impl Renderer {
    fn quoted(&self) -> bool {
        self.quote_depth > 0 || self.boundary
    }

    /// The segment being written, started afresh when the quote state
    /// changes. Finished segments are in `segments`; the current one has
    /// index `segments.len()`.
    fn seg(&mut self) -> &mut String {
        let quoted = self.quoted();
        if self.cur.quoted != quoted {
            let next = Segment {
                quoted,
                text: String::new(),
            };
            let done = std::mem::replace(&mut self.cur, next);
            if !done.text.is_empty() {
                self.segments.push(done);
            }
            self.pending_space = false;
        }
        &mut self.cur.text
    }

    fn mark(&mut self) -> (usize, usize) {
        let len = self.seg().len();
        (self.segments.len(), len)
    }

    /// Take the text written since `mark`, if still in the same segment.
    fn take_since(&mut self, mark: (usize, usize)) -> Option<String> {
        if mark.0 != self.segments.len() {
            return None;
        }
        let text = &mut self.cur.text;
        if mark.1 > text.len() || !text.is_char_boundary(mark.1) {
            return None;
        }
        Some(text.split_off(mark.1))
    }

    fn text(&mut self, raw: &str) {
        if self.skip > 0 {
            return;
        }
        let decoded = decode_entities(raw);
        if self.pre > 0 {
            self.seg().push_str(&decoded);
            return;
        }
        for c in decoded.chars() {
            if c.is_whitespace() {
                self.pending_space = true;
                continue;
            }
            let pending = std::mem::take(&mut self.pending_space);
            let s = self.seg();
            if pending && !s.is_empty() && !s.ends_with([' ', '\n']) {
                s.push(' ');
            }
            s.push(c);
        }
    }

    /// Write a space the text before asked for (before an inline element).
    fn flush_space(&mut self) {
        if self.skip > 0 || !std::mem::take(&mut self.pending_space) {
            return;
        }
        let s = self.seg();
        if !s.is_empty() && !s.ends_with([' ', '\n']) {
            s.push(' ');
        }
    }

    fn raw(&mut self, s: &str) {
        if self.skip > 0 {
            return;
        }
        self.pending_space = false;
        self.seg().push_str(s);
    }

    /// End the current line and make sure `n` newlines end the output.
    fn block(&mut self, n: usize) {
        if self.skip > 0 {
            return;
        }
        self.pending_space = false;
        let s = self.seg();
        let trimmed = s.trim_end_matches(' ').len();
        s.truncate(trimmed);
        if s.is_empty() {
            return;
        }
        let have = s.len() - s.trim_end_matches('\n').len();
        for _ in have..n {
            s.push('\n');
        }
    }

    /// Handle markup at the start of `input` (which begins with `<`);
    /// return what follows it.
    fn markup<'a>(&mut self, input: &'a str) -> &'a str {
        let after = input.get(1..).unwrap_or_default();
        if let Some(body) = after.strip_prefix("!--") {
            return body
                .find("-->")
                .map_or("", |i| body.get(i + 3..).unwrap_or_default());
        }
        if after.starts_with('!') || after.starts_with('?') {
            return after
                .find('>')
                .map_or("", |i| after.get(i + 1..).unwrap_or_default());
        }
        let (closing, body) = match after.strip_prefix('/') {
            Some(b) => (true, b),
            None => (false, after),
        };
        if !body.starts_with(|c: char| c.is_ascii_alphabetic()) {
            self.text("<");
            return after;
        }
        let name_len = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == ':'))
            .unwrap_or(body.len());
        let (name, attrs_and_rest) = body.split_at(name_len);
        let end = tag_end(attrs_and_rest);
        let attrs = attrs_and_rest.get(..end).unwrap_or_default();
        let rest = attrs_and_rest.get(end + 1..).unwrap_or_default();
        let name = name.to_ascii_lowercase();
        if closing {
            self.end_tag(&name);
            return rest;
        }
        let self_closing = attrs.trim_end().ends_with('/');
        self.start_tag(&name, attrs, self_closing);
        if matches!(
            name.as_str(),
            "script" | "style" | "title" | "textarea" | "xml"
        ) && !self_closing
        {
            // Raw text: skip to the matching end tag.
            return skip_raw_text(rest, &name);
        }
        rest
    }

    fn start_tag(&mut self, name: &str, attrs: &str, self_closing: bool) {
        let attrs = Attrs::parse(attrs);
        match name {
            "br" => {
                self.raw("\n");
                return;
            }
            "hr" => {
                self.block(2);
                self.raw("---");
                self.block(2);
                return;
            }
            "img" | "meta" | "link" | "input" | "col" | "area" | "base" | "wbr" | "source"
            | "embed" | "param" | "track" => return,
            "script" | "style" | "title" | "textarea" | "xml" => return,
            _ => {}
        }
        let id = attrs.get("id").unwrap_or_default();
        let class = attrs.get("class").unwrap_or_default();
        if id.eq_ignore_ascii_case("divRplyFwdMsg") {
            self.block(2);
            // The rule Outlook draws above the header belongs to the quote.
            if !self.quoted() {
                let s = self.seg();
                let kept = s.trim_end().strip_suffix("---").map(|t| t.trim_end().len());
                if let Some(len) = kept {
                    s.truncate(len);
                }
            }
            self.boundary = true;
        }
        let quote = id.eq_ignore_ascii_case("mail-editor-reference-message-container")
            || class.split_ascii_whitespace().any(|c| {
                [
                    "gmail_quote",
                    "yahoo_quoted",
                    "moz-cite-prefix",
                    "gmail_attr",
                ]
                .iter()
                .any(|q| c.eq_ignore_ascii_case(q))
            }) && !(name == "div" && class_is_gmail_wrapper(class))
            || (name == "blockquote"
                && attrs
                    .get("type")
                    .is_some_and(|t| t.eq_ignore_ascii_case("cite")));

        let kind = match name {
            "p" => Kind::Paragraph,
            "div" | "section" | "article" | "header" | "footer" | "blockquote" | "center"
            | "address" | "dl" | "dt" | "dd" | "figure" | "main" | "nav" | "aside" => Kind::Block,
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                Kind::Heading(name.as_bytes().get(1).map_or(1, |b| b.saturating_sub(b'0')))
            }
            "ul" | "menu" => Kind::List { ordered: false },
            "ol" => Kind::List { ordered: true },
            "li" => Kind::Item,
            "pre" => Kind::Pre,
            "code" | "tt" | "kbd" | "samp" => Kind::Code,
            "b" | "strong" => Kind::Bold,
            "i" | "em" => Kind::Italic,
            "a" => Kind::Link,
            "table" => Kind::Table,
            "tr" => Kind::Row,
            "td" => Kind::Cell { header: false },
            "th" => Kind::Cell { header: true },
            "head" | "template" | "noscript" | "object" | "svg" | "math" => Kind::Skip,
            _ => Kind::Other,
        };
        if self_closing && kind != Kind::Block && kind != Kind::Paragraph {
            return;
        }
        if self.stack.len() >= MAX_DEPTH {
            self.overflow = self.overflow.saturating_add(1);
            return;
        }
        if quote {
            self.quote_depth += 1;
        }
        // Open the element's output (after the quote state changed, so the
        // block break lands in the right segment).
        match kind {
            Kind::Paragraph | Kind::Heading(_) => self.block(2),
            Kind::List { .. } if self.lists.is_empty() => self.block(2),
            Kind::Block | Kind::List { .. } | Kind::Table | Kind::Row => self.block(1),
            Kind::Pre => {
                self.block(2);
                self.raw("```\n");
                self.pre += 1;
            }
            Kind::Skip => self.skip += 1,
            _ => {}
        }
        if matches!(kind, Kind::Code | Kind::Bold | Kind::Italic | Kind::Link) {
            self.flush_space();
        }
        match kind {
            Kind::Heading(level) => {
                let hashes = "#".repeat(usize::from(level.clamp(1, 6)));
                self.raw(&format!("{hashes} "));
            }
            Kind::List { ordered } => self.lists.push((ordered, 0)),
            Kind::Item => {
                self.block(1);
                let depth = self.lists.len().saturating_sub(1);
                let marker = match self.lists.last_mut() {
                    Some((true, n)) => {
                        *n = n.saturating_add(1);
                        format!("{n}. ")
                    }
                    _ => "- ".to_owned(),
                };
                self.raw(&format!("{}{marker}", "  ".repeat(depth.min(8))));
            }
            Kind::Code if self.pre == 0 => self.raw("`"),
            Kind::Bold => self.raw("**"),
            Kind::Italic => self.raw("*"),
            Kind::Table => self.tables.push(TableState::default()),
            Kind::Cell { header } => {
                if let Some(t) = self.tables.last_mut() {
                    t.has_header |= header;
                }
            }
            _ => {}
        }
        let mark = self.mark();
        let href = if kind == Kind::Link {
            attrs.get("href").map(decode_entities)
        } else {
            None
        };
        self.stack.push(Open {
            name: name.to_owned(),
            kind,
            quote,
            mark,
            href,
        });
    }

    fn end_tag(&mut self, name: &str) {
        let Some(pos) = self.stack.iter().rposition(|o| o.name == name) else {
            return;
        };
        if self.overflow > 0 {
            self.overflow -= 1;
            return;
        }
        while self.stack.len() > pos {
            let Some(open) = self.stack.pop() else { break };
            self.close(open);
        }
    }

    fn close(&mut self, open: Open) {
        match open.kind {
            Kind::Paragraph | Kind::Heading(_) => self.block(2),
            Kind::Block | Kind::Item => self.block(1),
            Kind::List { .. } => {
                self.lists.pop();
                self.block(if self.lists.is_empty() { 2 } else { 1 });
            }
            Kind::Pre => {
                self.pre = self.pre.saturating_sub(1);
                self.block(1);
                self.raw("```");
                self.block(2);
            }
            Kind::Code if self.pre == 0 => self.wrap_inline(open.mark, "`"),
            Kind::Bold => self.wrap_inline(open.mark, "**"),
            Kind::Italic => self.wrap_inline(open.mark, "*"),
            Kind::Link => {
                if let Some(href) = open.href.filter(|h| is_shown_link(h))
                    && let Some(text) = self.take_since(open.mark)
                {
                    let label = text.trim();
                    let bare = href.strip_prefix("mailto:").unwrap_or(&href);
                    if label.is_empty() || label == href || label == bare {
                        self.raw(if label.is_empty() { bare } else { label });
                    } else {
                        self.raw(&format!("[{label}]({href})"));
                    }
                }
            }
            Kind::Cell { .. } => {
                let text = self.take_since(open.mark).unwrap_or_default();
                let cell = text
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .replace('|', "\\|");
                if let Some(t) = self.tables.last_mut() {
                    t.row.push(cell);
                }
            }
            Kind::Row => {
                if let Some(t) = self.tables.last_mut() {
                    let row = std::mem::take(&mut t.row);
                    if !row.is_empty() {
                        t.rows.push(row);
                    }
                }
            }
            Kind::Table => {
                if let Some(mut t) = self.tables.pop() {
                    if !t.row.is_empty() {
                        let row = std::mem::take(&mut t.row);
                        t.rows.push(row);
                    }
                    self.emit_table(t);
                }
            }
            Kind::Skip => self.skip = self.skip.saturating_sub(1),
            _ => {}
        }
        if open.quote {
            self.block(1);
            self.quote_depth = self.quote_depth.saturating_sub(1);
        }
    }

    /// Close an inline marker opened at `mark` (the marker is just before
    /// it); an empty span drops the marker instead.
    fn wrap_inline(&mut self, mark: (usize, usize), marker: &str) {
        if self.skip > 0 {
            return;
        }
        let same = self.segments.len() == mark.0;
        let s = self.seg();
        if same && s.len() == mark.1 {
            let cut = mark.1.saturating_sub(marker.len());
            if s.is_char_boundary(cut) && s.get(cut..).is_some_and(|t| t == marker) {
                s.truncate(cut);
                return;
            }
        }
        let trimmed = s.trim_end_matches(' ').len();
        s.truncate(trimmed);
        s.push_str(marker);
    }

    fn emit_table(&mut self, t: TableState) {
        let cols = t.rows.iter().map(Vec::len).max().unwrap_or(0);
        self.block(1);
        if cols <= 1 {
            // A layout table: one cell per row reads as paragraphs.
            for row in t.rows {
                for cell in row.into_iter().filter(|c| !c.is_empty()) {
                    self.raw(&cell);
                    self.block(1);
                }
            }
            return;
        }
        self.block(2);
        let mut out = String::new();
        for (i, row) in t.rows.iter().enumerate() {
            out.push('|');
            for c in 0..cols {
                out.push(' ');
                out.push_str(row.get(c).map_or("", String::as_str));
                out.push_str(" |");
            }
            out.push('\n');
            if i == 0 && t.has_header {
                out.push('|');
                for _ in 0..cols {
                    out.push_str(" --- |");
                }
                out.push('\n');
            }
        }
        self.raw(&out);
        self.block(2);
    }

    fn finish(mut self) -> Vec<Segment> {
        while let Some(open) = self.stack.pop() {
            self.close(open);
        }
        if !self.cur.text.is_empty() {
            self.segments.push(self.cur);
        }
        self.segments
    }
}

/// `class="gmail_quote"` on a wrapper div (newer Gmail also adds
/// `gmail_quote_container`): the wrapper holds the attribution and the
/// blockquote, but also the sender's own text in an inline reply, so only
/// the blockquote and `gmail_attr` inside it count as quoted.
fn class_is_gmail_wrapper(class: &str) -> bool {
    class.split_ascii_whitespace().any(|c| {
        c.eq_ignore_ascii_case("gmail_quote") || c.eq_ignore_ascii_case("gmail_quote_container")
    }) && !class
        .split_ascii_whitespace()
        .any(|c| c.eq_ignore_ascii_case("gmail_attr"))
}

fn is_shown_link(href: &str) -> bool {
    let lower = href.trim().to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("mailto:")
}

/// Index of the `>` closing a tag, honouring quoted attribute values.
fn tag_end(s: &str) -> usize {
    let mut quote: Option<u8> = None;
    for (i, b) in s.bytes().enumerate() {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), b) if b == q => quote = None,
            (None, b'>') => return i,
            _ => {}
        }
    }
    s.len()
}

fn skip_raw_text<'a>(rest: &'a str, name: &str) -> &'a str {
    let needle = format!("</{name}");
    let bytes = rest.as_bytes();
    let n = needle.len();
    let mut i = 0;
    while let Some(off) = rest.get(i..).and_then(|r| r.find('<')) {
        let at = i + off;
        if bytes
            .get(at..at + n)
            .is_some_and(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
        {
            let tail = rest.get(at..).unwrap_or_default();
            return tail
                .find('>')
                .map_or("", |j| tail.get(j + 1..).unwrap_or_default());
        }
        i = at + 1;
    }
    ""
}

/// Attributes of one tag, parsed leniently.
struct Attrs<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Attrs<'a> {
    fn parse(mut s: &'a str) -> Self {
        let mut pairs = Vec::new();
        while pairs.len() < 64 {
            s = s.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '/');
            if s.is_empty() {
                break;
            }
            let name_end = s
                .find(|c: char| c.is_ascii_whitespace() || c == '=' || c == '/')
                .unwrap_or(s.len());
            let (name, rest) = s.split_at(name_end.max(1).min(s.len()));
            let rest = rest.trim_start();
            if let Some(v) = rest.strip_prefix('=') {
                let v = v.trim_start();
                let (value, after) = match v.chars().next() {
                    Some(q @ ('"' | '\'')) => {
                        let inner = v.get(1..).unwrap_or_default();
                        match inner.find(q) {
                            Some(e) => (
                                inner.get(..e).unwrap_or_default(),
                                inner.get(e + 1..).unwrap_or_default(),
                            ),
                            None => (inner, ""),
                        }
                    }
                    _ => {
                        let e = v.find(|c: char| c.is_ascii_whitespace()).unwrap_or(v.len());
                        v.split_at(e)
                    }
                };
                pairs.push((name, value));
                s = after;
            } else {
                pairs.push((name, ""));
                s = rest;
            }
        }
        Attrs { pairs }
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// Decode HTML character references (`&amp;`, `&#233;`, `&#x1F600;`).
pub(crate) fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        let (before, tail) = rest.split_at(amp);
        out.push_str(before);
        let body = tail.get(1..).unwrap_or_default();
        let end = body
            .char_indices()
            .take(12)
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '#'))
            .map_or(body.len().min(12), |(i, _)| i);
        let name = body.get(..end).unwrap_or_default();
        let has_semi = body.get(end..).is_some_and(|t| t.starts_with(';'));
        let decoded = if let Some(num) = name.strip_prefix('#') {
            let n = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => num.parse::<u32>().ok(),
            };
            n.map(|n| match char::from_u32(n) {
                Some(c) if n != 0 => c,
                _ => '\u{FFFD}',
            })
        } else {
            named_entity(name)
                .filter(|_| has_semi || matches!(name, "nbsp" | "amp" | "lt" | "gt" | "quot"))
        };
        match decoded {
            Some(c) => {
                out.push(c);
                let skip = 1 + end + usize::from(has_semi);
                rest = tail.get(skip..).unwrap_or_default();
            }
            None => {
                out.push('&');
                rest = body;
            }
        }
    }
    out.push_str(rest);
    out
}

fn named_entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "ensp" | "emsp" | "thinsp" => ' ',
        "zwnj" | "zwj" | "shy" | "lrm" | "rlm" => '\u{200b}',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "hellip" => '…',
        "mdash" => '—',
        "ndash" => '–',
        "lsquo" => '‘',
        "rsquo" => '’',
        "sbquo" => '‚',
        "ldquo" => '“',
        "rdquo" => '”',
        "bdquo" => '„',
        "laquo" => '«',
        "raquo" => '»',
        "bull" => '•',
        "middot" => '·',
        "euro" => '€',
        "pound" => '£',
        "yen" => '¥',
        "cent" => '¢',
        "sect" => '§',
        "para" => '¶',
        "deg" => '°',
        "plusmn" => '±',
        "times" => '×',
        "divide" => '÷',
        "frac12" => '½',
        "frac14" => '¼',
        "frac34" => '¾',
        "larr" => '←',
        "rarr" => '→',
        "uarr" => '↑',
        "darr" => '↓',
        "auml" => 'ä',
        "ouml" => 'ö',
        "uuml" => 'ü',
        "Auml" => 'Ä',
        "Ouml" => 'Ö',
        "Uuml" => 'Ü',
        "szlig" => 'ß',
        "eacute" => 'é',
        "egrave" => 'è',
        "Eacute" => 'É',
        "aacute" => 'á',
        "agrave" => 'à',
        "ccedil" => 'ç',
        "ntilde" => 'ñ',
        "oacute" => 'ó',
        "iacute" => 'í',
        "uacute" => 'ú',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(html: &str) -> String {
        super::super::quotes::join_html(render(html))
    }

    #[test]
    fn inline_markup_becomes_markdown() {
        assert_eq!(
            md(
                "<p>Hello <b>bold</b> and <i>it</i>, <code>x()</code></p><p>A <a href=\"https://e.example/x\">link</a></p>"
            ),
            "Hello **bold** and *it*, `x()`\n\nA [link](https://e.example/x)"
        );
        assert_eq!(md("<b></b>x"), "x");
        assert_eq!(md("<a href=\"javascript:alert(1)\">t</a>"), "t");
    }

    #[test]
    fn lists_headings_pre_and_tables() {
        assert_eq!(
            md("<h2>T</h2><ul><li>a</li><li>b</li></ul><ol><li>x</li><li>y</li></ol>"),
            "## T\n\n- a\n- b\n\n1. x\n2. y"
        );
        assert_eq!(md("<pre>a  b\n c</pre>"), "```\na  b\n c\n```");
        assert_eq!(
            md("<table><tr><th>k</th><th>v</th></tr><tr><td>a|b</td><td>1</td></tr></table>"),
            "| k | v |\n| --- | --- |\n| a\\|b | 1 |"
        );
        assert_eq!(
            md("<table><tr><td>only</td></tr><tr><td>cells</td></tr></table>"),
            "only\ncells"
        );
    }

    #[test]
    fn entities_scripts_and_comments() {
        assert_eq!(
            md(
                "<style>p{}</style><script>x<y</script><!-- c -->A&amp;B &lt;3 &#233;&#x263A; &bogus; &nbsp;x"
            ),
            "A&B <3 é☺ &bogus; x"
        );
    }

    #[test]
    fn hostile_markup_does_not_panic() {
        for s in [
            "<",
            "<a",
            "</",
            "<!--",
            "<a href='",
            "&#",
            "&#x110000;",
            "<<<>>>",
            "<b><i></b></i>",
            "&",
            "é<é",
        ] {
            let _ = md(s);
        }
        let deep = "<div>".repeat(10_000) + "x" + &"</div>".repeat(10_000);
        assert_eq!(md(&deep), "x");
    }
}
