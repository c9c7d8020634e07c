"""cupre.models.heads."""
