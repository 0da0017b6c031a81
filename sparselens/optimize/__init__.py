"""Phase 3: optimisation design. Calibrate the DSA model on the training split, design cheaper attention plans
(static layers, shared indices, smaller indexers, adaptive k, their combination), fine-tune each beside an
equal-step DSA reference, and measure them all with the cost model and the clock (no Prefect here)."""
