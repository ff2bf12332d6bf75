-- title: Volunteer activity
-- description: The most active volunteers in the window: classifications, first and last seen, and
-- description: their share (0..1) of all classifications in the window. Volunteers not logged in
-- description: appear as "anon:<token>" with no user name.
-- param: since timestamp = -30d : only classifications created at or after this time
-- param: top integer = 100 : at most this many volunteers
SELECT
    c.volunteer_key AS volunteer_key,
    MAX(c.user_name) AS user_name,
    COUNT(*) AS classifications,
    MIN(c.created_at) AS first_seen,
    MAX(c.created_at) AS last_seen,
    COUNT(*) * 1.0 / (
        SELECT COUNT(*) FROM classification AS a WHERE a.created_at >= :since
    ) AS share
FROM classification AS c
WHERE c.created_at >= :since
GROUP BY c.volunteer_key
ORDER BY classifications DESC, c.volunteer_key
LIMIT :top
