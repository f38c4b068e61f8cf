"""Coverage-guided fuzzing of the readers and the scanner with atheris (libFuzzer), seeded with valid files.

Each input is written to a file and goes through what ``tests/test_fuzz_formats.py`` checks with Hypothesis:

* ``tw.open`` then ``tw.load`` succeed or raise a :class:`~torchweights.errors.TorchWeightsError` (anything else is
  a crash);
* ``torchweights.tools.scan.scanner.scan`` never raises, and never says ``clean`` for a file ``tw.open`` refuses;
* ``torchweights.formats._zip.read_directory`` never raises.

The seed corpus is one valid file per format (``tests/_samples.py``: torch zip, legacy stream, pickled model,
safetensors, plain pickle, legacy tar, TorchScript, torch.package, ``.npy``, ``.npz``; shards of sharded sets as
single files), written to a temporary folder unless corpus folders are given. libFuzzer options pass through::

    .venv/bin/python fuzz/atheris_scan.py -runs=20000            # what `make fuzz` runs
    .venv/bin/python fuzz/atheris_scan.py -max_total_time=3600 my_corpus/
    .venv/bin/python fuzz/atheris_scan.py crash-1a2b...           # replay one input

libFuzzer's ``-timeout`` (seconds per input, default 10 here) and ``-rss_limit_mb`` (default 3072 here: the process
with torch imported takes about 270 MB) bound time and memory. Everything goes to ``torchweights-fuzz`` in the
system's temporary folder: crashing inputs (unless ``-artifact_prefix`` says otherwise), and ``corpus/``, the
seeds plus what libFuzzer found, which the next run without corpus arguments starts from.

atheris is optional: ``.venv/bin/pip install -r fuzz/requirements.txt`` (``make fuzz`` tries that; binary wheels
exist for CPython on Linux x86-64 and macOS, other platforms build it from source with clang and libFuzzer).
"""

from __future__ import annotations

import contextlib
import io
import os
import pkgutil
import sys
import tempfile
from pathlib import Path

try:
    import atheris
except ImportError:
    print(
        "atheris is not installed, so the coverage-guided fuzzer cannot run. Install it with\n"
        "    .venv/bin/pip install -r fuzz/requirements.txt\n"
        "(binary wheels exist for CPython on Linux x86-64 and macOS; elsewhere pip builds it, which needs clang "
        "with libFuzzer). The Hypothesis fuzz suites run without it: "
        "TW_FUZZ_EXAMPLES=2000 .venv/bin/pytest tests/test_fuzz_formats.py",
        file=sys.stderr,
    )
    sys.exit(2)

ROOT = Path(__file__).resolve().parent.parent

with atheris.instrument_imports(include=["torchweights"]):
    import torchweights as tw

    for module in pkgutil.walk_packages(tw.__path__, "torchweights."):  # readers are imported lazily otherwise
        if not module.name.startswith("torchweights.cli"):
            __import__(module.name)
    from torchweights.errors import TorchWeightsError
    from torchweights.formats._zip import read_directory
    from torchweights.tools.scan.scanner import scan

#: Everything the fuzzer writes: crashing inputs (``crash-*``, ``timeout-*``), ``corpus/`` (the seeds and what
#: libFuzzer found, kept for the next run) and the scratch file each input is written to.
WORK = Path(tempfile.gettempdir()) / "torchweights-fuzz"
_INPUT = WORK / "input.bin"


def _seed_corpus() -> Path:
    """``WORK/corpus`` with one valid file per format (every file of the sharded sets too) written into it."""
    sys.path.insert(0, str(ROOT / "tests"))
    import _samples  # the test helpers, found through tests/ on the path

    corpus = WORK / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        base, extra = Path(tmp, "base"), Path(tmp, "extra")
        base.mkdir()
        extra.mkdir()
        built = {**_samples.build_samples(base), **_samples.build_extra_samples(extra)}
    for sample in built.values():
        for name, data in sample.files.items():
            (corpus / f"seed-{sample.name}--{name}").write_bytes(data)
    return corpus


def one_input(data: bytes) -> None:
    """The checks for one input; anything raised is a finding."""
    _INPUT.write_bytes(data)
    try:
        ckpt = tw.open(_INPUT)
    except TorchWeightsError as exc:
        refused: TorchWeightsError | None = exc
    else:
        refused = None
        with contextlib.suppress(TorchWeightsError):
            tw.load(ckpt)
    report = scan(_INPUT)
    if refused is not None and report.verdict == "clean":
        raise AssertionError(f"scan says clean, tw.open refuses: {refused}")
    read_directory(io.BytesIO(data), "input", len(data))


def main(argv: list[str]) -> None:
    """Run libFuzzer over ``argv`` (libFuzzer options and corpus folders or files)."""
    args = list(argv)
    options = [a for a in args[1:] if a.startswith("-")]
    inputs = [a for a in args[1:] if not a.startswith("-")]
    if not any(a.startswith("-timeout=") for a in options):
        args.append("-timeout=10")
    if not any(a.startswith("-rss_limit_mb=") for a in options):
        args.append("-rss_limit_mb=3072")
    WORK.mkdir(exist_ok=True)
    if not any(a.startswith("-artifact_prefix=") for a in options):
        args.append(f"-artifact_prefix={WORK}{os.sep}")
        print(f"crashing inputs go to {WORK}", file=sys.stderr)
    if not inputs:
        args.append(str(_seed_corpus()))
    import warnings

    warnings.filterwarnings("ignore")  # torch's deprecation warnings, once per new input shape
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
