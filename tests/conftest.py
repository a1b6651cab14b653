"""Shared test settings: small thread count so parallel runs on a 2-core machine stay predictable."""

import torch

torch.set_num_threads(2)
