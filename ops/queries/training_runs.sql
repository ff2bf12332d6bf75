-- title: Training runs
-- description: Training runs, newest first: who asked and why, which worker ran them, when they were
-- description: queued, started, last heard from and finished, the error if any, and the model
-- description: version they produced.
-- param: status text : only runs in this status: queued, running, succeeded, failed, cancelled (empty: all)
-- param: top integer = 100 : at most this many runs
SELECT
    tr.id AS id,
    tr.status AS status,
    tr.trigger AS trigger,
    tr.requested_by AS requested_by,
    tr.reason AS reason,
    tr.preset AS preset,
    tr.worker_host AS worker_host,
    tr.queued_at AS queued_at,
    tr.started_at AS started_at,
    tr.finished_at AS finished_at,
    tr.heartbeat_at AS heartbeat_at,
    tr.error AS error,
    mv.version AS model_version
FROM training_run AS tr
LEFT JOIN (
    SELECT
        m.training_run_id AS training_run_id,
        MAX(m.version) AS version
    FROM model_version AS m
    WHERE m.training_run_id IS NOT NULL
    GROUP BY m.training_run_id
) AS mv ON mv.training_run_id = tr.id
WHERE CAST(:status AS TEXT) IS NULL OR tr.status = :status
ORDER BY tr.queued_at DESC, tr.id DESC
LIMIT :top
