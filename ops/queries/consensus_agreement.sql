-- title: Agreement with one consensus
-- description: Every volunteer who drew on the slice of one consensus result: their Dice with the
-- description: consensus and their user name (the newest they used; volunteers not logged in have none), least agreeing first.
-- param: consensus_id integer : the consensus result's id
SELECT
    va.volunteer_key AS volunteer_key,
    CASE WHEN va.volunteer_key LIKE 'user:%' THEN (
        SELECT c.user_name FROM classification AS c
        WHERE c.volunteer_key = va.volunteer_key AND c.user_name IS NOT NULL
        ORDER BY c.created_at DESC LIMIT 1
    ) END AS user_name,
    va.dice AS dice,
    va.classification_id AS classification_id
FROM volunteer_agreement AS va
WHERE va.consensus_result_id = :consensus_id
ORDER BY va.dice, va.volunteer_key
