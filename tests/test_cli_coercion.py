"""cnn_cli.cli.coercion: option values without Pydantic are the values Typer's own coercion gives."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from enum import Enum
from pathlib import Path

import pytest

typer_coercion = pytest.importorskip("typer._coercion")  # Typers before 0.2x coerce without Pydantic

import typer.main
from typer._click import Context

from cnn_cli import cli
from cnn_cli.cli import coercion

REPO = Path(__file__).resolve().parents[1]


def _commands(command, path=("cnn",)):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, path + (name,))


def _params():
    return list(_each_param())


def _each_param():
    for path, command in _commands(typer.main.get_command(cli.app)):
        ctx = Context(command)
        for param in command.get_params(ctx):
            yield pytest.param(param, ctx, id=f"{' '.join(path)} {param.name}")


def _candidates(annotation, default, here):
    """Values a parameter may meet: its default, and text a user may type (good and bad)."""
    values = [default, "", " ", "x", "-", "5", "-3", "007", " 5", "5 ", "+5", "5.0", "0.5", ".5", "1.", "1e3",
              "1E-3", "-2.5e+2", "inf", "nan", "1_000", "0x10", "\0", str(here), str(here / "none"), str(here / "f")]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        for member in annotation:
            values += [member, member.value, member.value.upper(), member.value.title()]
    values += [Path("out"), here, True, False, 5, 0.5, ("a", "b"), ["a"], (), ("a", 5)]
    return values


def _full(param, ctx, value):
    try:
        return "ok", typer_coercion.build_runtime_param(param.type_descriptor).coerce(value, param=param, ctx=ctx)
    except Exception as exc:  # noqa: BLE001  (what Typer says is compared by kind only)
        return "error", type(exc).__name__


def _same(a, b):
    """Equal values of one type (NaN equal to NaN)."""
    return type(a) is type(b) and (a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))


@pytest.mark.parametrize(("param", "ctx"), _params())
def test_quick_values_are_typers_values(param, ctx, tmp_path):
    (tmp_path / "f").write_text("x")
    descriptor = param.type_descriptor
    quick = coercion.QuickValue(descriptor)
    for value in _candidates(descriptor.annotation, param.default, tmp_path):
        taken = coercion.quick(value, descriptor.annotation, descriptor.parameter_info)
        if taken is coercion.UNDECIDED:
            continue  # Typer's coercion decides, as it did before
        kind, expected = _full(param, ctx, value)
        assert kind == "ok", f"{value!r}: quick took it as {taken!r}, Typer refuses it ({expected})"
        assert _same(taken, expected), f"{value!r}: {taken!r} != {expected!r}"
        assert _same(quick.coerce(value, param, ctx), expected)


@pytest.mark.parametrize(("param", "ctx"), _params())
def test_values_quick_leaves_undecided_get_typers_answer(param, ctx, tmp_path):
    quick = coercion.QuickValue(param.type_descriptor)
    for value in _candidates(param.type_descriptor.annotation, param.default, tmp_path):
        kind, expected = _full(param, ctx, value)
        try:
            got = ("ok", quick.coerce(value, param, ctx))
        except Exception as exc:  # noqa: BLE001
            got = ("error", type(exc).__name__)
        assert got[0] == kind and _same(got[1], expected), repr(value)


_RUN_APPLY = """
import sys
from cnn_cli.cli import app, only_the_command
args = sys.argv[1:]
try:
    only_the_command(app, args)(args)
except SystemExit as exc:
    print(exc.code, "pydantic" in sys.modules)
"""


def test_cnn_apply_runs_without_pydantic(tmp_path):
    """Importing Pydantic and building its adapters took 0.15 s of a 1 s ``cnn apply``."""
    from PIL import Image

    Image.new("L", (48, 40), 90).save(tmp_path / "img.png")
    args = ["apply", str(tmp_path / "img.png"), "-o", str(tmp_path / "out"), "--max-size", "32", "--layers", "last",
            "--normalize", "robust", "--save", "raw,grids", "--dtype", "float16", "--no-html"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", _RUN_APPLY, *args], check=False, capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.stdout.split() == ["0", "False"], result.stdout + result.stderr
    assert (tmp_path / "out" / "img" / "features.npz").exists()
