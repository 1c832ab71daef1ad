"""The results layer: the record store (one JSON file per cell), bit-packed keep-masks, and W&B."""
