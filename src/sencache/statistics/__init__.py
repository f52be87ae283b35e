"""Statistics of measured results, pure numpy: the tail of a comparison (10th percentile, worst pair, broken
clips) and rank correlations."""
