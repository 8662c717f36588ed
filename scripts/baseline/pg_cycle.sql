-- One pgbench transaction of the PostgreSQL baseline (scripts/baseline.sh): insert 100 jobs,
-- claim 100 with FOR UPDATE SKIP LOCKED, complete them; three statements, three commits.
INSERT INTO baseline_job (state, queue, priority, scheduled_at, attempt, kind, args) SELECT 0, 'default', 1, now(), 0, 'noop', '{}' FROM generate_series(1, 100);
WITH c AS (SELECT id FROM baseline_job WHERE state = 0 AND queue = 'default' AND scheduled_at <= now() ORDER BY priority, scheduled_at, id LIMIT 100 FOR UPDATE SKIP LOCKED), u AS (UPDATE baseline_job j SET state = 2, attempt = j.attempt + 1, attempted_at = now() FROM c WHERE j.id = c.id RETURNING j.id) SELECT min(id) AS lo, max(id) AS hi FROM u \gset
UPDATE baseline_job SET state = 4, finalized_at = now() WHERE id BETWEEN :lo AND :hi AND state = 2;
