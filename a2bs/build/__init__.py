"""Stage: clip features -> windowed sequence shards with a split by speaker or clip."""
