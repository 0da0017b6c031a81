"""Phase 2, the `patterns` phase, over a run store: Dask orchestration and the runs of the models themselves.

- `run`: the `write_*` steps (each reads capture tables, computes on a Dask client, writes `phase2_*` tables),
  `write_charts` and `run_phase2` (everything, for scripts and benchmarks; the flow runs the steps as tasks);
- `parallel`: the Dask plumbing (LocalCluster or an existing scheduler, map/compute helpers);
- `features`: dask.dataframe over `query_stats`, `attention_topk` and `selections`;
- `modelruns`, `sparsify`: work units that load the run's models (efficiency curves, sparsify-one-head; torch).

The pattern maths they apply (numpy, no Dask, no torch) is `sparselens.analysis`; charts and the report section
are `sparselens.viz.phase2_*`. No Prefect here: tasks and the flow live in `sparselens.tasks` / `sparselens.flows`.
"""
