-- title: Model versions
-- description: Model versions, newest first, with their Table 1 figures as the worker scored them: whole
-- description: ROIs predicted as the loop deploys them (TAP with its rule and clean-up), at the source
-- description: resolution. Validation against consensus (what promotion compares); test against the
-- description: consensus and against ground truth (F-measure, average Hausdorff distance in nm), with
-- description: the test consensus' own F-measure against the truth (the ceiling of a model trained on
-- description: it); and the mean Dice between their predictions and the volunteers' corrections of them;
-- description: how many monitoring slices compared its corrected consensus with one traced from scratch,
-- description: and the monitoring guard's word on its corrections (held: not training data; trusted or
-- description: revoked by an operator; empty: used) with the event that said it.
SELECT
    mv.version AS version,
    mv.preset AS preset,
    mv.architecture AS architecture,
    mv.promoted AS promoted,
    mv.promoted_at AS promoted_at,
    mv.created_at AS created_at,
    mv.training_run_id AS training_run_id,
    mm.validation_f_measure AS validation_f_measure,
    mm.validation_ahd_nm AS validation_ahd_nm,
    mm.f_measure_consensus AS f_measure_consensus,
    mm.f_measure_truth AS f_measure_truth,
    mm.ahd_nm_consensus AS ahd_nm_consensus,
    mm.ahd_nm_truth AS ahd_nm_truth,
    mm.consensus_f_measure_truth AS consensus_f_measure_truth,
    cd.mean_correction_dice AS mean_correction_dice,
    COALESCE(cd.corrected_slices, 0) AS corrected_slices,
    COALESCE(cd.monitored_slices, 0) AS monitored_slices,
    CASE ge.kind
        WHEN 'model.corrections_held' THEN 'held'
        WHEN 'model.corrections_trusted' THEN 'trusted'
        WHEN 'model.corrections_trust_revoked' THEN 'revoked'
    END AS corrections_guard,
    ge.message AS corrections_guard_note
FROM model_version AS mv
LEFT JOIN (
    SELECT
        m.model_version_id AS model_version_id,
        MAX(CASE WHEN m.split = 'validation' AND m.name = 'f_measure' AND m.reference = 'consensus'
            THEN m.value END) AS validation_f_measure,
        MAX(CASE WHEN m.split = 'validation' AND m.name = 'ahd_nm' AND m.reference = 'consensus'
            THEN m.value END) AS validation_ahd_nm,
        MAX(CASE WHEN m.split = 'test' AND m.name = 'f_measure' AND m.reference = 'consensus'
            THEN m.value END) AS f_measure_consensus,
        MAX(CASE WHEN m.split = 'test' AND m.name = 'f_measure' AND m.reference = 'truth'
            THEN m.value END) AS f_measure_truth,
        MAX(CASE WHEN m.split = 'test' AND m.name = 'ahd_nm' AND m.reference = 'consensus'
            THEN m.value END) AS ahd_nm_consensus,
        MAX(CASE WHEN m.split = 'test' AND m.name = 'ahd_nm' AND m.reference = 'truth'
            THEN m.value END) AS ahd_nm_truth,
        MAX(CASE WHEN m.split = 'test' AND m.name = 'consensus_f_measure' AND m.reference = 'truth'
            THEN m.value END) AS consensus_f_measure_truth
    FROM model_metric AS m
    WHERE m.split IN ('validation', 'test')
    GROUP BY m.model_version_id
) AS mm ON mm.model_version_id = mv.id
LEFT JOIN (
    SELECT
        pb.model_version_id AS model_version_id,
        AVG(sp.correction_dice) AS mean_correction_dice,
        COUNT(sp.correction_dice) AS corrected_slices,
        COUNT(sp.monitoring_dice) AS monitored_slices
    FROM prediction_batch AS pb
    JOIN slice_prediction AS sp ON sp.batch_id = pb.id
    GROUP BY pb.model_version_id
) AS cd ON cd.model_version_id = mv.id
LEFT JOIN event AS ge ON ge.id = (
    SELECT MAX(e.id) FROM event AS e
    WHERE e.model_version_id = mv.id
      AND e.kind IN ('model.corrections_held', 'model.corrections_trusted', 'model.corrections_trust_revoked')
)
ORDER BY mv.created_at DESC, mv.id DESC
