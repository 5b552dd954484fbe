"""`a2bs serve` on 127.0.0.1 with real sockets: concurrent sessions get exactly the offline frames;
bad, slow and vanishing clients, the session limit and the token leave the other sessions alone."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
from infer_support import (  # noqa: F401  (fixtures)
    causal_model,
    make_model,
    noncausal_model,
    speech_like,
    write_wav,
)
from support import REPO, free_port
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from a2bs.cli import main
from a2bs.config import load_config
from a2bs.infer.client import ServeError, blocks_of, stream_async
from a2bs.infer.livelink import decode_packet
from a2bs.infer.offline import load_model, predict_samples
from a2bs.infer.serve import BackgroundServer
from a2bs.infer.wire import encode_pcm, wire_samples
from a2bs.schema import TARGET_NAMES

ATOL = 1e-5  # streaming == offline on float32 outputs; the wire rounds to 1e-6
pytestmark = pytest.mark.timeout(300)


def _server(model_path, *overrides: str, token: str | None = None) -> BackgroundServer:
    cfg = load_config(None, ["serve.port=0", *overrides])
    return BackgroundServer(load_model(str(model_path), cfg), cfg, token)


def _offline(srv: BackgroundServer, samples: np.ndarray, fps: float, sample_rate: int = 16000,
             encoding: str = "pcm_s16le") -> np.ndarray:
    """What `a2bs infer` computes for the audio the server hears (same config, same post-processing)."""
    server = srv.server
    return predict_samples(server.model, wire_samples(samples, encoding), server.cfg, fps, sample_rate).values


def _metrics(srv) -> str:  # a BackgroundServer, or anything with http_url
    return urllib.request.urlopen(srv.http_url + "/metrics", timeout=10).read().decode()


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _wait_for_metric(srv, name: str, at_least: float | None = None,
                     at_most: float | None = None, timeout_s: float = 30.0) -> float:
    """Poll /metrics until `name` is >= `at_least` (or <= `at_most`): the server updates its metrics
    after the client has seen the outcome, so the test waits for the condition, not for a time."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = _metric(_metrics(srv), name)
        if (at_least is not None and value >= at_least) or (at_most is not None and value <= at_most) \
                or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


async def _raw(url: str, start, messages=(), abort: bool = False) -> tuple[list[dict], int | None]:
    """A hand-written client: start message, then `messages`; returns the replies and the close code."""
    replies: list[dict] = []
    async with connect(url, compression=None) as ws:
        await ws.send(start if isinstance(start, (str, bytes)) else json.dumps(start))
        try:
            for m in messages:
                await ws.send(m)
            if abort:  # vanish without a close handshake
                replies.append(json.loads(await ws.recv()))  # "ready"
                ws.transport.abort()
                return replies, None
            async for raw in ws:
                replies.append(json.loads(raw))
        except ConnectionClosed:
            pass
        return replies, ws.close_code


@pytest.mark.parametrize(("backend", "event_loop"), [("torch", "asyncio"), ("onnx", "uvloop")])
def test_concurrent_sessions_get_the_offline_frames(causal_model, backend, event_loop):
    a, b, c, d = (speech_like(dur, seed=s) for dur, s in ((2.013, 1), (1.7, 2), (1.5, 3), (2.4, 4)))
    c48 = speech_like(1.5, sample_rate=48000, seed=3)
    with _server(causal_model, "serve.max_sessions=8", f"serve.backend={backend}",
                 f"serve.event_loop={event_loop}") as srv:
        assert srv.server.engine.backend == backend
        assert type(srv._loop).__module__.split(".")[0] == event_loop  # the loop the setting names
        async def run():
            return await asyncio.gather(
                stream_async(srv.url, blocks_of(a, 16000, 20), 16000, fps=60, frames="json"),  # real-time pace
                stream_async(srv.url, blocks_of(b, 16000, 7), 16000, fps=30, encoding="pcm_f32le", realtime=False),
                stream_async(srv.url, blocks_of(c48, 48000, 33), 48000, fps=60, realtime=False),  # resampled
                stream_async(srv.url, blocks_of(d, 16000, 1000), 16000, fps=100, realtime=False),  # > a step
                stream_async(srv.url, blocks_of(c, 16000, 333), 16000, fps=50, realtime=False),
            )

        ra, rb, rc, rd, re_ = asyncio.run(run())
        assert rb.ready["frames"] == "f32" and ra.ready["frames"] == "json" and "worker" not in ra.ready
        expected = [(ra, _offline(srv, a, 60)), (rb, _offline(srv, b, 30, encoding="pcm_f32le")),
                    (rc, _offline(srv, c48, 60, sample_rate=48000)), (rd, _offline(srv, d, 100)),
                    (re_, _offline(srv, c, 50))]
        for got, ref in expected:
            assert got.names == list(TARGET_NAMES)
            assert got.frames == len(got.values) == len(ref) and got.dropped == 0
            np.testing.assert_allclose(got.values, ref, atol=ATOL)
        assert len(ra.values) == 121  # 2.013 s at 60 fps: frames at 0 .. 120/60 s
        assert ra.starts == sorted(ra.starts) and len(ra.starts) > 20  # frames arrive as the audio does
        lat = ra.latency_ms[np.isfinite(ra.latency_ms)]
        assert len(lat) > 100 and lat.min() >= 0.0
        metrics = _metrics(srv)
        assert _metric(metrics, "a2bs_serve_frames_total") == sum(len(r.values) for r, _ in expected)
        assert _metric(metrics, "a2bs_serve_step_seconds_count") > 0
        assert _metric(metrics, 'a2bs_serve_tick_streams_bucket{le="1.0"}') < _metric(
            metrics, "a2bs_serve_tick_streams_count")  # some ticks stepped several sessions together


def test_bad_slow_and_vanishing_clients_leave_other_sessions_alone(causal_model):
    good = speech_like(2.0, seed=5)
    wrong_rate = speech_like(1.0, seed=6)
    long_audio = speech_like(12.0, seed=7)  # 12 s at 240 fps: more frames than the socket buffers hold
    with _server(causal_model, "serve.send_queue_messages=2", "serve.max_step_frames=8",
                 "serve.socket_send_buffer_bytes=65536") as srv:
        half = threading.Event()
        resume = threading.Event()

        def paused_blocks():
            for i, block in enumerate(blocks_of(good, 16000, 20)):
                if i == 50:  # half-way: let the bad clients do their worst, then go on
                    half.set()
                    assert resume.wait(120), "the bad clients never finished"
                yield block

        async def slow_reader():
            async with connect(srv.url, compression=None, max_queue=1) as ws:
                await ws.send(json.dumps({"sample_rate": 16000, "fps": 240}))
                assert json.loads(await ws.recv())["event"] == "ready"
                for block in blocks_of(long_audio, 16000, 500):
                    await ws.send(encode_pcm(block))
                await ws.send(json.dumps({"event": "end"}))
                # Read nothing until the server had to drop frames for us, then everything.
                dropped = await asyncio.to_thread(_wait_for_metric, srv, "a2bs_serve_frames_dropped_total", 1,
                                                  None, 120)
                assert dropped >= 1
                return [json.loads(m) async for m in ws]

        async def bad_clients():
            await asyncio.to_thread(half.wait, 60)
            start = {"sample_rate": 16000}
            results = await asyncio.gather(
                _raw(srv.url, b"\x00\x01\x02"),  # audio before the start message
                _raw(srv.url, "{not json"),
                _raw(srv.url, {"sample_rate": 0}),  # a rate no audio has
                _raw(srv.url, {"sample_rate": 16000, "encoding": "mp3"}),
                _raw(srv.url, start, [b"\x01\x02\x03"]),  # half a sample
                _raw(srv.url, start, ["hello"]),  # text that is not the end message
                _raw(srv.url, start, [np.zeros(800, "<i2").tobytes()], abort=True),  # vanishes mid-stream
                # Declares 44.1 kHz but sends 16 kHz audio: its own frames are wrong, nobody else's.
                stream_async(srv.url, blocks_of(wrong_rate, 44100, 20), 44100, fps=60, realtime=False),
            )
            resume.set()
            return results

        async def run():
            return await asyncio.gather(
                stream_async(srv.url, paused_blocks(), 16000, fps=60, blocking_source=True),
                bad_clients(), slow_reader())

        good_result, bad, slow = asyncio.run(run())
        assert good_result.dropped == 0
        np.testing.assert_allclose(good_result.values, _offline(srv, good, 60), atol=ATOL)
        reasons = [replies[-1].get("reason", "") for replies, _ in bad[:6]]
        assert "first message must be the JSON start message" in reasons[0]
        assert "not valid JSON" in reasons[1]
        assert "sample_rate must be" in reasons[2] and "got 0" in reasons[2]
        assert "encoding must be one of" in reasons[3]
        assert "not a whole number of 2-byte samples" in reasons[4]
        assert '{"event": "end"}' in reasons[5]
        assert all(code == 1008 for _, code in bad[:6])
        assert bad[6][0][0]["event"] == "ready" and bad[6][0][0]["precision"] == "fp32"  # frames equal offline
        wrong = bad[7]  # exactly what `a2bs infer` makes of the same samples at the declared rate
        np.testing.assert_allclose(wrong.values, _offline(srv, wrong_rate, 60, sample_rate=44100), atol=ATOL)
        assert len(wrong.values) == 22 != len(good_result.values)
        # The slow reader: gaps where the server dropped its oldest frames, the rest exact.
        done = slow[-1]
        assert done["event"] == "done" and done["dropped"] > 0
        frames = [m for m in slow if m["event"] == "frames"]
        assert sum(len(m["values"]) for m in frames) + done["dropped"] == done["frames"] == 2880
        ref = _offline(srv, long_audio, 240)
        for m in frames[:: max(1, len(frames) // 50)]:
            np.testing.assert_allclose(m["values"], ref[m["start"] : m["start"] + len(m["values"])], atol=ATOL)
        assert _wait_for_metric(srv, 'a2bs_serve_sessions_ended_total{outcome="vanished"}', 1) == 1
        metrics = _metrics(srv)
        assert _metric(metrics, 'a2bs_serve_sessions_ended_total{outcome="error"}') == 2  # half sample, text
        assert _metric(metrics, 'a2bs_serve_sessions_refused_total{reason="bad_start"}') == 4


def test_a_session_far_ahead_does_not_hold_up_the_others_on_the_step_clock(causal_model):
    bulk = speech_like(4.0, seed=8)  # 400 frames sent at once: at 1 frame a tick, 400 ticks of the clock
    small = speech_like(0.5, seed=9)
    late = speech_like(0.7, seed=10)
    start = {"sample_rate": 16000}
    with _server(causal_model, "serve.max_step_frames=1", "serve.step_period_ms=10") as srv:
        async def run():
            bulk_task = asyncio.create_task(stream_async(srv.url, blocks_of(bulk, 16000, 4000), 16000, fps=60,
                                                         realtime=False))
            await asyncio.to_thread(_wait_for_metric, srv, "a2bs_serve_frames_total", 1)  # bulk is stepping
            # Sessions join and leave between the bulk session's ticks: one vanishes mid-stream, two
            # stream to the end (50 and 70 ticks' worth of frames, at 1 frame a tick too).
            vanished = await _raw(srv.url, start, [encode_pcm(small[:1600])], abort=True)
            small_result, late_result = await asyncio.gather(
                stream_async(srv.url, blocks_of(small, 16000, 20), 16000, fps=60, realtime=False),
                stream_async(srv.url, blocks_of(late, 16000, 100), 16000, fps=50, realtime=False))
            bulk_done_before = bulk_task.done()
            return await bulk_task, small_result, late_result, vanished, bulk_done_before

        bulk_result, small_result, late_result, vanished, bulk_done_before = asyncio.run(run())
        # The short sessions were stepped beside the bulk one, tick by tick, not after it.
        assert not bulk_done_before
        assert vanished[0][0]["event"] == "ready"
        for got, audio, fps in ((bulk_result, bulk, 60), (small_result, small, 60), (late_result, late, 50)):
            assert got.dropped == 0
            np.testing.assert_allclose(got.values, _offline(srv, audio, fps), atol=ATOL)
        assert _wait_for_metric(srv, 'a2bs_serve_sessions_ended_total{outcome="vanished"}', 1) == 1


def test_session_limit_token_health_and_idle_timeout(causal_model, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    with _server(causal_model, "serve.max_sessions=2", "serve.idle_timeout_s=1", "serve.require_token=true",
                 f"serve.token_file={token_file}", token="s3cret") as srv:
        assert urllib.request.urlopen(srv.http_url + "/healthz", timeout=10).read() == b"ok\n"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(srv.http_url + "/nothing", timeout=10)
        assert err.value.code == 404
        audio = speech_like(0.5, seed=8)

        async def run():
            for token in (None, "wrong"):
                with pytest.raises(ServeError) as refused:
                    await stream_async(srv.url, blocks_of(audio, 16000, 20), 16000, token=token)
                assert refused.value.status == 401 and "token is required" in refused.value.reason
            headers = {"Authorization": "Bearer s3cret"}
            async with connect(srv.url, additional_headers=headers) as one, \
                    connect(srv.url + "?token=s3cret") as two:  # the query form browsers can use
                for ws in (one, two):
                    await ws.send(json.dumps({"sample_rate": 16000}))
                    assert json.loads(await ws.recv())["event"] == "ready"
                with pytest.raises(ServeError, match="server full: 2 of 2 sessions"):
                    await stream_async(srv.url, blocks_of(audio, 16000, 20), 16000, token="s3cret")
                await two.send(json.dumps({"event": "end"}))
                assert [json.loads(m)["event"] async for m in two] == ["done"]
                # Silence from a session beyond serve.idle_timeout_s: an error for it, then a close.
                reply = json.loads(await one.recv())
                assert reply == {"event": "error", "reason": "idle for 1 s: closing"}
            # Both slots come free once the server has seen both sessions end.
            assert await asyncio.to_thread(_wait_for_metric, srv, "a2bs_serve_sessions", None, 0) == 0
            return await stream_async(srv.url, blocks_of(audio, 16000, 20), 16000, token="s3cret", realtime=False)

        freed = asyncio.run(run())
        np.testing.assert_allclose(freed.values, _offline(srv, audio, 60), atol=ATOL)
        metrics = _metrics(srv)
        assert _metric(metrics, 'a2bs_serve_sessions_refused_total{reason="token"}') == 2
        assert _metric(metrics, 'a2bs_serve_sessions_refused_total{reason="full"}') == 1


def test_livelink_udp_from_the_server(causal_model):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    rx.bind(("127.0.0.1", 0))
    audio = speech_like(1.0, seed=9)
    with _server(causal_model) as srv:
        got = asyncio.run(stream_async(srv.url, blocks_of(audio, 16000, 20), 16000, fps=60, realtime=False,
                                       start={"livelink": f"127.0.0.1:{rx.getsockname()[1]}"}))
        refused = asyncio.run(_raw(srv.url, {"sample_rate": 16000, "livelink": "192.0.2.1:11111"}))
    rx.setblocking(False)
    packets = []
    while True:  # loopback UDP is delivered at send time: everything is in the buffer by now
        try:
            packets.append(decode_packet(rx.recv(4096)))
        except BlockingIOError:
            break
    rx.close()
    assert [p.frame_number for p in packets] == list(range(len(got.values))) and len(packets) == 60
    assert "only to the client's own address" in refused[0][-1]["reason"]


def test_cli_serve_and_stream_client(causal_model, noncausal_model, tmp_path):
    wav = write_wav(tmp_path / "speech.wav", speech_like(1.2, seed=10))
    port = free_port()
    cmd = [sys.executable, "-m", "a2bs.cli", "serve", str(causal_model), "--port", str(port), "--max-sessions", "3"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # blocks until the server listens (or exits)
        assert f"listening on ws://127.0.0.1:{port}/v1/stream" in line and "up to 3 sessions" in line, \
            line + proc.stderr.read()
        out = subprocess.run([sys.executable, "-m", "a2bs.cli", "stream", str(wav), "--server",
                              f"ws://127.0.0.1:{port}/v1/stream", "--jsonl", "--fps", "60", "--no-realtime"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        frames = [json.loads(x) for x in out.stdout.splitlines()]
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "serve: stopped after 1 sessions" in rest
    cfg = load_config()
    from a2bs.extract.audio import load_audio

    offline = predict_samples(load_model(str(causal_model), cfg), wire_samples(load_audio(wav, 16000)), cfg, 60)
    assert [f["frame"] for f in frames] == list(range(len(offline)))
    np.testing.assert_allclose([[f["curves"][n] for n in TARGET_NAMES] for f in frames], offline.values, atol=ATOL)
    assert "stream: 72 frames from 1.20 s of audio via ws://" in out.stderr
    # A non-causal model cannot serve: one clear line, exit 1, before anything listens.
    assert main(["serve", str(noncausal_model), "--port", str(free_port())]) == 1
    # Binding beyond loopback without a token is a configuration error.
    assert main(["serve", str(causal_model), "--host", "0.0.0.0", "--port", str(free_port())]) == 2


def test_each_session_chooses_its_face(tmp_path):
    path = make_model(tmp_path / "faces.safetensors", identities=("anna", "ben"))
    audio = speech_like(0.8, seed=12)
    cfg = load_config(None, ["serve.port=0"])
    with BackgroundServer(load_model(str(path), cfg), cfg, identity="anna") as srv:

        async def both():
            return await asyncio.gather(
                stream_async(srv.url, blocks_of(audio, 16000, 20), 16000, fps=60, realtime=False,
                             start={"identity": "ben"}),
                stream_async(srv.url, blocks_of(audio, 16000, 20), 16000, fps=60, realtime=False),  # the default
            )

        ben, default = asyncio.run(both())
        with pytest.raises(ServeError, match=r"unknown identity 'carl' \(known: anna, ben"):
            asyncio.run(stream_async(srv.url, blocks_of(audio, 16000, 20), 16000, realtime=False,
                                     start={"identity": "carl"}))
        model, scfg = srv.server.model, srv.server.cfg
    heard = wire_samples(audio)
    np.testing.assert_allclose(ben.values, predict_samples(model, heard, scfg, 60, identity="ben").values, atol=ATOL)
    anna = predict_samples(model, heard, scfg, 60, identity="anna").values
    np.testing.assert_allclose(default.values, anna, atol=ATOL)
    assert np.abs(ben.values - anna).max() > 1e-2


def test_worker_processes_share_the_port_the_limit_and_the_metrics(causal_model):
    clips = [speech_like(1.0 + 0.2 * i, seed=30 + i) for i in range(4)]
    cmd = [sys.executable, "-m", "a2bs.cli", "serve", str(causal_model), "--port", "0", "--max-sessions", "4",
           "serve.workers=2"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # once every worker serves
        assert "up to 4 sessions, 2 worker processes" in line, line + proc.stderr.read()
        url = re.search(r"listening on (ws://[^ ]+)", line).group(1)
        server = SimpleNamespace(http_url=url.replace("ws://", "http://").replace("/v1/stream", ""))
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
        admitted, release = threading.Barrier(5, timeout=120), threading.Barrier(5, timeout=120)

        def gated(audio):
            admitted.wait()  # this session got "ready"
            release.wait()  # ... and the fifth has been refused: now the audio
            yield from blocks_of(audio, 16000, 20)

        async def run():
            sessions = [asyncio.create_task(stream_async(url, gated(a), 16000, fps=60, blocking_source=True,
                                                         frames="f32" if i % 2 else "json"))
                        for i, a in enumerate(clips)]
            await asyncio.to_thread(admitted.wait)
            # Four sessions over two workers, each with free slots of its own: the limit is the server's.
            with pytest.raises(ServeError, match="server full: 4 of 4 sessions"):
                await stream_async(url, blocks_of(clips[0], 16000, 20), 16000)
            await asyncio.to_thread(release.wait)
            return await asyncio.gather(*sessions)

        results = asyncio.run(run())
        assert sorted(r.ready["worker"] for r in results) == [0, 0, 1, 1]  # to the worker with the fewest
        cfg = load_config()
        model = load_model(str(causal_model), cfg)
        for got, audio in zip(results, clips):
            ref = predict_samples(model, wire_samples(audio), cfg, 60).values
            assert got.frames == len(got.values) == len(ref) and got.dropped == 0
            np.testing.assert_allclose(got.values, ref, atol=ATOL)
        # Whichever worker answers a scrape, it reports the whole server (the parent alternates them).
        total = sum(len(r.values) for r in results)
        assert _wait_for_metric(server, 'a2bs_serve_sessions_ended_total{outcome="done"}', 4) == 4
        for _ in range(4):
            metrics = _metrics(server)
            assert _metric(metrics, "a2bs_serve_frames_total") == total
            assert _metric(metrics, 'a2bs_serve_sessions_ended_total{outcome="done"}') == 4
            assert _metric(metrics, 'a2bs_serve_sessions_refused_total{reason="full"}') == 1
            assert _metric(metrics, "a2bs_serve_sessions") == 0
        # Killed outright, the parent cannot stop its workers: they notice and stop by themselves.
        proc.kill()
        proc.wait(60)
        gone, alive = psutil.wait_procs(workers, timeout=60)
        assert not alive and len(gone) == 2
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=60)
