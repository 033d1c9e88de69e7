"""Two gloo ranks under ``torchrun`` give one process's numbers; a failing rank ends every rank with its
message; shards cover every row once; only rank 0 prints and writes.

The multi-process part is one ``torchrun --nproc_per_node=2`` job (``_worker.py``) running every command of
:data:`PLAN` in one process group — failures included, which also shows the group outlives them — plus one
job where a rank dies outright. The one-process references run in this process through ``CliRunner``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from typer.testing import CliRunner

from calibscope.cli import app
from calibscope.conventions import contiguous_shard
from calibscope.errors import InputError

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_worker.py")
S = "sample_checkpoints"
HARD, SAM = f"{S}/digits_hard.pt2", f"{S}/digits_sam.pt2"
TRAIN, VAL, TEST = f"{S}/digits_train.npz", f"{S}/digits_val.npz", f"{S}/digits_test.npz"

# A logits file that 2 ranks read by rows from disk (numpy.savez stores members uncompressed), while one
# process loads it whole: the same numbers either way.
LOGITS = "stored_test_logits.npz"
# Named token inputs (input_ids, attention_mask, token_type_ids) fed by keyword to a model from an --arch file.
TOKENS, BAG, BAG_ARCH = "tokens.npz", "bag.pt", "bag.py:Bag"
BAG_SOURCE = """
from torch import nn

class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.EmbeddingBag(40, 16, mode="sum")
        self.classifier = nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.classifier(self.embed(input_ids, per_sample_weights=attention_mask.float()))
"""

# The commands compared between one process and two ranks. Sizes not divisible by 2: --limit 149,
# --examples 149, the 1347 test examples.
COMMANDS = {
    "ece": ["ece", HARD, SAM, "--data", TEST, "--json", "--no-cache"],
    "ece_logits_file": ["ece", LOGITS, "--json"],
    "ece_bootstrap": ["ece", HARD, "--data", TEST, "--bootstrap", "200", "--json", "--no-cache"],
    "temperature": ["temperature", HARD, "--data", VAL, "--apply", TEST, "--json", "--no-cache"],
    "temperature_logits_file": ["temperature", LOGITS, "--json"],
    "project": ["project", HARD, "--data", TRAIN, "--val", VAL, "--limit", "149", "--json", "--no-cache"],
    "hessian": ["hessian", SAM, "--data", TRAIN, "--examples", "149", "--trace-samples", "0", "--json"],
    "mi": ["mi", HARD, "--data", TRAIN, "--classes", "3,5", "--json"],
    "selective": ["selective", HARD, "--data", TEST, "--json", "--no-cache"],
    "ood": ["ood", HARD, "--data", TEST, "--ood-data", VAL, "--train", TRAIN, "--json", "--no-cache"],
    "ece_tokens": ["ece", BAG, "--arch", BAG_ARCH, "--data", TOKENS, "--json", "--no-cache"],
}
FAULTS = [
    {"name": "fail_inference", "argv": ["selective", HARD, "--data", TEST, "--json", "--no-cache"],
     "fault": {"rank": 1, "at": "inference"}},
    {"name": "fail_hvp", "argv": COMMANDS["hessian"], "fault": {"rank": 1, "at": "hvp"}},
    {"name": "after_failures", "argv": ["selective", HARD, "--data", VAL, "--json", "--no-cache"]},
]
CACHE = [  # the output cache: written by rank 0 after a gather, then found by both ranks
    {"name": "cache_fill", "argv": ["ece", HARD, "--data", VAL, "--json"]},
    {"name": "cache_hit", "argv": ["ece", HARD, "--data", VAL, "--json"]},
]
OUT = "figures"  # --out of a command whose files only rank 0 writes
WRITES = [{"name": "writes", "argv": ["project", HARD, "--data", TRAIN, "--limit", "149", "--out", OUT]}]
PLAN = [{"name": name, "argv": argv} for name, argv in COMMANDS.items()] + CACHE + WRITES + FAULTS

# Provenance that legitimately differs between runs (timings, the process layout).
IGNORED = {"seconds", "examples_per_second", "distributed", "processes", "cache", "calibscope_version"}


IN_WORKDIR = (LOGITS, OUT, TOKENS, BAG, BAG_ARCH)  # arguments that name files the fixture writes


def write_token_model(out: Path) -> None:
    """101 token sequences (50 + 51 rows per rank) with padding, and a bag-of-embeddings model for them."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 12, size=101)
    mask = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, 40, size=(101, 12)) * mask
    np.savez(out / TOKENS, input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids),
             labels=rng.integers(0, 3, size=101))
    (out / "bag.py").write_text(BAG_SOURCE)
    namespace: dict = {}
    exec(BAG_SOURCE, namespace)
    torch.manual_seed(0)
    torch.save(namespace["Bag"]().state_dict(), out / BAG)


def write_stored_logits(path: Path) -> Path:
    with np.load(REPO / S / "digits_hard_test_logits.npz") as data:
        np.savez(path, **{k: data[k] for k in data.files})
    return path


def command(name: str, workdir: Path) -> list[str]:
    return [str(workdir / a) if a in IN_WORKDIR else a for a in COMMANDS[name]]


def torchrun(plan: list[dict], out: Path, *, timeout: float = 240) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``plan`` on 2 gloo ranks; returns the job and ``{name: {rank: record}}``."""
    out.mkdir(parents=True, exist_ok=True)
    plan_file = out / "plan.json"
    plan_file.write_text(json.dumps(plan))
    env = {**os.environ, "CALIBSCOPE_DISTRIBUTED_TIMEOUT": "60", "OMP_NUM_THREADS": "1",
           "CALIBSCOPE_CACHE_DIR": str(out / "cache"), "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--monitor-interval=0.2", str(WORKER), str(plan_file), str(out)]
    job = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    records: dict[str, dict[int, dict]] = {}
    for f in out.glob("*.rank*.json"):
        name, rank = f.name[: -len(".json")].rsplit(".rank", 1)
        records.setdefault(name, {})[int(rank)] = json.loads(f.read_text())
    return job, records


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_ranks")
    write_stored_logits(out / LOGITS)
    write_token_model(out)
    return out


@pytest.fixture(scope="module")
def two_ranks(workdir):
    plan = [{**step, "argv": [str(workdir / a) if a in IN_WORKDIR else a for a in step["argv"]]} for step in PLAN]
    job, records = torchrun(plan, workdir)
    assert job.returncode == 0, job.stderr[-3000:]
    return records


@pytest.fixture
def one_thread():
    """The references on one thread, like each torchrun rank (OMP_NUM_THREADS=1): faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def one_process(argv: list[str]) -> dict:
    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# A spread (standard deviation over MI repetitions) of values of about 2 nats inherits their absolute rounding
# (float32 logits from other batch compositions: ~1e-7 nats), so it is compared absolutely, not relatively.
ABSOLUTE_TOLERANCE = {"spread_nats": 1e-6}


def assert_same(one, two, *, rel: float, path: str = "") -> None:
    """Equal documents: numbers to ``rel`` (relative, with an absolute floor of rel × 1e-3 or the key's entry in
    ``ABSOLUTE_TOLERANCE``), the rest exactly."""
    if isinstance(one, dict):
        assert set(one) - IGNORED == set(two) - IGNORED, path
        for key in set(one) - IGNORED:
            assert_same(one[key], two[key], rel=rel, path=f"{path}/{key}")
    elif isinstance(one, list):
        assert len(one) == len(two), path
        for i, (a, b) in enumerate(zip(one, two, strict=True)):
            assert_same(a, b, rel=rel, path=f"{path}[{i}]")
    elif isinstance(one, float) and isinstance(two, float):
        floor = ABSOLUTE_TOLERANCE.get(path.rsplit("/", 1)[-1], rel * 1e-3)
        assert math.isclose(one, two, rel_tol=rel, abs_tol=floor) or (math.isnan(one) and math.isnan(two)), \
            f"{path}: {one} vs {two}"
    else:
        assert one == two, f"{path}: {one!r} vs {two!r}"


def rank0_document(records: dict, name: str) -> dict:
    ranks = records[name]
    assert {r: rec["code"] for r, rec in ranks.items()} == {0: 0, 1: 0}, ranks
    assert ranks[1]["stdout"] == "" and ranks[1]["stderr"] == "", "only rank 0 prints"
    return json.loads(ranks[0]["stdout"])


# ------------------------------------------------------------------------------------------- equality


def test_ece_equals_one_process(two_ranks, workdir, one_thread):
    """Two models on 1347 examples (673 + 674 rows): sufficient statistics all-reduced, never the logits."""
    two = rank0_document(two_ranks, "ece")
    assert_same(one_process(command("ece", workdir)), two, rel=1e-6)
    assert [r["n"] for r in two["results"]] == [1347, 1347]


def test_token_inputs_fed_by_keyword_equal_one_process(two_ranks, workdir, one_thread):
    two = rank0_document(two_ranks, "ece_tokens")
    assert_same(one_process(command("ece_tokens", workdir)), two, rel=1e-6)
    assert two["results"][0]["n"] == 101


def test_ece_of_a_logits_file_read_by_rows_equals_one_process(two_ranks, workdir):
    two = rank0_document(two_ranks, "ece_logits_file")
    assert_same(one_process(command("ece_logits_file", workdir)), two, rel=1e-6)


def test_ece_with_bootstrap_gathers_and_equals_one_process(two_ranks, workdir, one_thread):
    assert_same(one_process(command("ece_bootstrap", workdir)), rank0_document(two_ranks, "ece_bootstrap"),
                rel=1e-6)


def test_temperature_equals_one_process(two_ranks, workdir, one_thread):
    for name in ("temperature", "temperature_logits_file"):
        two = rank0_document(two_ranks, name)
        one = one_process(command(name, workdir))
        assert_same(one, two, rel=1e-6)  # the fitted T, its NLL and passes, before/after metrics, the sweep
        assert two["fits"]["nll"]["converged"] and two["fits"]["nll"]["n"] in (300, 1347)


def test_the_output_cache_is_written_once_and_found_by_every_rank(two_ranks):
    fill, hit = rank0_document(two_ranks, "cache_fill"), rank0_document(two_ranks, "cache_hit")
    assert fill["results"][0]["inference"]["cache"] == "miss"
    assert hit["results"][0]["inference"]["cache"] == "hit"
    assert_same(fill["results"][0]["metrics"], hit["results"][0]["metrics"], rel=0)


def test_projection_coordinates_equal_one_process(two_ranks, one_thread):
    two = rank0_document(two_ranks, "project")
    assert_same(one_process(COMMANDS["project"]), two, rel=1e-6)
    assert len(two["results"][0]["splits"][0]["coordinates"]) > 0


def test_top5_hessian_eigenvalues_equal_one_process(two_ranks, one_thread):
    two = rank0_document(two_ranks, "hessian")
    one = one_process(COMMANDS["hessian"])
    a, b = one["results"][0], two["results"][0]
    assert b["settings"]["processes"] == 2 and b["settings"]["examples"] == 149
    np.testing.assert_allclose(b["eigenvalues"], a["eigenvalues"], rtol=1e-4)
    assert len(b["eigenvalues"]) == 5
    assert math.isclose(a["loss"], b["loss"], rel_tol=1e-6)


def test_mutual_information_selective_and_ood_equal_one_process(two_ranks, one_thread):
    for name in ("mi", "selective", "ood"):
        assert_same(one_process(COMMANDS[name]), rank0_document(two_ranks, name), rel=1e-6)


def test_only_rank_0_prints_and_writes_files(two_ranks, workdir):
    ranks = two_ranks["writes"]
    assert ranks[0]["code"] == ranks[1]["code"] == 0
    assert "Relative spread" in ranks[0]["stdout"] and ranks[1]["stdout"] == ranks[1]["stderr"] == ""
    written = sorted(p.name for p in (workdir / OUT).iterdir())
    assert written == ["projection.json", "projection.png", "projection.svg"], written  # no stray temp files


# ------------------------------------------------------------------------------------------- failures


def test_a_failing_rank_ends_every_rank_with_its_message(two_ranks):
    ranks = two_ranks["fail_inference"]
    assert ranks[0]["code"] == ranks[1]["code"] == 2
    assert ranks[0]["stderr"].strip() == ("calibscope: error: rank 1: rank-local fault injected on rank 1: its "
                                          "shard cannot be read")
    assert ranks[1]["stderr"] == "" and ranks[0]["stdout"] == ""


def test_a_rank_failing_inside_lanczos_ends_every_rank(two_ranks):
    ranks = two_ranks["fail_hvp"]
    assert ranks[0]["code"] == ranks[1]["code"] == 3  # an internal error, not bad input
    assert "rank 1: RuntimeError: rank-local fault injected on rank 1 in Hessian-vector product 3" in \
        ranks[0]["stderr"]


def test_the_ranks_go_on_after_settled_failures(two_ranks):
    doc = rank0_document(two_ranks, "after_failures")
    assert doc["results"]


def test_a_rank_that_dies_ends_the_job_without_hanging(tmp_path):
    plan = [{"name": "crash", "argv": ["selective", HARD, "--data", TEST, "--json", "--no-cache"],
             "fault": {"rank": 1, "at": "crash"}}]
    job, records = torchrun(plan, tmp_path, timeout=120)
    assert job.returncode != 0
    assert "exitcode  : 17" in job.stderr  # torchrun names the rank that died
    if "crash" in records and 0 in records["crash"]:  # rank 0 lived long enough to write what ended it:
        # gloo noticed the closed connection (3, an internal error) or the agent's signal stopped it (130/143)
        assert records["crash"][0]["code"] in (3, 130, 143)


# ------------------------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("n", [0, 1, 2, 5, 1347])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_contiguous_shards_cover_every_row_once(n, count):
    parts = [contiguous_shard(n, r, count) for r in range(count)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
    sizes = [b - a for a, b in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shards_on_batch_boundaries():
    parts = [contiguous_shard(1000, r, 3, unit=256) for r in range(3)]
    assert parts == [(0, 512), (512, 768), (768, 1000)]
    with pytest.raises(InputError, match="index"):
        contiguous_shard(10, 2, 2)


def test_failure_records_round_trip():
    from calibscope.inference.distributed import Failure, _decode_failure, _encode_failure

    failure = Failure(rank=3, exit_code=2, kind="error", message="naïve message " + "x" * 5000)
    back = _decode_failure(_encode_failure(failure), 3)
    assert (back.rank, back.exit_code, back.kind) == (3, 2, "error") and back.message.startswith("naïve message")
    assert _decode_failure(_encode_failure(None), 0) is None


def test_discarded_writes_leave_nothing(tmp_path):
    from calibscope.render.atomic import atomic_write_text, discarding_writes

    with discarding_writes():
        written = atomic_write_text(tmp_path / "a.json", "{}")
        assert written.read_text() == "{}" and written.parent != tmp_path  # code may read back what it wrote
    atomic_write_text(tmp_path / "b.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


def test_one_process_is_the_plain_path(monkeypatch):
    from calibscope.inference import distributed

    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_environment() is None and distributed.current() is None
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InputError, match="WORLD_SIZE"):
        distributed.launched_by_torchrun()
