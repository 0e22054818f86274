-- Users, conversations, members with their read cursor, and messages keyed (conversation, seq).
CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- kind 1 = direct (1:1), 2 = group. A direct conversation is identified by its ordered pair of users.
-- last_seq is the per-conversation counter: the batched writer advances it in the same transaction that inserts
-- the messages, under a row lock, so commit order is seq order.
CREATE TABLE conversations (
    id          bigserial PRIMARY KEY,
    kind        smallint NOT NULL,
    direct_low  bigint REFERENCES users (id),
    direct_high bigint REFERENCES users (id),
    last_seq    bigint NOT NULL DEFAULT 0,
    last_msg_ms bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (direct_low, direct_high),
    CHECK (kind <> 1 OR (direct_low IS NOT NULL AND direct_high IS NOT NULL AND direct_low <= direct_high))
);

CREATE TABLE conversation_members (
    conv_id   bigint NOT NULL REFERENCES conversations (id),
    user_id   bigint NOT NULL REFERENCES users (id),
    read_seq  bigint NOT NULL DEFAULT 0,
    joined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conv_id, user_id)
);
CREATE INDEX conversation_members_by_user ON conversation_members (user_id);

-- (sender, cid) is the idempotency key: a retried send never makes a second row.
CREATE TABLE messages (
    conv_id       bigint NOT NULL,
    seq           bigint NOT NULL,
    id            bigserial NOT NULL UNIQUE,
    sender        bigint NOT NULL,
    sender_device text NOT NULL,
    cid           text NOT NULL,
    kind          text NOT NULL,
    body          text NOT NULL,
    created_ms    bigint NOT NULL,
    PRIMARY KEY (conv_id, seq),
    UNIQUE (sender, cid)
);
