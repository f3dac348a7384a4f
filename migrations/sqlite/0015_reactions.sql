-- Reactions are messages that reply to the message they react to: the reactions that
-- stand on a message are read by its id whenever one is added, taken back or bridged.
CREATE INDEX messages_reply_to ON messages (reply_to_id);
