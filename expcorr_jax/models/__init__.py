"""Networks, one module per method (chosen by config name)."""
