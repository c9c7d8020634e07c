"""cupre models in the formats other tools run (``cupre export``)."""
