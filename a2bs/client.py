"""Python client of `a2bs serve` (the reference client; implementation in :mod:`a2bs.infer.client`).

    from a2bs.client import stream_file
    result = stream_file("ws://127.0.0.1:8765/v1/stream", "speech.wav", fps=60)
"""

from __future__ import annotations

from a2bs.infer.client import ClientResult, ServeError, blocks_of, stream_async, stream_file, stream_samples
from a2bs.infer.wire import encode_pcm, wire_samples

__all__ = ["ClientResult", "ServeError", "blocks_of", "encode_pcm", "stream_async", "stream_file", "stream_samples",
           "wire_samples"]
