"""Data-parallel training (zoo.distributed): `shard`, and 2 processes launched by torchrun (gloo, CPU)
against the single-process run at the same global batch; the CLI under torchrun writes one variant."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch

import ddp_worker
from tiny_zoo import BASE, one_torch_thread, store_env, store_with_base
from zoo.distributed import batch_rows, default_backend, init_from_environment, main_decides, shard, world
from zoo.errors import InvalidArgumentError

REPO = Path(__file__).resolve().parent.parent
LAUNCH_TIMEOUT = 300  # seconds: a hang (a collective one rank never joins) fails the test instead of the CI job
# 2 processes against 1 at the same global batch: equal but for the order of floating-point sums
# (measured: 3e-8 relative after the two epochs; leaving the uneven last batch unweighted gives 2e-3).
RELATIVE_TOLERANCE = 1e-5


def _torchrun(args: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", *args]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


# shard --------------------------------------------------------------------------------------------

Pair = namedtuple("Pair", "x y")


def test_shard_splits_every_tensor_of_a_nested_batch_into_contiguous_near_equal_parts() -> None:
    x = torch.arange(7 * 2).reshape(7, 2)
    batch = {"pair": Pair(x, torch.arange(7)), "list": [torch.arange(7) * 10, "tag"], "n": 3}
    parts = [shard(batch, rank, 3) for rank in range(3)]
    assert [batch_rows(p) for p in parts] == [3, 2, 2]
    assert torch.equal(parts[1]["pair"].x, x[3:5]) and isinstance(parts[1]["pair"], Pair)
    assert torch.equal(parts[2]["list"][0], torch.tensor([50, 60]))
    assert parts[0]["list"][1] == "tag" and parts[0]["n"] == 3  # not tensors: kept whole
    assert torch.equal(torch.cat([p["pair"].y for p in parts]), torch.arange(7))


@pytest.mark.parametrize(("batch", "message"), [
    ((torch.zeros(1, 3), torch.zeros(1)), "1 rows cannot be split among 2"),
    ((torch.zeros(4, 3), torch.zeros(5)), r"same number of rows; got \[4, 5\]"),
    (["no", "tensor"], "got no tensor"),
    ((torch.zeros(4), torch.tensor(1.0)), "0-dimensional"),
])
def test_shard_refuses_what_it_cannot_split(batch: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        shard(batch, 0, 2)


def test_shard_refuses_a_rank_outside_the_world() -> None:
    with pytest.raises(InvalidArgumentError, match="rank must be in"):
        shard(torch.zeros(4), 2, 2)


def test_one_process_without_a_group_is_a_world_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_environment() == (0, 1) == world()
    assert not torch.distributed.is_initialized()
    assert main_decides(lambda: "here") == "here"
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InvalidArgumentError, match="WORLD_SIZE must be an integer"):
        init_from_environment()


def test_backend_is_gloo_without_cuda_and_nccl_for_cuda_tensors_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_backend() == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_backend() == "cpu:gloo,cuda:nccl"


# 2 processes against 1 ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Every scenario of tests/ddp_worker.py, run once by torchrun on 2 processes: per scenario, the
    result of rank 0 and rank 1."""
    out = tmp_path_factory.mktemp("ddp")
    _torchrun([str(REPO / "tests" / "ddp_worker.py"), str(out)])
    return {name: [torch.load(out / f"{name}_rank{rank}.pt") for rank in (0, 1)]
            for name in (*ddp_worker.SCENARIOS, "collectives")}


@pytest.fixture(scope="module")
def one_rank() -> dict[str, dict]:
    with one_torch_thread():
        return {name: ddp_worker.run(name) for name in ddp_worker.SCENARIOS}


def _assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        error = float((got[name].double() - value.double()).norm() / value.double().norm().clamp_min(1e-12))
        assert error <= RELATIVE_TOLERANCE, f"{name}: relative error {error:.2e}"


def test_two_processes_train_the_single_process_model_at_the_same_global_batch(two_ranks, one_rank) -> None:
    ranks, single = two_ranks["dense"], one_rank["dense"]
    assert [r["world"] for r in ranks] == [2, 2]
    # each rank saw its shards only: batches of 10, 10, 7 rows -> 5+5+4 and 5+5+3, for 2 epochs
    assert [r["rows_seen"] for r in ranks] == [28, 26] and single["rows_seen"] == 54
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), f"{name} differs between the ranks"
    _assert_close(ranks[0]["state"], single["state"])
    assert ranks[0]["history"] == ranks[1]["history"]
    assert ranks[0]["history"] == pytest.approx(single["history"], rel=RELATIVE_TOLERANCE)


@pytest.mark.parametrize("scenario", ["gmp", "rigl", "set"])
def test_masks_are_identical_on_every_rank_and_equal_the_single_process_masks(two_ranks, one_rank,
                                                                               scenario: str) -> None:
    ranks, single = two_ranks[scenario], one_rank[scenario]
    assert ranks[0]["masks"].keys() == single["masks"].keys() == {"fc1", "fc2"}
    for name, mask in single["masks"].items():
        assert torch.equal(ranks[0]["masks"][name], ranks[1]["masks"][name]), f"{name} differs between the ranks"
        assert torch.equal(ranks[0]["masks"][name], mask), f"{name} differs from the single-process mask"
        assert torch.equal(ranks[0]["state"][f"{name}.weight"] != 0, mask)
    _assert_close(ranks[0]["state"], single["state"])


def test_batchnorm_buffers_end_as_rank_0s_on_every_rank(two_ranks) -> None:
    ranks = two_ranks["batchnorm"]
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), f"{name} differs between the ranks"
    assert ranks[0]["state"]["norm.num_batches_tracked"] == 6  # 3 steps a epoch, 2 epochs


def test_rank_0_decides_writes_and_fails_for_every_rank(two_ranks) -> None:
    zero, one = two_ranks["collectives"]
    assert zero["decided"] == one["decided"] == 7 and zero["nested"] == one["nested"] == "inner 0"
    assert (zero["only"], one["only"]) == ("from 0", None)
    assert zero["error"] == "ValueError: disk full"
    assert one["error"] == "DistributedError: rank 0 failed: ValueError: disk full"
    assert zero["accuracy"] == one["accuracy"] == pytest.approx(2 / 3)  # a metric on rank 0 alone: no hang
    for rank in (zero, one):  # a loss that calls submodules itself would get no averaged gradient
        assert rank["bypass"].startswith("DistributedError: the loss called the model's forward 0 times")


# The CLI under torchrun -------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_under_torchrun_derives_one_variant_written_once(tmp_path_factory: pytest.TempPathFactory,
                                                            tmp_path: Path) -> None:
    store = store_with_base(tmp_path_factory, tmp_path)
    result = _torchrun(["-m", "zoo.cli", "compress", BASE, "--sparsity", "0.9"], env=store_env(store))
    name = f"{BASE}_gmp90"
    folders = store.cached_entries(name)
    beside = sorted(p.name for p in (store.cache_root / name).iterdir())
    assert len(folders) == 1 and beside == [f".{folders[0].name}.lock", folders[0].name]  # the key and its lock
    assert sorted(p.name for p in folders[0].iterdir()) == ["config.json", "model.safetensors", "report.json"]
    lines = [line for line in result.stdout.splitlines() if line.startswith(f"{name}: ")]
    assert lines == [f"{name}: derived at {folders[0]}"] * 2  # both ranks: the one folder rank 0 wrote
