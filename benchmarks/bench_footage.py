"""Issue 14: more footage per voice -- models trained on different corpora, scored on the same held-out clips.

Run: .venv/bin/python benchmarks/bench_footage.py SHARDS_DIR --model LABEL=SEED=MODEL [--model ...]
     [--exclude-trained TRAIN_SHARDS ...] [--splits val test known]

Every model is scored on the held-out splits of one shards folder (e.g. the 4x benchmark corpus's), as
`a2bs evaluate` scores them (whole clips, each frame once; with the average identity, and with the
true identity of each clip's face: "+id"), so models trained on a smaller and a larger corpus of the
same voices meet the same clips. `--exclude-trained DIR` leaves out of every scored split the clips
in the train split of DIR (another model's training shards): a "known voices, unseen clips" split of
the larger corpus then holds only clips that no model here trained on. Prints one markdown table
with a row per model and the mean of each label.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import machine, table

from a2bs.evaluate.report import score_split
from a2bs.manifests import ShardsManifest
from a2bs.models.model_file import load_model_file

METRICS = (("lip_corr", "lip r"), ("jaw_corr", "jaw r"), ("mouth_mae", "mouth MAE"), ("mae", "MAE"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shards")
    ap.add_argument("--model", action="append", required=True, help="LABEL=SEED=MODEL_FILE (repeatable)")
    ap.add_argument("--exclude-trained", action="append", default=[], metavar="TRAIN_SHARDS",
                    help="leave out the clips of this folder's train split (repeatable)")
    ap.add_argument("--splits", nargs="+", default=["val", "test", "known"])
    ap.add_argument("--per-speaker", default="test", help="split of the per-speaker table (means per label)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    excluded = {c for d in args.exclude_trained for c in ShardsManifest.load(d).splits["train"].clips}
    manifest = ShardsManifest.load(args.shards)
    n_clips = {s: len(set(manifest.splits[s].clips) - excluded) for s in args.splits}
    left_out = {s: len(set(manifest.splits[s].clips) & excluded) for s in args.splits}
    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f}. Scored clips per split: "
          + ", ".join(f"{s} {n_clips[s]} ({left_out[s]} left out)" for s in args.splits), flush=True)
    cols = [(s, w, k) for s in args.splits for w in (False, True) for k, _ in METRICS]
    rows, by_label, speakers = [], {}, {}
    for spec in args.model:
        label, seed, path = spec.split("=", 2)
        model, card = load_model_file(path)
        cells, per_speaker = {}, {}
        for split in args.splits:
            for with_id in (False, True):
                scored = score_split(model, args.shards, split, identities=card.identities if with_id else (),
                                     exclude=excluded)
                cells.update({(split, with_id, k): scored.metrics[k] for k, _ in METRICS})
                if split == args.per_speaker:
                    for spk, m in scored.groups.items():
                        per_speaker.setdefault(spk, {}).update({(with_id, k): m[k] for k, _ in METRICS})
        for spk, spk_cells in per_speaker.items():
            speakers.setdefault((spk, label), []).append(spk_cells)
        by_label.setdefault(label, []).append(cells)
        rows.append([label, seed, *(f"{cells[c]:.3f}" for c in cols)])
        print(rows[-1], flush=True)
    for label, runs in by_label.items():
        if len(runs) > 1:
            rows.append([f"**{label}** mean", len(runs), *(f"**{mean(r[c] for r in runs):.3f}**" for c in cols)])
    heads = [f"{s}{' +id' if w else ''} {short}" for s, w, k in cols for short in [dict(METRICS)[k]]]
    print(table(["model", "seed", *heads], rows))
    per_cols = [(w, k) for w in (False, True) for k, _ in METRICS[:3]]
    print(f"\n{args.per_speaker} per speaker, mean over each label's models:\n")
    print(table(["speaker", "model", *(f"{'+id ' if w else ''}{dict(METRICS)[k]}" for w, k in per_cols)],
                [[spk, label, *(f"{mean(r[c] for r in runs):.3f}" for c in per_cols)]
                 for (spk, label), runs in sorted(speakers.items())]))


if __name__ == "__main__":
    main()
