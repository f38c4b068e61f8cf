"""Start-up cost: ``import torchweights``, ``torchweights --help`` and ``inspect`` import only what they need.

Each check runs in a fresh interpreter (the test process itself has long imported everything) and looks at
``sys.modules``; nothing here is timed.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import torchweights as tw

#: The lazily resolved public names: everything but the exceptions (imported eagerly) and the version.
LAZY_NAMES = [n for n in tw.__all__ if n != "__version__" and not n.endswith("Error")]

#: Functions exported under the name of the submodule that defines them.
#: The verbs and the modules that define them (since the verbs moved into ``torchweights.tools``, none shares its
#: name with a module of the package).
VERB_MODULES = {
    "scan": "torchweights.tools.scan.scanner",
    "diff": "torchweights.tools.diff",
    "convert": "torchweights.tools.convert.run",
    "verify": "torchweights.tools.verify",
}

#: Modules that neither ``import torchweights`` nor ``inspect`` nor ``--help`` may import.
HEAVY = (
    "torch",
    "torchweights.tools.scan.scanner",
    "torchweights.tools.convert",
    "torchweights.tools.diff",
    "torchweights.tools.verify",
    "torchweights.plan.reconcile",
    "torchweights.apply",
    "torchweights.storage.read",
    "torchweights.storage.engine",
    "torchweights.storage.targets",
    "torchweights.storage.scratch",
    "torchweights.storage.mapping",
    "torchweights.storage.results",
    "torchweights.storage.tensors",
    "torchweights.plan.rules",
    "torchweights.plan.spec",
    "torchweights.writers",
)

_REPORT_MODULES = "import json, sys\nprint(json.dumps(sorted(sys.modules)))\n"


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter and return its stdout (the run must succeed)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _modules_after(code: str) -> set[str]:
    """``sys.modules`` after running ``code`` in a fresh interpreter (the last line of stdout)."""
    return set(json.loads(_python(code + "\n" + _REPORT_MODULES).splitlines()[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


# ------------------------------------------------------------------------------------------------ import torchweights


def test_import_is_light() -> None:
    modules = _modules_after("import torchweights")
    assert _heavy(modules) == []
    ours = {m for m in modules if m.startswith("torchweights")}
    assert ours == {"torchweights", "torchweights.errors"}, ours


def test_lazy_names_resolve_to_their_definitions() -> None:
    code = textwrap.dedent(
        f"""
        import importlib, torchweights as tw
        for name in {LAZY_NAMES!r}:
            value = getattr(tw, name)
            assert value.__module__.startswith("torchweights."), name  # the object itself, never a submodule
            assert value is getattr(importlib.import_module(value.__module__), name), name
            assert vars(tw)[name] is value, name  # cached: the next access does not go through __getattr__
        print("ok")
        """
    )
    assert _python(code).strip() == "ok"


def test_lazy_names_in_this_process() -> None:
    import importlib

    assert len(LAZY_NAMES) >= 17
    for name in LAZY_NAMES:
        value = getattr(tw, name)
        assert value.__module__ not in ("torchweights", "torchweights.errors"), name
        assert value is getattr(importlib.import_module(value.__module__), name), name


def test_from_import_resolves_lazily() -> None:
    code = "from torchweights import ScanReport, load, scan\nassert callable(scan) and callable(load)\nprint('ok')"
    assert _python(code).strip() == "ok"


def test_unknown_names_are_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = tw.no_such_name  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        from torchweights import no_such_name  # type: ignore[attr-defined]  # noqa: F401


def test_dir_lists_every_export() -> None:
    assert set(tw.__all__) <= set(dir(tw))
    fresh = json.loads(_python("import json, torchweights as tw\nprint(json.dumps(dir(tw)))"))
    assert set(tw.__all__) <= set(fresh)
    assert fresh == sorted(fresh)


# ------------------------------------------------------------------------------------ scan, diff, convert, verify

_SUBMODULE_IMPORTS = {
    "from-import": "from {module} import {name} as _",
    "import": "import {module}",
    "import-as": "import {module} as _",
    "importlib": "import importlib; importlib.import_module({module!r})",
    "__import__": "__import__({module!r})",
}

_CHECK_FUNCTION = textwrap.dedent(
    """
    import sys, types
    import torchweights as tw
    for n, module in {verbs!r}.items():
        f = tw.__dict__.get(n) or getattr(tw, n)
        assert not isinstance(f, types.ModuleType), (n, f)
        assert callable(f) and f.__module__ == module and f.__name__ == n, (n, f)
        assert getattr(tw, n) is f and getattr(sys.modules[module], n) is f, n
    assert "scan" not in vars(tw.tools) or isinstance(tw.tools.scan, types.ModuleType)
    print("ok")
    """
)


@pytest.mark.parametrize("how", sorted(_SUBMODULE_IMPORTS))
@pytest.mark.parametrize("order", ["package-first", "submodule-first", "accessed-first"])
def test_verbs_stay_functions_whatever_is_imported(how: str, order: str) -> None:
    """``tw.scan`` is the function whatever was imported before: importing its module (in any way, before or after
    the package, before or after the name was first used) never replaces it."""
    imports = "\n".join(_SUBMODULE_IMPORTS[how].format(name=n, module=m) for n, m in VERB_MODULES.items())
    if order == "package-first":
        code = "import torchweights\n" + imports
    elif order == "submodule-first":
        code = imports + "\nimport torchweights"
    else:  # the function was resolved (and cached) before the submodule import
        code = "import torchweights as tw\n" + "\n".join(f"tw.{n}" for n in VERB_MODULES) + "\n" + imports
    assert _python(code + "\n" + _CHECK_FUNCTION.format(verbs=VERB_MODULES)).strip() == "ok"


def test_scan_report_import_then_scan_call(tmp_path: Path) -> None:
    """The case that breaks a naive lazy package: ``from torchweights.tools.scan.report import ...`` then
    ``tw.scan(path)``."""
    path = _write_safetensors(tmp_path / "m.safetensors")
    code = textwrap.dedent(
        f"""
        import torchweights as tw
        from torchweights.tools.scan.report import ScanReport
        report = tw.scan({str(path)!r})
        assert isinstance(report, ScanReport) and report.verdict == "clean", report
        assert tw.diff.__module__ == "torchweights.tools.diff" and tw.verify.__module__ == "torchweights.tools.verify"
        print("ok")
        """
    )
    assert _python(code).strip() == "ok"


def test_assigning_a_verb_keeps_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """The package is a plain module: a value assigned to a public name stays as given (monkeypatching works)."""

    def fake(*args: object, **kwargs: object) -> None:
        return None

    real = tw.scan
    monkeypatch.setattr(tw, "scan", fake)
    assert tw.scan is fake
    monkeypatch.undo()
    assert tw.scan is real


# ------------------------------------------------------------------------------------------------ the command line


def _write_safetensors(path: Path) -> Path:
    """A small safetensors file, written by hand so that this needs neither torch nor safetensors."""
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, "__metadata__": {"format": "pt"}}
    ).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(24))
    return path


def _cli_modules(argv: list[str]) -> set[str]:
    """``sys.modules`` after ``torchweights.cli.main(argv)`` ran in a fresh interpreter (it must exit 0)."""
    code = textwrap.dedent(
        f"""
        import contextlib, io, sys
        from torchweights.cli import main
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                rc = main({argv!r})
        except SystemExit as e:
            rc = e.code
        assert rc == 0, (rc, out.getvalue())
        assert out.getvalue(), "nothing printed"
        """
    )
    return _modules_after(code)


def test_help_imports_almost_nothing() -> None:
    modules = _cli_modules(["--help"])
    assert _heavy(modules) == []
    ours = {m for m in modules if m.startswith("torchweights")}
    assert ours <= {"torchweights", "torchweights.errors"} | {m for m in ours if m.startswith("torchweights.cli")}
    for absent in ("torchweights.api", "torchweights.formats", "torchweights.unpickle.machine", "torchweights.records"):
        assert absent not in modules, absent


def test_inspect_torch_file_does_not_import_torch(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "small.pt"
    torch.save({"layer.weight": torch.zeros(2, 3), "layer.bias": torch.zeros(2), "epoch": 3}, path)
    for argv in (["inspect", str(path)], ["inspect", "--json", str(path)]):
        modules = _cli_modules(argv)
        assert "torchweights.api" in modules  # it really ran
        assert _heavy(modules) == [], argv


def test_inspect_safetensors_does_not_import_torch(tmp_path: Path) -> None:
    path = _write_safetensors(tmp_path / "small.safetensors")
    modules = _cli_modules(["inspect", str(path)])
    assert "torchweights.api" in modules
    assert _heavy(modules) == []


# ------------------------------------------------------------------------------------------- what one load imports

_COMMON_LOAD_MODULES = {
    *("torchweights", "api", "apply", "dtypes", "errors", "fold", "limits", "records", "structs", "text"),
    *("detect", "detect.content", "detect.sample", "detect.sniff", "formats"),
    *("plan", "plan.container", "plan.match", "plan.model", "plan.prefix", "plan.reconcile", "plan.renames"),
    *("plan.rules", "plan.sources", "plan.spec", "plan.verdicts", "report", "report.load"),
    # the adapters' Step record (Action.adapt) and the planner's adapter hooks; the adapters themselves and
    # plan.align load only when adapt= / align= ask for them, or a shape differs
    *("adapt", "adapt.base", "plan.adapters"),
    "progress",  # the progress= callback's meter (api and the read engine); stdlib only, never tqdm
    *("storage", "storage.crc", "storage.engine", "storage.files"),
    *("storage.prefault", "storage.read", "storage.results", "storage.scratch"),
    *("storage.settings", "storage.stamps", "storage.targets", "storage.tensors"),
}

#: Every module the first ``tw.load_into`` of a file imports, after ``import torch``: torchweights' modules by their
#: name in the package, others (stdlib) with a leading ``/``; the CRC backend (zlib_ng...) is not counted. Issue 14
#: (start-up time) works on shrinking these: a module that is no longer imported must be taken out here, and one
#: that starts being imported must be added here, on purpose.
LOAD_IMPORTS: dict[str, set[str]] = {
    "safetensors": _COMMON_LOAD_MODULES | {"formats._files", "formats.safetensors"},
    "torch-zip": _COMMON_LOAD_MODULES
    | {"detect.archive", "formats._legacy_stream", "formats._pickled", "formats._tar", "formats._zip"}
    | {"storage.compression"}
    | {"formats.modules", "formats.structure", "formats.torch_zip", "formats.tree"}
    | {"unpickle", "unpickle.calls", "unpickle.guards", "unpickle.known_enums", "unpickle.machine"}
    | {"unpickle.policy", "unpickle.record", "unpickle.stream", "unpickle.table", "unpickle.table_jit"}
    | {"unpickle.table_numpy", "unpickle.table_stdlib", "unpickle.table_torch", "unpickle.torch_classes"}
    | {"unpickle.values"},
}


@pytest.mark.parametrize("fmt", sorted(LOAD_IMPORTS))
def test_what_a_load_imports(fmt: str, tmp_path: Path) -> None:
    """The first load in a fresh process imports exactly the listed modules (none that the list lacks, and every one
    it has), so that an import added to the load path shows here, and one removed is recorded."""
    path = tmp_path / ("m.safetensors" if fmt == "safetensors" else "m.pt")
    code = textwrap.dedent(
        f"""
        import json, sys
        import torch
        from torch import nn
        model = nn.ModuleDict({{f"l{{i}}": nn.Linear(8, 8) for i in range(30)}})
        state = model.state_dict()
        path = {str(path)!r}
        if path.endswith(".safetensors"):
            from safetensors.torch import save_file
            save_file(state, path)
        else:
            torch.save(state, path)
        before = set(sys.modules)
        import torchweights as tw
        report = tw.load_into(model, path)
        assert report.clean and report.applied
        print(json.dumps(sorted(set(sys.modules) - before)))
        """
    )
    new = json.loads(_python(code).splitlines()[-1])
    got = {n[len("torchweights.") :] if n.startswith("torchweights.") else n for n in new}
    got = {n if n.startswith("torchweights") or ("." in n and n.split(".")[0] != "torchweights") else n for n in got}
    want = {n[1:] if n.startswith("/") else n for n in LOAD_IMPORTS[fmt]}
    others = {n for n in got if n not in want and not n.startswith(("zlib_ng", "isal", "deflate"))}
    assert not others, f"the load now also imports {sorted(others)}: add them to LOAD_IMPORTS on purpose"
    gone = want - got
    assert not gone, f"the load no longer imports {sorted(gone)}: take them out of LOAD_IMPORTS"
