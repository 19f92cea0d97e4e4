"""The `slurm` section as a resource: with `slurm.enabled`, shards are scored by a Slurm job array (one run's
shards, `shards_per_task` per array task) through `attention_influence.cluster.slurm`; the Dagster run waits
for it, streams its log lines and cancels it when the run is cancelled. Disabled, nothing changes."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from attention_influence.config import SlurmConfig
from resources.sections import section_resource, validated


class SlurmCluster(section_resource(SlurmConfig)):
    """The Slurm cluster that scores shards (`slurm.enabled`); Dagster keeps partitions, versions and
    metadata."""

    def expected_precision(self, model) -> dict:
        """The dtype and device class the tasks will load `model` in (a GPU gres: the GPU)."""
        from attention_influence.cluster.scoring import expected_precision

        gpus = 1.0 if (self.gres or "").split(":")[0] in ("gpu", "shard", "mps") else 0.0
        return expected_precision(model.dtype, model.device, gpus)

    def score_shards(self, model, requests: list, heads_doc: dict, name: str, log: Callable) -> list[dict]:
        """Score the shards (`ShardScoring`s) as one job array; per shard, in order, {"key", "record"} (the
        record's `slurm` entry: job id, node, device, attempt; its data version that of the model the task
        loaded) or {"key", "error"}."""
        from attention_influence.cluster.scoring import ShardTask, model_spec, plain_request

        spec = model_spec(model)
        tasks = [ShardTask(spec, plain_request(r), heads_doc) for r in requests]
        size = self.shards_per_task
        groups = [tasks[i : i + size] for i in range(0, len(tasks), size)]
        _, results = self._run(spec, groups, name, log)
        out = []
        for group, result in zip(groups, results, strict=True):
            items = result.get("items") or [{"error": result.get("error", "no result")}] * len(group)
            out += [{**item, "key": task.request.shard.key} for task, item in zip(group, items, strict=True)]
        return out

    def run_with_model(self, model, fn, *args, name: str, log: Callable, **kwargs) -> dict:
        """`fn(lm, *args, **kwargs)` in a one-task job with the selector model loaded (the SFT step scores);
        {"result", "placement", "timings"}; an error in the task raises `SlurmError`."""
        from attention_influence.cluster.scoring import model_spec
        from attention_influence.cluster.slurm import Call, SlurmError

        _, (result,) = self._run(model_spec(model), [[Call(fn, args, kwargs)]], name, log)
        item = (result.get("items") or [result])[0]
        if "error" in item:
            raise SlurmError(item["error"])
        return {"result": item["result"], "placement": result["placement"], "timings": result["timings"]}

    def _run(self, spec, groups: list[list], name: str, log: Callable) -> tuple[str, list[dict]]:
        from attention_influence.cluster.slurm import Batch, run_batch, write_batch

        cfg = validated(SlurmConfig, self, "the run's resource config", "slurm")
        if not cfg.shared_dir:
            raise ValueError("slurm.shared_dir is unset: a folder every node sees (deploy.workdir/slurm)")
        folder = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        batch = write_batch(cfg.shared_dir, folder, Batch(spec, groups, cfg.signal))
        return run_batch(cfg, batch, f"ai-{name}", log=log)
