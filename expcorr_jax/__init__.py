"""expcorr_jax: exposure correction (UEC, RECNet, ERL) in JAX/Flax."""
