"""Storage: corpus shards, the work-dir layout, atomic writes, provenance footers, object stores, SQL."""
