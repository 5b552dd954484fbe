"""The serving engine without sockets: start-message checks, PCM and binary frames encoding, the
per-tick step cap, the send queue's drop policy, when a token is required, the worker count and the
admission limit shared by worker processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time

import numpy as np
import pytest
from support import lively_model

from a2bs.config import AudioConfig, ConfigError, load_config
from a2bs.infer.engine import ServeEngine, StreamSpec, parse_spec
from a2bs.infer.offline import LoadedModel, predict_samples
from a2bs.infer.serve_support import (
    SendQueue,
    SharedAdmission,
    StepClock,
    event_loop_factory,
    is_loopback,
    read_token,
    resolve_workers,
)
from a2bs.infer.wire import (
    StreamError,
    decode_frames_f32,
    decode_pcm,
    encode_frames_f32,
    encode_pcm,
    wire_samples,
)
from a2bs.manifests import ModelCard


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    net = lively_model("tcn_full", channels=16, dilations=(1, 2, 4))
    return LoadedModel(net, net.cfg, ModelCard.for_untrained(net.cfg), AudioConfig(), "test")


def _audio(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 2 * t) > 0)
            + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def test_start_message_checks(model) -> None:
    cfg = load_config()
    spec = parse_spec({"sample_rate": 48000, "encoding": "pcm_f32le", "fps": 30}, cfg, model)
    assert spec == StreamSpec(48000, "pcm_f32le", 30.0)
    assert parse_spec({"sample_rate": 16000}, cfg, model).fps == cfg.infer.fps
    assert parse_spec({"sample_rate": 16000}, cfg, model).frames == "json"
    assert parse_spec({"sample_rate": 16000, "frames": "f32"}, cfg, model).frames == "f32"
    bad = [
        ([1, 2], "must be a JSON object"),
        ({"sample_rate": 16000, "rate": 1}, "unknown field(s) rate"),
        ({"sample_rate": "16000"}, "sample_rate must be a whole number"),
        ({"sample_rate": 16000.5}, "sample_rate must be a whole number"),
        ({"sample_rate": 4000}, "in [8000, 192000], got 4000"),
        ({"sample_rate": 16000, "encoding": "opus"}, "encoding must be one of pcm_s16le, pcm_f32le"),
        ({"sample_rate": 16000, "fps": 0}, "fps must be a number in (0, 240]"),
        ({"sample_rate": 16000, "fps": True}, "fps must be a number"),
        ({"sample_rate": 16000, "livelink": 11111}, 'livelink must be "host:port"'),
        ({"sample_rate": 16000, "identity": "anna"}, "identity 'anna': this model has no identities"),
        ({"sample_rate": 16000, "frames": "f16"}, "frames must be one of json, f32, got 'f16'"),
    ]
    for msg, reason in bad:
        with pytest.raises(StreamError) as err:
            parse_spec(msg, cfg, model)
        assert reason in str(err.value), (msg, str(err.value))


def test_pcm_round_trip_and_errors() -> None:
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5], np.float32)
    s16 = decode_pcm(encode_pcm(x, "pcm_s16le"), "pcm_s16le")
    np.testing.assert_allclose(s16, [0.0, 0.5, -0.5, 32767 / 32768, -1.0, 32767 / 32768])
    np.testing.assert_array_equal(decode_pcm(encode_pcm(x, "pcm_f32le"), "pcm_f32le"), x)
    np.testing.assert_array_equal(wire_samples(x), s16)
    with pytest.raises(StreamError, match="7 bytes is not a whole number of 4-byte samples"):
        decode_pcm(b"\0" * 7, "pcm_f32le")
    with pytest.raises(StreamError, match="finite"):
        decode_pcm(np.array([0.0, np.nan], "<f4").tobytes(), "pcm_f32le")


def test_binary_frames_round_trip_and_errors() -> None:
    values = np.random.default_rng(0).standard_normal((3, 59)).astype(np.float32)
    data = encode_frames_f32(1234, values)
    assert len(data) == 8 + 3 * 59 * 4
    start, back = decode_frames_f32(data, 59)
    assert start == 1234 and back.dtype == np.float32
    np.testing.assert_array_equal(back, values)  # exact: no rounding on this encoding
    assert decode_frames_f32(encode_frames_f32(7, np.zeros((0, 59))), 59)[1].shape == (0, 59)
    with pytest.raises(StreamError, match="do not hold 3 frames of 58 values"):
        decode_frames_f32(data, 58)
    with pytest.raises(StreamError, match="shorter than its header"):
        decode_frames_f32(b"\0" * 5, 59)


def _run(engine: ServeEngine, feeds: dict, ends_at: dict) -> tuple[dict, dict]:
    """Feed each stream its chunks one per tick; returns its output frames and its frames still
    pending after each tick."""
    out = {s: [] for s in feeds}
    done = {s: False for s in feeds}
    pending = {s: [] for s in feeds}
    tick = 0
    while not all(done.values()):
        for s, chunks in feeds.items():
            if tick < len(chunks):
                s.feed(chunks[tick], time.perf_counter())
            if tick == ends_at[s]:
                s.ending = True
        results, _ = engine.tick(engine.prepare())
        for s in feeds:
            r = results.get(s.slot)
            if r is not None:
                assert r.start_frame == sum(len(v) for v in out[s])  # contiguous, in order
                out[s].append(r.values)
                done[s] = done[s] or r.done
            pending[s].append(len(s.pipeline.pending))
        tick += 1
        assert tick < 10000
    return {s: np.concatenate(v) for s, v in out.items()}, pending


@pytest.mark.parametrize("backend,post", [("torch", "infer.smoothing=false"), ("onnx", "infer.smoothing=false"),
                                          ("onnx", "infer.smoothing=true")])
def test_engine_streams_equal_offline_and_bulk_is_capped(model, backend, post) -> None:
    # Without smoothing a tick post-processes every stream's rows in one call; with it, stream by stream.
    cfg = load_config(None, ["serve.max_step_frames=4", f"serve.backend={backend}", post])
    engine = ServeEngine(model, cfg, capacity=3)
    assert engine.backend == backend
    live, bulk = _audio(1.0, 1), _audio(1.0, 2)
    hi_rate = _audio(0.8, 3, rate=44100)
    a = engine.open(StreamSpec(16000, fps=60))
    b = engine.open(StreamSpec(16000, fps=30))
    c = engine.open(StreamSpec(44100, fps=60))
    assert engine.open(StreamSpec(16000)) is None  # three slots
    feeds = {
        a: [live[i : i + 320] for i in range(0, len(live), 320)],  # 20 ms per tick (real time)
        b: [bulk],  # one second at once: stepped at most 4 frames per tick
        c: [hi_rate[i : i + 441] for i in range(0, len(hi_rate), 441)],
    }
    out, pending = _run(engine, feeds, {a: len(feeds[a]), b: 0, c: len(feeds[c])})
    np.testing.assert_allclose(out[a], predict_samples(model, live, cfg, 60).values, atol=1e-5)
    np.testing.assert_allclose(out[b], predict_samples(model, bulk, cfg, 30).values, atol=1e-5)
    np.testing.assert_allclose(out[c], predict_samples(model, hi_rate, cfg, 60, 44100).values, atol=1e-5)
    # The bulk second (101 frames with the end) is stepped 4 frames a tick; the live stream keeps its
    # pace (2 frames a tick, none left pending).
    assert pending[b][:3] == [97, 93, 89] and pending[b][25] == 0 and len(out[b]) == 30
    assert max(pending[a]) == 0


def test_slots_are_freed_and_reset_between_sessions(model) -> None:
    cfg = load_config()
    engine = ServeEngine(model, cfg, capacity=1)
    audio = _audio(0.5, 4)
    ref = predict_samples(model, audio, cfg, 60).values
    for _ in range(2):  # the second session reuses the slot: it must start from a clean state
        s = engine.open(StreamSpec(16000, fps=60))
        assert s is not None and s.slot == 0
        out, _ = _run(engine, {s: [audio]}, {s: 0})
        np.testing.assert_allclose(out[s], ref, atol=1e-5)
        s.closed = True
        assert engine.open(StreamSpec(16000)) is None  # freed only between ticks
        engine.prepare()
    assert engine.active == 0


def test_send_queue_drops_the_oldest_frames_never_the_end() -> None:
    q = SendQueue(limit=2)
    assert q.put("frames", 3, "a") == 0 and q.put("frames", 2, "b") == 0
    assert q.put("frames", 4, "c") == 3  # "a" goes
    assert q.put("done", 0, "d") == 0  # never dropped, may exceed the limit
    assert q.put("frames", 1, "e") == 2  # "b" goes, "done" stays
    assert [m[2] for m in q.items] == ["c", "d", "e"] and q.dropped_frames == 5

    async def drain() -> list[str]:
        return [(await q.get())[2] for _ in range(3)]

    assert asyncio.run(drain()) == ["c", "d", "e"]


def test_token_is_required_off_loopback(tmp_path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")
    assert read_token(load_config()) is None  # loopback: open unless asked
    with pytest.raises(ConfigError, match="binding to '0.0.0.0' \\(not loopback\\) needs an access token"):
        read_token(load_config(None, ["serve.host=0.0.0.0"]))
    with pytest.raises(ConfigError, match="serve.require_token is set"):
        read_token(load_config(None, ["serve.require_token=true"]))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_token(load_config(None, ["serve.host=0.0.0.0", f"serve.token_file={empty}"]))
    good = tmp_path / "token"
    good.write_text("abc\n")
    assert read_token(load_config(None, ["serve.host=0.0.0.0", f"serve.token_file={good}"])) == "abc"


def test_worker_count() -> None:
    assert resolve_workers(load_config(None, ["serve.workers=3"])) == 3
    assert resolve_workers(load_config()) == len(os.sched_getaffinity(0))  # the default: auto
    for bad in ("0", "two", "-1"):
        with pytest.raises(ConfigError, match=f"serve.workers must be 'auto' or a whole number >= 1, got '{bad}'"):
            resolve_workers(load_config(None, [f"serve.workers={bad}"]))


def test_event_loop_setting() -> None:
    import asyncio

    import uvloop

    assert event_loop_factory(load_config()) is uvloop.new_event_loop  # auto: uvloop where installed
    assert event_loop_factory(load_config(None, ["serve.event_loop=asyncio"])) is asyncio.new_event_loop
    assert event_loop_factory(load_config(None, ["serve.event_loop=UVLoop"])) is uvloop.new_event_loop
    with pytest.raises(ConfigError, match="serve.event_loop must be one of auto, asyncio, uvloop, got 'trio'"):
        event_loop_factory(load_config(None, ["serve.event_loop=trio"]))


def test_step_clock_ticks_on_a_grid_and_never_waits_more_than_a_period() -> None:
    clock = StepClock(0.010)
    assert clock.delay(5.000) == 0.0  # work while idle: at once
    assert clock.delay(5.002) == pytest.approx(0.008)  # work during the period: the next grid point, 5.010
    assert clock.delay(5.013) == pytest.approx(0.007)  # 5.020
    assert clock.delay(5.0345) == 0.0  # the tick due at 5.030 is late (the last one overran): at once
    assert clock.delay(5.035) == pytest.approx(0.0095)  # a new grid from 5.0345
    assert clock.delay(9.0) == 0.0  # idle for seconds: at once
    assert StepClock(0.0).delay(1.0) == StepClock(0.0).delay(1.0) == 0.0  # no clock: every tick at once
    # Any schedule of work and tick durations: a tick never waits more than one period for work that
    # is waiting, and ticks are at least one period apart.
    rng = np.random.default_rng(0)
    now_s, last_tick_s = 100.0, float("-inf")
    for _ in range(2000):
        now_s += rng.choice([0.0, rng.exponential(0.02)])  # work arrives now (or after an idle while)
        delay_s = clock.delay(now_s)
        assert 0.0 <= delay_s <= 0.010 + 1e-12
        tick_s = now_s + delay_s
        assert tick_s - last_tick_s >= 0.010 - 1e-9
        last_tick_s = tick_s
        now_s = tick_s + rng.uniform(0.0, 0.015)  # the tick's work, sometimes longer than a period


def _admit_in_child(admission: SharedAdmission, worker: int, answers) -> None:
    answers.put([admission.try_admit(worker) for _ in range(3)])


def test_shared_admission_holds_across_processes() -> None:
    ctx = multiprocessing.get_context("fork")
    admission = SharedAdmission(ctx, limit=4, workers=2)
    assert admission.try_admit(0) and admission.try_admit(0)
    answers = ctx.SimpleQueue()
    child = ctx.Process(target=_admit_in_child, args=(admission, 1, answers))
    child.start()
    got = answers.get()
    child.join(60)
    assert got == [True, True, False]  # two places were left for the other process, not three
    assert admission.held() == [2, 2] and not admission.try_admit(0)
    admission.release(1, served=True)
    assert admission.held() == [2, 1] and admission.served == 1
    assert admission.try_admit(0) and admission.held() == [3, 1]
    # The parent's view for choosing a worker: open connections plus those handed over but not taken yet.
    assert admission.loads([0, 0]) == [0, 0]
    admission.adopted(0)
    assert admission.loads([1, 2]) == [1, 2]  # worker 0 took its one; worker 1 has two on their way
    admission.closed(0)
    assert admission.loads([1, 2]) == [0, 2]
