-- Which forum topic a Telegram message is in, for the messages the bridge sent or
-- received in a topic: an answer to a thread whose root is one of them goes to the same
-- topic. message_thread_id is per chat, like message ids.
CREATE TABLE telegram_topics (
    chat_id     TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    thread_id   TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (chat_id, message_id)
);
