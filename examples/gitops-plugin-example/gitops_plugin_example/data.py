"""xor-blobs: generated with a fixed seed, so the data is a function of the parameters."""

import numpy as np


def xor_blobs(params, root):
    rng = np.random.default_rng(0)
    n = params["n_samples"]
    signs = rng.choice([-1.0, 1.0], size=(n, 2))
    x = signs + params["noise"] * rng.normal(size=(n, 2))
    y = (signs[:, 0] != signs[:, 1]).astype(np.int32)
    return x.astype(np.float32), y
