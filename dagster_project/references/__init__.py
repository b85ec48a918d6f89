"""References beyond one asset: when a field's co-added reference is worth rebuilding (``policy``)."""

__all__ = ["policy"]
