"""Shared runtime under every stage: storage (local / s3://), Ray start-up, input listing, the
batch-over-inputs loop that extract and infer share, and the console with its run logs."""
