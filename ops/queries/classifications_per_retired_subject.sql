-- title: Classifications per retired subject
-- description: One row per retired subject: the classifications stored for it (matched by Panoptes
-- description: subject id), why and when it retired, and how many classifications retiring it saved
-- description: compared with a fixed retirement limit (negative: it took more than the limit).
-- param: since timestamp : only subjects retired at or after this time (empty: all)
-- param: fixed_limit integer = 30 : the fixed classification count to compare with
SELECT
    s.panoptes_id AS subject_panoptes_id,
    ss.display_name AS subject_set,
    COUNT(c.id) AS classifications,
    s.retirement_reason AS retirement_reason,
    s.retired_at AS retired_at,
    :fixed_limit - COUNT(c.id) AS saved_vs_fixed_limit
FROM subject AS s
LEFT JOIN subject_set AS ss ON ss.id = s.subject_set_id
LEFT JOIN classification AS c ON c.subject_panoptes_id = s.panoptes_id
WHERE s.retirement_state = 'retired'
  AND (CAST(:since AS TIMESTAMP) IS NULL OR s.retired_at >= :since)
GROUP BY s.id, s.panoptes_id, ss.display_name, s.retirement_reason, s.retired_at
ORDER BY s.retired_at DESC, s.id DESC
