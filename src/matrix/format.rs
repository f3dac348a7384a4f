//! `ChannelMessage` → Matrix `m.room.message` content: markdown rendered to sanitised
//! `org.matrix.custom.html`, `m.notice` for system messages, replies and threads.

use ruma::events::relation::{InReplyTo, Reply, Thread};
use ruma::events::room::message::{
    FileMessageEventContent, FormattedBody, ImageMessageEventContent, MessageType, NoticeMessageEventContent, Relation,
    ReplacementMetadata, RoomMessageEventContent, TextMessageEventContent,
};
use ruma::events::room::{ImageInfo, MediaSource, message::FileInfo};
use ruma::html::{HtmlSanitizerMode, RemoveReplyFallback, sanitize_html};
use ruma::{OwnedEventId, OwnedMxcUri, UInt};

use crate::protocol::{ChannelMessage, ContentType, SenderType, metadata_keys};

/// Where the message sits in the room: the event it answers and its thread root.
#[derive(Debug, Default, Clone)]
pub struct Placement {
    pub in_reply_to: Option<OwnedEventId>,
    pub thread_root: Option<OwnedEventId>,
    /// The message is an edit (`m.replace`) of this event.
    pub replaces: Option<OwnedEventId>,
}

/// Builds the event content of `msg`.
pub fn message_content(msg: &ChannelMessage, placement: Placement) -> RoomMessageEventContent {
    let body = match msg.content_type {
        ContentType::Code => {
            let language = msg.metadata.get(metadata_keys::LANGUAGE).and_then(|v| v.as_str()).unwrap_or("");
            format!("```{language}\n{}\n```", msg.content.trim_end_matches('\n'))
        }
        _ => msg.content.clone(),
    };
    let formatted = match msg.content_type {
        ContentType::Markdown | ContentType::Code => markdown_to_html(&body),
        _ => None,
    };
    let msgtype = match (media_message(msg), msg.sender_type, formatted) {
        (Some(media), _, _) => media,
        (None, SenderType::System, Some(html)) => MessageType::Notice(NoticeMessageEventContent::html(body, html)),
        (None, SenderType::System, None) => MessageType::Notice(NoticeMessageEventContent::plain(body)),
        (None, _, Some(html)) => MessageType::Text(TextMessageEventContent::html(body, html)),
        (None, _, None) => MessageType::Text(TextMessageEventContent::plain(body)),
    };
    let mut content = RoomMessageEventContent::new(msgtype);
    if let Some(original) = placement.replaces {
        return content.make_replacement(ReplacementMetadata::new(original, None));
    }
    content.relates_to = match (placement.thread_root, placement.in_reply_to) {
        (Some(root), Some(reply)) => Some(Relation::Thread(Thread::reply(root, reply))),
        (Some(root), None) => Some(Relation::Thread(Thread::without_fallback(root))),
        (None, Some(reply)) => Some(Relation::Reply(Reply::new(InReplyTo::new(reply)))),
        (None, None) => None,
    };
    content
}

/// An image or file carried by the message, as `m.image` / `m.file`: files bridged from
/// other surfaces are in the media repository already (`mxc://`). The caption, if any,
/// is the body, else the file name.
fn media_message(msg: &ChannelMessage) -> Option<MessageType> {
    let attachment = msg.attachments.iter().find(|a| a.url.starts_with("mxc://"))?;
    let source = match attachment.encrypted_file.clone().and_then(|key| serde_json::from_value(key).ok()) {
        // Still encrypted where it is stored: it goes on with its key.
        Some(file) => MediaSource::Encrypted(Box::new(file)),
        None => MediaSource::Plain(OwnedMxcUri::from(attachment.url.as_str())),
    };
    let body = if msg.content.trim().is_empty() { attachment.name.clone() } else { msg.content.clone() };
    let size = attachment.size_bytes.and_then(|n| UInt::try_from(n).ok());
    if attachment.mime_type.starts_with("image/") {
        let mut info = ImageInfo::new();
        info.mimetype = Some(attachment.mime_type.clone());
        info.size = size;
        let mut image = ImageMessageEventContent::new(body, source);
        image.info = Some(Box::new(info));
        image.filename = Some(attachment.name.clone());
        Some(MessageType::Image(image))
    } else {
        let mut info = FileInfo::new();
        info.mimetype = Some(attachment.mime_type.clone());
        info.size = size;
        let mut file = FileMessageEventContent::new(body, source);
        file.info = Some(Box::new(info));
        file.filename = Some(attachment.name.clone());
        Some(MessageType::File(file))
    }
}

/// Renders markdown to HTML with the Matrix allow-list applied; `None` when the text has
/// no formatting worth sending.
pub fn markdown_to_html(markdown: &str) -> Option<String> {
    let rendered = FormattedBody::markdown(markdown)?;
    Some(sanitize_html(&rendered.body, HtmlSanitizerMode::Compat, RemoveReplyFallback::No))
}

/// Whether a plain body looks like it was written in markdown.
pub fn looks_like_markdown(body: &str) -> bool {
    FormattedBody::markdown(body).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::owned_event_id;
    use serde_json::json;

    fn msg(sender_type: SenderType, content: &str, content_type: ContentType) -> ChannelMessage {
        ChannelMessage::new("!r", "echo", sender_type, content, content_type)
    }

    #[test]
    fn markdown_becomes_sanitised_html_and_keeps_the_plain_body() {
        let content = message_content(
            &msg(
                SenderType::Agent,
                "**bold** <script>alert(1)</script> [x](javascript:alert(1))",
                ContentType::Markdown,
            ),
            Placement::default(),
        );
        let json = serde_json::to_value(&content).unwrap();
        assert_eq!(json["msgtype"], "m.text");
        assert_eq!(json["format"], "org.matrix.custom.html");
        let html = json["formatted_body"].as_str().unwrap();
        assert!(html.contains("<strong>bold</strong>"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(json["body"].as_str().unwrap().starts_with("**bold**"));
    }

    #[test]
    fn system_messages_are_notices_and_replies_point_at_the_original() {
        let content = message_content(
            &msg(SenderType::System, "Linked.", ContentType::Text),
            Placement { in_reply_to: Some(owned_event_id!("$orig")), ..Placement::default() },
        );
        let json = serde_json::to_value(&content).unwrap();
        assert_eq!(json["msgtype"], "m.notice");
        assert_eq!(json["m.relates_to"], json!({"m.in_reply_to": {"event_id": "$orig"}}));
        assert!(json.get("formatted_body").is_none());
    }

    #[test]
    fn threads_keep_the_root_and_the_reply() {
        let content = message_content(
            &msg(SenderType::Agent, "hi", ContentType::Text),
            Placement {
                in_reply_to: Some(owned_event_id!("$last")),
                thread_root: Some(owned_event_id!("$root")),
                ..Placement::default()
            },
        );
        let json = serde_json::to_value(&content).unwrap();
        assert_eq!(json["m.relates_to"]["rel_type"], "m.thread");
        assert_eq!(json["m.relates_to"]["event_id"], "$root");
        assert_eq!(json["m.relates_to"]["m.in_reply_to"]["event_id"], "$last");
    }

    #[test]
    fn an_edit_replaces_the_original_and_carries_the_new_text() {
        let content = message_content(
            &msg(SenderType::Agent, "the **whole** answer", ContentType::Markdown),
            Placement { replaces: Some(owned_event_id!("$first")), ..Placement::default() },
        );
        let json = serde_json::to_value(&content).unwrap();
        assert_eq!(json["m.relates_to"]["rel_type"], "m.replace");
        assert_eq!(json["m.relates_to"]["event_id"], "$first");
        assert_eq!(json["m.new_content"]["body"], "the **whole** answer");
        assert!(json["m.new_content"]["formatted_body"].as_str().unwrap().contains("<strong>whole</strong>"));
        assert!(json["body"].as_str().unwrap().starts_with("* "));
    }

    #[test]
    fn code_is_fenced_with_its_language() {
        let mut m = msg(SenderType::Agent, "fn main() {}", ContentType::Code);
        m.metadata.insert("language".into(), json!("rust"));
        let json = serde_json::to_value(message_content(&m, Placement::default())).unwrap();
        assert_eq!(json["body"], "```rust\nfn main() {}\n```");
        assert!(json["formatted_body"].as_str().unwrap().contains("<code class=\"language-rust\">"));
    }
}
