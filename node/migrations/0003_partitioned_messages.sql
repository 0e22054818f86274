-- Messages partitioned by hash of conversation: every history and sync query names one conversation, so it reads
-- one partition; each partition keeps its own indexes small. The idempotency key (sender, cid) cannot be a unique
-- constraint of a table partitioned by conversation, so it moves to message_keys, written in the same transaction.
CREATE SEQUENCE message_ids;
SELECT setval('message_ids', coalesce((SELECT max(id) FROM messages), 0) + 1, false);

ALTER TABLE messages RENAME TO messages_unpartitioned;

CREATE TABLE messages (
    conv_id       bigint NOT NULL,
    seq           bigint NOT NULL,
    id            bigint NOT NULL,
    sender        bigint NOT NULL,
    sender_device text NOT NULL,
    cid           text NOT NULL,
    kind          text NOT NULL,
    body          text NOT NULL,
    created_ms    bigint NOT NULL,
    attrs         jsonb,
    recalled      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (conv_id, seq)
) PARTITION BY HASH (conv_id);

DO $$
BEGIN
    FOR i IN 0..15 LOOP
        EXECUTE format('CREATE TABLE messages_p%s PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER %s)', i, i);
    END LOOP;
END $$;

CREATE TABLE message_keys (
    sender     bigint NOT NULL,
    cid        text NOT NULL,
    conv_id    bigint NOT NULL,
    seq        bigint NOT NULL,
    id         bigint NOT NULL,
    created_ms bigint NOT NULL,
    PRIMARY KEY (sender, cid)
);

INSERT INTO messages (conv_id, seq, id, sender, sender_device, cid, kind, body, created_ms, attrs, recalled)
SELECT conv_id, seq, id, sender, sender_device, cid, kind, body, created_ms, attrs, recalled FROM messages_unpartitioned;
INSERT INTO message_keys (sender, cid, conv_id, seq, id, created_ms)
SELECT sender, cid, conv_id, seq, id, created_ms FROM messages_unpartitioned;
DROP TABLE messages_unpartitioned;
