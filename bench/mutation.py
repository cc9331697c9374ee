"""Mutation check: do the unit tests notice when the core's decisions are broken?

    .venv/bin/python bench/mutation.py [--module NAME ...] [--limit N]

Each mutant changes one thing in one module (a comparison flipped, ``and`` for ``or``, a
``not`` dropped, a boolean or a small number changed, an ``if``'s test forced true or false,
a ``return`` value replaced by None) and is run against that module's unit tests in a
copy of the package; a mutant is killed when they fail (or hang past the timeout). The
modules are the reconciler, the state machine and the nftables renderer with its folding.
Survivors are listed on stderr (file, line, mutation) so that each can be judged: a test
missing, or a mutation that changes nothing observable. The last line is the summary.
Each test run is in a network namespace of its own (``unshare --net``; run as root): a
mutant once turned a recording nft runner into libnftables and replaced the host's rules.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Module -> the unit tests that speak for it.
MODULES = {
    "astara/orchestrator/reconciler.py": ["tests/unit/test_reconciler.py"],
    "astara/orchestrator/state.py": ["tests/unit/test_state.py"],
    "astara/appliance/nftables.py": ["tests/unit/test_nftables.py"],
    "astara/appliance/nft_folding.py": ["tests/unit/test_nftables.py"],
}
SWAPS: dict[type, type] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.And: ast.Or,
    ast.Or: ast.And,
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
}


@dataclass(frozen=True)
class Mutant:
    module: str
    index: int  # the index-th mutation point of the module, in walk order
    line: int
    what: str


# A mutation point: the node, which operand of a comparison (else -1), what changes.
Point = tuple[ast.AST, int, str]


def _points(tree: ast.AST) -> Iterator[Point]:
    """Every place a mutation applies to, in a stable order."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for slot, op in enumerate(node.ops):
                if type(op) in SWAPS:
                    yield node, slot, f"{type(op).__name__} -> {SWAPS[type(op)].__name__}"
        elif isinstance(node, ast.BoolOp | ast.BinOp) and type(node.op) in SWAPS:
            yield node, -1, f"{type(node.op).__name__} -> {SWAPS[type(node.op)].__name__}"
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node, -1, "not dropped"
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            yield node, -1, f"{node.value} -> {not node.value}"
        elif isinstance(node, ast.Constant) and type(node.value) is int and node.value < 1000:
            yield node, -1, f"{node.value} -> {node.value + 1}"
        elif isinstance(node, ast.If):
            yield node, -1, "if forced false"
        elif isinstance(node, ast.Return) and node.value is not None:
            yield node, -1, "return None"


def _mutate(node: ast.AST, slot: int) -> None:
    # Operators are shared singletons in a parsed tree: replace them, never change them.
    if isinstance(node, ast.Compare):
        node.ops[slot] = SWAPS[type(node.ops[slot])]()
    elif isinstance(node, ast.BoolOp | ast.BinOp):
        node.op = SWAPS[type(node.op)]()
    elif isinstance(node, ast.UnaryOp):
        node.op = ast.UAdd()  # +x of a bool is its int: truth unchanged, "not" gone
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        node.value = not node.value
    elif isinstance(node, ast.Constant):
        node.value += 1
    elif isinstance(node, ast.If):
        node.test = ast.Constant(False)
    elif isinstance(node, ast.Return):
        node.value = ast.Constant(None)


def _annotations(tree: ast.AST) -> set[int]:
    """ids of the nodes inside type annotations: changing them changes no behaviour."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        for annotation in (getattr(node, "annotation", None), getattr(node, "returns", None)):
            if isinstance(annotation, ast.AST):
                skip.update(id(inner) for inner in ast.walk(annotation))
    return skip


def mutants(module: str) -> list[Mutant]:
    tree = ast.parse((ROOT / module).read_text())
    skip = _annotations(tree)
    return [
        Mutant(module, index, getattr(node, "lineno", 0), what)
        for index, (node, _, what) in enumerate(_points(tree))
        if id(node) not in skip
    ]


def mutant_source(mutant: Mutant) -> str:
    tree = ast.parse((ROOT / mutant.module).read_text())
    node, slot, _ = next(p for i, p in enumerate(_points(tree)) if i == mutant.index)
    _mutate(node, slot)
    return ast.unparse(ast.fix_missing_locations(tree))


def killed(mutant: Mutant, workdir: Path, timeout: float) -> bool:
    target = workdir / mutant.module
    original = (ROOT / mutant.module).read_text()
    target.write_text(mutant_source(mutant))
    try:
        # In a network namespace of its own: a mutant may turn a unit test's recording
        # runner into the real one, and its packet filter must land nowhere that matters.
        run = subprocess.run(
            ["unshare", "--net", sys.executable, "-m", "pytest", "-x", "-q",
             "-p", "no:cacheprovider", "-p", "no:randomly", *MODULES[mutant.module]],
            cwd=workdir,
            env={**os.environ, "PYTHONPATH": str(workdir)},
            capture_output=True,
            timeout=timeout,
        )  # fmt: skip
        return run.returncode != 0
    except subprocess.TimeoutExpired:
        return True
    finally:
        target.write_text(original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES))
    parser.add_argument("--limit", type=int, default=0, help="at most N mutants per module")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    modules = args.module or list(MODULES)
    with tempfile.TemporaryDirectory(prefix="astara-mutation-") as tmp:
        workdir = Path(tmp)
        shutil.copytree(
            ROOT / "astara", workdir / "astara", ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copytree(
            ROOT / "tests", workdir / "tests", ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy(ROOT / "pyproject.toml", workdir / "pyproject.toml")
        total = dead = 0
        started = time.monotonic()
        for module in modules:
            found = mutants(module)
            if args.limit:
                found = found[:: max(1, len(found) // args.limit)][: args.limit]
            survivors = []
            for number, mutant in enumerate(found, 1):
                if killed(mutant, workdir, args.timeout):
                    dead += 1
                else:
                    survivors.append(mutant)
                total += 1
                if number % 25 == 0:
                    print(f"{module}: {number}/{len(found)}", file=sys.stderr, flush=True)
            print(
                f"{module}: {len(found) - len(survivors)} of {len(found)} killed",
                file=sys.stderr,
                flush=True,
            )
            for mutant in survivors:
                print(f"  survived: {module}:{mutant.line}: {mutant.what}", file=sys.stderr)
        print(f"{time.monotonic() - started:.0f} s", file=sys.stderr)
    print(f"mutation: {dead} of {total} mutants killed")


if __name__ == "__main__":
    main()
