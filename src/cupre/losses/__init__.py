"""cupre.losses."""
