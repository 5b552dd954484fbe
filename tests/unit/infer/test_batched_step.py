"""The batched serving step equals the single-stream step, for streams joining and leaving at any time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import lively_model

from a2bs.infer.batched import (
    BatchedStepper,
    PerStreamStepper,
    TapLayout,
    make_batched_stepper,
)
from a2bs.infer.streaming import StreamingError, StreamingModel

ATOL = 1e-5  # float32 outputs; observed ~3e-6 (the depthwise taps are summed in another order)


MODELS = {
    "tcn_full": lambda: lively_model("tcn_full", channels=32, dilations=(1, 2, 4, 8, 16)),
    "tcn_poc causal (dense)": lambda: lively_model("tcn_poc", causal=True, channels=24),
}


def _mel(frames: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-90, 5, size=(frames, 80)).astype(np.float32)


def _schedule():
    """Six streams over 40 ticks in 4 slots: (tick, stream) joins, chunk sizes, and lengths.

    Streams 0-3 start at different ticks; 1 leaves early and 4 takes its slot, 2 leaves and 5 takes
    its slot; chunk sizes 1..9 frames (some larger than the per-call batch), some ticks skipped.
    """
    return [  # (stream, slot, join tick, frames, chunk size, every n-th tick)
        (0, 0, 0, 120, 3, 1),
        (1, 1, 2, 25, 7, 1),
        (2, 2, 5, 12, 1, 2),
        (3, 3, 6, 90, 9, 1),
        (4, 1, 9, 60, 4, 1),  # slot 1 reused after stream 1 ended
        (5, 2, 30, 30, 2, 1),  # slot 2 reused after stream 2 ended
    ]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("name", list(MODELS))
def test_batched_equals_single_stream_with_joins_and_leaves(name: str, backend: str) -> None:
    model = MODELS[name]()
    stepper = BatchedStepper(model, capacity=4, backend=backend, max_batch=3)
    plan = _schedule()
    mels = {s: _mel(n, seed=s) for s, _, _, n, _, _ in plan}
    got: dict[int, list[np.ndarray]] = {s: [] for s in mels}
    pos = {s: 0 for s in mels}
    owner: dict[int, int] = {}
    expected_calls = 0
    for tick in range(60):
        slots, chunks, who = [], [], []
        for s, slot, join, n, size, every in plan:
            if tick == join:
                assert owner.get(slot) is None, "schedule reuses a slot still in use"
                owner[slot] = s
                stepper.reset(slot)
            if owner.get(slot) != s or tick < join or (tick - join) % every:
                continue
            k = min(size, n - pos[s])
            slots.append(slot)
            chunks.append(mels[s][pos[s] : pos[s] + k])
            who.append(s)
            pos[s] += k
            if pos[s] == n:
                owner[slot] = None  # leaves after this tick's step
        sizes = np.array([len(c) for c in chunks], dtype=np.int64)
        expected_calls += sum(-(-int((sizes > r).sum()) // 3) for r in range(int(sizes.max(initial=0))))
        for s, out in zip(who, stepper.step(slots, chunks)):
            got[s].append(out)
    assert all(pos[s] == len(mels[s]) for s in mels)
    for s, mel in mels.items():
        ref = StreamingModel(model).step(mel)  # the single-stream cached-state step, whole
        with torch.no_grad():
            offline = model(torch.from_numpy(mel)[None])[0].numpy()
        np.testing.assert_allclose(np.concatenate(got[s]), ref, atol=ATOL, err_msg=f"stream {s}")
        np.testing.assert_allclose(ref, offline, atol=ATOL)
    # One call per frame index holds every stream with that many frames (at most max_batch=3 per call).
    assert stepper.calls == expected_calls < sum(len(m) for m in mels.values()) / 1.5


def test_tap_layout_reads_the_dilated_past() -> None:
    model = lively_model("tcn_full", channels=8, dilations=(1, 4))
    layout = TapLayout(model)
    assert layout.ring_frames == 2 * (2 * 1) + 2 * (2 * 4)  # two convolutions per block, (k-1)*d each
    assert layout.n_taps == 8 and layout.n_writes == 4
    t = np.array([0, 9])
    idx = layout.read_index(t)  # ring frames of taps t - 2d, t - d per convolution
    # Block 2, conv 1 (ring frames 4..11, d = 4): frame 9 reads frames 1 and 5 -> slots 4 + 1, 4 + 5.
    assert idx[1, 4:6].tolist() == [4 + 1 % 8, 4 + 5 % 8]
    assert layout.write_index(t)[1].tolist() == [0 + 9 % 2, 2 + 9 % 2, 4 + 9 % 8, 12 + 9 % 8]


def test_attention_model_steps_per_stream_and_noncausal_is_refused() -> None:
    attn = lively_model("tcn_attn", channels=16, dilations=(1, 2), attn_heads=2, attn_layers=1, attn_max_len=16)
    stepper = make_batched_stepper(attn, capacity=2)
    assert isinstance(stepper, PerStreamStepper)
    for slot in (0, 1):
        stepper.reset(slot)
    a, b = _mel(30, 1), _mel(30, 2)
    outs = [stepper.step([0, 1], [a[i : i + 10], b[i : i + 10]]) for i in range(0, 30, 10)]
    np.testing.assert_allclose(np.concatenate([o[0] for o in outs]), StreamingModel(attn).step(a), atol=ATOL)
    with pytest.raises(StreamingError, match="PyTorch only"):
        make_batched_stepper(attn, capacity=2, backend="onnx")
    with pytest.raises(StreamingError, match="not causal"):
        make_batched_stepper(lively_model("tcn_poc", channels=8), capacity=2)
