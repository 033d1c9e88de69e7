"""Runs several ``calibscope`` commands in one ``torchrun`` job (one process group), for the tests.

    torchrun --standalone --nproc_per_node=2 tests/distributed/_worker.py PLAN.json OUT_DIR

PLAN.json: a list of ``{"name": str, "argv": [str, ...], "fault": null | {"rank": int, "at": str}}``;
``at`` is ``inference`` (the rank's model run raises an InputError), ``hvp`` (its third Hessian-vector product
raises a RuntimeError) or ``crash`` (the process dies at its model run, as if killed). Every rank writes
``NAME.rankR.json`` with its exit code, stdout and stderr.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path


@contextlib.contextmanager
def _fault(spec: dict | None, rank: int):
    if spec is None or spec["rank"] != rank:
        yield
        return
    from calibscope.diagnostics import hessian
    from calibscope.errors import InputError
    from calibscope.inference import engine, pipeline

    saved = (engine.run_inference, pipeline.run_inference, hessian.HessianOperator.hvp)

    def broken_inference(*args, **kwargs):
        if spec["at"] == "crash":
            os._exit(17)
        raise InputError(f"rank-local fault injected on rank {rank}: its shard cannot be read")

    calls = {"n": 0}

    def broken_hvp(self, v):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError(f"rank-local fault injected on rank {rank} in Hessian-vector product 3")
        return saved[2](self, v)

    if spec["at"] in ("inference", "crash"):
        engine.run_inference = pipeline.run_inference = broken_inference
    else:
        hessian.HessianOperator.hvp = broken_hvp
        hessian.HessianOperator.__call__ = broken_hvp
    try:
        yield
    finally:
        engine.run_inference, pipeline.run_inference = saved[0], saved[1]
        hessian.HessianOperator.hvp = hessian.HessianOperator.__call__ = saved[2]


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    from typer._click.exceptions import ClickException

    from calibscope.cli import app
    from calibscope.inference import distributed

    group = distributed.init_from_environment()  # once: every command below runs in this group
    for step in plan:
        stdout, stderr = io.StringIO(), io.StringIO()
        with _fault(step.get("fault"), group.rank), contextlib.redirect_stdout(stdout), \
                contextlib.redirect_stderr(stderr):
            try:
                code = app(step["argv"], standalone_mode=False, prog_name="calibscope")
            except ClickException as exc:  # usage errors come before any collective: every rank has them
                exc.show()
                code = exc.exit_code
        record = {"code": int(code or 0), "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
        (out / f"{step['name']}.rank{group.rank}.json").write_text(json.dumps(record))
    distributed.shutdown()


if __name__ == "__main__":
    main()
