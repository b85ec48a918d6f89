"""The operations API's routers, one per resource of the seed: ``executed_obs_units``, ``raw_data_files``,
``raw_data_package``, ``staging``; and ``service`` (health, tokens)."""
