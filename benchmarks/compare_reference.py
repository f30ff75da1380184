"""Compare iddpm_pl.diffusion numerically with a local copy of openai/improved-diffusion.

Nothing of the reference is installed or shipped: pass the folder that contains its
``improved_diffusion`` package. The script stubs ``mpi4py`` and ``blobfile`` (imported by the
reference's ``dist_util``, unused here) when they are missing, then prints, for the same
betas, inputs and model outputs:
  - the largest difference of the linear and cosine schedules (T = 1000 and 4000),
  - whether ``space_timesteps`` keeps the same steps,
  - the largest relative difference of the reverse mean and log-variance, the losses and the
    VLB terms for each variance type, and the decoder term at t = 0.

Run: python benchmarks/compare_reference.py --reference /path/to/improved-diffusion
"""

from __future__ import annotations

import argparse
import sys
import types

import numpy as np
import torch

from iddpm_pl.diffusion import GaussianDiffusion, get_named_beta_schedule, space_timesteps


def max_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp(min=1e-8)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="folder containing improved_diffusion/")
    args = parser.parse_args()
    sys.path.insert(0, args.reference)
    for name in ("mpi4py", "blobfile"):
        sys.modules.setdefault(name, types.ModuleType(name))
    from improved_diffusion import gaussian_diffusion as ref
    from improved_diffusion.respace import space_timesteps as ref_space_timesteps

    for name in ("linear", "cosine"):
        for num_timesteps in (1000, 4000):
            theirs = ref.get_named_beta_schedule(name, num_timesteps)
            ours = get_named_beta_schedule(name, num_timesteps).numpy()
            print(
                f"schedule {name:6s} T={num_timesteps}: max |diff| {np.abs(theirs - ours).max():.3g}"
            )
    for spec in ("50", "10,15,20", "ddim25", "2", "ddim2"):
        same = sorted(ref_space_timesteps(1000, spec)) == space_timesteps(1000, spec)
        print(f"space_timesteps(1000, {spec!r}) same steps: {same}")

    num_timesteps = 1000
    betas = ref.get_named_beta_schedule("cosine", num_timesteps)
    torch.manual_seed(0)
    x_start = torch.randint(0, 256, (16, 3, 8, 8)).float() / 127.5 - 1
    noise = torch.randn_like(x_start)
    t = torch.randint(0, num_timesteps, (16,))
    t[:2] = torch.tensor([0, 1])
    output = 0.5 * torch.randn(16, 6, 8, 8)
    # Our "vlb" loss is T * L_t, the reference's RESCALED_KL; "hybrid" is its RESCALED_MSE.
    cases = [
        ("learned_range", ref.ModelVarType.LEARNED_RANGE, "hybrid", ref.LossType.RESCALED_MSE),
        ("fixed_small", ref.ModelVarType.FIXED_SMALL, "simple", ref.LossType.MSE),
        ("fixed_large", ref.ModelVarType.FIXED_LARGE, "vlb", ref.LossType.RESCALED_KL),
        ("learned", ref.ModelVarType.LEARNED, "vlb", ref.LossType.RESCALED_KL),
    ]
    for variance, ref_variance, loss, ref_loss in cases:
        theirs = ref.GaussianDiffusion(
            betas=betas,
            model_mean_type=ref.ModelMeanType.EPSILON,
            model_var_type=ref_variance,
            loss_type=ref_loss,
            rescale_timesteps=True,
        )
        ours = GaussianDiffusion(torch.tensor(betas), variance_type=variance, loss_type=loss)
        model_output = output if variance.startswith("learned") else output[:, :3]

        def model(
            x: torch.Tensor, s: torch.Tensor, out: torch.Tensor = model_output
        ) -> torch.Tensor:
            return out

        x_t = ours.q_sample(x_start, t, noise)
        p_theirs = theirs.p_mean_variance(model, x_t, t, clip_denoised=False)
        p_ours = ours.p_mean_variance(model, x_t, t, clip_denoised=False)
        log_var_theirs = p_theirs["log_variance"].expand_as(p_ours.log_variance)
        l_theirs = theirs.training_losses(model, x_start, t, noise=noise)
        l_ours = ours.training_losses(model, x_start, t, noise=noise)
        print(
            f"{variance:13s} {loss:6s}: mean {max_relative(p_ours.mean, p_theirs['mean']):.2g}, "
            f"log-variance {max_relative(p_ours.log_variance, log_var_theirs):.2g}, "
            f"loss {max_relative(l_ours['loss'], l_theirs['loss']):.2g}",
            end="",
        )
        if "vb" in l_theirs:
            print(
                f", vb at t > 0 {max_relative(l_ours['vb'][1:], l_theirs['vb'][1:]):.2g}, "
                f"decoder at t = 0: ours {float(l_ours['vb'][0]):.6f}, "
                f"reference {float(l_theirs['vb'][0]):.6f}"
            )
        else:
            print()


if __name__ == "__main__":
    main()
