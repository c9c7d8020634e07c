"""cupre.experiments."""
