"""Property-based fuzz of the readers of untrusted files at a CI budget: mutated checkpoints (decoder and
model), config.json, report.json and recipes end in a result or a typed ZooError, never another exception
or a hang. `benchmarks/fuzz.py` runs the same mutators at 10^5 inputs per target."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiny_zoo import benchmark_module
from zoo.errors import ZooError

# A few seconds in all: each target's examples are small and its run a few milliseconds.
BUDGET = settings(max_examples=60, deadline=2000, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory):
    with benchmark_module("fuzz") as module:
        workdir = tmp_path_factory.mktemp("fuzz")
        yield module, {name: module.make_target(name, workdir) for name in module.TARGETS}


def _only_typed(target, rng: random.Random) -> None:
    item = target.mutate(rng, rng.choice(target.seeds))
    try:
        target.run(item)
    except ZooError:
        pass


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["decoder", "model", "state_dict", "config", "report", "recipe"])
@BUDGET
@given(rng=st.randoms(use_true_random=False))
def test_mutated_inputs_end_typed(fuzz, name: str, rng: random.Random) -> None:
    _only_typed(fuzz[1][name], rng)


@BUDGET
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_as_json_yaml_and_weights(fuzz, data: bytes) -> None:
    module, targets = fuzz
    for target, item in ((targets["recipe"], ("json", data)), (targets["recipe"], ("yaml", data)),
                         (targets["config"], data), (targets["report"], data), (targets["decoder"], data)):
        try:
            target.run(item)
        except ZooError:
            pass


def test_the_benchmark_counts_untyped_errors_and_hangs(fuzz) -> None:
    module, _ = fuzz

    def run(item: int):
        if item == 0:
            raise KeyError("untyped")
        if item == 1:
            import time
            time.sleep(2)
        raise ZooError("typed")

    target = module.Target("toy", [0, 1, 2], lambda rng, seed: seed, run)
    result = module.fuzz(target, inputs=30, seconds=20, hang_seconds=0.05)
    assert result.inputs == 30 and result.untyped["KeyError"] + result.hangs + result.typed == 30
    assert result.untyped["KeyError"] > 0 and result.hangs > 0 and result.typed > 0
