"""Thin ZenML steps over the ``slipway`` core, one module per concern."""
