-- title: Retirement progress per subject set
-- description: For every subject set: how many subjects it holds, how many are retired, being
-- description: retired (decided here, not yet confirmed by Panoptes) or still active, the share
-- description: retired (0..1; empty when the set has no subjects) and the classifications received
-- description: so far for its subjects (matched by Panoptes subject id).
SELECT
    ss.display_name AS subject_set,
    ss.kind AS kind,
    ss.panoptes_id AS subject_set_panoptes_id,
    COALESCE(st.subjects, 0) AS subjects,
    COALESCE(st.retired, 0) AS retired,
    COALESCE(st.retiring, 0) AS retiring,
    COALESCE(st.active, 0) AS active,
    CASE
        WHEN COALESCE(st.subjects, 0) > 0 THEN st.retired * 1.0 / st.subjects
        ELSE NULL
    END AS share_retired,
    COALESCE(cl.classifications, 0) AS classifications
FROM subject_set AS ss
LEFT JOIN (
    SELECT
        s.subject_set_id AS subject_set_id,
        COUNT(*) AS subjects,
        SUM(CASE WHEN s.retirement_state = 'retired' THEN 1 ELSE 0 END) AS retired,
        SUM(CASE WHEN s.retirement_state = 'retiring' THEN 1 ELSE 0 END) AS retiring,
        SUM(CASE WHEN s.retirement_state = 'active' THEN 1 ELSE 0 END) AS active
    FROM subject AS s
    WHERE s.subject_set_id IS NOT NULL
    GROUP BY s.subject_set_id
) AS st ON st.subject_set_id = ss.id
LEFT JOIN (
    SELECT
        s.subject_set_id AS subject_set_id,
        COUNT(*) AS classifications
    FROM classification AS c
    JOIN subject AS s ON s.panoptes_id = c.subject_panoptes_id
    WHERE s.subject_set_id IS NOT NULL
    GROUP BY s.subject_set_id
) AS cl ON cl.subject_set_id = ss.id
ORDER BY ss.display_name, ss.id
