"""The object table as napari Labels features: row ``k`` describes label ``k``; row 0 is
the background (napari's convention)."""

from __future__ import annotations

from cupre.inference.writers import CSV_COLUMNS

NUMERIC = [c for c in CSV_COLUMNS if c != "category"]


def features_table(rows: list[dict]):
    """A pandas DataFrame of the table's columns, index = label id, with a background row
    (id 0, no values) first. ``rows`` as written to the CSV (numbers or their text)."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    frame[NUMERIC] = frame[NUMERIC].apply(pd.to_numeric)
    background = pd.DataFrame({"id": [0], "category": ["background"]}, columns=list(CSV_COLUMNS))
    frame = pd.concat([background, frame], ignore_index=True)
    frame["id"] = frame["id"].astype(int)
    return frame.set_index("id", drop=False).rename_axis(None)
