-- title: Ingestion cursors
-- description: Per workflow: how far ingestion has paged (the cursor's last Panoptes classification
-- description: id and when it moved), against the newest classification actually stored for that
-- description: workflow, and how many are stored. A workflow with no cursor has not been read yet.
-- description: Each figure is an index lookup per workflow, so this stays fast on large projects.
SELECT
    w.panoptes_id AS workflow_panoptes_id,
    w.display_name AS workflow,
    w.role AS role,
    sc.last_classification_id AS cursor_last_classification_id,
    sc.updated_at AS cursor_updated_at,
    (SELECT MAX(c.panoptes_id) FROM classification AS c WHERE c.workflow_id = w.id) AS newest_classification_id,
    (SELECT MAX(c.created_at) FROM classification AS c WHERE c.workflow_id = w.id) AS newest_classification_at,
    (SELECT COUNT(*) FROM classification AS c WHERE c.workflow_id = w.id) AS classifications
FROM workflow AS w
LEFT JOIN sync_cursor AS sc ON sc.workflow_id = w.id
ORDER BY w.panoptes_id, w.id
