"""Stage: a trained model scored on sequence shards (metrics, per-channel tables, plots)."""
