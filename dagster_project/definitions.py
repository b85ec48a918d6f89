"""The Dagster code location: assets, checks, jobs, sensors and resources."""

from dagster import Definitions

from dagster_project.assets.observations.calibrated_image import calibrated_image
from dagster_project.assets.detection.candidates import candidates
from dagster_project.assets.detection.difference_image import difference_image
from dagster_project.assets.products.observation_products import observation_products
from dagster_project.assets.observations.raw_observation import raw_observation
from dagster_project.assets.references.reference_image import reference_image
from dagster_project.pipeline.jobs import calibrate_job, difference_job, observation_job, products_job, reference_job
from dagster_project.resources import resources_from_settings
from dagster_project.sensors import build_sensors
from dagster_project.settings import Settings

settings = Settings.from_env()

defs = Definitions(
    assets=[raw_observation, calibrated_image, reference_image, difference_image, candidates, observation_products],
    jobs=[observation_job, calibrate_job, difference_job, reference_job, products_job],
    sensors=build_sensors(settings),
    resources=resources_from_settings(settings),
)
