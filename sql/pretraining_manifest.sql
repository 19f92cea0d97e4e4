-- Every eligible document of the cut once, then the selected documents again (selected_copy = true): the mix
-- of the paper (section 5.1), with $cut the cut Parquet file.
SELECT id, domain, n_tokens, head_set_id, shard, score, false AS selected_copy
FROM read_parquet($cut)
WHERE excluded_reason IS NULL
UNION ALL
SELECT id, domain, n_tokens, head_set_id, shard, score, true AS selected_copy
FROM read_parquet($cut)
WHERE selected
ORDER BY shard, id, selected_copy
