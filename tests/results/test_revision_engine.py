"""The revision engine: bumps, debounce, builds, failures and crashes."""

import threading
import uuid
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dagster_project.catalog import Catalog, IllegalTransition, transition
from dagster_project.catalog.queries import (
    NotFound,
    RebuildPolicy,
    bump_results,
    claim_build,
    due_for_rebuild,
    finish_build,
    get_result_processing_run,
    requeue_abandoned,
)
from dagster_project.catalog.schema import DataProductStatus, ObservationResult, ObservationResultProcessingRun
from dagster_project.catalog.states import PRODUCTS
from tests.results.helpers import T0, fulfilled_results

DP = DataProductStatus
POLICY = RebuildPolicy(quiet=timedelta(seconds=60), max_delay=timedelta(seconds=300), retry_base=timedelta(seconds=10),
                       max_attempts=100, build_timeout=timedelta(hours=1))


def bump(session, result, now):
    return bump_results(session, ObservationResult.id == result.id, now, POLICY)


def test_debounce_moves_with_each_bump_and_is_capped(catalog):
    with catalog.session() as s:
        _, (result,) = fulfilled_results(s, 1)
        bump(s, result, T0)
        assert result.next_eligible_run_at == T0 + POLICY.quiet
        assert (result.assets_revision, result.dirty_from_revision, result.dirty_since) == (1, 1, T0)
        assert due_for_rebuild(s, T0 + timedelta(seconds=59), POLICY) == []
        for k in range(1, 10):  # a bump every 50 s keeps pushing the rebuild ... until the cap
            bump(s, result, T0 + timedelta(seconds=50 * k))
        assert result.next_eligible_run_at == T0 + POLICY.max_delay
        assert result.dirty_from_revision == 1 and result.assets_revision == 10
        assert due_for_rebuild(s, T0 + POLICY.max_delay, POLICY) == [result]
        assert result.data_product_status is DP.PENDING  # never built: stays PENDING


def test_build_ready_then_bump_makes_stale_and_bump_during_build_rebuilds(catalog):
    with catalog.session() as s:
        _, (result,) = fulfilled_results(s, 1)
        bump(s, result, T0)
        run = claim_build(s, result, "run-1", T0 + timedelta(minutes=2))
        assert result.data_product_status is DP.BUILDING and result.current_processing_run is run
        finish_build(s, run, DP.READY, T0 + timedelta(minutes=3), policy=POLICY)
        assert (result.data_product_status, result.last_built_revision, result.dirty_from_revision) == (DP.READY, 1, None)
        bump(s, result, T0 + timedelta(minutes=4))
        assert result.data_product_status is DP.STALE and result.dirty_from_revision == 2
        run2 = claim_build(s, result, "run-2", T0 + timedelta(minutes=6))
        bump(s, result, T0 + timedelta(minutes=6, seconds=30))  # upstream changes while building
        finish_build(s, run2, DP.READY, T0 + timedelta(minutes=7), policy=POLICY)
        assert result.data_product_status is DP.STALE and result.last_built_revision == 2
        assert result.assets_revision == 3 and result.dirty_from_revision == 3


def test_failure_backs_off_and_blocked_waits_for_a_bump(catalog):
    with catalog.session() as s:
        _, (result,) = fulfilled_results(s, 1)
        bump(s, result, T0)
        now = T0 + timedelta(minutes=2)
        finish_build(s, claim_build(s, result, "r1", now), DP.FAILED, now, "boom", policy=POLICY)
        assert result.data_product_status is DP.FAILED and result.status_reason == "boom"
        assert result.next_eligible_run_at == now + POLICY.retry_base
        finish_build(s, claim_build(s, result, "r2", now), DP.FAILED, now, "boom", policy=POLICY)
        assert result.next_eligible_run_at == now + 2 * POLICY.retry_base
        finish_build(s, claim_build(s, result, "r3", now), DP.BLOCKED, now, "no difference", policy=POLICY)
        assert result.data_product_status is DP.BLOCKED and due_for_rebuild(s, now + timedelta(hours=1), POLICY) == []
        bump(s, result, now)
        assert result.data_product_status is DP.STALE


def test_dead_build_is_requeued_and_its_late_finish_refused(catalog):
    with catalog.session() as s:
        _, (result,) = fulfilled_results(s, 1)
        bump(s, result, T0)
        run = claim_build(s, result, "dead-run", T0 + timedelta(minutes=2))
        requeue_abandoned(s, lambda run_id: run_id != "dead-run", T0 + timedelta(minutes=3), POLICY)
        assert result.data_product_status is DP.PENDING and result.current_processing_run is None
        with pytest.raises(IllegalTransition):
            finish_build(s, run, DP.READY, T0 + timedelta(minutes=4), policy=POLICY)
        assert due_for_rebuild(s, T0 + timedelta(minutes=3), POLICY) == [result]



def test_a_build_is_found_by_its_id(catalog):
    with catalog.session() as s:
        _, (result,) = fulfilled_results(s, 1)
        run = claim_build(s, result, "run-1", T0)
        assert get_result_processing_run(s, run.id) is run
        with pytest.raises(NotFound):
            get_result_processing_run(s, uuid.uuid4())

def test_illegal_product_transition_raises_and_leaves_status(catalog):
    with catalog.session() as s:
        _, (result,) = fulfilled_results(s, 1)
        with pytest.raises(IllegalTransition):
            transition(result, DP.READY, field=PRODUCTS)
        assert result.data_product_status is DP.PENDING


@pytest.mark.postgres
def test_concurrent_bumps_lose_no_increment(postgres_url):
    catalog = Catalog(postgres_url)
    catalog.migrate()
    with catalog.session() as s:
        _, (result,) = fulfilled_results(s, 1)
        result_id = result.id
    writers, bumps_each = 8, 25
    barrier = threading.Barrier(writers)
    errors = []

    def writer():
        barrier.wait()
        try:
            for _ in range(bumps_each):
                with catalog.session() as s:
                    bump_results(s, ObservationResult.id == result_id, T0, POLICY)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with catalog.session() as s:
        assert s.get(ObservationResult, result_id).assets_revision == writers * bumps_each
    catalog.engine.dispose()


class RevisionEngineMachine(RuleBasedStateMachine):
    """Any interleaving of bumps, builds, failures and crashes ends READY at the latest revision."""

    catalog: Catalog  # set by the test below

    @initialize()
    def setup(self):
        self.now = T0
        self.session = self.catalog.session().__enter__()
        _, results = fulfilled_results(self.session, 3, name=f"m{id(self)}")
        self.results = results
        self.bumps = {r.id: 0 for r in results}
        self.in_flight: dict = {}  # processing run id -> (result id, dagster run id)
        self.dead: set[str] = set()
        self.successes: list[tuple] = []
        self.n = 0

    def _alive(self, run_id):
        return run_id not in self.dead

    @rule(i=st.integers(0, 2))
    def bump(self, i):
        bump_results(self.session, ObservationResult.id == self.results[i].id, self.now, POLICY)
        self.bumps[self.results[i].id] += 1

    @rule(seconds=st.sampled_from([1, 30, 61, 400]))
    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)

    @rule()
    def sensor_tick(self):
        """What the rebuild sensor does: re-queue dead builds, then start every due one."""
        requeue_abandoned(self.session, self._alive, self.now, POLICY)
        for result in due_for_rebuild(self.session, self.now, POLICY):
            self.n += 1
            run = claim_build(self.session, result, f"dagster-{self.n}", self.now)
            self.in_flight[run.id] = (result.id, f"dagster-{self.n}")

    def _finish_one(self, outcome):
        run_id, (result_id, dagster_id) = next(iter(self.in_flight.items()))
        del self.in_flight[run_id]
        run = self.session.get(ObservationResultProcessingRun, run_id)
        if dagster_id in self.dead:
            return
        finish_build(self.session, run, outcome, self.now, policy=POLICY)
        if outcome is DP.READY:
            self.successes.append((result_id, run.built_from_revision))

    @precondition(lambda self: self.in_flight)
    @rule()
    def build_succeeds(self):
        self._finish_one(DP.READY)

    @precondition(lambda self: self.in_flight)
    @rule()
    def build_fails(self):
        self._finish_one(DP.FAILED)

    @precondition(lambda self: self.in_flight)
    @rule()
    def build_crashes(self):
        _, (_, dagster_id) = next(iter(self.in_flight.items()))
        self.dead.add(dagster_id)

    @invariant()
    def no_revision_lost(self):
        for result in self.results:
            assert result.assets_revision == self.bumps[result.id]
            assert (result.last_built_revision or 0) <= result.assets_revision

    def teardown(self):
        for _ in range(50):  # drain: the world goes quiet, the sensor and the builds run to completion
            self.now += POLICY.max_delay + timedelta(hours=1)
            for run_id in list(self.in_flight):
                self._finish_one(DP.READY)
            self.sensor_tick()
            if not self.in_flight and not due_for_rebuild(self.session, self.now, POLICY):
                break
        for result in self.results:
            if self.bumps[result.id]:
                assert result.data_product_status is DP.READY, result.data_product_status
                assert result.last_built_revision == result.assets_revision
        assert len(self.successes) == len(set(self.successes)), "a revision was built twice"
        self.session.rollback()
        self.session.close()


def test_revision_engine_state_machine(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path / 'engine.sqlite'}")
    catalog.migrate()
    RevisionEngineMachine.catalog = catalog
    RevisionEngineMachine.TestCase.settings = settings(
        max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck))
    RevisionEngineMachine.TestCase().runTest()
