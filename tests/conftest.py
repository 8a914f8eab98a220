"""Test-wide settings. The tests run tiny shapes, where torch's intra-op threads only contend
with each other (and with other processes on a 2-core CI machine): one thread is much faster."""
import os
import sys

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))  # tests share helpers (cases.py)
