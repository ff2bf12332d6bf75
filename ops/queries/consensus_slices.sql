-- title: Consensus slices
-- description: The current consensus of each slice, newest first: its ROI and slice, the subject it
-- description: belongs to, how many classifications and drawers made it, its area, its stability (Dice
-- description: with the consensus before the latest drawing) and how many drawers agree less than half.
-- param: roi text : only this ROI (by name; empty: all)
-- param: kind text : volunteer (tracings) or corrected (corrections of predictions) (empty: both)
-- param: top integer = 50 : at most this many slices
-- param: skip integer = 0 : skip this many first (for paging)
SELECT
    cr.id AS id,
    r.name AS roi,
    cr.slice_index AS slice_index,
    cr.kind AS kind,
    cr.method AS method,
    s.panoptes_id AS subject_panoptes_id,
    cr.n_classifications AS classifications,
    cr.n_volunteers AS drawers,
    cr.area_px AS area_px,
    cr.stability AS stability,
    (
        SELECT COUNT(*) FROM volunteer_agreement AS va
        WHERE va.consensus_result_id = cr.id AND va.dice < 0.5
    ) AS disagreeing,
    cr.created_at AS created_at
FROM consensus_result AS cr
JOIN roi AS r ON r.id = cr.roi_id
LEFT JOIN subject AS s ON s.id = cr.subject_id
WHERE cr.is_current
  AND (CAST(:roi AS TEXT) IS NULL OR r.name = :roi)
  AND (CAST(:kind AS TEXT) IS NULL OR cr.kind = :kind)
ORDER BY cr.created_at DESC, cr.id DESC
LIMIT :top OFFSET :skip
