"""Config: defaults, YAML and key=value overrides, unknown keys, round trips."""

from pathlib import Path

import pytest

from a2bs.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)

REPO = Path(__file__).resolve().parents[2]


def test_defaults_match_the_spec() -> None:
    cfg = Config()
    assert (cfg.video.fps_limit, cfg.audio.sample_rate, cfg.audio.n_mels) == (30.0, 16000, 80)
    assert (cfg.audio.n_fft, cfg.audio.win_length, cfg.audio.hop_length) == (512, 400, 160)
    assert (cfg.sequence.sequence_ms, cfg.sequence.overlap_ms, cfg.sequence.min_face_ratio) == (240, 120, 0.5)


def test_yaml_and_cli_overrides_compose(tmp_path: Path) -> None:
    f = tmp_path / "o.yaml"
    f.write_text("audio:\n  n_mels: 64\nmodel:\n  dilations: [1, 2]\n")
    cfg = load_config(f, ["audio.n_mels=40", "train.use_gpu=true", "model.name=tcn_full"])
    assert cfg.audio.n_mels == 40 and cfg.model.dilations == (1, 2) and cfg.train.use_gpu is True
    assert cfg.model.name == "tcn_full" and cfg.audio.hop_length == 160


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["audio.n_mel=3"], "unknown config key 'audio.n_mel'"),
        (["nosection.x=1"], "unknown config key 'nosection'"),
        (["audio.n_mels=abc"], "audio.n_mels"),
        (["audio.n_mels=2.5"], "audio.n_mels"),
        (["train.use_gpu=maybe"], "train.use_gpu"),
        (["audio"], "section.key=value"),
        (["audio=3"], "is a section"),
    ],
)
def test_bad_overrides_fail_loudly(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, overrides)
    assert fragment in str(err.value)


def test_bad_yaml_file_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("audio: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_through_dict_and_file(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.dilations=[1,2,4]", "sequence.sequence_ms=10000"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_every_shipped_yaml_loads() -> None:
    files = sorted((REPO / "jobs" / "configs").glob("*.yaml")) + [REPO / "a2bs" / "demo" / "demo.yaml"]
    assert len(files) >= 4 and all(f.is_file() for f in files), "the PoC, full, tune and demo presets ship"
    for f in files:
        load_config(f)
