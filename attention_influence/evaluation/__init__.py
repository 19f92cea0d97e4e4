"""MLflow-tracked evaluation of a head set and its selection: the mirror effect (appendix D) and the
selection analysis (section 6). No Dagster imports; the `selection_evaluation` asset calls
`run.run_selection_evaluation`. Submodules are imported where used: `tracking` and `config` stay free of
torch, so the Dagster resources can use them without loading the engine.
"""
