"""Example gitops plugin. `specs` holds the jax-free metadata; the other modules the implementations."""
