"""TFDS builders for the datasets training reads."""
