//! The agent's markdown as the HTML part of a reply.
//!
//! Owns rendering (pulldown-cmark: paragraphs, emphasis, code, lists,
//! block quotes, headings, tables, strikethrough, task lists) and making
//! the result safe to show in a mail client: raw HTML in the markdown is
//! shown as text, never passed through; links keep only `http`, `https`
//! and `mailto` targets (others become plain text); images become links
//! (mail clients block remote images, and a tracking pixel must not be
//! sent in airut's name). Tables and quotes get inline styles, since many
//! clients drop `<style>`. Pure; called by [`super::sink`].

use pulldown_cmark::{Event, LinkType, Options, Parser, Tag, TagEnd, html};

const TABLE_STYLE: &str = "border:1px solid #ccc;border-collapse:collapse;";
const CELL_STYLE: &str = "border:1px solid #ccc;padding:4px 8px;";
const QUOTE_STYLE: &str =
    "margin:0 0 0 0.8em;border-left:2px solid #ccc;padding:0 0 0 0.6em;color:#666;";
const PRE_STYLE: &str = "background:#f6f8fa;padding:8px;overflow:auto;";

/// Renders `markdown` as a complete, sanitized HTML document.
pub fn to_html(markdown: &str) -> String {
    let mut body = String::with_capacity(markdown.len() * 3 / 2 + 64);
    html::push_html(&mut body, sanitize(markdown).into_iter());
    let body = style(&body);
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>\
         <body style=\"font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;font-size:14px;line-height:1.4;\">\n\
         {body}</body></html>\n"
    )
}

/// Parses and rewrites the events that could carry active content.
fn sanitize(markdown: &str) -> Vec<Event<'_>> {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES;
    let mut out = Vec::new();
    // For each open link or image: whether its start was kept.
    let mut links: Vec<bool> = Vec::new();
    for event in Parser::new_ext(markdown, options) {
        match event {
            Event::Html(h) | Event::InlineHtml(h) => out.push(Event::Text(h)),
            Event::Start(Tag::Link {
                link_type,
                dest_url,
                title,
                id,
            }) => {
                if safe_url(&dest_url) {
                    links.push(true);
                    out.push(Event::Start(Tag::Link {
                        link_type,
                        dest_url,
                        title,
                        id,
                    }));
                } else {
                    links.push(false);
                }
            }
            Event::Start(Tag::Image {
                dest_url,
                title,
                id,
                ..
            }) => {
                if safe_url(&dest_url) {
                    links.push(true);
                    out.push(Event::Start(Tag::Link {
                        link_type: LinkType::Inline,
                        dest_url,
                        title,
                        id,
                    }));
                } else {
                    links.push(false);
                }
            }
            Event::End(TagEnd::Link) | Event::End(TagEnd::Image) => {
                if links.pop().unwrap_or(false) {
                    out.push(Event::End(TagEnd::Link));
                }
            }
            Event::InlineMath(m) | Event::DisplayMath(m) => out.push(Event::Code(m)),
            other => out.push(other),
        }
    }
    out
}

/// `http:`, `https:`, `mailto:`, or a relative/fragment link without a scheme.
fn safe_url(url: &str) -> bool {
    let lower: String = url
        .trim()
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .take(16)
        .collect::<String>()
        .to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("mailto:")
    {
        return true;
    }
    // No scheme at all (`#section`, `docs/x.md`): harmless text links.
    match lower.find(':') {
        None => true,
        Some(colon) => lower
            .find(['/', '?', '#'])
            .is_some_and(|first_sep| first_sep < colon),
    }
}

/// Adds inline styles to the tags mail clients render badly unstyled.
fn style(html: &str) -> String {
    html.replace("<table>", &format!("<table style=\"{TABLE_STYLE}\">"))
        .replace("<th>", &format!("<th style=\"{CELL_STYLE}\">"))
        .replace("<td>", &format!("<td style=\"{CELL_STYLE}\">"))
        .replace(
            "<th style=\"text-align: ",
            &format!("<th style=\"{CELL_STYLE}text-align: "),
        )
        .replace(
            "<td style=\"text-align: ",
            &format!("<td style=\"{CELL_STYLE}text-align: "),
        )
        .replace(
            "<blockquote>",
            &format!("<blockquote style=\"{QUOTE_STYLE}\">"),
        )
        .replace("<pre>", &format!("<pre style=\"{PRE_STYLE}\">"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(md: &str) -> String {
        let html = to_html(md);
        let start = html
            .find("<body")
            .and_then(|i| html[i..].find('>').map(|j| i + j + 2));
        html[start.unwrap()..html.len() - "</body></html>\n".len()].to_owned()
    }

    #[test]
    fn tables_render_with_styles() {
        let html = body("| a | b |\n|---|--:|\n| 1 | `x|y` |\n");
        assert!(
            html.contains(&format!("<table style=\"{TABLE_STYLE}\">")),
            "{html}"
        );
        assert!(
            html.contains(&format!("<th style=\"{CELL_STYLE}\">a</th>")),
            "{html}"
        );
        assert!(html.contains("text-align: right"), "{html}");
        assert!(html.contains("<td style=\""), "{html}");
    }

    #[test]
    fn raw_html_is_text() {
        let html = body("hello <script>alert(1)</script>\n\n<div onclick=\"x()\">hi</div>\n");
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<div onclick"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn only_safe_links_survive() {
        let html = body(
            "[ok](https://example.com/a?b=1) [bad](javascript:alert(1)) [d](data:text/html,x) [m](mailto:a@b.c) [rel](docs/x.md)",
        );
        assert!(
            html.contains("<a href=\"https://example.com/a?b=1\">ok</a>"),
            "{html}"
        );
        assert!(!html.contains("javascript"), "{html}");
        assert!(!html.contains("data:"), "{html}");
        assert!(html.contains(">bad<") || html.contains(" bad "), "{html}");
        assert!(html.contains("href=\"mailto:a@b.c\""), "{html}");
        assert!(html.contains("href=\"docs/x.md\""), "{html}");
    }

    #[test]
    fn images_become_links() {
        let html = body("![chart](https://example.com/c.png) ![x](JaVaScRiPt:alert(1))");
        assert!(!html.contains("<img"), "{html}");
        assert!(
            html.contains("<a href=\"https://example.com/c.png\">chart</a>"),
            "{html}"
        );
        assert!(!html.to_ascii_lowercase().contains("javascript"), "{html}");
    }

    #[test]
    fn quotes_code_and_empty_input() {
        let html = body("> quoted\n\n```\nfn a() {}\n```\n");
        assert!(
            html.contains(&format!("<blockquote style=\"{QUOTE_STYLE}\">")),
            "{html}"
        );
        assert!(html.contains("<pre style="), "{html}");
        assert_eq!(body(""), "");
    }
}
