"""`a2bs stream`: Live Link UDP to a real socket, JSON lines at real-time pace, streaming == offline."""

from __future__ import annotations

import json
import math
import queue
import socket
import sys
import threading
import time

import numpy as np
import pytest
from infer_support import causal_model, noncausal_model, speech_wav  # noqa: F401  (fixtures)

import a2bs
from a2bs.cli import main
from a2bs.infer.curves import Curves, load_npz
from a2bs.infer.live import CallbackSink, file_blocks, run_stream
from a2bs.infer.livelink import WIRE_CURVES, decode_packet, read_csv
from a2bs.schema import TARGET_NAMES

DURATION_S = 2.013


class UdpReceiver:
    """A real UDP socket on 127.0.0.1; a thread hands each datagram to a queue as it arrives."""

    END = b"end-of-test"

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.datagrams: queue.Queue[bytes] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            data = self.sock.recv(4096)
            self.datagrams.put(data)
            if data == self.END:
                return

    def take(self, n: int, timeout_s: float = 60.0) -> list[bytes]:
        """The next `n` datagrams, waiting for each as long as `timeout_s` (a failure guard, not a pace)."""
        return [self.datagrams.get(timeout=timeout_s) for _ in range(n)]

    def rest(self, timeout_s: float = 60.0) -> list[bytes]:
        """Send END from another socket and return what arrived before it; closes the receiver."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(self.END, ("127.0.0.1", self.port))
        rest = []
        while (data := self.datagrams.get(timeout=timeout_s)) != self.END:
            rest.append(data)
        self._thread.join()
        self.sock.close()
        return rest


def test_livelink_udp_packets(causal_model, speech_wav, tmp_path, capsys):
    rx = UdpReceiver()
    code = main(["stream", str(causal_model), str(speech_wav), "--livelink", f"127.0.0.1:{rx.port}",
                 "--no-realtime", "--fps", "60", "infer.livelink_subject=TestFace"])
    assert code == 0
    assert "stream: 121 frames" in capsys.readouterr().out
    n_frames = math.ceil(DURATION_S * 60)  # as many frames as the audio implies
    packets = rx.take(n_frames)  # every packet the stream sent is delivered; wait for each
    assert rx.rest() == []  # and nothing after them
    assert len(packets) == n_frames == 121
    packets.sort(key=lambda p: decode_packet(p).frame_number)  # UDP may reorder; the frame number says where
    decoded = [decode_packet(p) for p in packets]
    assert {p.subject for p in decoded} == {"TestFace"}
    assert len({p.device_id for p in decoded}) == 1
    assert [p.frame_number for p in decoded] == list(range(121))
    assert all((p.fps_numerator, p.fps_denominator, p.version) == (60, 1, 6) for p in decoded)
    assert decoded[60].time_s == pytest.approx(1.0)
    # Same curves as `a2bs infer` writes to its Live Link CSV (6 decimals there).
    assert main(["infer", str(causal_model), str(speech_wav), "--out", str(tmp_path), "--fps", "60"]) == 0
    _, _, csv_values = read_csv(str(tmp_path / "speech.csv"))
    udp_values = np.stack([p.values for p in decoded])
    np.testing.assert_allclose(udp_values, csv_values, atol=2e-6)
    # Raw layout: value i of the payload is Unreal's enum entry i (JawLeft before JawRight).
    raw = np.frombuffer(packets[5][-61 * 4 :], dtype=">f4")
    assert raw[WIRE_CURVES.index("JawLeft")] == pytest.approx(csv_values[5, 16], abs=2e-6)  # CSV: JawRight, JawLeft


def test_realtime_jsonl_equals_offline(causal_model, speech_wav, tmp_path, capsys):
    assert main(["infer", str(causal_model), str(speech_wav), "--out", str(tmp_path), "--fps", "60",
                 "--format", "npy"]) == 0
    offline = load_npz(tmp_path / "speech.npz")
    capsys.readouterr()
    t0 = time.perf_counter()
    assert main(["stream", str(causal_model), str(speech_wav), "--jsonl", "--fps", "60"]) == 0
    wall_s = time.perf_counter() - t0
    out = capsys.readouterr()
    assert wall_s >= DURATION_S - 0.05  # paced at real time
    frames = [json.loads(line) for line in out.out.splitlines()]
    assert [f["frame"] for f in frames] == list(range(len(offline)))
    streamed = np.array([[f["curves"][n] for n in TARGET_NAMES] for f in frames])
    np.testing.assert_allclose(streamed, offline.values, atol=1e-5)  # streaming == offline
    latency = np.array([f["latency_ms"] for f in frames])
    times = np.array([f["time_s"] for f in frames])
    # A frame needs audio up to 16 ms (n_fft / 2) past its own time, so none can leave sooner
    # (except the last few, which the end-of-stream flush completes with zero padding).
    assert latency[times < DURATION_S - 0.03].min() >= 16.0 and latency.min() > 0.0
    assert "latency mean" in out.err and "real time" in out.err and "CPU" in out.err


def test_session_api_and_callback_sink(causal_model, speech_wav):
    model = a2bs.load_model(causal_model)
    offline = model.predict(speech_wav, fps=50)
    from a2bs.extract.audio import load_audio

    samples = load_audio(speech_wav, model.sample_rate)
    got: list[Curves] = []
    report = run_stream(model.stream(fps=50), file_blocks(samples, model.sample_rate, 37.0),
                        [CallbackSink(got.append)], realtime=False)
    assert report.frames == len(offline) and not report.latency_ms and report.audio_s == pytest.approx(DURATION_S)
    assert report.kept_up == (report.compute_s < report.audio_s)
    np.testing.assert_allclose(Curves.concat(got).values, offline.values, atol=1e-5)
    assert [c.start_frame for c in got] == sorted(c.start_frame for c in got)
    # Direct push/close with odd block sizes.
    session = model.stream(fps=50)
    parts = [session.push(samples[i : i + 333]) for i in range(0, len(samples), 333)] + [session.close()]
    np.testing.assert_allclose(np.concatenate([p.values for p in parts]), offline.values, atol=1e-5)
    with pytest.raises(ValueError):
        session.push(samples[:10])


def test_noncausal_model_cannot_stream(noncausal_model, speech_wav, capsys):
    assert main(["stream", str(noncausal_model), str(speech_wav), "--no-realtime"]) == 1
    err = capsys.readouterr().err
    assert "not causal" in err and "cannot stream" in err


def test_microphone_needs_sounddevice(causal_model, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed
    assert main(["stream", str(causal_model), "mic", "--seconds", "1"]) == 2
    assert "sounddevice" in capsys.readouterr().err


def test_bad_livelink_address(causal_model, speech_wav, capsys):
    assert main(["stream", str(causal_model), str(speech_wav), "--livelink", "127.0.0.1:port"]) == 2
    assert "port must be a number" in capsys.readouterr().err


def test_realtime_stream_catches_up_after_a_stall(causal_model, speech_wav):
    model = a2bs.load_model(causal_model)
    from a2bs.extract.audio import load_audio

    samples = load_audio(speech_wav, model.sample_rate)[:8000]  # 0.5 s
    offline = model.predict(samples, fps=60)
    got: list[Curves] = []

    def slow_consumer(chunk: Curves) -> None:
        got.append(chunk)
        if len(got) == 3:
            time.sleep(0.2)  # the stall under test (20 blocks): every later block is late, whatever the load

    report = run_stream(model.stream(fps=60), file_blocks(samples, model.sample_rate, 10.0),
                        [CallbackSink(slow_consumer)], realtime=True)
    assert report.catch_up_steps >= 1 and report.blocks < 50  # late blocks were taken together
    streamed = Curves.concat(got)
    assert len(streamed) == report.frames == 30  # 0.5 s at 60 fps: frames at 0, 1/60, ... 29/60 s
    np.testing.assert_allclose(streamed.values, offline.values, atol=1e-5)


def test_onnx_backend_streams_like_offline(causal_model, speech_wav, noncausal_model):
    offline = a2bs.load_model(causal_model).predict(speech_wav, fps=60)
    model = a2bs.load_model(causal_model, **{"infer.stream_backend": "onnx"})
    from a2bs.extract.audio import load_audio

    samples = load_audio(speech_wav, model.sample_rate)
    session = model.stream(fps=60)
    parts = [session.push(samples[i : i + 160]) for i in range(0, len(samples), 160)] + [session.close()]
    np.testing.assert_allclose(Curves.concat(parts).values, offline.values, atol=1e-4)
    with pytest.raises(ValueError, match="not causal"):
        a2bs.load_model(noncausal_model, **{"infer.stream_backend": "onnx"}).stream()
    with pytest.raises(ValueError, match="stream_backend"):
        a2bs.load_model(causal_model, **{"infer.stream_backend": "tflite"}).stream()
