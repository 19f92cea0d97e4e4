"""The corpus as a resource: where the shards are and which columns hold text, id and domain."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from attention_influence.io.corpus import Shard, list_shards, read_texts, resolve_shard


class Corpus(dg.ConfigurableResource):
    """Parquet shards (AI_CORPUS): a glob, folder or file; s3:// and hf:// through fsspec."""

    uri: str = Field(description="Shard glob, folder, file, s3:// or hf:// URI.")
    text_column: str = Field(default="text", description="Column holding the document text.")
    id_column: str = Field(default="id", description="Column holding the document id.")
    domain_column: str = Field(
        default="domain", description="Column holding the domain; empty or absent: the shard's folder name."
    )

    def shards(self) -> list[Shard]:
        return list_shards(self.uri)

    def shard(self, key: str) -> Shard:
        return resolve_shard(self.uri, key)

    def texts(self, limit_docs: int) -> list[str]:
        return read_texts(self.shards(), self.text_column, limit_docs)
