-- Media bytes in Postgres (the default media store): every node serves every medium, with no shared filesystem.
-- A medium is split into chunks (`--media-chunk-bytes`) written in one transaction, so a medium is either whole
-- or absent; downloads read one chunk at a time.
CREATE TABLE media_chunks (
    hash  text NOT NULL,
    part  int NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (hash, part)
);
CREATE TABLE media_thumbnails (
    hash  text PRIMARY KEY,
    bytes bytea NOT NULL
);
