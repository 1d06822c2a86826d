"""`hiseg evaluate`: the `runner`, per-image `scoring`, dataset-level `hungarian` matching,
the `report`, and the kill-safe per-batch `result_files`."""
