"""The products of each ObservationResult (group ``products``)."""
