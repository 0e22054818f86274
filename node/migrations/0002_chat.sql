-- Chat features: profiles, groups with roles, message attributes and recall, friends and blocks, media.
ALTER TABLE users
    ADD COLUMN display_name text NOT NULL DEFAULT '',
    ADD COLUMN avatar       text;

-- kind 2 = group: title and owner; members carry a role (0 member, 1 admin, 2 owner).
ALTER TABLE conversations
    ADD COLUMN title text NOT NULL DEFAULT '',
    ADD COLUMN owner bigint REFERENCES users (id);
ALTER TABLE conversation_members
    ADD COLUMN role smallint NOT NULL DEFAULT 0;

-- attrs: the typed attributes of non-text kinds (media hash, file name, custom fields), as JSON.
ALTER TABLE messages
    ADD COLUMN attrs    jsonb,
    ADD COLUMN recalled boolean NOT NULL DEFAULT false;

-- status 0 pending, 1 accepted, 2 rejected. At most one pending request per ordered pair.
CREATE TABLE friend_requests (
    id         bigserial PRIMARY KEY,
    from_user  bigint NOT NULL REFERENCES users (id),
    to_user    bigint NOT NULL REFERENCES users (id),
    note       text NOT NULL DEFAULT '',
    status     smallint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    decided_at timestamptz
);
CREATE UNIQUE INDEX friend_requests_one_pending ON friend_requests (from_user, to_user) WHERE status = 0;
CREATE INDEX friend_requests_to ON friend_requests (to_user, status);

-- Stored in both directions so "my friends" is one index range.
CREATE TABLE friendships (
    user_id   bigint NOT NULL REFERENCES users (id),
    friend_id bigint NOT NULL REFERENCES users (id),
    since     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, friend_id)
);

CREATE TABLE blocks (
    user_id    bigint NOT NULL REFERENCES users (id),
    blocked_id bigint NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, blocked_id)
);

-- Content-addressed uploads (hash = lowercase hex SHA-256), and where each was sent (for access checks).
CREATE TABLE media (
    hash       text PRIMARY KEY,
    size       bigint NOT NULL,
    mime       text NOT NULL,
    uploader   bigint NOT NULL REFERENCES users (id),
    has_thumb  boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE conversation_media (
    conv_id bigint NOT NULL,
    hash    text NOT NULL,
    PRIMARY KEY (hash, conv_id)
);
-- Who uploaded which medium (a second upload of the same bytes only adds a row here).
CREATE TABLE media_uploads (
    hash    text NOT NULL REFERENCES media (hash),
    user_id bigint NOT NULL REFERENCES users (id),
    PRIMARY KEY (hash, user_id)
);
