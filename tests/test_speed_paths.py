"""Correctness of the fast paths (benchmarks/speed.py times them; nothing here is timed).

* attention lays out q, k, v for SDPA's fused kernel, except bf16 on the CPU at short lengths;
* ``DiffusionModule(compile_net=True)`` compiles the UNet in place: same keys, same losses;
* checkpoints load across compiled (``_orig_mod.``) and plain key names, both ways;
* ``DiffusionModule(channels_last=True)`` stores NHWC weights and computes the same step;
* ``benchmarks/speed.py`` runs its machine section and rejects a missing reference.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from iddpm_pl.diffusion import UniformSampler, create_diffusion
from iddpm_pl.lightning_module import DiffusionModule
from iddpm_pl.models import UNet, layers
from iddpm_pl.models.layers import AttentionBlock
from iddpm_pl.train import train

T = 50


def tiny_net(seed: int = 0) -> UNet:
    """A UNet of a few thousand weights, every layer perturbed off its initial zeros."""
    torch.manual_seed(seed)
    net = UNet(
        image_size=8,
        in_channels=1,
        out_channels=2,
        model_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        num_heads=2,
        num_groups=4,
    )
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def tiny_module(net: torch.nn.Module | None = None, **kwargs: bool) -> DiffusionModule:
    return DiffusionModule(
        net=tiny_net() if net is None else net,
        diffusion=create_diffusion("cosine", T, variance_type="learned_range", loss_type="hybrid"),
        timestep_sampler=UniformSampler(T),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        **kwargs,
    )


def step_loss(module: DiffusionModule, seed: int = 0) -> torch.Tensor:
    """The training loss of one fixed batch, with fixed t and noise draws."""
    torch.manual_seed(seed)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    batch = (x, torch.zeros(4, dtype=torch.int64))
    with pytest.warns(UserWarning, match="self.log"):  # no Trainer attached
        return module.training_step(batch, 0)


# ----------------------------------------------------------------------------- attention


def spy_sdpa(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the last-dim stride of q at every SDPA call of the layers module."""
    strides: list[int] = []
    original = F.scaled_dot_product_attention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: object) -> torch.Tensor:
        strides.append(q.stride(-1))
        return original(q, k, v, **kwargs)

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", spy)
    return strides


@pytest.mark.parametrize("size", [4, 16])
def test_float32_attention_feeds_sdpa_unit_stride(monkeypatch, size):
    strides = spy_sdpa(monkeypatch)
    block = AttentionBlock(16, num_heads=2, num_groups=4)
    block(torch.randn(2, 16, size, size))
    assert strides == [1]


@pytest.mark.parametrize(("size", "fused"), [(4, False), (8, False), (16, True)])
def test_cpu_bf16_attention_layout_by_length(monkeypatch, size, fused):
    strides = spy_sdpa(monkeypatch)
    block = AttentionBlock(16, num_heads=2, num_groups=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        block(torch.randn(2, 16, size, size))
    assert fused == (size * size >= layers.CPU_REDUCED_PRECISION_FUSED_MIN_LENGTH)
    assert (strides == [1]) is fused


@pytest.mark.parametrize("size", [4, 16])
def test_attention_layouts_agree(size):
    """Fused and math paths, NCHW and channels_last inputs: the same output."""
    torch.manual_seed(0)
    block = AttentionBlock(32, num_heads=4, num_groups=8)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 32, size, size)
    with torch.no_grad():
        out = block(x)
        channels_last = block.to(memory_format=torch.channels_last)(
            x.to(memory_format=torch.channels_last)
        )
        with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
            math = block(x)
    torch.testing.assert_close(channels_last, out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(math, out, rtol=1e-5, atol=1e-5)


def test_long_bf16_attention_close_to_fp32():
    torch.manual_seed(0)
    block = AttentionBlock(32, num_heads=4, num_groups=8)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        expected = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = block(x).float()
    rel = (out - expected).norm() / expected.norm()
    assert rel < 0.02, f"bf16 attention relative error {rel:.3g}"


# ----------------------------------------------------------------------------- checkpoints


def test_compiled_wrapper_checkpoint_loads_into_plain_module():
    wrapped = tiny_module(torch.compile(tiny_net(seed=1)))  # wrapping alone compiles nothing
    state = wrapped.state_dict()
    assert any("_orig_mod." in key for key in state)
    plain = tiny_module()
    plain.load_state_dict(state, strict=True)
    unwrapped = {key.replace("_orig_mod.", ""): value for key, value in state.items()}
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(value, unwrapped[key], msg=key)


def test_plain_checkpoint_loads_into_compiled_wrapper():
    state = tiny_module(tiny_net(seed=1)).state_dict()
    wrapped = tiny_module(torch.compile(tiny_net()))
    wrapped.load_state_dict(state, strict=True)
    torch.testing.assert_close(wrapped.net._orig_mod.out[2].weight, state["net.out.2.weight"])


def test_compile_net_keeps_state_dict_keys():
    plain = tiny_module()
    compiled = tiny_module(compile_net=True)
    compiled.compile_network()  # lazy: nothing is traced until the first call
    assert list(compiled.state_dict()) == list(plain.state_dict())
    compiled.load_state_dict(plain.state_dict(), strict=True)


@pytest.mark.slow
def test_compile_net_matches_eager_step():
    eager = tiny_module()
    compiled = tiny_module(compile_net=True)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_network()
    loss = step_loss(compiled)
    expected = step_loss(eager)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    loss.backward()
    expected.backward()
    for (name, p), q in zip(compiled.net.named_parameters(), eager.net.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)


# ----------------------------------------------------------------------------- channels_last


def test_channels_last_module_matches_contiguous():
    plain = tiny_module()
    fast = tiny_module(channels_last=True)
    fast.load_state_dict(plain.state_dict())
    conv = fast.net.input_blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert fast.ema.module.input_blocks[0][0].weight.is_contiguous(
        memory_format=torch.channels_last
    )
    torch.testing.assert_close(step_loss(fast), step_loss(plain), rtol=1e-5, atol=1e-6)
    # And back: an NHWC checkpoint loads into an NCHW module unchanged.
    again = tiny_module()
    again.load_state_dict(fast.state_dict())
    torch.testing.assert_close(again.net.input_blocks[0][0].weight, conv)


# ----------------------------------------------------------------------------- config options


def test_channels_last_option_trains(compose_train):
    result = train(compose_train("module.channels_last=true", "trainer.fast_dev_run=true"))
    assert math.isfinite(result["metrics"]["train/loss"])


@pytest.mark.slow
def test_compile_net_option_trains(compose_train):
    result = train(compose_train("module.compile_net=true", "trainer.fast_dev_run=true"))
    assert math.isfinite(result["metrics"]["train/loss"])


# ----------------------------------------------------------------------------- benchmark script

SPEED_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


def run_speed(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SPEED_SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )


def test_speed_script_peak_section(tmp_path):
    out = tmp_path / "speed.json"
    result = run_speed("--sections", "peak", "--json", str(out), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads(out.read_text())
    assert saved["peaks"]["fp32"] > 1e8  # FLOP/s: any CPU of this century clears 0.1 GFLOP/s
    assert saved["peaks"]["bf16"] > 0
    assert saved["machine"]["threads"] == 1


def test_speed_script_needs_reference(tmp_path):
    result = run_speed("--sections", "train", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "pass --reference <folder holding improved_diffusion/>" in result.stderr


def test_speed_script_rejects_bad_reference(tmp_path):
    result = run_speed("--reference", str(tmp_path), tmp_path=tmp_path)
    assert result.returncode != 0
    assert "no improved_diffusion/unet.py there" in result.stderr
