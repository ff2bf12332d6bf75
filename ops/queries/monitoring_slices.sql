-- title: Monitoring slices
-- description: Every monitoring slice of every model version, newest version first: chosen at random among
-- description: the slices sent for correction and also traced from scratch by other volunteers (its raw
-- description: subject in the tracing workflow). Whether the slice has a current corrected and a current
-- description: traced consensus; the Dice between the prediction and its correction; and the Dice between
-- description: the corrected and the traced consensus (monitoring: when its median over a version's slices
-- description: is below correction.min_monitoring_dice, the version's corrections are held from training).
-- param: version text : only this model version (empty: all)
SELECT
    mv.version AS version,
    sp.roi_id AS roi_id,
    sp.slice_index AS slice_index,
    ms.panoptes_id AS monitoring_subject_panoptes_id,
    ms.upload_state AS monitoring_upload_state,
    CASE WHEN EXISTS (
        SELECT 1 FROM consensus_result AS co
        WHERE co.roi_id = sp.roi_id AND co.slice_index = sp.slice_index AND co.kind = 'corrected' AND co.is_current
    ) THEN 1 ELSE 0 END AS corrected,
    CASE WHEN EXISTS (
        SELECT 1 FROM consensus_result AS tr
        WHERE tr.roi_id = sp.roi_id AND tr.slice_index = sp.slice_index AND tr.kind = 'volunteer' AND tr.is_current
    ) THEN 1 ELSE 0 END AS traced,
    sp.correction_dice AS correction_dice,
    sp.monitoring_dice AS monitoring_dice
FROM slice_prediction AS sp
JOIN prediction_batch AS pb ON pb.id = sp.batch_id
JOIN model_version AS mv ON mv.id = pb.model_version_id
LEFT JOIN subject AS ms ON ms.id = sp.monitoring_subject_id
WHERE sp.selection = 'monitoring'
  AND (CAST(:version AS TEXT) IS NULL OR mv.version = :version)
ORDER BY mv.created_at DESC, mv.id DESC, sp.roi_id, sp.slice_index
