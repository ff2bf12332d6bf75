-- title: Volunteer reliability
-- description: How well each volunteer agrees with the current consensus of the slices they drew on:
-- description: slices, mean Dice, and the agreement shrunk towards a prior for volunteers seen on few
-- description: slices (as the consensus weighs votes). A volunteer seen on at least min_slices slices
-- description: whose shrunk agreement is below flag_below is flagged. Least reliable first.
-- param: min_slices integer = 3 : flag only volunteers seen on at least this many slices
-- param: flag_below float = 0.5 : flag when the shrunk agreement is below this Dice
-- param: prior_dice float = 0.8 : the agreement assumed for a volunteer never seen before
-- param: prior_slices float = 2 : how many slices' worth of evidence that assumption is worth
-- param: flagged_only integer = 0 : 1 to list flagged volunteers only
-- param: top integer = 50 : at most this many volunteers
WITH pooled AS (
    SELECT
        va.volunteer_key AS volunteer_key,
        COUNT(*) AS slices,
        AVG(va.dice) AS mean_dice,
        (SUM(va.dice) + :prior_dice * :prior_slices) / (COUNT(*) + :prior_slices) AS shrunk_dice
    FROM volunteer_agreement AS va
    JOIN consensus_result AS cr ON cr.id = va.consensus_result_id
    WHERE cr.is_current
    GROUP BY va.volunteer_key
),
judged AS (
    SELECT
        p.volunteer_key AS volunteer_key,
        p.slices AS slices,
        p.mean_dice AS mean_dice,
        p.shrunk_dice AS shrunk_dice,
        CASE WHEN p.slices >= :min_slices AND p.shrunk_dice < :flag_below THEN 1 ELSE 0 END AS flagged
    FROM pooled AS p
)
SELECT
    j.volunteer_key AS volunteer_key,
    CASE WHEN j.volunteer_key LIKE 'user:%' THEN (
        SELECT c.user_name FROM classification AS c
        WHERE c.volunteer_key = j.volunteer_key AND c.user_name IS NOT NULL
        ORDER BY c.created_at DESC LIMIT 1
    ) END AS user_name,
    j.slices AS slices,
    j.mean_dice AS mean_dice,
    j.shrunk_dice AS shrunk_dice,
    j.flagged AS flagged
FROM judged AS j
WHERE CAST(:flagged_only AS INTEGER) = 0 OR j.flagged = 1
ORDER BY j.flagged DESC, j.shrunk_dice, j.volunteer_key
LIMIT :top
