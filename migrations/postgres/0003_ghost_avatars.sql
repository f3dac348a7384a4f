-- The avatar each ghost was given, to notice when the config changes it.
ALTER TABLE ghosts ADD COLUMN avatar_url TEXT;
