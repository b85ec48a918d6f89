"""The durable local journal of the operations API's critical writes (``store``) and the replayer that applies
them to the catalog in order, exactly once (``replayer``). Dagster-free."""

from dagster_project.journal.replayer import Applier, ReplayReport, Replayer
from dagster_project.journal.store import Entity, Entry, IdempotencyConflict, Journal, Token, content_digest

__all__ = ["Applier", "Entity", "Entry", "IdempotencyConflict", "Journal", "ReplayReport", "Replayer", "Token",
           "content_digest"]
