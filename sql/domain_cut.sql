-- Step 3 of every cut: table domain_cut, every score row with its policy's ranking (cut_ranking, step 2) and the
-- reason a row was left out of the ranking (a later copy of an id, a score that is not finite). Columns a policy
-- adds (the token budget, the fused ranks) follow `selected`.
CREATE OR REPLACE TABLE domain_cut AS
SELECT
    s.id, s.domain, s.shard, s.n_tokens, s.loss_base, s.loss_ref, s.score, s.head_set_id, s.model,
    r.domain_rank,
    r.domain_documents,
    r.domain_keep,
    coalesce(r.selected, false) AS selected,
    COLUMNS(r.* EXCLUDE (id, shard, domain_rank, domain_documents, domain_keep, selected)),
    CASE
        WHEN s.occurrence > 1 THEN 'duplicate id, kept in shard ' || s.first_shard
        WHEN s.score IS NULL OR NOT isfinite(s.score) THEN 'score is not finite'
    END AS excluded_reason
FROM cut_scores AS s
LEFT JOIN cut_ranking AS r ON s.id = r.id AND s.shard = r.shard
