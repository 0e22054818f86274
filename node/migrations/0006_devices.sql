-- Devices a user is logged in on: one row per (user, device id), written when the device connects and when it
-- disconnects. `token_*` name the login (token) the device last connected with, so logging the device out revokes
-- exactly that login. Rows whose token has expired are dropped when the list is read.
CREATE TABLE devices (
    user_id         bigint NOT NULL REFERENCES users (id),
    device          text   NOT NULL,
    platform        text   NOT NULL,
    token_id        text   NOT NULL,
    token_issued_ms bigint NOT NULL,
    token_expires   bigint NOT NULL,
    first_seen_ms   bigint NOT NULL,
    last_seen_ms    bigint NOT NULL,
    PRIMARY KEY (user_id, device)
);
CREATE INDEX devices_by_token ON devices (user_id, token_id);

-- A user's own choice about "one session per platform": NULL follows the server's `--one-session-platforms`,
-- false turns it off for this user, true applies it to every platform but `web`.
ALTER TABLE users ADD COLUMN one_session_per_platform boolean;
