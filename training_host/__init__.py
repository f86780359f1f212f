"""The reference ktrdr training host: a FastAPI service that trains ktrdr strategies for real.

It speaks ktrdr's training API (DESIGN section 2) so the chain cannot tell it from a ktrdr
backend, and trains a PyTorch MLP on real OHLCV bars with ktrdr's feature pipeline
(`ktrdr-strategy-format.md`). Separate deployable: the chain never imports it. Both ship in
one distribution, so they share its one version.
"""

from ktrdr_tasks import __version__

__all__ = ["__version__"]
