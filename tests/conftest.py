"""Shared test settings: one torch thread, since the tests run small ops for which a second thread
costs more than it gains (up to 10x on a busy 2-core machine)."""

import torch

torch.set_num_threads(1)
