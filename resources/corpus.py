"""The corpus as a resource: where the shards are, their format and which columns hold text, id and domain."""

from __future__ import annotations

from attention_influence.config import CorpusConfig
from attention_influence.io.corpus import Shard, list_shards, resolve_shard
from resources.sections import section_resource, validated


class Corpus(section_resource(CorpusConfig)):
    """The `corpus` section; `uri` is resolved (the demo corpus when the configuration leaves it null)."""

    def setup_for_execution(self, context) -> None:
        validated(CorpusConfig, self, "the run's resource config", "corpus")

    def shards(self) -> list[Shard]:
        return list_shards(self.uri, self.format)

    def shard(self, key: str) -> Shard:
        return resolve_shard(self.uri, key, self.format)

    def texts(self, limit_docs: int) -> list[str]:
        from attention_influence.shards.reader import corpus_texts

        return corpus_texts(self.shards(), self.text_column, limit_docs)
