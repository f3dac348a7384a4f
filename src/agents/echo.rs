//! The built-in `echo` runtime: answers with the text it was given. It needs no keys or
//! network, so a fresh install works end to end.

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::runtime::{AgentError, AgentEvent, AgentRuntime, TurnContext};

pub struct EchoRuntime;

#[async_trait]
impl AgentRuntime for EchoRuntime {
    async fn respond(&self, turn: &TurnContext, events: mpsc::Sender<AgentEvent>) -> Result<(), AgentError> {
        let last = turn.messages.last().map(|m| m.content.as_str()).unwrap_or_default();
        let text = if last.trim().is_empty() { "(empty message)" } else { last };
        events.send(AgentEvent::Text(text.to_string())).await.map_err(|_| AgentError::Failed("turn abandoned".into()))
    }

    fn reads_history(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::runtime::{ContextMessage, Role};

    #[tokio::test]
    async fn repeats_the_last_message() {
        let turn = TurnContext {
            agent_id: "echo".into(),
            conversation_id: "c".into(),
            thread_id: None,
            system_prompt: None,
            messages: vec![
                ContextMessage { role: Role::User, name: None, content: "first".into() },
                ContextMessage { role: Role::User, name: None, content: "hello *there*".into() },
            ],
        };
        let (tx, mut rx) = mpsc::channel(4);
        EchoRuntime.respond(&turn, tx).await.unwrap();
        let Some(AgentEvent::Text(text)) = rx.recv().await else { panic!("no text") };
        assert_eq!(text, "hello *there*");
    }
}
