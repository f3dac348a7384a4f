//! Telegram MarkdownV2 out, CommonMark in.
//!
//! Outbound text is rendered as MarkdownV2 because it is the only Telegram format where a
//! stray character cannot silently change meaning: every reserved character outside an
//! entity must be escaped, and Telegram rejects the whole message otherwise. Inbound
//! formatting arrives as entities (UTF-16 ranges over plain text); it is turned back into
//! CommonMark so the other surfaces render it.

use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag, TagEnd};
use teloxide::types::{MessageEntity, MessageEntityKind, MessageEntityRef};

/// Characters MarkdownV2 reserves outside entities (the Bot API's list, plus `\`).
pub const RESERVED: &[char] =
    &['_', '*', '[', ']', '(', ')', '~', '`', '>', '#', '+', '-', '=', '|', '{', '}', '.', '!', '\\'];

/// Plain text as MarkdownV2: every reserved character escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    push_escaped(&mut out, text, RESERVED);
    out
}

/// Inside `code` and `pre` only the backtick and the backslash are special.
pub fn escape_code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push_escaped(&mut out, text, &['`', '\\']);
    out
}

/// Inside the `(...)` of an inline link only `)` and `\` are special.
pub fn escape_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    push_escaped(&mut out, url, &[')', '\\']);
    out
}

fn push_escaped(out: &mut String, text: &str, special: &[char]) {
    for c in text.chars() {
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Length as Telegram counts it (UTF-16 code units).
pub fn utf16_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// CommonMark (as agents and Matrix write it) → MarkdownV2 that Telegram accepts.
pub fn to_markdown_v2(markdown: &str) -> String {
    let options = Options::ENABLE_STRIKETHROUGH;
    let mut writer = Writer::default();
    for event in Parser::new_ext(markdown, options) {
        writer.event(event);
    }
    writer.finish()
}

/// A code block as MarkdownV2 (`contentType = code`).
pub fn code_block(code: &str, language: Option<&str>) -> String {
    let language = language.map(sanitize_language).unwrap_or_default();
    let body = escape_code(code.trim_end_matches('\n'));
    format!("```{language}\n{body}\n```")
}

/// Languages are a word after the fence; anything else would end up in the code.
fn sanitize_language(language: &str) -> String {
    language.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '#' | '_' | '-')).collect()
}

#[derive(Default)]
struct Writer {
    out: String,
    quote_depth: usize,
    /// Next number of each open list (`None`: bullets).
    lists: Vec<Option<u64>>,
    in_code_block: bool,
    /// The open links: the destination, or the text shown after a link Telegram
    /// cannot make.
    links: Vec<Result<String, String>>,
}

impl Writer {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(text) if self.in_code_block => self.raw(&escape_code(&text)),
            Event::Text(text) => self.raw(&escape(&text)),
            Event::Code(code) => {
                let code = escape_code(&code);
                self.raw(&format!("`{code}`"));
            }
            Event::Html(html) | Event::InlineHtml(html) => self.raw(&escape(&html)),
            Event::SoftBreak | Event::HardBreak => self.raw("\n"),
            Event::Rule => {
                self.block_gap();
                self.raw("———");
                self.end_block();
            }
            Event::TaskListMarker(done) => self.raw(if done { "☑ " } else { "☐ " }),
            Event::FootnoteReference(name) => self.raw(&escape(&format!("[{name}]"))),
            Event::InlineMath(math) | Event::DisplayMath(math) => self.raw(&escape(&math)),
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::Paragraph => self.block_gap(),
            Tag::Heading { level, .. } => {
                self.block_gap();
                // Telegram has no headings; bold (underlined for the top level) reads as one.
                self.marker(if level == HeadingLevel::H1 { "*__" } else { "*" });
            }
            Tag::BlockQuote(_) => {
                self.block_gap();
                self.quote_depth += 1;
            }
            Tag::CodeBlock(kind) => {
                self.block_gap();
                let language = match kind {
                    CodeBlockKind::Fenced(info) => sanitize_language(info.split_whitespace().next().unwrap_or("")),
                    CodeBlockKind::Indented => String::new(),
                };
                self.raw(&format!("```{language}\n"));
                self.in_code_block = true;
            }
            Tag::List(start) => {
                if self.lists.is_empty() {
                    self.block_gap();
                } else {
                    self.line_start();
                }
                self.lists.push(start);
            }
            Tag::Item => self.item(),
            Tag::Emphasis => self.marker("_"),
            Tag::Strong => self.marker("*"),
            Tag::Strikethrough => self.marker("~"),
            Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. } => {
                if is_linkable(&dest_url) {
                    self.marker("[");
                    self.links.push(Ok(dest_url.to_string()));
                } else {
                    // Telegram links only absolute URLs; keep the destination visible.
                    let suffix = if dest_url.is_empty() { String::new() } else { escape(&format!(" ({dest_url})")) };
                    self.links.push(Err(suffix));
                }
            }
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph => self.end_block(),
            TagEnd::Heading(level) => {
                self.marker(if level == HeadingLevel::H1 { "__*" } else { "*" });
                self.end_block();
            }
            TagEnd::BlockQuote(_) => {
                self.quote_depth = self.quote_depth.saturating_sub(1);
                self.end_block();
            }
            TagEnd::CodeBlock => {
                if !self.out.ends_with('\n') {
                    self.out.push('\n');
                }
                self.out.push_str("```");
                self.in_code_block = false;
                self.end_block();
            }
            TagEnd::List(_) => {
                self.lists.pop();
                if self.lists.is_empty() {
                    self.end_block();
                }
            }
            TagEnd::Item => self.line_start(),
            TagEnd::Emphasis => self.marker("_"),
            TagEnd::Strong => self.marker("*"),
            TagEnd::Strikethrough => self.marker("~"),
            TagEnd::Link | TagEnd::Image => match self.links.pop() {
                Some(Ok(dest)) => self.raw(&format!("]({})", escape_url(&dest))),
                Some(Err(suffix)) => self.raw(&suffix),
                None => {}
            },
            _ => {}
        }
    }

    fn item(&mut self) {
        self.line_start();
        let depth = self.lists.len().saturating_sub(1);
        self.raw(&"  ".repeat(depth));
        let bullet = match self.lists.last_mut() {
            Some(Some(n)) => {
                let text = format!("{n}\\. ");
                *n += 1;
                text
            }
            _ => "• ".to_string(),
        };
        self.raw(&bullet);
    }

    /// An entity marker; two italic/underline markers in a row would read as one
    /// underline marker, so Telegram's documented separator (a CR) goes between them.
    fn marker(&mut self, marker: &str) {
        if marker.starts_with('_') && self.out.ends_with('_') && !self.out.ends_with("\\_") {
            self.out.push('\r');
        }
        self.raw(marker);
    }

    /// Appends text, opening each new line inside a quote with `>`.
    fn raw(&mut self, text: &str) {
        for c in text.chars() {
            if self.quote_depth > 0 && (self.out.is_empty() || self.out.ends_with('\n')) && c != '\n' {
                self.out.push('>');
            }
            self.out.push(c);
        }
    }

    fn line_start(&mut self) {
        if !self.out.is_empty() && !self.out.ends_with('\n') {
            self.out.push('\n');
        }
    }

    /// Blocks are separated by one empty line (inside lists: none).
    fn block_gap(&mut self) {
        if self.out.is_empty() {
            return;
        }
        self.line_start();
        if self.lists.is_empty() && !self.out.ends_with("\n\n") && self.quote_depth == 0 {
            self.out.push('\n');
        }
    }

    fn end_block(&mut self) {
        self.line_start();
    }

    fn finish(self) -> String {
        self.out.trim_end_matches(['\n', ' ']).to_string()
    }
}

/// Telegram links only absolute URLs; a relative or empty destination is shown as text.
fn is_linkable(dest: &str) -> bool {
    url::Url::parse(dest).is_ok_and(|u| matches!(u.scheme(), "http" | "https" | "tg" | "mailto" | "ftp"))
}

/// A message's text with its entities (UTF-16 ranges) as CommonMark. `None` when no
/// entity formats anything (mentions, hashtags, bare URLs and commands are plain text).
pub fn entities_to_markdown(text: &str, entities: &[MessageEntity]) -> Option<String> {
    let refs = MessageEntityRef::parse(text, entities);
    let spans: Vec<Span> = refs.iter().filter_map(|e| Span::of(text, e)).collect();
    if spans.is_empty() {
        return None;
    }
    Some(render_spans(text, &spans))
}

/// One formatting entity over a byte range of the text.
struct Span {
    start: usize,
    end: usize,
    open: String,
    close: String,
    /// Code and pre: the text inside is copied, never escaped or nested into.
    verbatim: bool,
    quote: bool,
}

impl Span {
    fn of(text: &str, entity: &MessageEntityRef<'_>) -> Option<Span> {
        let (mut start, mut end) = (entity.start(), entity.end());
        let kind = entity.kind();
        let inline = matches!(
            kind,
            MessageEntityKind::Bold
                | MessageEntityKind::Italic
                | MessageEntityKind::Strikethrough
                | MessageEntityKind::TextLink { .. }
        );
        if inline {
            // CommonMark delimiters must touch the text they format.
            let inner = &text[start..end];
            start += inner.len() - inner.trim_start().len();
            end -= inner.len() - inner.trim_end().len();
            if start >= end {
                return None;
            }
        }
        let inner = &text[start..end];
        let (open, close, verbatim, quote) = match kind {
            MessageEntityKind::Bold => ("**".to_string(), "**".to_string(), false, false),
            MessageEntityKind::Italic => ("*".into(), "*".into(), false, false),
            MessageEntityKind::Strikethrough => ("~~".into(), "~~".into(), false, false),
            MessageEntityKind::TextLink { url } => {
                ("[".into(), format!("]({})", link_destination(url.as_str())), false, false)
            }
            MessageEntityKind::Code => {
                let fence = "`".repeat(longest_run(inner, '`') + 1);
                let pad = if inner.starts_with('`') || inner.ends_with('`') { " " } else { "" };
                (format!("{fence}{pad}"), format!("{pad}{fence}"), true, false)
            }
            MessageEntityKind::Pre { language } => {
                let fence = "`".repeat((longest_run(inner, '`') + 1).max(3));
                let lead = if start == 0 || text[..start].ends_with('\n') { "" } else { "\n" };
                let tail = if inner.ends_with('\n') { "" } else { "\n" };
                let language = language.as_deref().map(sanitize_language).unwrap_or_default();
                (format!("{lead}{fence}{language}\n"), format!("{tail}{fence}"), true, false)
            }
            MessageEntityKind::Blockquote | MessageEntityKind::ExpandableBlockquote => {
                (String::new(), String::new(), false, true)
            }
            // Underline, spoiler, mentions, commands, URLs…: no CommonMark form; plain text.
            _ => return None,
        };
        Some(Span { start, end, open, close, verbatim, quote })
    }
}

fn link_destination(url: &str) -> String {
    if url.contains(['(', ')', ' ', '<', '>']) { format!("<{}>", url.replace('>', "%3E")) } else { url.to_string() }
}

fn longest_run(text: &str, c: char) -> usize {
    let (mut best, mut run) = (0, 0);
    for ch in text.chars() {
        run = if ch == c { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

/// Interleaves the spans' markers with the (escaped) text between them.
fn render_spans(text: &str, spans: &[Span]) -> String {
    // (position, is_open, tie-break, span index): closes before opens at one position,
    // inner closes before outer ones, outer opens before inner ones.
    let mut marks: Vec<(usize, bool, i64, usize)> = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        marks.push((span.start, true, -(span.end as i64), i));
        marks.push((span.end, false, -(span.start as i64), i));
    }
    marks.sort_by_key(|&(pos, open, tie, i)| (pos, open, tie, if open { i as i64 } else { -(i as i64) }));
    let mut out = String::with_capacity(text.len() + 16);
    let (mut pos, mut verbatim, mut quotes) = (0usize, None::<usize>, 0usize);
    for (at, open, _, i) in marks {
        let span = &spans[i];
        if let Some(v) = verbatim
            && v != i
        {
            continue;
        }
        push_segment(&mut out, &text[pos..at], verbatim.is_some(), quotes > 0);
        pos = at;
        if span.quote {
            quotes = if open { quotes + 1 } else { quotes.saturating_sub(1) };
            if open && (out.is_empty() || out.ends_with('\n')) {
                out.push_str("> ");
            }
            continue;
        }
        out.push_str(if open { &span.open } else { &span.close });
        if span.verbatim {
            verbatim = if open { Some(i) } else { None };
        }
    }
    push_segment(&mut out, &text[pos..], false, quotes > 0);
    out
}

fn push_segment(out: &mut String, segment: &str, verbatim: bool, quoted: bool) {
    for c in segment.chars() {
        let line_start = out.is_empty() || out.ends_with('\n') || out.ends_with("> ");
        if !verbatim {
            let special = matches!(c, '\\' | '`' | '*' | '_' | '[' | ']' | '~' | '<')
                || (line_start && matches!(c, '#' | '>' | '-' | '+' | '='));
            if special {
                out.push('\\');
            }
        }
        out.push(c);
        if c == '\n' && quoted {
            out.push_str("> ");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Undoes MarkdownV2 escaping of plain text (what a Telegram user sees).
    fn unescape(text: &str) -> String {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            out.push(if c == '\\' { chars.next().unwrap() } else { c });
        }
        out
    }

    #[test]
    fn every_reserved_character_is_escaped() {
        let text = r"_*[]()~`>#+-=|{}.!\ plain";
        let escaped = escape(text);
        assert_eq!(escaped, r"\_\*\[\]\(\)\~\`\>\#\+\-\=\|\{\}\.\!\\ plain");
        assert_eq!(unescape(&escaped), text);
    }

    #[test]
    fn markdown_formatting_survives() {
        assert_eq!(to_markdown_v2("**bold** and _it_ and `x.y`"), r"*bold* and _it_ and `x.y`");
        assert_eq!(to_markdown_v2("see [the docs](https://e.org/a_(b))."), r"see [the docs](https://e.org/a_(b\))\.");
        assert_eq!(to_markdown_v2("```rust\nlet a = 1;\n```"), "```rust\nlet a = 1;\n```");
        assert_eq!(to_markdown_v2("~~gone~~"), "~gone~");
    }

    #[test]
    fn blocks_lists_and_quotes() {
        assert_eq!(to_markdown_v2("# Title\n\npara one.\n\n- a\n- b"), "*__Title__*\n\npara one\\.\n\n• a\n• b");
        assert_eq!(to_markdown_v2("1. one\n2. two"), "1\\. one\n2\\. two");
        assert_eq!(to_markdown_v2("> quoted\n> more"), ">quoted\n>more");
    }

    #[test]
    fn relative_links_stay_text() {
        assert_eq!(to_markdown_v2("[x](foo)"), r"x \(foo\)");
    }

    #[test]
    fn code_escapes_only_backtick_and_backslash() {
        assert_eq!(code_block("a `b` \\ *c*", Some("py")), "```py\na \\`b\\` \\\\ *c*\n```");
    }

    #[test]
    fn entities_become_commonmark() {
        let text = "hello bold world and code.";
        let entities = vec![MessageEntity::bold(6, 4), MessageEntity::code(21, 4)];
        assert_eq!(entities_to_markdown(text, &entities).unwrap(), "hello **bold** world and `code`.");
        let pre = vec![MessageEntity::pre(Some("rust".into()), 4, 6)];
        assert_eq!(entities_to_markdown("see fn x()", &pre).unwrap(), "see \n```rust\nfn x()\n```");
        let link = vec![MessageEntity::text_link("https://e.org/".parse().unwrap(), 0, 4)];
        assert_eq!(entities_to_markdown("docs a_b", &link).unwrap(), "[docs](https://e.org/) a\\_b");
    }

    #[test]
    fn entities_use_utf16_offsets_and_nest() {
        // "😀" is two UTF-16 units.
        let text = "😀 bold italic";
        let entities = vec![MessageEntity::bold(3, 11), MessageEntity::italic(8, 6)];
        assert_eq!(entities_to_markdown(text, &entities).unwrap(), "😀 **bold *italic***");
    }

    #[test]
    fn only_formatting_entities_make_markdown() {
        let entities = vec![MessageEntity::new(MessageEntityKind::BotCommand, 0, 6)];
        assert!(entities_to_markdown("/start now", &entities).is_none());
    }
}
