"""The DDPM UNet: published parameter counts, presets, init, conditioning, precision and memory options."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddpm.core.nets import UNet, timestep_embedding
from ddpm.core.nets.layers import AttnBlock, Downsample

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
NEAR_ZERO = ("conv2.weight", "proj_out.weight", "conv_out.weight")  # official init_scale=0 layers


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def preset(name: str, **fill) -> UNet:
    """Instantiate conf/model/<name>.yaml the way the training code does (filling the data-dependent args)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg._target_ == "ddpm.core.nets.UNet"
    assert not {"in_channels", "out_channels", "resolution"} & set(cfg), "filled by the training code"
    return instantiate(cfg, **fill)


@torch.no_grad()
def randomise_near_zero(m: nn.Module, seed: int = 0) -> nn.Module:
    """Give the ~zero-initialised layers ordinary weights so the whole network is exercised."""
    g = torch.Generator().manual_seed(seed)
    for name, p in m.named_parameters():
        if name.endswith(NEAR_ZERO):
            p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return m


def small(**kw) -> UNet:
    args = dict(in_channels=1, out_channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1)
    args.update(attn_resolutions=(4,), dropout=0.0, resolution=8)
    args.update(kw)
    torch.manual_seed(0)
    return UNet(**args)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, 35_746_307),  # CIFAR-10
        ({"out_channels": 6}, 35_749_766),  # CIFAR-10, learned variance
        ({"ch_mult": (1, 1, 2, 2, 4, 4), "resolution": 256, "dropout": 0.0}, 113_673_219),  # LSUN / CelebA-HQ
    ],
)
def test_published_parameter_counts(kwargs, expected):
    with torch.device("meta"):  # shapes only; no init cost
        assert n_params(UNet(**kwargs)) == expected


def test_preset_parameter_counts():
    with torch.device("meta"):
        assert n_params(preset("unet_cifar32", in_channels=3, out_channels=3, resolution=32)) == 35_746_307
        assert n_params(preset("unet_cifar32", in_channels=3, out_channels=6, resolution=32)) == 35_749_766
        assert n_params(preset("unet_256", in_channels=3, out_channels=3, resolution=256)) == 113_673_219


@pytest.mark.parametrize(
    "name, fill, size",
    [
        ("unet_cifar32", dict(in_channels=3, out_channels=6, resolution=32), 32),
        ("unet_256", dict(in_channels=3, out_channels=3, resolution=32), 32),  # 6 levels: 32 -> 1
        ("unet_small", dict(in_channels=1, out_channels=2, resolution=8), 8),
    ],
)
@torch.no_grad()
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_preset_output_shapes(name, fill, size):
    net = preset(name, **fill).eval()
    x = torch.randn(1, fill["in_channels"], size, size)
    y = net(x, torch.tensor([999]))
    assert y.shape == (1, fill["out_channels"], size, size)
    assert torch.isfinite(y).all()


def test_attention_placement():
    with torch.device("meta"):
        net = UNet()
    assert [len(level.attns) for level in net.down] == [0, 2, 0, 0]  # 16x16 only
    assert [len(level.attns) for level in net.up] == [0, 3, 0, 0]
    assert [level.downsample is not None for level in net.down] == [True, True, True, False]
    assert [level.upsample is not None for level in net.up] == [False, True, True, True]


def test_initialisation():
    torch.manual_seed(0)
    net = UNet()
    near_zero = [n for n, _ in net.named_parameters() if n.endswith(NEAR_ZERO)]
    assert len(near_zero) == 2 * 4 + 3 * 4 + 2 + (2 + 3 + 1) + 1  # res conv2s, attn proj_outs, conv_out
    for name, p in net.named_parameters():
        if name.endswith(NEAR_ZERO):
            assert 0 < p.abs().max() < 1e-4, name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        elif p.ndim == 1:  # GroupNorm gamma
            assert torch.all(p == 1), name
        else:  # Glorot-uniform, fan_avg, scale 1: limit sqrt(6 / (fan_in + fan_out)), fans include the kernel
            fan_in, fan_out = p[0].numel(), p.shape[0] * p[0, 0].numel()
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            assert 0.9 * limit < p.abs().max() <= limit, name
    for m in net.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.eps == 1e-6 and m.num_groups == 32


def test_small_group_norm_falls_back_to_channel_count():
    net = UNet(in_channels=1, out_channels=1, ch=16, ch_mult=(1, 2), num_res_blocks=1, resolution=8)
    groups = {m.num_channels: m.num_groups for m in net.modules() if isinstance(m, nn.GroupNorm)}
    assert groups == {16: 16, 32: 32, 48: 16, 64: 32}  # 48 = 32 + 16 from a skip concat
    assert net(torch.randn(1, 1, 8, 8), torch.tensor([1])).shape == (1, 1, 8, 8)


def test_timestep_embedding_formula():
    t = torch.tensor([0, 1, 37, 999])
    dim = 8
    emb = timestep_embedding(t, dim)
    half = dim // 2
    for row, tv in enumerate(t.tolist()):
        for i in range(half):
            freq = math.exp(-math.log(10000.0) * i / (half - 1))
            assert emb[row, i].item() == pytest.approx(math.sin(tv * freq), abs=1e-5)
            assert emb[row, half + i].item() == pytest.approx(math.cos(tv * freq), abs=1e-5)
    assert timestep_embedding(t, 128).shape == (4, 128)
    assert timestep_embedding(t, 128).dtype == torch.float32


@torch.no_grad()
def test_timestep_changes_output():
    net = randomise_near_zero(small()).eval()
    x = torch.randn(2, 1, 8, 8)
    a = net(x, torch.tensor([0, 0]))
    b = net(x, torch.tensor([500, 500]))
    assert (a - b).abs().max() > 1e-3
    # a scalar t is broadcast
    assert torch.equal(net(x, torch.tensor(500)), b)


@torch.no_grad()
def test_fresh_net_is_near_identity_free():
    """With conv_out ~0 a fresh network outputs ~0 (the official init)."""
    net = small().eval()
    assert net(torch.randn(2, 1, 8, 8), torch.tensor([3, 4])).abs().max() < 1e-3


def test_every_parameter_gets_a_gradient():
    net = randomise_near_zero(small(dropout=0.1)).train()
    x = torch.randn(4, 1, 8, 8)
    net(x, torch.tensor([0, 10, 100, 999])).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} unused (DDP would need find_unused_parameters)"
        assert p.grad.abs().sum() > 0, name


def test_grad_checkpointing_matches():
    ref = randomise_near_zero(small())
    ckpt = small(grad_checkpointing=True)
    ckpt.load_state_dict(ref.state_dict())
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([1, 2, 3])
    ref(x, t).square().mean().backward()
    ckpt(x, t).square().mean().backward()
    for (name, p), q in zip(ref.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


@torch.no_grad()
def test_channels_last_and_bf16_autocast():
    net = randomise_near_zero(small(ch=32, ch_mult=(1, 2, 2), attn_resolutions=(8,), resolution=16)).eval()
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([5, 700])
    ref = net(x, t)

    net_cl = net.to(memory_format=torch.channels_last)
    out_cl = net_cl(x.to(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-5)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16 = net_cl(x.to(memory_format=torch.channels_last), t)
    assert torch.isfinite(out_bf16).all()
    rel = (out_bf16.float() - ref).norm() / ref.norm()
    assert rel < 0.05, f"bf16 relative error {rel:.3g}"


@torch.no_grad()
def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    block = AttnBlock(32)
    nn.init.normal_(block.proj_out.weight, std=0.1)
    x = torch.randn(2, 32, 4, 4)
    h = block.norm(x)
    q, k, v = (conv(h).flatten(2) for conv in (block.q, block.k, block.v))  # [N, C, HW]
    w = torch.softmax(torch.einsum("nci,ncj->nij", q, k) / math.sqrt(32), dim=-1)
    out = torch.einsum("nij,ncj->nci", w, v).reshape(2, 32, 4, 4)
    torch.testing.assert_close(block(x), x + block.proj_out(out), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_downsample_uses_tf_same_padding():
    torch.manual_seed(0)
    down = Downsample(4)
    x = torch.randn(1, 4, 8, 8)
    want = F.conv2d(F.pad(x, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2)
    assert down(x).shape == (1, 4, 4, 4)
    torch.testing.assert_close(down(x), want)


def test_bad_inputs_are_rejected():
    net = small()
    with pytest.raises(ValueError, match="input channels"):
        net(torch.randn(1, 3, 8, 8), torch.tensor([0]))
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 7, 7), torch.tensor([0]))
    with pytest.raises(ValueError, match="t must have shape"):
        net(torch.randn(2, 1, 8, 8), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("batch", [4, 64])
def test_1x1_conv_weight_gradients_keep_the_weight_strides_and_the_values(batch):
    """DDP compares a gradient's strides with its parameter's literally (else it warns and makes a strided copy
    per step). A plain 1x1 nn.Conv2d returns ``(I, 1, I, I)`` weight gradients at batch 64 (``(I, 1, 1, 1)`` at
    batch 4); the network's 1x1 convs always return the weight's strides, with bitwise the same outputs and
    gradients as nn.Conv2d (so trained weights and the quickstart's FID do not move)."""
    import copy

    from ddpm.core.nets.layers import Conv1x1

    net = randomise_near_zero(small())
    plain = copy.deepcopy(net)
    for m in plain.modules():
        if type(m) is Conv1x1:
            m.__class__ = nn.Conv2d
    assert len([m for m in net.modules() if type(m) is Conv1x1]) == 21  # q, k, v, proj_out and nin_shortcuts
    torch.manual_seed(1)
    x, t = torch.randn(batch, 1, 8, 8), torch.randint(0, 1000, (batch,))
    out, ref = net(x, t), plain(x, t)
    assert torch.equal(out, ref)
    out.square().mean().backward()
    ref.square().mean().backward()
    for (name, p), q in zip(net.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name
        assert p.grad.stride() == p.stride(), (name, p.stride(), p.grad.stride())
    plain_mismatch = [n for n, p in plain.named_parameters() if p.grad.stride() != p.stride()]
    # what the fix is for: 4 attention proj_out and 1 nin_shortcut (q, k, v run as one matmul of their weights)
    assert len(plain_mismatch) == (5 if batch == 64 else 0), plain_mismatch
