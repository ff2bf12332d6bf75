-- title: Event kinds
-- description: Every kind of event in the log, with how many there are and the newest, for filtering.
SELECT
    e.kind AS kind,
    COUNT(*) AS events,
    MAX(e.created_at) AS newest
FROM event AS e
GROUP BY e.kind
ORDER BY e.kind
