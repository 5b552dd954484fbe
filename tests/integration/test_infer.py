"""`a2bs infer` and the Python API on real files: formats, fps, video inputs, batch on Ray Data, S3."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from infer_support import (  # noqa: F401  (fixtures)
    SAMPLE_RATE,
    causal_model,
    make_model,
    noncausal_model,
    speech_like,
    speech_wav,
    write_wav,
)
from media_factory import (
    make_no_audio,
    make_standin_source,
    make_text_as_mp4,
    make_zero_byte,
)

import a2bs
from a2bs.cli import main
from a2bs.extract.audio import load_audio
from a2bs.infer.curves import load_npz
from a2bs.infer.livelink import LIVELINK_CSV_HEADER, read_csv
from a2bs.runtime import storage
from a2bs.schema import TARGET_NAMES

DURATION_S = 2.013  # speech_wav


def test_single_wav_to_livelink_csv(causal_model, speech_wav, tmp_path, capsys):
    assert main(["infer", str(causal_model), str(speech_wav), "--out", str(tmp_path), "--fps", "60"]) == 0
    assert "infer: 1 ok, 0 failed" in capsys.readouterr().out
    header, timecodes, values = read_csv(str(tmp_path / "speech.csv"))
    assert header == list(LIVELINK_CSV_HEADER)
    assert len(timecodes) == math.ceil(DURATION_S * 60) == 121  # one row per frame time inside the audio
    assert timecodes[:3] == ["00:00:00:00.000", "00:00:00:01.000", "00:00:00:02.000"]
    assert timecodes[-1] == "00:00:02:00.000"
    shapes = values[:, :52]
    assert shapes.min() >= 0.0 and shapes.max() <= 1.0 and shapes.std(axis=0).mean() > 0.01  # curves move
    assert np.abs(values[:, 52:55]).max() < 1.0  # head angles in radians
    assert json.loads((tmp_path / "_failures.json").read_text()) == []


def test_formats_agree(causal_model, speech_wav, tmp_path):
    for fmt in ("livelink-csv", "json", "npz", "parquet"):  # "npy" (an alias of npz) in the tests below
        assert main(["infer", str(causal_model), str(speech_wav), "--out", str(tmp_path), "--format", fmt,
                     "--fps", "30"]) == 0
    curves = load_npz(tmp_path / "speech.npz")
    assert curves.fps == 30.0 and len(curves) == 61 and curves.names == list(TARGET_NAMES)
    _, _, csv_values = read_csv(str(tmp_path / "speech.csv"))
    np.testing.assert_allclose(csv_values[:, :52], curves.blendshapes, atol=1e-6)
    data = json.loads((tmp_path / "speech.json").read_text())
    assert data["frameCount"] == 61 and data["sessionInfo"]["targetFPS"] == 30.0
    assert data["sessionInfo"]["sessionId"] == "session_speech_infer"
    assert data["frames"][10]["blendshapes"]["jawOpen"] == pytest.approx(float(curves.channel("jawOpen")[10]),
                                                                         abs=1e-6)
    table = pq.read_table(tmp_path / "speech.parquet")
    assert table.num_rows == 61
    np.testing.assert_array_equal(table.column("headQw").to_numpy(), curves.channel("headQw"))


def test_fps_30_is_every_other_60_frame(causal_model, speech_wav):
    model = a2bs.load_model(causal_model)
    c60, c30 = model.predict(speech_wav, fps=60), model.predict(speech_wav, fps=30)
    np.testing.assert_allclose(c30.values, c60.values[::2][: len(c30)], atol=1e-6)
    c100 = model.predict(speech_wav, fps=100)
    assert len(c100) == math.ceil(DURATION_S * 100) and c100.resample(60).values.shape == c60.values.shape


def test_python_api(causal_model, speech_wav, tmp_path):
    model = a2bs.load_model(str(causal_model), **{"infer.fps": 60})
    assert model.causal and model.sample_rate == 16000
    from_file = model.predict(speech_wav)
    assert from_file.fps == 60 and from_file.values.shape == (121, 59)
    samples = load_audio(speech_wav, 16000)
    np.testing.assert_allclose(model.predict(samples, 16000).values, from_file.values, atol=1e-6)
    # Stereo at 44.1 kHz is mixed down and resampled.
    import librosa

    stereo = np.stack([librosa.resample(samples, orig_sr=16000, target_sr=44100)] * 2, axis=1)
    c = model.predict(stereo, sample_rate=44100)
    assert len(c) == len(from_file)
    assert np.corrcoef(c.channel("jawOpen"), from_file.channel("jawOpen"))[0, 1] > 0.9
    from_file.to_livelink_csv(tmp_path / "api.csv")
    assert (tmp_path / "api.csv").read_text().startswith("Timecode,BlendShapeCount,EyeBlinkLeft,")
    assert from_file.to_json()["frameCount"] == 121


def test_import_a2bs_stays_light():
    code = "import sys, a2bs; print('torch' in sys.modules, 'ray' in sys.modules, callable(a2bs.load_model))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True"]


def test_default_model_and_video_input(causal_model, tmp_path):
    video = make_standin_source(tmp_path / "talk.mp4", seconds=1.5, size="160x120")
    assert main(["infer", "default", str(video), "--out", str(tmp_path / "out"), "--format", "npy",
                 f"infer.model_path={causal_model}"]) == 0
    curves = load_npz(tmp_path / "out" / "talk.npz")
    assert curves.fps == 30.0 and abs(len(curves) - 45) <= 1  # the video's audio track: ~1.5 s
    assert main(["infer", "default", str(video), "--out", str(tmp_path / "o2"),
                 f"infer.model_path={tmp_path / 'missing.safetensors'}"]) == 1


def test_bad_single_inputs(causal_model, tmp_path, capsys):
    bad = make_text_as_mp4(tmp_path)
    assert main(["infer", str(causal_model), str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "not a media file" in err
    assert main(["infer", str(causal_model), str(tmp_path / "x.wav"), "--out", str(tmp_path / "o"),
                 "--fps", "0"]) == 2


@pytest.mark.ray
def test_batch_folder_on_ray_data(ray_cluster, causal_model, tmp_path, capsys):
    src = tmp_path / "in"
    write_wav(src / "alice" / "a1.wav", speech_like(1.0, seed=1))
    write_wav(src / "bob" / "b1.wav", speech_like(1.3, seed=2))
    make_text_as_mp4(src)
    make_zero_byte(src)
    standin = make_standin_source(tmp_path / "standin.mp4", seconds=1.0, size="160x120")
    make_no_audio(src, standin)
    out = tmp_path / "out"
    code = main(["infer", str(causal_model), str(src), "--out", str(out), "--format", "json", "--fps", "60"])
    captured = capsys.readouterr()
    assert code == 1  # some inputs failed
    assert "infer: 2 ok, 3 failed" in captured.out
    a1 = json.loads((out / "alice" / "a1.json").read_text())
    b1 = json.loads((out / "bob" / "b1.json").read_text())
    assert a1["frameCount"] == 60 and b1["frameCount"] == 78
    failures = {f["source"].rsplit("/", 1)[-1]: f["reason"] for f in json.loads((out / "_failures.json").read_text())}
    assert set(failures) == {"text_file.mp4", "zero_byte.mp4", "no_audio.mp4"}
    assert "not a media file" in failures["text_file.mp4"]
    assert "empty" in failures["zero_byte.mp4"]
    assert "no audio" in failures["no_audio.mp4"]
    assert sorted(p.name for p in out.rglob("*.json") if not p.name.startswith("_")) == ["a1.json", "b1.json"]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["ok"] == 2 and len(summary["files"]) == 5
    for line in ("failed: ", "text_file.mp4: not a media file"):
        assert line in captured.err


@pytest.mark.ray
def test_batch_from_s3_prefix(ray_cluster, s3_server, causal_model, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="infer-in")
    wav = write_wav(tmp_path / "c1.wav", speech_like(0.8, seed=3))
    s3.upload_file(str(wav), "infer-in", "takes/c1.wav")
    s3.put_object(Bucket="infer-in", Key="takes/broken.wav", Body=b"not audio at all")
    assert main(["infer", str(causal_model), "s3://infer-in/takes", "--out", "s3://infer-in/curves",
                 "--format", "npy"]) == 1
    local = tmp_path / "c1.npz"
    local.write_bytes(storage.read_bytes("s3://infer-in/curves/c1.npz"))
    curves = load_npz(local)
    assert len(curves) == 24
    failures = json.loads(storage.read_text("s3://infer-in/curves/_failures.json"))
    assert [f["source"] for f in failures] == ["s3://infer-in/takes/broken.wav"]


@pytest.mark.parametrize("which", ["causal", "centred"])
def test_long_inputs_run_in_exact_chunks(which, causal_model, noncausal_model, speech_wav):
    path = causal_model if which == "causal" else noncausal_model
    whole = a2bs.load_model(path).predict(speech_wav, fps=100)
    chunked = a2bs.load_model(path, **{"infer.max_chunk_frames": 37}).predict(speech_wav, fps=100)
    assert whole.values.std(axis=0).mean() > 0.01
    np.testing.assert_allclose(chunked.values, whole.values, atol=2e-5)
