-- 0001: users, their settings, jobs, the images jobs made, and favourites.
-- Image bytes are not in the database: png_path, latents_path, grid_path and the init image and
-- mask keys inside jobs.request name content-addressed files under the data directory.
-- Times are ISO 8601 in UTC, written by the application.

CREATE TABLE users (
    id         INTEGER PRIMARY KEY,  -- the owner's id: a Discord user id
    created_at TEXT    NOT NULL
);

CREATE TABLE settings (
    user_id         INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    aspect_ratio    TEXT,
    quality         REAL,
    negative_prompt TEXT,
    style           TEXT,
    model           TEXT,
    remix           INTEGER NOT NULL DEFAULT 0 CHECK (remix IN (0, 1)),
    private         INTEGER NOT NULL DEFAULT 0 CHECK (private IN (0, 1))
);

CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: button custom_ids carry it
    user_id         INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind            TEXT    NOT NULL,
    request         TEXT    NOT NULL,  -- GenerationRequest JSON, images replaced by file keys
    status          TEXT    NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    parent_image_id INTEGER REFERENCES images (id) ON DELETE SET NULL,
    guild_id        INTEGER,
    channel_id      INTEGER,
    message_id      INTEGER,
    error           TEXT,
    grid_path       TEXT,
    created_at      TEXT    NOT NULL,
    started_at      TEXT,
    finished_at     TEXT
);

-- Restart recovery reads the unfinished jobs; they are few among many finished ones.
CREATE INDEX jobs_unfinished ON jobs (id) WHERE status IN ('queued', 'running');

CREATE TABLE images (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id        INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx           INTEGER NOT NULL,  -- 0-based place in the job's grid
    seed          INTEGER NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    finish_reason TEXT    NOT NULL,
    png_path      TEXT    NOT NULL,
    latents_path  TEXT,
    parameters    TEXT    NOT NULL DEFAULT '',
    UNIQUE (job_id, idx)
);

CREATE INDEX jobs_by_parent_image ON jobs (parent_image_id) WHERE parent_image_id IS NOT NULL;

CREATE TABLE favorites (
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    image_id   INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    created_at TEXT    NOT NULL,
    PRIMARY KEY (user_id, image_id)
);

CREATE INDEX favorites_by_image ON favorites (image_id);
