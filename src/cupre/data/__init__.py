"""Readers for every on-disk format of the paper; all yield the same (image, target) pair."""
