"""Stage: Ray Tune searches over model, loss and training settings."""
