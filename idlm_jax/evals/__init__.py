"""Evaluation: validation likelihood bounds, samples, and (later) Gen PPL and entropy."""
