"""Example gitops plugin. `specs` holds the jax-free metadata; the other modules the implementations.

Installed, gitops finds the specs through the entry points in pyproject.toml. Copied into a
repository as its plugin package (gitops.yaml: `plugins: {package: plugins}`), gitops reads
GITOPS_PLUGINS below instead; the same files work both ways.
"""

from .specs import BRIER, FEATURE_DROPOUT, TINY_LINEAR, XOR_BLOBS

GITOPS_PLUGINS = {
    "architectures": [TINY_LINEAR],
    "datasets": [XOR_BLOBS],
    "augmentations": [FEATURE_DROPOUT],
    "metrics": [BRIER],
}
