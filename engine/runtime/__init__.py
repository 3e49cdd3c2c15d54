"""Which runtime path runs a model here: measured, verified, remembered (choice.py, cache.py)."""
