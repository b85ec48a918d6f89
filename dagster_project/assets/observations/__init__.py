"""Raw frames: the archived raw observation and its calibrated image (group ``calibration``)."""
