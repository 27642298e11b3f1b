"""glimpse.engine.train_dense: the poly schedule by hand, checkpoints and exact resume,
non-finite losses, Global&Local's phases (which parameters move when) and Partial Conv's two
stages (lr, fresh optimiser, frozen encoder BN statistics), the inpainting collate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from glimpse import zoo
from glimpse.engine.train import CheckpointError, NonFiniteLossError, load_checkpoint
from glimpse.engine.train_dense import (
    SEGMENTATION_RECIPES,
    GLTrainConfig,
    PConvTrainConfig,
    SegTrainConfig,
    collate_inpainting,
    fit_dense,
    fit_global_local,
    fit_pconv,
    fit_segmentor,
    freeze_batchnorm_stats,
    poly_lr,
)


class ToySegmentor(nn.Module):
    """A 1x1 conv + BN per-pixel classifier with the segmentor train contract."""

    def __init__(self, num_classes: int = 3, nan_at: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)
        self.calls = 0
        self.nan_at = nan_at

    def forward(self, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        self.calls += 1
        x = torch.stack(images)
        labels = torch.stack([t["sem_seg"] for t in targets])
        loss = F.cross_entropy(self.conv(x), labels, ignore_index=255)
        if self.nan_at is not None and self.calls > self.nan_at:
            loss = loss * math.nan
        return {"loss_seg": loss, "pixels": torch.tensor(float(labels.numel()))}


class SegToys(Dataset):
    def __init__(self, n: int = 10, size: int = 6) -> None:
        g = torch.Generator().manual_seed(7)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.labels = torch.randint(0, 3, (n, size, size), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        noise = 0.01 * torch.randn(3, 1, 1)  # global RNG: resume must restore it
        return self.images[i] + noise, {"sem_seg": self.labels[i]}


class InpaintToys(Dataset):
    def __init__(self, n: int = 6, size: int = 64) -> None:
        g = torch.Generator().manual_seed(3)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.masks = torch.zeros(n, 1, size, size)
        self.masks[:, :, 16:40, 20:44] = 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.masks[i]


def test_poly_lr_by_hand():
    assert poly_lr(0, max_iters=100, lr=0.02) == 0.02
    assert poly_lr(50, max_iters=100, lr=0.02, power=1.0) == pytest.approx(0.01)
    assert poly_lr(75, max_iters=100, lr=0.02) == pytest.approx(0.02 * 0.25 ** 0.9)
    # mmseg's eta_min: the curve ends at min_lr
    assert poly_lr(100, max_iters=100, lr=0.01, min_lr=1e-4) == pytest.approx(1e-4)
    assert poly_lr(50, max_iters=100, lr=0.01, min_lr=1e-4, power=1.0) == pytest.approx(
        (0.01 - 1e-4) / 2 + 1e-4)


def test_recipes_and_config_errors():
    csail, mmseg = SEGMENTATION_RECIPES["csail"], SEGMENTATION_RECIPES["mmseg_512x512_80k"]
    assert (csail.lr, csail.batch_size, csail.max_iters, csail.weight_decay) == (
        0.02, 16, 100_000, 1e-4)
    assert (mmseg.lr, mmseg.min_lr, mmseg.max_iters, mmseg.weight_decay) == (
        0.01, 1e-4, 80_000, 5e-4)
    assert GLTrainConfig(max_iters=500_000).phases() == (90_000, 100_000)
    assert PConvTrainConfig(max_iters=1_300_000).stage1_iters() == 800_000
    with pytest.raises(ValueError, match="max_iters must be >= 1"):
        SegTrainConfig(max_iters=0)
    with pytest.raises(ValueError, match="min_lr"):
        SegTrainConfig(lr=0.01, min_lr=0.1)
    with pytest.raises(ValueError, match="completion_iters .* <= disc_iters"):
        GLTrainConfig(max_iters=10, completion_iters=6, disc_iters=4)
    with pytest.raises(ValueError, match="stage2_iters"):
        PConvTrainConfig(max_iters=10, stage2_iters=11)
    with pytest.raises(TypeError, match="cfg must be one of"):
        fit_dense(ToySegmentor(), SegToys(), object(), "unused")  # type: ignore[arg-type]


def test_fit_segmentor_poly_checkpoint_and_exact_resume(tmp_path):
    cfg = SegTrainConfig(max_iters=6, batch_size=2, lr=0.1, checkpoint_every=3)
    torch.manual_seed(0)
    whole = ToySegmentor()
    start = {k: v.clone() for k, v in whole.state_dict().items()}
    res = fit_segmentor(whole, SegToys(), cfg, tmp_path / "whole")
    assert [h["iter"] for h in res.history] == list(range(1, 7))
    assert [h["lr"] for h in res.history] == pytest.approx(
        [0.1 * (1 - i / 6) ** 0.9 for i in range(6)])
    assert res.history[0]["pixels"] == 2 * 36
    ckpt = load_checkpoint(res.last_checkpoint)
    assert ckpt["iteration"] == 6 and set(ckpt["optimizers"]) == {"sgd"}
    assert (tmp_path / "whole" / "checkpoints" / "iter_3.pt").is_file()
    assert (tmp_path / "whole" / "last.pt").is_file()
    assert len((tmp_path / "whole" / "log.jsonl").read_text().splitlines()) == 6

    # a run stopped after iteration 3 (here by a NaN at the 4th), resumed with a fresh model:
    # the same weights and losses as the uninterrupted run
    half = ToySegmentor(nan_at=3)
    half.load_state_dict(start)
    with pytest.raises(NonFiniteLossError):
        fit_segmentor(half, SegToys(), cfg, tmp_path / "split")
    again = ToySegmentor()
    resumed = fit_segmentor(again, SegToys(), cfg, tmp_path / "split", resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in res.history]
    for k, v in whole.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_resume_skips_broken_checkpoints(tmp_path):
    cfg = SegTrainConfig(max_iters=6, batch_size=2, lr=0.1, checkpoint_every=3)
    torch.manual_seed(0)
    first = ToySegmentor()
    start = {k: v.clone() for k, v in first.state_dict().items()}
    fit_segmentor(first, SegToys(), cfg, tmp_path)
    for name in ("last.pt", "checkpoints/iter_6.pt"):  # a run killed with its disk full
        (tmp_path / name).write_bytes(b"truncated")
    again = ToySegmentor()
    again.load_state_dict(start)
    with pytest.warns(UserWarning, match="resuming from .*iter_3.pt; skipped"):
        res = fit_segmentor(again, SegToys(), cfg, tmp_path, resume=True)
    assert [h["iter"] for h in res.history] == list(range(1, 7))
    for k, v in first.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    for name in ("last.pt", "checkpoints/iter_6.pt", "checkpoints/iter_3.pt"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        fit_segmentor(ToySegmentor(), SegToys(), cfg, tmp_path, resume=True)


def test_non_finite_loss_stops_before_the_update(tmp_path):
    torch.manual_seed(0)
    model = ToySegmentor(nan_at=2)
    with pytest.raises(NonFiniteLossError, match="iteration 3.*loss_seg=nan"):
        fit_segmentor(model, SegToys(), SegTrainConfig(max_iters=5, batch_size=2),
                      tmp_path / "nan")
    assert not (tmp_path / "nan" / "last.pt").exists()


def test_global_local_phases_move_the_right_parameters(tmp_path):
    torch.manual_seed(0)
    model = zoo.build("global_local_slim")
    gen0 = [p.detach().clone() for p in model.generator.parameters()]
    disc0 = [p.detach().clone() for p in model.discriminators.parameters()]

    def changed(params, before):
        return any(not torch.equal(p, b) for p, b in zip(params, before))

    cfg = GLTrainConfig(max_iters=2, batch_size=2, completion_iters=2, disc_iters=2)
    res = fit_global_local(model, InpaintToys(), cfg, tmp_path / "a")
    assert [h["phase"] for h in res.history] == [0, 0]
    assert all("loss_gan" not in h and "disc_loss" not in h for h in res.history)
    assert changed(model.generator.parameters(), gen0)
    assert not changed(model.discriminators.parameters(), disc0)  # phase 0: generator only

    gen1 = [p.detach().clone() for p in model.generator.parameters()]
    cfg = GLTrainConfig(max_iters=2, batch_size=2, completion_iters=0, disc_iters=2)
    res = fit_global_local(model, InpaintToys(), cfg, tmp_path / "b")
    assert [h["phase"] for h in res.history] == [1, 1]
    assert all(h["loss"] == h["disc_loss"] for h in res.history)
    # phase 1: discriminators only (the generator's BN statistics still see the batches)
    assert all(torch.equal(p, b) for p, b in zip(model.generator.parameters(), gen1))
    assert changed(model.discriminators.parameters(), disc0)

    cfg = GLTrainConfig(max_iters=5, batch_size=2, completion_iters=1, disc_iters=3)
    res = fit_global_local(model, InpaintToys(), cfg, tmp_path / "c")
    assert [h["phase"] for h in res.history] == [0, 1, 1, 2, 2]
    last = res.history[-1]
    assert last["loss"] == pytest.approx(last["loss_l1_hole"] + last["loss_gan"])
    assert set(load_checkpoint(res.last_checkpoint)["optimizers"]) == {
        "generator", "discriminators"}
    with pytest.raises(ValueError, match="needs a GlobalLocal model with discriminators"):
        fit_global_local(ToySegmentor(), InpaintToys(), cfg, tmp_path / "d")


def test_pconv_two_stages(tmp_path):
    torch.manual_seed(0)
    model = zoo.build("pconv_slim")
    cfg = PConvTrainConfig(max_iters=4, batch_size=2, stage2_iters=2)
    enc_bn = model.encoder[1].norm
    dec_bn = model.decoder[1].norm
    seen = []
    hook = model.register_forward_pre_hook(
        lambda m, args: seen.append((enc_bn.running_mean.clone(), dec_bn.running_mean.clone(),
                                     enc_bn.training, dec_bn.training)))
    res = fit_pconv(model, InpaintToys(), cfg, tmp_path / "p")
    hook.remove()
    assert [h["stage"] for h in res.history] == [1, 1, 2, 2]
    assert [h["lr"] for h in res.history] == [2e-4, 2e-4, 5e-5, 5e-5]
    assert [s[2] for s in seen] == [True, True, False, False]  # encoder BN frozen in stage 2
    assert all(s[3] for s in seen)  # decoder BN trains throughout
    assert torch.equal(seen[3][0], enc_bn.running_mean)  # no update in the last step
    assert not torch.equal(seen[3][1], dec_bn.running_mean)
    ckpt = load_checkpoint(res.last_checkpoint)
    # stage 2 starts a fresh Adam: its step count is that of stage 2 alone
    state = ckpt["optimizers"]["stage2"]["state"]
    assert {float(s["step"]) for s in state.values()} == {2.0}
    assert {float(s["step"]) for s in ckpt["optimizers"]["stage1"]["state"].values()} == {2.0}


def test_freeze_batchnorm_stats_and_collate():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(2)))
    freeze_batchnorm_stats(net)
    assert net.training and not net[1].training and not net[2][0].training
    images, masks = collate_inpainting([(torch.zeros(3, 8, 8), torch.ones(1, 8, 8))] * 3)
    assert images.shape == (3, 3, 8, 8) and masks.shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="must share a size"):
        collate_inpainting([(torch.zeros(3, 8, 8), torch.ones(1, 8, 8)),
                            (torch.zeros(3, 8, 16), torch.ones(1, 8, 16))])
    with pytest.raises(ValueError, match="empty batch"):
        collate_inpainting([])
