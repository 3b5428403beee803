-- 0002: /history. The prompt gets a column of its own, filled from the request JSON of the jobs
-- already stored, so that searching reads a short text column instead of parsing every request;
-- and an index serves one user's jobs newest first.

ALTER TABLE jobs ADD COLUMN prompt TEXT NOT NULL DEFAULT '';

UPDATE jobs SET prompt = coalesce(json_extract(request, '$.prompt'), '');

CREATE INDEX jobs_by_user ON jobs (user_id, id DESC);
