-- 0003: whether a job's results were private (ephemeral), recorded on the job itself, so that a
-- restarted bot delivers a resumed job as it was asked for, whatever its owner's setting is now.
-- Jobs stored before this knew nothing of it: they take their owner's setting at the upgrade,
-- which is what the bot went by until now, and errs on the private side.

ALTER TABLE jobs ADD COLUMN private INTEGER NOT NULL DEFAULT 0 CHECK (private IN (0, 1));

UPDATE jobs SET private = coalesce((SELECT s.private FROM settings s WHERE s.user_id = jobs.user_id), 0);
