"""Evaluation metrics: MNIST sample quality, PSNR/SSIM for volumes, MMD/COV/1-NNA for shapes.

One module each: ``classifier`` (the small 2D/3D classifiers whose features and softmax score
samples), ``mnist`` (Frechet distance, confidence, memorisation for the 2D baseline), ``volumes``
(PSNR and SSIM via MONAI), ``shapes`` (IoU-distance set metrics, connectivity, class histogram),
``seams`` (visibility of tile boundaries in stitched volumes).
"""

from volscore.metrics.classifier import (
    ConvClassifier,
    classify,
    load_or_train_classifier,
    random_shift,
    train_classifier,
)
from volscore.metrics.mnist import blurred_noise_images, evaluate_mnist_samples, frechet_distance
from volscore.metrics.seams import seam_score
from volscore.metrics.shapes import (
    connected_fraction,
    coverage,
    evaluate_shapes,
    iou_distance_matrix,
    mmd,
    one_nna,
)
from volscore.metrics.volumes import psnr, ssim

__all__ = [
    "ConvClassifier",
    "blurred_noise_images",
    "classify",
    "connected_fraction",
    "coverage",
    "evaluate_mnist_samples",
    "evaluate_shapes",
    "frechet_distance",
    "iou_distance_matrix",
    "load_or_train_classifier",
    "mmd",
    "one_nna",
    "psnr",
    "random_shift",
    "seam_score",
    "ssim",
    "train_classifier",
]
