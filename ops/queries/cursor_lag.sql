-- title: Ingestion cursors
-- description: Per workflow: how far ingestion has paged (the cursor's last Panoptes classification
-- description: id and when it moved), against the newest classification actually stored for that
-- description: workflow, and how many are stored. A workflow with no cursor has not been read yet.
SELECT
    w.panoptes_id AS workflow_panoptes_id,
    w.display_name AS workflow,
    w.role AS role,
    sc.last_classification_id AS cursor_last_classification_id,
    sc.updated_at AS cursor_updated_at,
    cl.newest_classification_id AS newest_classification_id,
    cl.newest_classification_at AS newest_classification_at,
    COALESCE(cl.classifications, 0) AS classifications
FROM workflow AS w
LEFT JOIN sync_cursor AS sc ON sc.workflow_id = w.id
LEFT JOIN (
    SELECT
        c.workflow_id AS workflow_id,
        MAX(c.panoptes_id) AS newest_classification_id,
        MAX(c.created_at) AS newest_classification_at,
        COUNT(*) AS classifications
    FROM classification AS c
    GROUP BY c.workflow_id
) AS cl ON cl.workflow_id = w.id
ORDER BY w.panoptes_id, w.id
