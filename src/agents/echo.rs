//! The built-in `echo` runtime: answers with the text it was given. It needs no keys or
//! network, so a fresh install works end to end.

use async_trait::async_trait;

use super::{AgentError, AgentRuntime, Reply, Turn};
use crate::protocol::ContentType;

pub struct EchoRuntime;

#[async_trait]
impl AgentRuntime for EchoRuntime {
    async fn respond(&self, turn: Turn<'_>) -> Result<Reply, AgentError> {
        let message = turn.message;
        let content = match (message.content.trim().is_empty(), message.attachments.first()) {
            (_, Some(file)) => format!("I received {} ({}).", file.name, file.mime_type),
            (true, None) => "(empty message)".to_string(),
            (false, None) => message.content.clone(),
        };
        let content_type = match message.content_type {
            ContentType::Markdown | ContentType::Code => message.content_type,
            _ => ContentType::Text,
        };
        Ok(Reply { content, content_type })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChannelAttachment, ChannelMessage, SenderType};

    #[tokio::test]
    async fn repeats_text_and_describes_files() {
        let msg = ChannelMessage::new("!r", "@a:x", SenderType::User, "hello *there*", ContentType::Markdown);
        let reply = EchoRuntime.respond(Turn { agent_id: "echo", message: &msg, history: &[] }).await.unwrap();
        assert_eq!(reply.content, "hello *there*");
        assert_eq!(reply.content_type, ContentType::Markdown);

        let mut file = ChannelMessage::new("!r", "@a:x", SenderType::User, "cat.png", ContentType::Image);
        file.attachments.push(ChannelAttachment {
            name: "cat.png".into(),
            mime_type: "image/png".into(),
            url: "mxc://x/y".into(),
            size_bytes: None,
        });
        let reply = EchoRuntime.respond(Turn { agent_id: "echo", message: &file, history: &[] }).await.unwrap();
        assert_eq!(reply.content, "I received cat.png (image/png).");
    }
}
