"""cupre.evaluation."""
