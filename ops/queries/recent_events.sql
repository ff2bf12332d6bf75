-- title: Recent events
-- description: The event log, newest first: what happened, at which level, and to which subject,
-- description: classification, training run or model version; the payload as JSON text.
-- param: level text : only this level: info, warning, error (empty: all)
-- param: kind text : only this kind of event (empty: all)
-- param: since timestamp = -7d : only events at or after this time
-- param: top integer = 200 : at most this many events
-- param: skip integer = 0 : skip this many newest first (for paging)
SELECT
    e.id AS id,
    e.created_at AS created_at,
    e.level AS level,
    e.kind AS kind,
    e.message AS message,
    e.subject_id AS subject_id,
    e.classification_id AS classification_id,
    e.training_run_id AS training_run_id,
    e.model_version_id AS model_version_id,
    CAST(e.payload AS TEXT) AS payload
FROM event AS e
WHERE e.created_at >= :since
  AND (CAST(:level AS TEXT) IS NULL OR e.level = :level)
  AND (CAST(:kind AS TEXT) IS NULL OR e.kind = :kind)
ORDER BY e.created_at DESC, e.id DESC
LIMIT :top OFFSET :skip
