"""ObservationResult data products: observation requests read from YAML (``requests``)."""
