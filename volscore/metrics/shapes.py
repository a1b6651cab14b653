"""Shape-generation metrics between occupancy volumes, with 1 - IoU of the thresholded occupancies as the
distance: minimum matching distance (MMD), coverage (COV) and 1-nearest-neighbour accuracy (1-NNA) as in
Achlioptas et al. (2018) and Yang et al. (2019), the nearest-training-shape distance (memorisation), the
single-component fraction and, with a classifier, the class histogram. ``evaluate_shapes`` reports each
next to its floor: a training subset of the same size scored against the same reference set.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.ndimage
import torch
from torch import Tensor

from volscore.metrics.classifier import ConvClassifier, classify

ArrayLike = Tensor | np.ndarray


def _occupancy_flat(x: ArrayLike, threshold: float) -> Tensor:
    """(N, D, H, W) or (N, 1, D, H, W) occupancies -> boolean (N, V)."""
    t = torch.as_tensor(x).detach()
    if t.ndim == 5 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 4:
        raise ValueError(f"expected occupancies (N, D, H, W) or (N, 1, D, H, W), got {tuple(t.shape)}")
    return (t > threshold).reshape(len(t), -1)


def iou_distance_matrix(
    a: ArrayLike, b: ArrayLike, threshold: float = 0.5, max_elements: int = 2**25
) -> Tensor:
    """1 - IoU (Na, Nb) between occupancy volumes thresholded at ``threshold`` (occupied if > threshold).

    Intersections are a matrix product of the binary volumes, done in blocks of at most
    ``max_elements`` voxels per operand so memory stays bounded for many or large volumes. Two empty
    volumes count as identical (distance 0). Counts are exact in float64.
    """
    fa, fb = _occupancy_flat(a, threshold), _occupancy_flat(b, threshold)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"volumes differ in size: {fa.shape[1]} vs {fb.shape[1]} voxels")
    rows = max(1, max_elements // max(1, fa.shape[1]))
    size_a, size_b = fa.sum(1).double(), fb.sum(1).double()
    out = torch.empty(len(fa), len(fb), dtype=torch.float64)
    for i in range(0, len(fa), rows):
        ca = fa[i : i + rows].double()
        for j in range(0, len(fb), rows):
            inter = ca @ fb[j : j + rows].double().T  # (rows_a, rows_b) voxel counts
            union = size_a[i : i + rows, None] + size_b[None, j : j + rows] - inter
            iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
            out[i : i + rows, j : j + rows] = 1 - iou
    return out


def mmd(dist_gen_ref: ArrayLike) -> float:
    """Minimum matching distance: mean over reference shapes of the distance to the nearest generated one.

    ``dist_gen_ref`` is (N_gen, N_ref); lower is better (fidelity to every reference shape).
    """
    d = torch.as_tensor(dist_gen_ref).double()
    return float(d.min(0).values.mean())


def coverage(dist_gen_ref: ArrayLike) -> float:
    """Coverage: fraction of reference shapes that are the nearest reference of some generated shape.

    ``dist_gen_ref`` is (N_gen, N_ref); higher is better (diversity; low values flag mode collapse).
    """
    d = torch.as_tensor(dist_gen_ref)
    return float(torch.unique(d.argmin(1)).numel() / d.shape[1])


def one_nna(d_gg: ArrayLike, d_rr: ArrayLike, d_gr: ArrayLike) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy of telling generated from reference shapes.

    d_gg (Ng, Ng), d_rr (Nr, Nr), d_gr (Ng, Nr). 0.5 is ideal (the sets are indistinguishable);
    1.0 means the sets are apart; well below 0.5 means generated shapes sit on top of reference
    shapes (copies of the training set give 0). Ties go to the generated set.
    """
    gg, rr, gr = (torch.as_tensor(d).double() for d in (d_gg, d_rr, d_gr))
    ng, nr = len(gg), len(rr)
    full = torch.cat([torch.cat([gg, gr], 1), torch.cat([gr.T, rr], 1)], 0)  # (Ng + Nr, Ng + Nr)
    full.fill_diagonal_(float("inf"))  # leave one out: a shape is not its own neighbour
    is_gen = torch.cat([torch.ones(ng, dtype=torch.bool), torch.zeros(nr, dtype=torch.bool)])
    nearest = full.argmin(1)
    return float((is_gen[nearest] == is_gen).double().mean())


def connected_fraction(occupancies: ArrayLike, threshold: float = 0.5, connectivity: int = 6) -> float:
    """Fraction of occupancy volumes (N, D, H, W) or (N, 1, D, H, W) that form exactly one component.

    ``connectivity`` is 6 (faces, the default), 18 (faces and edges) or 26 (faces, edges, corners).
    6 is the strict choice: parts touching only along an edge or at a corner are not one solid.
    Empty volumes count as not connected.
    """
    occ = _occupancy_flat(occupancies, threshold)
    t = torch.as_tensor(occupancies)
    shape = t.shape[-3:]
    rank = {6: 1, 18: 2, 26: 3}.get(connectivity)
    if rank is None:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    structure = scipy.ndimage.generate_binary_structure(3, rank)
    ones = [scipy.ndimage.label(v.reshape(shape).numpy(), structure=structure)[1] == 1 for v in occ]
    return float(np.mean(ones)) if ones else float("nan")


def _set_metrics(d_gg: Tensor, d_rr: Tensor, d_gr: Tensor) -> dict[str, float]:
    return {"mmd": mmd(d_gr), "coverage": coverage(d_gr), "one_nna": one_nna(d_gg, d_rr, d_gr)}


def evaluate_shapes(
    samples: ArrayLike,
    reference: ArrayLike,
    train: ArrayLike,
    threshold: float = 0.5,
    classifier: ConvClassifier | None = None,
    confidence: float = 0.9,
    seed: int = 0,
) -> dict[str, Any]:
    """Generated occupancies against the held-out ``reference`` set and the ``train`` set, all (N, D, H, W)
    or (N, 1, D, H, W) in [0, 1]; samples are clipped to [0, 1] first. Python floats and lists:

      - ``mmd``, ``coverage``, ``one_nna``: samples vs reference (1-NNA 0.5 ideal, 1.0 apart);
        ``floor_*`` the same for a random training subset of the samples' size (what a generator
        that reproduces the training distribution gets; not a bound for MMD, which falls with more samples);
      - ``nn_train_mean`` / ``nn_train_min``: 1 - IoU from each sample to its nearest training shape, and
        ``ref_nn_train_mean`` / ``ref_nn_train_min`` the same for reference shapes: samples much closer
        to the training set than held-out shapes are copies;
      - ``connected_fraction`` (6-connectivity) of samples and of the reference (``ref_connected_fraction``),
        ``empty_fraction`` of samples with no occupied voxel;
      - with a ``classifier``: ``class_histogram`` and ``confident_fraction`` (top probability >=
        ``confidence``) of the samples.
    """
    x = torch.as_tensor(samples).detach().float()
    bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
    if bad:
        raise ValueError(f"{bad} of {len(x)} samples contain NaN or Inf (a diverged sampler?)")
    x = x.clamp(0, 1)
    ref, tr = torch.as_tensor(reference).float(), torch.as_tensor(train).float()
    n = len(x)
    if n < 2 or len(ref) < 2 or len(tr) < n:
        raise ValueError(f"need >= 2 samples and reference shapes and >= {n} training shapes")
    gen = torch.Generator().manual_seed(seed)
    floor = tr[torch.randperm(len(tr), generator=gen)[:n]]

    d_rr = iou_distance_matrix(ref, ref, threshold)
    d_x_train = iou_distance_matrix(x, tr, threshold)
    d_ref_train = iou_distance_matrix(ref, tr, threshold)
    out: dict[str, Any] = {"n": n, "n_reference": len(ref), "n_train": len(tr), "threshold": threshold}
    out.update(
        _set_metrics(iou_distance_matrix(x, x, threshold), d_rr, iou_distance_matrix(x, ref, threshold))
    )
    floor_metrics = _set_metrics(
        iou_distance_matrix(floor, floor, threshold), d_rr, iou_distance_matrix(floor, ref, threshold)
    )
    out.update({f"floor_{k}": v for k, v in floor_metrics.items()})
    nn_x, nn_ref = d_x_train.min(1).values, d_ref_train.min(1).values
    out.update(
        nn_train_mean=float(nn_x.mean()),
        nn_train_min=float(nn_x.min()),
        ref_nn_train_mean=float(nn_ref.mean()),
        ref_nn_train_min=float(nn_ref.min()),
        connected_fraction=connected_fraction(x, threshold),
        ref_connected_fraction=connected_fraction(ref, threshold),
        empty_fraction=float((_occupancy_flat(x, threshold).sum(1) == 0).double().mean()),
    )
    if classifier is not None:
        vol = x if x.ndim == 5 else x[:, None]
        _, probs = classify(classifier, vol)
        top = probs.max(1)
        hist = torch.bincount(top.indices, minlength=probs.shape[1]).double() / n
        out.update(
            class_histogram=hist.tolist(),
            confident_fraction=float((top.values >= confidence).double().mean()),
        )
    return out
