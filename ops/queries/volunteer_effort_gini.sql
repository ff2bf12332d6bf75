-- title: Inequality of volunteer effort (Gini)
-- description: How unevenly the classifications of the window are spread over volunteers: the
-- description: Gini coefficient of classifications per volunteer (0: everyone did the same; towards
-- description: 1: one volunteer did nearly all). Empty when there are no classifications.
-- param: since timestamp = -30d : only classifications created at or after this time
WITH per_volunteer AS (
    SELECT
        c.volunteer_key AS volunteer_key,
        COUNT(*) AS n
    FROM classification AS c
    WHERE c.created_at >= :since
    GROUP BY c.volunteer_key
),
ranked AS (
    SELECT
        p.n AS n,
        ROW_NUMBER() OVER (ORDER BY p.n, p.volunteer_key) AS i
    FROM per_volunteer AS p
)
SELECT
    COUNT(*) AS volunteers,
    CAST(COALESCE(SUM(r.n), 0) AS BIGINT) AS classifications,
    CASE
        WHEN COALESCE(SUM(r.n), 0) > 0
            THEN 2.0 * SUM(r.i * r.n) / (COUNT(*) * 1.0 * SUM(r.n)) - (COUNT(*) + 1) * 1.0 / COUNT(*)
        ELSE NULL
    END AS gini
FROM ranked AS r
