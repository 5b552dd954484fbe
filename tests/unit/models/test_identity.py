"""Identity conditioning: one model, several faces; the average identity; models without identities unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from a2bs.config import AudioConfig, ConfigError
from a2bs.errors import ManifestError
from a2bs.manifests import ModelCard
from a2bs.models import build_model, load_model_file, preset, save_model
from a2bs.models.commands import format_card
from a2bs.models.identity import (
    check_identities,
    drop_identities,
    identity_index,
    train_only_identity,
    with_added_identity,
)
from a2bs.schema import TARGET_NAMES

FAMILY = ["tcn_poc", "tcn_full", "tcn_attn"]
SMILE = TARGET_NAMES.index("mouthSmileLeft")


def _small(name: str, **overrides) -> torch.nn.Module:
    extra = {"attn_max_len": 16} if name == "tcn_attn" else {}
    return build_model(preset(name, channels=16, dilations=(1, 2), dropout=0.0, **extra, **overrides)).eval()


def _randomise_identity_tables(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for table in (model.identity.film.weight, model.identity.out_bias.weight):
            table.copy_(0.3 * torch.randn(table.shape, generator=g))


def _mel(batch: int, frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 80, generator=g) * 15 - 40


@pytest.mark.parametrize("name", FAMILY)
def test_no_identities_means_no_identity_weights_and_the_same_outputs(name: str) -> None:
    torch.manual_seed(3)
    plain = _small(name)
    assert plain.identity is None
    assert not [k for k in plain.state_dict() if "identity" in k]
    torch.manual_seed(3)
    conditioned = _small(name, identities=("anna", "ben"))
    # Same backbone and head weights from the same seed: the tables draw no random numbers.
    assert set(conditioned.state_dict()) - set(plain.state_dict()) == {"identity.film.weight",
                                                                        "identity.out_bias.weight"}
    for key, value in plain.state_dict().items():
        assert torch.equal(value, conditioned.state_dict()[key]), key
    mel = _mel(2, 40, 0)
    with torch.no_grad():
        ref = plain(mel)
        assert torch.equal(plain(mel, None), ref)
        # Fresh (zero) tables: every identity computes exactly what the unconditioned model does.
        for rows in (None, torch.tensor([0, 1]), torch.tensor([2, 2])):
            assert torch.equal(conditioned(mel, rows), ref)
    with pytest.raises(ValueError, match="no identities"):
        plain(mel, torch.tensor([0, 0]))


@pytest.mark.parametrize("name", FAMILY)
def test_identities_change_the_output_row_by_row(name: str) -> None:
    model = _small(name, identities=("anna", "ben"))
    _randomise_identity_tables(model, 1)
    mel = _mel(1, 30, 1).expand(3, -1, -1)
    with torch.no_grad():
        out = model(mel, torch.tensor([0, 1, 2]))
        average = model(mel[:1], None)[0]
        single = model(mel[:1], torch.tensor([1]))[0]
    assert (out[0] - out[1]).abs().max() > 1e-2
    # Rows are independent (to float rounding across batch sizes); None = the average row (index 2).
    torch.testing.assert_close(out[1], single, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[2], average, rtol=0, atol=1e-6)


def test_names_resolve_to_rows_with_clear_errors() -> None:
    names = ("anna", "ben")
    assert identity_index(names, "ben") == 1
    assert identity_index(names, None) == 2  # the average
    assert identity_index((), None) is None
    with pytest.raises(ConfigError, match=r"unknown identity 'carl' \(known: anna, ben; none = their average\)"):
        identity_index(names, "carl")
    with pytest.raises(ConfigError, match="'anna': this model has no identities"):
        identity_index((), "anna")
    with pytest.raises(ConfigError, match="distinct, repeated: anna"):
        check_identities(("anna", "ben", "anna"))
    with pytest.raises(ConfigError, match="non-empty strings"):
        check_identities(("anna", " "))
    with pytest.raises(ConfigError, match="distinct"):
        build_model(preset("tcn_poc", identities=("a", "a")))


def test_drop_identities_replaces_about_the_asked_fraction_by_the_average() -> None:
    ids = torch.zeros(10000, dtype=torch.long)
    dropped = drop_identities(ids, 3, 0.25, torch.Generator().manual_seed(0))
    assert set(dropped.tolist()) == {0, 3}
    assert 0.22 < (dropped == 3).float().mean().item() < 0.28


def _train_two_faces(steps: int = 300) -> torch.nn.Module:
    """A tiny causal TCN on noise mel whose targets rest at 0.9 (anna) or 0.1 (ben) on mouthSmileLeft."""
    torch.manual_seed(0)
    model = build_model(preset("tcn_poc", channels=16, dilations=(1, 2), causal=True,
                               identities=("anna", "ben"))).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        mel = torch.randn(16, 24, 80, generator=g) * 15 - 40
        ids = torch.randint(0, 2, (16,), generator=g)
        target = torch.full((16, 24, 52), 0.5)
        target[:, :, SMILE] = torch.where(ids == 0, 0.9, 0.1)[:, None]
        out = model(mel, drop_identities(ids, 2, 0.3, g))
        loss = torch.nn.functional.mse_loss(out[..., :52], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_two_identities_give_different_rest_faces_and_the_average_sits_between() -> None:
    model = _train_two_faces()
    mel = _mel(1, 200, 7).expand(3, -1, -1)  # the same unseen audio for every face
    with torch.no_grad():
        smile = model(mel, torch.tensor([0, 1, 2]))[:, :, SMILE].mean(dim=1)  # anna, ben, average
    anna, ben, average = smile.tolist()
    assert anna > 0.8 and ben < 0.2, smile
    assert ben + 0.15 < average < anna - 0.15, smile


def test_adding_an_identity_keeps_the_others_bit_identical() -> None:
    model = _small("tcn_full", identities=("anna", "ben"))
    _randomise_identity_tables(model, 2)
    bigger = with_added_identity(model, "carl")
    assert bigger.cfg.identities == ("anna", "ben", "carl")
    mel = _mel(1, 30, 3).expand(3, -1, -1)
    with torch.no_grad():
        before = model(mel, torch.tensor([0, 1, 2]))  # anna, ben, average
        after = bigger(mel, torch.tensor([0, 1, 3]))
        new = bigger(mel, torch.tensor([2, 2, 2]))
    assert torch.equal(before, after)
    assert torch.equal(new[2], before[2])  # the new face starts as the average
    with pytest.raises(ConfigError, match="repeated: ben"):
        with_added_identity(model, "ben")
    unconditioned = _small("tcn_full")
    first = with_added_identity(unconditioned, "anna")
    with torch.no_grad():
        assert torch.equal(first(mel, torch.tensor([0, 0, 0])), unconditioned(mel))


def test_model_file_and_card_carry_the_identities(tmp_path) -> None:
    model = _small("tcn_full", identities=("anna", "ben"))
    _randomise_identity_tables(model, 4)
    card = ModelCard.for_untrained(model.cfg, AudioConfig())
    assert card.identities == ("anna", "ben")
    path = tmp_path / "m.safetensors"
    save_model(path, model, card)
    loaded, loaded_card = load_model_file(path)
    assert loaded_card.identities == ("anna", "ben") == loaded.cfg.identities
    mel = _mel(2, 20, 5)
    with torch.no_grad():
        assert torch.equal(loaded(mel, torch.tensor([1, 2])), model(mel, torch.tensor([1, 2])))
    text = format_card(loaded_card, str(path), 1000)
    assert "identities: 2 (anna, ben;" in text
    # A card written before identities existed (no field anywhere) reads as none.
    old = json.loads(ModelCard.for_untrained(preset("tcn_full")).to_json())
    del old["identities"], old["model"]["identities"]
    assert ModelCard.from_json(json.dumps(old), "old").identities == ()
    assert "identities" not in format_card(ModelCard.from_json(json.dumps(old), "old"), "old", 1)
    bad = json.loads(card.to_json())
    bad["identities"] = ["anna"]
    with pytest.raises(ManifestError, match="identities"):
        ModelCard.from_json(json.dumps(bad), "bad")


def test_training_only_the_new_identity_leaves_the_others_bit_identical() -> None:
    model = with_added_identity(_small("tcn_full", identities=("anna", "ben")), "carl")
    params = train_only_identity(model, 2)
    opt = torch.optim.Adam(params, lr=1e-2)
    mel = _mel(3, 30, 6)
    model.eval()
    with torch.no_grad():
        before = model(mel, torch.tensor([0, 1, 3]))
        carl_before = model(mel, torch.tensor([2, 2, 2]))
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(5):
        loss = (model(mel, torch.tensor([2, 2, 2]))[..., :52] - 0.9).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert torch.equal(model(mel, torch.tensor([0, 1, 3])), before)
        assert (model(mel, torch.tensor([2, 2, 2])) - carl_before).abs().max() > 1e-3
    for key, value in model.state_dict().items():
        if key.startswith("identity."):
            assert torch.equal(value[[0, 1, 3]], frozen[key][[0, 1, 3]]), key
            assert not torch.equal(value[2], frozen[key][2]), key
        else:
            assert torch.equal(value, frozen[key]), key


@pytest.mark.parametrize("name", FAMILY)
def test_bias_only_identities_set_the_rest_shape_and_share_the_dynamics(name: str, tmp_path) -> None:
    """``identity_film=False``: an identity is exactly a shift of the head's bias; adding one keeps the others."""
    torch.manual_seed(5)
    model = _small(name, identities=("anna", "ben"), identity_film=False)
    assert model.identity.film is None
    assert [k for k in model.state_dict() if k.startswith("identity.")] == ["identity.out_bias.weight"]
    with torch.no_grad():
        model.identity.out_bias.weight.copy_(0.5 * torch.randn(model.identity.out_bias.weight.shape))
    torch.manual_seed(5)
    plain = _small(name)
    mel = _mel(1, 30, 8)
    for row in (0, 1, 2):  # anna, ben, the average: the unconditioned model with that row added to its head bias
        with torch.no_grad():
            shifted = _small(name)
            shifted.load_state_dict(plain.state_dict())
            shifted.head.proj.bias += model.identity.out_bias.weight[row]
            torch.testing.assert_close(model(mel, torch.tensor([row])), shifted(mel), rtol=0, atol=1e-6)
    bigger = with_added_identity(model, "carl")
    assert bigger.cfg.identity_film is False and bigger.identity.film is None
    params = train_only_identity(bigger, 2)
    assert params == [bigger.identity.out_bias.weight]
    with torch.no_grad():
        assert torch.equal(bigger(mel.expand(3, -1, -1), torch.tensor([0, 1, 3])),
                           model(mel.expand(3, -1, -1), torch.tensor([0, 1, 2])))
    path = tmp_path / "m.safetensors"  # the card carries the setting: the file loads without a FiLM table
    save_model(path, model, ModelCard.for_untrained(model.cfg, AudioConfig()))
    loaded, card = load_model_file(path)
    assert card.model.identity_film is False and loaded.identity.film is None
    with torch.no_grad():
        assert torch.equal(loaded(mel, torch.tensor([1])), model(mel, torch.tensor([1])))
