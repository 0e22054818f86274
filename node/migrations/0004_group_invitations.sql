-- Group consent: a user who is not the inviter's friend (or between whom a block stands) is invited, not added.
-- One pending invitation per (group, invitee); accepting deletes it and adds the member in one transaction.
CREATE TABLE group_invitations (
    conv_id    bigint NOT NULL REFERENCES conversations (id),
    user_id    bigint NOT NULL REFERENCES users (id),
    inviter    bigint NOT NULL REFERENCES users (id),
    created_ms bigint NOT NULL,
    PRIMARY KEY (conv_id, user_id)
);
CREATE INDEX group_invitations_by_user ON group_invitations (user_id);
