"""Self-supervised denoising (Noise2Score): fit a score model to patches of the noisy scan itself, from
scratch or from a trained prior (fine-tuning)."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from volscore.options import SELF_SUPERVISED_OBJECTIVES
from volscore.run import Run

FINE_TUNE_LR = 2e-4  # the trainer's default learning rate: a prior's weights are moved, not replaced
# The model settings a fine-tuned fit takes from its prior (the weights must fit the network).
PRIOR_FIELDS = ("preset", "patch_size", "coords", "coord_frequencies", "precond", "sigma_data")


class TotalLevel(nn.Module):
    """A score network conditioned on the total noise level sqrt(sigma_0^2 + t^2) of a patch of the noisy scan
    perturbed once more by t, where the trainer passes t: what the network learns at that conditioning is
    then the score of p_sqrt(sigma_0^2 + t^2), which is what a prior trained on clean data already means by
    it (see ``fit_self_supervised``)."""

    def __init__(self, net: nn.Module, data_sigma: float) -> None:
        super().__init__()
        self.net = net
        self.data_sigma = float(data_sigma)

    def forward(self, x: Tensor, sigma: Tensor | float, coords: Tensor | None = None) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        return self.net(x, torch.sqrt(sigma**2 + self.data_sigma**2), coords)


def _total_level_trainer(data_sigma: float) -> Any:
    """A ``Trainer`` whose training network is wrapped in ``TotalLevel`` (checkpoints and the EMA hold the
    plain model, which is what a ``Run`` of the fit loads)."""
    from volscore.train import Trainer

    class TotalLevelTrainer(Trainer):
        def _build(self, source: Any, state: Any) -> None:
            super()._build(source, state)
            self.net = TotalLevel(self.net, data_sigma)

    return TotalLevelTrainer


def self_supervised_levels(sigma: float, objective: str = "ssm-vr") -> tuple[float, float]:
    """(t_min, t_max) of the extra training noise t for ``fit_self_supervised``; the score is used at t_min.

    ssm-vr: t in [0.05, 0.2] sigma (SSM needs no noise at all; a little keeps the conditioning defined),
    evaluated where sqrt(sigma^2 + t^2) = 1.001 sigma. dsm: t in [0.2, 2] sigma (DSM's target variance grows
    as 1/t^2, so it cannot train at t -> 0; the net shares what it learns across t), evaluated at
    sqrt(1 + 0.04) sigma = 1.02 sigma.
    """
    if objective not in SELF_SUPERVISED_OBJECTIVES:
        raise ValueError(f"objective must be one of {SELF_SUPERVISED_OBJECTIVES}, got {objective!r}")
    lo, hi = (0.05, 0.2) if objective == "ssm-vr" else (0.2, 2.0)
    return lo * float(sigma), hi * float(sigma)


def fit_self_supervised(
    noisy: np.ndarray | Tensor,
    sigma: float,
    minutes: float | None = 5.0,
    objective: str = "dsm",
    patch_size: int = 32,
    preset: str = "small",
    out_dir: str | os.PathLike | None = None,
    seed: int = 0,
    steps: int | None = None,
    progress: bool = False,
    init: str | None = None,
    **overrides: Any,
) -> Run:
    """Fit a score model to patches of one noisy scan (model units) and return it as a ``Run`` (EMA model).

    Maths (Noise2Score). The scan is y = x + sigma_0 n, a draw from p_{sigma_0} = p_x * N(0, sigma_0^2), and
    Tweedie needs s_{p_{sigma_0}}(y). The trainer perturbs each patch again, z = y + t eps, and conditions
    the network on t. Both objectives then learn the score of the law of z, which is p_x convolved with
    N(0, sigma_0^2 + t^2): at conditioning t the network approximates grad log p_{sqrt(sigma_0^2 + t^2)}, not
    grad log p_t as it would on clean data. So we train only at small t (``self_supervised_levels``) and
    denoise with y + sigma_0^2 s(y, t_min): the score is that of p_{sigma_0 sqrt(1 + (t_min/sigma_0)^2)},
    a relative level error of 0.1 % (ssm-vr) or 2 % (dsm).
    - ssm-vr: sliced score matching learns the score of whatever density the samples come from (no clean
      target needed), exactly p_{sqrt(sigma_0^2 + t^2)}; t may be tiny.
    - dsm: |s(z, t) + eps / t|^2 is minimised by the score of the law of z as well (Vincent 2011 holds for any
      p_x, here the noisy scan's law), but its variance grows as t -> 0, so t stays >= 0.2 sigma_0; this is
      Noise2Score's AR-DAE recipe with t kept away from 0 instead of annealed to it.
    Measured on a 48^3 MNI crop, sigma 0.05 (noisy 26.0 dB, best Gaussian filter 31.6), preset small, patch
    24, on the busy 2-core CPU. DSM 3 min (120 steps): 32.9 dB reading the network at t_min = 0.2 sigma_0,
    31.3 at sigma_0, 28.9 at 2 sigma_0. SSM-VR 6 min (only 40 steps, loss still falling): 29.2 dB at
    t_min = 0.05 sigma_0, 28.9 at 0.2 sigma_0, 26.3 at sigma_0. So t_min is the right reading for both;
    fits this short cannot rank the objectives.
    The run (checkpoint, metrics) goes to ``out_dir``; None: a temporary folder, removed once the model is
    loaded. ``overrides`` are further ``TrainConfig`` fields (batch_size, lr, amp, ...). Short fits: the EMA
    decay defaults to 0.99 (0.999 would still be mostly the initial weights after a few hundred steps).

    ``init``: start from a trained run's EMA weights (a run folder or pretrained:NAME; ``TrainConfig.init``),
    with its network settings (``PRIOR_FIELDS``) and a gentler learning rate (``FINE_TUNE_LR``); the scan
    must be in that run's model units (and voxel size). A prior trained on clean data means by conditioning
    tau the score of p_tau; so the fit conditions the network on the total level tau = sqrt(sigma_0^2 + t^2)
    of its patches (``TotalLevel``) instead of t, and learns the same function the prior approximates, now
    for this scan's anatomy, and denoising reads it at tau_min = sqrt(sigma_0^2 + t_min^2) (1.02 sigma_0
    for DSM). Conditioned on t as a fit from scratch is, the prior's starting point would be the score at
    0.2 sigma_0, and its first Tweedie step would overshoot by (sigma_0 / t_min)^2 = 25 times.
    """
    from volscore.config import TrainConfig
    from volscore.data.patches import PatchSampler
    from volscore.data.sources import Source
    from volscore.train import Trainer

    t_min, t_max = self_supervised_levels(sigma, objective)
    volume = np.ascontiguousarray(np.asarray(noisy, dtype=np.float32))
    settings: dict[str, Any] = dict(
        data=["self-supervised"],
        objective=objective,
        preset=preset,
        minutes=minutes,
        steps=steps,
        batch_size=4,
        lr=1e-3,
        warmup=20,
        ema_decay=0.99,
        sigma_min=t_min,
        sigma_max=t_max,
        num_sigmas=2,
        patch_size=int(patch_size),
        coords=True,
        seed=seed,
        log_every=10,
    )
    trainer_class = Trainer
    if init is not None:
        prior = Run.load(init).config
        settings.update({k: getattr(prior, k) for k in PRIOR_FIELDS}, init=init, lr=FINE_TUNE_LR)
        trainer_class = _total_level_trainer(sigma)
    settings.update(overrides)
    # Half of the patches anywhere: the air is denoised too, so the model must see it.
    sampler = PatchSampler(
        [volume], settings["patch_size"], coords=bool(settings["coords"]), foreground_fraction=0.5
    )
    level = float(settings["sigma_min"])  # the level denoising must condition on
    meta = {
        "kind": "self-supervised",
        "sigma": float(sigma),
        "objective": objective,
        "score_sigma": level if init is None else math.sqrt(float(sigma) ** 2 + level**2),
        "conditioning": "t" if init is None else "total",
        "shapes": [list(volume.shape)],
    }
    tmp = tempfile.mkdtemp(prefix="volscore_selfsup_") if out_dir is None else None
    settings["out"] = str(out_dir or tmp)
    try:
        source = Source(sampler, 3, meta)
        with trainer_class(TrainConfig(**settings), progress=progress, source=source) as trainer:
            trainer.run()
            run = Run.from_state(trainer.state_dict(), name=f"self-supervised fit ({settings['out']})")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return run
