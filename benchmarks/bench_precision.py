"""Issue 16: what `serve.precision=int8` costs in accuracy -- the serving frame step, float vs int8 weights.

Run: .venv/bin/python benchmarks/bench_precision.py MODEL SHARDS_DIR [--split test] [--windows N]

MODEL is a trained causal model file (the frame step serves `tcn_full` and causal `tcn_poc`). Every
window of the split is streamed from a fresh state through the serving stepper
(`a2bs.infer.batched.BatchedStepper`, ONNX Runtime, one thread) with float and with int8 weights, and
both are scored against the window's labels with the training metrics (whole-clip correlations, as
`a2bs evaluate`), at the model's 100 Hz, before post-processing; windows of a face the model knows are
scored with that face's identity. Prints one markdown table: each precision's metrics and the int8
frames' difference from the float ones. The float row is the model's own accuracy on windows streamed
from zero state (the causal step equals the model's forward to ~1e-5), not `a2bs evaluate`'s numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine

from a2bs.config import load_config
from a2bs.evaluate.report import score_split
from a2bs.infer.batched import BatchedStepper
from a2bs.infer.offline import load_model



class SteppedModel(nn.Module):
    """A model's forward ``(audio (B, T, n_mels)[, identity (B,)]) -> (B, T, 59)`` run through the serving
    stepper: each row a stream from a fresh state, one frame of every row per call. Keeps its outputs."""

    def __init__(self, net: nn.Module, precision: str, capacity: int) -> None:
        super().__init__()
        self.stepper = BatchedStepper(net, capacity, "onnx", precision=precision)
        self.outputs: list[np.ndarray] = []

    def forward(self, audio: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        rows = list(range(audio.shape[0]))
        for i in rows:
            self.stepper.reset(i, None if identity is None else int(identity[i]))
        out = np.stack(self.stepper.step(rows, [a.numpy() for a in audio]))
        self.outputs.append(out)
        return torch.from_numpy(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="trained causal model file (model.safetensors)")
    ap.add_argument("shards", help="shards folder (a2bs build)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch", type=int, default=64, help="windows streamed together")
    args = ap.parse_args()
    torch.set_num_threads(1)
    loaded = load_model(args.model, load_config())
    identities = tuple(loaded.card.identities or ())
    rows, outputs = {}, {}
    for precision in ("fp32", "int8"):
        stepped = SteppedModel(loaded.net, precision, args.batch)
        t0 = time.perf_counter()
        scored = score_split(stepped, args.shards, args.split, batch_size=args.batch, identities=identities)
        rows[precision] = (scored.metrics, time.perf_counter() - t0)
        outputs[precision] = np.concatenate([o.reshape(-1, o.shape[-1]) for o in stepped.outputs])
    diff = np.abs(outputs["int8"] - outputs["fp32"])
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; `{loaded.model_cfg.name}` "
          f"({args.model}), split {args.split!r} of {args.shards}, {len(outputs['fp32'])} frames at 100 Hz, "
          f"{'with each face identity' if identities else 'no identities'}.\n")
    print("| precision | MAE | mouth MAE | jaw r | lip r | |int8 - fp32| mean | max | s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for precision, (m, secs) in rows.items():
        d = ("-", "-") if precision == "fp32" else (f"{diff.mean():.5f}", f"{diff.max():.4f}")
        print(f"| {precision} | {m['mae']:.4f} | {m['mouth_mae']:.4f} | {m['jaw_corr']:.3f} | {m['lip_corr']:.3f} "
              f"| {d[0]} | {d[1]} | {secs:.0f} |")


if __name__ == "__main__":
    main()
