"""Shared test settings: one torch thread: the tests run small ops, for which a second thread costs more than it gains."""

import torch

torch.set_num_threads(1)
