"""Fuzzing of every parser that takes outside input: ``targets.py``; ``make fuzz`` runs them."""
