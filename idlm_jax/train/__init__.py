"""Training: state, parallelism, checkpoints, metrics and the loop."""
