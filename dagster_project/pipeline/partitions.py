"""Partitions: one per observation (science exposure), one per field and band (references)."""

from dagster import DynamicPartitionsDefinition

#: key: ``<field>-<band>-<UTC yyyymmddThhmmss>-<sha256[:8]>``, added by the raw-arrival sensor
observations_partitions = DynamicPartitionsDefinition(name="observations")

#: key: ``<field>-<band>``, added when the first observation of that field and band arrives
field_band_partitions = DynamicPartitionsDefinition(name="field_bands")

#: key: the ObservationResult's ``uid``, added when a frame first fulfils the result
results_partitions = DynamicPartitionsDefinition(name="results")
