"""cupre.train."""
