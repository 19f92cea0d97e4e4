-- The cut table in a stable order, for export to cut.parquet.
SELECT *
FROM domain_cut
ORDER BY domain, domain_rank NULLS LAST, shard, id
