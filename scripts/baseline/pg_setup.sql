-- The PostgreSQL baseline's table (scripts/baseline.sh): a job table with only the fetch index.
DROP TABLE IF EXISTS baseline_job;
CREATE TABLE baseline_job (
  id bigserial PRIMARY KEY,
  state smallint NOT NULL,
  queue text NOT NULL,
  priority smallint NOT NULL,
  scheduled_at timestamptz NOT NULL,
  attempt smallint NOT NULL,
  attempted_at timestamptz,
  finalized_at timestamptz,
  kind text NOT NULL,
  args jsonb NOT NULL
);
CREATE INDEX baseline_job_fetch ON baseline_job (queue, priority, scheduled_at, id) WHERE state = 0;
