"""The maths of discrete diffusion as pure functions of arrays (no Flax)."""
