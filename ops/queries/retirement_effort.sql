-- title: Retired subjects by classifications
-- description: For each subject set, how many retired subjects took each number of classifications
-- description: (stored classifications matched by Panoptes subject id), to compare with a fixed
-- description: retirement limit: the mean and the spread, not one row per subject.
-- param: since timestamp : only subjects retired at or after this time (empty: all)
WITH per_subject AS (
    SELECT
        s.subject_set_id AS subject_set_id,
        (SELECT COUNT(*) FROM classification AS c WHERE c.subject_panoptes_id = s.panoptes_id) AS classifications
    FROM subject AS s
    WHERE s.retirement_state = 'retired'
      AND (CAST(:since AS TIMESTAMP) IS NULL OR s.retired_at >= :since)
)
SELECT
    ss.display_name AS subject_set,
    p.classifications AS classifications,
    COUNT(*) AS subjects
FROM per_subject AS p
LEFT JOIN subject_set AS ss ON ss.id = p.subject_set_id
GROUP BY ss.id, ss.display_name, p.classifications
ORDER BY CASE WHEN ss.id IS NULL THEN 1 ELSE 0 END, ss.display_name, ss.id, p.classifications
