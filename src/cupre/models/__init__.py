"""cupre.models."""
