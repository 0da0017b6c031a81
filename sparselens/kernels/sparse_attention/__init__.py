"""sparse_attention kernels."""
