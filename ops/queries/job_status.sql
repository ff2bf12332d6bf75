-- title: Job status
-- description: Every daemon job ever run: when it last started and last finished, the status of its
-- description: latest run, and how many runs and failed runs it had in the window (0 and 0: it has
-- description: not run lately).
-- param: since timestamp = -1d : count runs started at or after this time
WITH ranked AS (
    SELECT
        j.job AS job,
        j.status AS status,
        j.started_at AS started_at,
        j.finished_at AS finished_at,
        ROW_NUMBER() OVER (PARTITION BY j.job ORDER BY j.started_at DESC, j.id DESC) AS rn
    FROM job_run AS j
)
SELECT
    r.job AS job,
    MAX(r.started_at) AS last_started_at,
    MAX(r.finished_at) AS last_finished_at,
    MAX(CASE WHEN r.rn = 1 THEN r.status END) AS last_status,
    SUM(CASE WHEN r.started_at >= :since THEN 1 ELSE 0 END) AS runs,
    SUM(CASE WHEN r.started_at >= :since AND r.status = 'failed' THEN 1 ELSE 0 END) AS failures
FROM ranked AS r
GROUP BY r.job
ORDER BY r.job
