"""Pictures for people: PNG previews of images and candidate cutouts (``preview``)."""

__all__ = ["preview"]
