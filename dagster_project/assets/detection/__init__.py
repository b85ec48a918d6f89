"""ZOGY difference images and the transient candidates found in them (group ``detection``)."""
