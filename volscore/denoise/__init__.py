"""Denoising scans with a score model: noise-level estimation, Tweedie and annealed denoising, Rician
correction, background rule, NIfTI in / NIfTI out, and self-supervised fitting (Noise2Score). One module
each: ``noise_level``, ``background``, ``rician``, ``estimators``, ``self_supervised``, ``files``.

The maths, for a scan y = x + sigma n (n standard normal, x the clean scan):
- Tweedie (Efron 2011; NCSNv2's final step): E[x | y] = y + sigma^2 grad log p_sigma(y), where p_sigma is the
  law of y. One evaluation of the stitched score over the whole volume is the MMSE estimate when the score is
  exact; ``tweedie_denoise`` is the fast path and the default.
- Annealed: start the chain at y itself (already a draw from p_sigma), anneal sigma -> sigma_min, end with a
  Tweedie step. Measured on a closed-form toy (iid voxels from a two-class Gaussian mixture, means 0.2 / 0.8,
  sd 0.055, exact score, sigma 0.1, 32^3; MSE relative to one Tweedie step, which is the MMSE here):
  noisy 3.4; annealed Langevin 3.1-15 (1-5 steps per level, alpha_i = 0.01-1 sigma_i^2: small steps keep
  the noise, large ones forget the scan, since Langevin targets the marginal p_sigma_i, not p(x | y));
  reverse-diffusion predictor alone ("pc", no corrector) with 4 / 8 / 16 levels 2.5 / 2.1 / 2.0 (a posterior
  sample: 2 in theory), with one corrector step 2.4 (16 levels); 4 chains averaged 1.37 / 1.26 (theory
  1.25). So with an exact score nothing beats one Tweedie step; the samplers are for posterior samples, or
  for learned scores where a benchmark shows they help. The predictor-only chain is the default.
- Self-supervised (Noise2Score, Kim and Ye 2021): Tweedie needs only the score of p_sigma, the law of the
  noisy data, which score matching learns from noisy scans alone; see ``fit_self_supervised``.

Units: the model works in "model units" (the training volumes' ``IntensityScaler``); files are read and
written in their own intensity units, sigma is reported in both.
"""

from volscore.denoise.background import clamp_background, foreground_mask, otsu_threshold
from volscore.denoise.estimators import annealed_denoise, denoise_sigmas, tweedie_denoise
from volscore.denoise.files import RECORD_NAME, choose_scaler, denoise_file, denoise_folder
from volscore.denoise.noise_level import estimate_sigma, estimate_sigma_rician
from volscore.denoise.rician import rician_correct, rician_mean
from volscore.denoise.self_supervised import fit_self_supervised, self_supervised_levels

__all__ = [
    "RECORD_NAME",
    "annealed_denoise",
    "choose_scaler",
    "clamp_background",
    "denoise_file",
    "denoise_folder",
    "denoise_sigmas",
    "estimate_sigma",
    "estimate_sigma_rician",
    "fit_self_supervised",
    "foreground_mask",
    "otsu_threshold",
    "rician_correct",
    "rician_mean",
    "self_supervised_levels",
    "tweedie_denoise",
]
