"""Phase 4: generation through the decode cache, the side-by-side benchmark of every model, the champion rule and
the monitor that watches the champion against the dense model. Library code only (no Prefect).

- `generate.generate`: sampling (greedy, temperature, top-p, seed) through the cache, streaming byte ids;
- `run.run_benchmark`: the `phase4_benchmark` table (quality, retrieval grid, prefill/decode timings, memory, cost);
- `champion.choose_champion` / `champion.write_champion`: the versioned rule and `champion.json`;
- `monitor.run_monitor`: timed samples into `monitor_history`, a verdict (verdict.py) into `monitor_verdicts`;
- `report`: charts, the report section and the markdown summary.

Import from the modules: the package itself imports nothing, so the peak-RSS child (`rss_child`) starts light.
"""
