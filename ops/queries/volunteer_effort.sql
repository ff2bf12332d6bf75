-- title: Volunteer effort per round
-- description: Per round of the loop (0: tracing raw subjects from scratch; N: correcting the predictions
-- description: of the N-th model version whose predictions went to volunteers), over the slices that settled
-- description: (subjects retiring or retired): how many, the classifications they took and the volunteer-seconds
-- description: as Zooniverse records them (metadata finished_at minus started_at; missing, unparsable, negative
-- description: or over an hour: untimed, counted by reason, valued at the round's mean), per settled slice; the share of
-- description: volunteer time a correction round saved against tracing (1 - its seconds per settled slice /
-- description: tracing's); the median correction Dice (prediction vs corrected consensus) of its settled
-- description: slices; and of its settled slices that were also traced from scratch (the monitoring slices),
-- description: how many have the Dice between their corrected and traced consensus, and its median. A monitoring
-- description: slice's tracing from scratch is charged to the round it monitors (once its corrected and its traced
-- description: subject have both settled; monitoring_classifications of the round's), not counted as tracing.
-- compute: volunteer_effort
WITH rounds AS (
    SELECT
        v.model_version_id AS model_version_id,
        ROW_NUMBER() OVER (ORDER BY v.model_version_id) AS loop_round
    FROM (
        SELECT DISTINCT s.model_version_id AS model_version_id
        FROM subject AS s
        WHERE s.kind = 'prediction' AND s.model_version_id IS NOT NULL
    ) AS v
),
settled AS (
    SELECT
        s.id AS subject_id,
        s.panoptes_id AS panoptes_id,
        s.kind AS subject_kind,
        s.roi_id AS roi_id,
        s.slice_index AS slice_index,
        CASE WHEN s.kind = 'raw' THEN 0 ELSE r.loop_round END AS loop_round,
        mv.version AS model_version
    FROM subject AS s
    LEFT JOIN rounds AS r ON r.model_version_id = s.model_version_id
    LEFT JOIN model_version AS mv ON mv.id = s.model_version_id
    WHERE s.retirement_state IN ('retiring', 'retired')
        AND NOT EXISTS (SELECT 1 FROM slice_prediction AS m WHERE m.monitoring_subject_id = s.id)
),
monitoring AS (
    SELECT DISTINCT
        ms.panoptes_id AS panoptes_id,
        ms.kind AS subject_kind,
        st.roi_id AS roi_id,
        st.slice_index AS slice_index,
        st.loop_round AS loop_round,
        st.model_version AS model_version
    FROM slice_prediction AS sp
    JOIN settled AS st ON st.subject_id = sp.subject_id
    JOIN subject AS ms ON ms.id = sp.monitoring_subject_id
    WHERE ms.retirement_state IN ('retiring', 'retired')
)
SELECT
    'slice' AS row_kind,
    st.loop_round AS loop_round,
    st.model_version AS model_version,
    st.subject_kind AS subject_kind,
    st.roi_id AS roi_id,
    st.slice_index AS slice_index,
    CAST(NULL AS TEXT) AS raw_metadata,
    sp.correction_dice AS correction_dice,
    sp.monitoring_dice AS monitoring_dice
FROM settled AS st
LEFT JOIN slice_prediction AS sp ON sp.subject_id = st.subject_id
UNION ALL
SELECT
    'classification' AS row_kind,
    st.loop_round AS loop_round,
    st.model_version AS model_version,
    st.subject_kind AS subject_kind,
    st.roi_id AS roi_id,
    st.slice_index AS slice_index,
    c.raw_metadata AS raw_metadata,
    CAST(NULL AS DOUBLE PRECISION) AS correction_dice,
    CAST(NULL AS DOUBLE PRECISION) AS monitoring_dice
FROM settled AS st
JOIN classification AS c ON c.subject_panoptes_id = st.panoptes_id
UNION ALL
SELECT
    'monitoring' AS row_kind,
    mo.loop_round AS loop_round,
    mo.model_version AS model_version,
    mo.subject_kind AS subject_kind,
    mo.roi_id AS roi_id,
    mo.slice_index AS slice_index,
    c.raw_metadata AS raw_metadata,
    CAST(NULL AS DOUBLE PRECISION) AS correction_dice,
    CAST(NULL AS DOUBLE PRECISION) AS monitoring_dice
FROM monitoring AS mo
JOIN classification AS c ON c.subject_panoptes_id = mo.panoptes_id
