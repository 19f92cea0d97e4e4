"""The `ray` section as a resource: with an address, a shard is scored by a detached scorer actor on the
cluster that keeps the model loaded across runs (`attention_influence.cluster.scoring`); without one, nothing
changes. Ray is imported only when used."""

from __future__ import annotations

from attention_influence.config import RayConfig
from resources.sections import section_resource, validated


class RayCluster(section_resource(RayConfig)):
    """The Ray cluster that scores shards (`ray.address`); Dagster keeps partitions, versions, metadata."""

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def expected_precision(self, model) -> dict:
        """The dtype and device class the cluster's scorers will load `model` in (for the data version)."""
        from attention_influence.cluster.scoring import expected_precision

        return expected_precision(model.dtype, model.device, self.num_gpus)

    def score_shard(self, model, request, heads_doc: dict, log=None, warn=None) -> dict:
        """Score one shard (`ShardScoring`) on the cluster with the selector model's settings; returns the
        record with `placement` (node, device), `worker` (scorer, model loads), `timings` and `ray_retries`.
        A shard whose scorer's node dies is retried on another scorer and resumes from its chunks; `log`
        hears the chunks written while it scores, `warn` each dead scorer."""
        from attention_influence.cluster.scoring import ShardTask, model_spec, plain_request, score_shards

        cfg = self._connect()
        task = ShardTask(model_spec(model), plain_request(request), heads_doc)  # plain values travel
        return score_shards([task], self._resources(cfg), log=log, warn=warn)[0]

    def run_with_model(self, model, fn, *args, **kwargs) -> dict:
        """`fn(lm, *args, **kwargs)` on a scorer actor with the selector model loaded (the SFT step
        scores); returns {"result", "placement", "worker", "timings"}."""
        from attention_influence.cluster.scoring import model_spec, run_with_model

        cfg = self._connect()
        return run_with_model(fn, model_spec(model), args, kwargs, self._resources(cfg))

    def shutdown_scorers(self) -> list[str]:
        """Kill the detached scorer actors and their pool in `ray.namespace` (they keep their GPUs and
        models until then); the names killed."""
        from attention_influence.cluster.scoring import shutdown_scorers

        return shutdown_scorers(self._connect().namespace)

    def _connect(self) -> RayConfig:
        from attention_influence.cluster.scoring import connect

        cfg = validated(RayConfig, self, "the run's resource config", "ray")
        connect(cfg.address, cfg.namespace, cfg.auth_token_file)
        return cfg

    @staticmethod
    def _resources(cfg: RayConfig):
        from attention_influence.cluster.scoring import TaskResources

        return TaskResources(cfg.num_gpus, cfg.num_cpus, cfg.max_retries)
