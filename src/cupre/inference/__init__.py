"""cupre.inference."""
