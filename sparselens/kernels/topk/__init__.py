"""topk kernels."""
