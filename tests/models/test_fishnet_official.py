"""glimpse's FishNet against the official code (``kevin-ssy/FishNet``) weight for weight.

``tests/fixtures/fishnet/official.json`` holds, for fishnet99 and fishnet150, every official
``state_dict`` key with its shape, the official parameter count and the official model's logits
on a fixed input with seeded weights (``make_official_fixture.py`` regenerates it from a
scratch copy of the official code). Here the same seeded weights are saved in the released
checkpoint layout (``{"state_dict"}``, ``module.`` prefixes) and loaded through ``pretrained=``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from glimpse import zoo
from glimpse.backbones.fishnet import FISHNET_SLIM, FishNet, fishnet99_backbone
from glimpse.backbones.fishnet_official import official_fishnet_name
from glimpse.classification import fishnet99_classifier, fishnet150_classifier

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fishnet"
_spec = importlib.util.spec_from_file_location("fishnet_fixture_weights",
                                               FIXTURES / "weights.py")
weights = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(weights)
OFFICIAL = json.loads((FIXTURES / "official.json").read_text())
BUILDERS = {"fishnet99": fishnet99_classifier, "fishnet150": fishnet150_classifier}


def _save_official(tmp_path: Path, name: str, *, wrap: bool = True, prefix: str = "module.",
                   edit=None) -> Path:
    """The fixture's seeded weights saved as the official ``main.py`` does."""
    state = weights.seeded_state_dict(OFFICIAL[name]["shapes"])
    if edit is not None:
        edit(state)
    state = {prefix + k: v for k, v in state.items()}
    path = tmp_path / f"{name}_ckpt.tar"
    torch.save({"epoch": 100, "state_dict": state} if wrap else state, path)
    return path


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_checkpoint_gives_official_logits(tmp_path, name):
    classifier = BUILDERS[name](pretrained=_save_official(tmp_path, name)).eval()
    fishnet = classifier.net
    assert sum(p.numel() for p in fishnet.parameters()) == OFFICIAL[name]["num_parameters"]
    assert (sorted(official_fishnet_name(k) for k in fishnet.state_dict())
            == sorted(OFFICIAL[name]["shapes"]))
    with torch.no_grad():
        logits = fishnet(weights.seeded_input())[0]
    expected = torch.tensor(OFFICIAL[name]["logits"])
    rel = (logits - expected).abs().max() / expected.abs().max()
    assert rel < 1e-5, f"{name}: max relative logit error {rel:.2e}"


def test_bare_state_dict_without_prefix_or_counters_loads(tmp_path):
    def drop_counters(state):
        for k in [k for k in state if k.endswith("num_batches_tracked")]:
            del state[k]

    path = _save_official(tmp_path, "fishnet99", wrap=False, prefix="", edit=drop_counters)
    model = FishNet(pretrained=path)
    expected = weights.seeded_tensor("fish.fish.9.4.1.weight", (1000, 1056, 1, 1))
    assert torch.equal(model.classifier[6].weight, expected)


def test_detection_trunk_ignores_the_classifier(tmp_path):
    backbone = fishnet99_backbone(pretrained=_save_official(tmp_path, "fishnet99"))
    name = "fish.fish.8.1.0.conv2.weight"  # head stage 8, first transfer block
    expected = weights.seeded_tensor(name, tuple(OFFICIAL["fishnet99"]["shapes"][name]))
    assert torch.equal(backbone.body.head[1].transfer[0].conv2.weight, expected)


@pytest.mark.parametrize("model", ["fishnet99", "faster_rcnn_fishnet99_fpn"])
def test_zoo_passes_pretrained_to_fishnet(tmp_path, model):
    built = zoo.build(model, pretrained=_save_official(tmp_path, "fishnet99"))
    fishnet = next(m for m in built.modules() if isinstance(m, FishNet))
    name = "fish.fish.3.3.0.5.weight"  # the bridge's SE excitation conv
    expected = weights.seeded_tensor(name, tuple(OFFICIAL["fishnet99"]["shapes"][name]))
    assert torch.equal(fishnet.bridge.se[5].weight, expected)


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    def drop(state):
        del state["fish.fish.5.1.0.bn2.running_var"]

    with pytest.raises(ValueError, match=r"1 missing keys \['fish.fish.5.1.0.bn2.running_var'\]"):
        FishNet(pretrained=_save_official(tmp_path, "fishnet99", edit=drop))

    def add(state):
        state["fish.fish.10.0.weight"] = torch.zeros(1)

    with pytest.raises(ValueError, match=r"unexpected keys \['fish.fish.10.0.weight'\]"):
        FishNet(pretrained=_save_official(tmp_path, "fishnet99", edit=add))
    with pytest.raises(ValueError, match=r"fish.fish.9.4.1.weight has shape \(1000, 1056, 1, 1\)"):
        FishNet(num_classes=10, pretrained=_save_official(tmp_path, "fishnet99"))
    with pytest.raises(ValueError, match="fishnet150_ckpt.tar is not an official FishNet"):
        FishNet(pretrained=_save_official(tmp_path, "fishnet150"))  # FishNet-99 model


def test_every_slim_tensor_has_an_official_name():
    names = [official_fishnet_name(k) for k in FishNet(FISHNET_SLIM).state_dict()]
    assert len(set(names)) == len(names)
    with pytest.raises(KeyError, match="fc.weight"):
        official_fishnet_name("fc.weight")
