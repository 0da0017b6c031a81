"""indexer_scores kernels."""
