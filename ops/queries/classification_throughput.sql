-- title: Classifications per day
-- description: Classifications received per UTC day (by their Panoptes created_at), how many
-- description: distinct volunteers sent them and how many came from volunteers not logged in.
-- param: since timestamp = -30d : only classifications created at or after this time
-- param: workflow_id integer : only this Panoptes workflow id (empty: every workflow)
SELECT
    date(c.created_at) AS day,
    COUNT(*) AS classifications,
    COUNT(DISTINCT c.volunteer_key) AS volunteers,
    SUM(CASE WHEN c.user_id IS NULL THEN 1 ELSE 0 END) AS anonymous
FROM classification AS c
JOIN workflow AS w ON w.id = c.workflow_id
WHERE c.created_at >= :since
  AND (CAST(:workflow_id AS BIGINT) IS NULL OR w.panoptes_id = :workflow_id)
GROUP BY date(c.created_at)
ORDER BY day
