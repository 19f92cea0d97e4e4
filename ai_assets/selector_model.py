"""`selector_model`: the model behind every score, observed so that swapping it marks everything stale."""

import dagster as dg

from resources import SelectorModel


@dg.observable_source_asset(
    group_name="selection",
    description="The selector LM (model.spec). Its data version is the model identity (name + weight "
    "fingerprint): observe it after changing model.spec and every probe set, head set and score turns stale.",
)
def selector_model(model: SelectorModel) -> dg.ObserveResult:
    lm = model.lm
    return dg.ObserveResult(
        data_version=dg.DataVersion(model.identity()),
        metadata={
            "identity": lm.identity,
            "spec": lm.spec,
            "dtype": str(lm.dtype).removeprefix("torch."),
            "device": str(lm.device),
            "layers x heads": f"{lm.num_layers} x {lm.num_heads} ({lm.num_kv_heads} KV heads)",
            "max_context": lm.max_context,
        },
    )
