"""Fault injection, short mode: one fault of each kind at seeded points, each resumed and checked
(final parameters bit-identical to an uninterrupted run, metrics exact, nothing lost beyond the
checkpoint cadence, documented exit codes). The long mode is `gptjax chaos --long`."""

import os

import pytest

from gptjax.tools import chaos

# Runs one subprocess after another: keep the whole module on one xdist worker.
# Fault recovery is the loop's and the store's logic: the reference lane runs it (see scripts/test.sh).
pytestmark = [pytest.mark.xdist_group("faults"), pytest.mark.workflow]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return chaos.Harness(tmp_path_factory.mktemp("chaos"))


FAULTS = ["sigkill-step", "sigkill-save", "sigkill-eval", "sigkill-final-save", "sigterm", "damage-flip",
           "damage-truncate", "damage-manifest", "damage-symlink", "disk-full", "kill-one-process"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", FAULTS)
def test_the_run_recovers(harness, kind):
    fault = next(f for f in chaos.short_faults(harness) if f.kind == kind)
    outcome = harness.run(fault)
    if outcome.skipped:
        if os.environ.get("GPTJAX_REQUIRE_FAULTS") == "1":
            pytest.fail(f"GPTJAX_REQUIRE_FAULTS=1 but {kind} cannot run here: {outcome.skipped}")
        pytest.skip(f"SKIPPING {kind}: {outcome.skipped}")
    print(chaos.table([outcome]))
    assert outcome.ok, chaos.table([outcome]) + f"\n{outcome.message}"
    expected_exit = {"sigterm": 0, "disk-full": 1, "kill-one-process": 1}.get(kind, chaos.KILLED)
    if kind.startswith("damage"):
        expected_exit = 0  # the damage is done to a finished run, which exited normally
    assert outcome.exit_code == expected_exit, outcome
    if kind == "sigterm":
        assert outcome.lost_steps == 0
    if kind.startswith("damage"):
        assert "is unusable" in outcome.message
    if kind == "disk-full":
        assert "did not commit" in outcome.message and "the last committed checkpoint is step" in outcome.message
