"""`selector_model`: the model behind every score, observed so that swapping it marks everything stale."""

import dagster as dg

from resources import SelectorModel


@dg.observable_source_asset(
    group_name="selection",
    description="The selector LM (AI_MODEL). Its data version is the model identity (name + weight "
    "fingerprint): observe it after changing AI_MODEL and every probe set, head set and score turns stale.",
)
def selector_model(model: SelectorModel) -> dg.DataVersion:
    return dg.DataVersion(model.identity())
