"""``tw.scan_tree`` and ``torchweights scan DIR``: recursion, include/exclude globs, sharded sets and distributed
checkpoints as one checkpoint, links (loops, outside the tree), the summary, ``--fail-on`` and the JSON."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

import torchweights as tw
from security._helpers import Reduce
from torchweights.cli import main


class Unknown:
    """A class no table knows: scan warns (unknown-global), the verdict stays clean."""


def _evil(path: Path) -> None:
    torch.save({"w": torch.ones(2), "x": Reduce(os.system, "true")}, path)


def _clean(path: Path) -> None:
    torch.save({"w": torch.arange(4.0)}, path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/{a.pt, notes.txt, broken.bin, sub/{b.pth, deep/evil.pt, data.npy}, unknown.pkl, set/ (a sharded set)}."""
    root = tmp_path / "root"
    (root / "sub" / "deep").mkdir(parents=True)
    _clean(root / "a.pt")
    (root / "notes.txt").write_text("not a checkpoint, not scanned by default")
    (root / "broken.bin").write_bytes(b"\x80\x02}q\x00")  # a pickle cut short
    _clean(root / "sub" / "b.pth")
    _evil(root / "sub" / "deep" / "evil.pt")
    with (root / "unknown.pkl").open("wb") as f:
        pickle.dump({"x": Unknown()}, f)
    import numpy as np

    np.save(root / "sub" / "data.npy", np.arange(3))
    shards = root / "set"
    shards.mkdir()
    torch.save({"a": torch.ones(2)}, shards / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": torch.ones(2)}, shards / "pytorch_model-00002-of-00002.bin")
    index = {
        "metadata": {},
        "weight_map": {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"},
    }
    (shards / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    _clean(shards / "training_args.bin")  # next to the set, not in it: scanned on its own
    return root


def _names(result: tw.TreeScan, root: Path) -> dict[str, str]:
    return {os.path.relpath(r.path, root): str(r.verdict) for r in result.reports}


def test_recursion_finds_every_checkpoint_once(tree: Path) -> None:
    done: list[tuple[int, int]] = []
    result = tw.scan_tree(tree, progress=lambda d, t: done.append((d, t)))
    assert _names(result, tree) == {
        "a.pt": "clean",
        "broken.bin": "unreadable",
        "set/pytorch_model.bin.index.json": "clean",
        "set/training_args.bin": "clean",
        "sub/b.pth": "clean",
        "sub/data.npy": "clean",
        "sub/deep/evil.pt": "dangerous",
        "unknown.pkl": "clean",
    }
    shards = next(r for r in result.reports if r.path.endswith("index.json")).files
    assert sum(f.endswith("-of-00002.bin") for f in shards) == 2  # the set is one checkpoint, shards inside it
    assert result.summary == "8 files: 6 clean, 1 dangerous, 1 unreadable, 1 with unknown classes"
    assert result.walked and not result.skipped
    # progress: files, never decreasing, ending at the total (the two shards count, as files skipped)
    assert done[-1] == (10, 10) and [d for d, _ in done] == sorted(d for d, _ in done)


def test_include_and_exclude_globs(tree: Path) -> None:
    only = tw.scan_tree(tree, include=["*.PTH", "deep/*"])  # case-insensitive; with a slash: the relative path
    assert sorted(_names(only, tree)) == ["sub/b.pth"]  # "deep/*" is relative to the root: sub/deep/... is not
    only = tw.scan_tree(tree, include=["*.pth", "sub/deep/*"])
    assert sorted(_names(only, tree)) == ["sub/b.pth", "sub/deep/evil.pt"]
    pruned = tw.scan_tree(tree, exclude=["deep", "*.bin", "set"])
    assert sorted(_names(pruned, tree)) == ["a.pt", "sub/b.pth", "sub/data.npy", "unknown.pkl"]
    everything = tw.scan_tree(tree, include=["*"], exclude=["set"])
    assert "notes.txt" not in _names(everything, tree)  # every file by its content: this one is no checkpoint
    assert [os.path.relpath(r.path, tree) for r in everything.not_checkpoints] == ["notes.txt"]


def test_without_the_index_each_shard_is_its_own_checkpoint(tree: Path) -> None:
    result = tw.scan_tree(tree / "set", include=["*.bin"])
    assert sorted(_names(result, tree / "set")) == [
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "training_args.bin",
    ]


def test_links_loops_and_outside_the_tree(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    _evil(outside / "far.pt")
    (tree / "sub" / "deep" / "loop").symlink_to(tree)  # a loop back to the root
    (tree / "elsewhere").symlink_to(outside)  # a folder outside the tree: not followed
    (tree / "alias.pt").symlink_to(tree / "a.pt")  # the same file twice: scanned once
    (tree / "far.pt").symlink_to(outside / "far.pt")  # a file link: scanned (what a loader opens by that name)
    (tree / "dangling.pt").symlink_to(tmp_path / "gone.pt")
    result = tw.scan_tree(tree)
    names = _names(result, tree)
    assert names["far.pt"] == "dangerous" and "dangling.pt" not in names
    assert "a.pt" in names and "alias.pt" not in names  # the real path wins over a link to it
    assert not any(n.startswith(("elsewhere", "sub/deep/loop")) for n in names)
    skipped = {os.path.relpath(p, tree): why for p, why in result.skipped}
    assert "outside the folder scanned" in skipped["elsewhere"]
    assert skipped["sub/deep/loop"].endswith("a folder inside the tree, scanned at its own path")
    assert skipped["dangling.pt"].startswith("broken link: a link to ")
    assert list(skipped) == sorted(skipped)


def test_distributed_checkpoint_folder_is_one_checkpoint(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    root = tmp_path / "runs"
    dcp.save({"w": torch.ones(3)}, checkpoint_id=str(root / "step1"))
    _clean(root / "step1" / "extra.pt")
    result = tw.scan_tree(root)
    # one report for the folder, none per .distcp file
    assert _names(result, root) == {"step1": "clean", "step1/extra.pt": "clean"}
    assert not tw.scan_tree(root / "step1").walked  # named directly: one checkpoint, as tw.scan reads it


def test_unlistable_folder_is_unreadable(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tree / "locked"
    locked.mkdir()
    real = os.scandir

    def scandir(path: Any) -> Any:
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = tw.scan_tree(tree, include=["*.pt"])
    names = _names(result, tree)
    assert names["locked"] == "unreadable" and names["a.pt"] == "clean"
    (report,) = [r for r in result.reports if r.path == str(locked)]
    assert "could not be listed (Permission denied)" in report.findings[0].message


def test_cli_lines_summary_and_fail_on(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(tree)]) == 1
    out = capsys.readouterr().out.splitlines()
    evil = next(line for line in out if "evil.pt" in line)
    assert evil.startswith("dangerous ") and "(dangerous-global " in evil and "system" in evil
    broken = next(line for line in out if "broken.bin" in line)
    # the reader's own code, not load-refused (which restates it)
    assert broken.startswith("unreadable ") and "(load-refused)" not in broken and broken.endswith(")")
    assert out[-1] == "8 files: 6 clean, 1 dangerous, 1 unreadable, 1 with unknown classes"
    assert len(out) == 9
    codes = {
        ("--fail-on", "unreadable"): 2,
        ("--fail-on", "dangerous", "--exclude", "broken.bin"): 1,
        ("--fail-on", "unknown", "--exclude", "evil.pt"): 1,
        ("--fail-on", "dangerous,unreadable", "--exclude", "evil.pt"): 2,
        ("--fail-on", "dangerous", "--exclude", "evil.pt"): 0,
        ("--exclude", "evil.pt", "--exclude", "broken.bin"): 0,
    }
    for options, expected in codes.items():
        assert main(["scan", str(tree), *options]) == expected, options
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["scan", str(tree), "--fail-on", "warnings"])
    assert exc.value.code == 2 and "choose from dangerous, unknown, unreadable" in capsys.readouterr().err
    with pytest.raises(tw.RuleError, match="fail_on=\\['warnings'\\] names no condition") as error:
        tw.scan_tree(tree / "a.pt").exit_code(["dangerous", "warnings"])
    assert error.value.code == "bad-fail-on"
    assert tw.scan_tree(tree / "sub" / "deep").exit_code("unreadable") == 0


def test_cli_json_has_every_report_and_the_summary(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--json", str(tree), "--exclude", "set"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["reports"]) == 6 and doc["skipped"] == []
    assert doc["summary"] == {
        "files": 6,
        "clean": 4,
        "dangerous": 1,
        "unreadable": 1,
        "not_checkpoints": 0,
        "unknown": 1,
        "text": "6 files: 4 clean, 1 dangerous, 1 unreadable, 1 with unknown classes",
    }


def test_cli_files_named_keep_their_full_reports(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(tree / "a.pt"), str(tree / "sub" / "b.pth")]) == 0
    out = capsys.readouterr().out
    assert out.count(": CLEAN") == 2 and out.rstrip().endswith("2 files: 2 clean")
    assert main(["scan", str(tree / "a.pt")]) == 0
    out = capsys.readouterr().out
    assert ": CLEAN" in out and "files:" not in out


def test_folder_links_inside_the_tree_never_hide_the_real_paths(tmp_path: Path) -> None:
    root = tmp_path / "t"
    for real in ("a_real", "z_real"):
        (root / real).mkdir(parents=True)
        _clean(root / real / "w.pt")
    (root / "a_link").symlink_to("z_real")  # walked before its target
    (root / "z_link").symlink_to("a_real")  # walked after it
    (root / "loop").mkdir()
    (root / "loop" / "up").symlink_to("..")
    result = tw.scan_tree(root)
    assert sorted(_names(result, root)) == ["a_real/w.pt", "z_real/w.pt"]
    skipped = {os.path.relpath(p, root): why for p, why in result.skipped}
    assert sorted(skipped) == ["a_link", "loop/up", "z_link"]
    assert all(why.endswith("a folder inside the tree, scanned at its own path") for why in skipped.values())
    # the order of the paths named does not matter either
    again = tw.scan_tree([root / "a_link", root / "z_real"])
    assert [r.path for r in again.reports] == [str(root / "z_real" / "w.pt")] and not again.skipped
    # a real folder --exclude leaves out is not scanned through a link to it either
    pruned = tw.scan_tree(root, exclude=["z_real"])
    assert sorted(_names(pruned, root)) == ["a_real/w.pt"]
    why = dict(pruned.skipped)[str(root / "a_link")]
    assert why.endswith("a folder inside the tree that --exclude leaves out: not followed")


def test_broken_links_are_skipped_once_in_a_walk_and_unreadable_when_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "t"
    (root / "sub").mkdir(parents=True)
    _clean(root / "sub" / "ok.pt")
    (root / "sub" / "dangling.pt").symlink_to("nowhere")
    (root / "sub" / "notes.txt").symlink_to("nowhere")  # not a name scanned: not listed either
    (root / "sub2").symlink_to("sub")  # the same broken link by a second path
    (root / "self.pt").symlink_to("self.pt")
    result = tw.scan_tree(root)
    assert _names(result, root) == {"sub/ok.pt": "clean"}
    skipped = {os.path.relpath(p, root): why for p, why in result.skipped}
    assert skipped == {
        "self.pt": "broken link: a link that loops, no file to scan",
        "sub/dangling.pt": "broken link: a link to 'nowhere', no file to scan",
        "sub2": f"a link to {str(root / 'sub')!r}, a folder inside the tree, scanned at its own path",
    }
    assert result.summary == "1 file: 1 clean" and result.exit_code() == 0
    assert main(["scan", str(root)]) == 0
    assert "skipped     " + str(root / "sub" / "dangling.pt") in capsys.readouterr().out
    # named on the command line, a missing file is what the user asked about: unreadable (not-found), exit 2
    assert main(["scan", str(root / "sub" / "dangling.pt"), str(root)]) == 2
    named = tw.scan_tree([root / "sub" / "dangling.pt", root])
    assert [f.code for f in named.reports[0].findings] == ["not-found"] and len(named.reports) == 2


def _hf_folder(root: Path) -> None:
    root.mkdir()
    _clean(root / "pytorch_model.bin")
    (root / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 4}))
    (root / "README.md").write_text("# A model\n\nSome words about it.\n")
    (root / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"vocab": {"a": 0}}}))
    (root / "spiece.model").write_bytes(bytes(range(256)) * 4)  # a binary format detection does not know


def test_files_that_are_no_checkpoint_do_not_fail_a_walk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "hf"
    _hf_folder(root)
    result = tw.scan_tree(root, include=["*"])
    assert _names(result, root) == {"pytorch_model.bin": "clean"}
    ignored = {os.path.basename(r.path): _code(r) for r in result.not_checkpoints}
    assert ignored == {
        "README.md": "text-file",
        "config.json": "json-document",
        "spiece.model": "unknown-format",
        "tokenizer.json": "json-document",
    }
    assert result.summary == "5 files: 1 clean, 4 not checkpoints" and result.exit_code("unreadable") == 0
    assert main(["scan", str(root), "--include", "*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"ignored     {root / 'config.json'}  (not a checkpoint: json-document)" in out
    assert main(["scan", "--json", str(root), "--include", "*"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["files"] == 5 and doc["summary"]["not_checkpoints"] == 4 and len(doc["reports"]) == 1
    assert {d["code"] for d in doc["not_checkpoints"]} == {"text-file", "json-document", "unknown-format"}
    # under a checkpoint's name, the same content is a broken download: unreadable, exit 2
    (root / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")
    (root / "tf_model.bin").write_text("<!DOCTYPE html><html><body>Sign in to continue</body></html>")
    (root / "empty.pt").write_bytes(b"")
    broken = tw.scan_tree(root, include=["*"])
    assert {n: v for n, v in _names(broken, root).items() if v != "clean"} == {
        "empty.pt": "unreadable",
        "model.safetensors": "unreadable",
        "tf_model.bin": "unreadable",
    }
    assert len(broken.not_checkpoints) == 4 and broken.exit_code() == 2
    # named on the command line, any file keeps tw.scan's verdict
    assert main(["scan", str(root / "config.json")]) == 2
    named = tw.scan_tree([root / "config.json", root / "README.md"])
    assert [str(r.verdict) for r in named.reports] == ["unreadable", "unreadable"] and not named.not_checkpoints


def _code(report: tw.ScanReport) -> str:
    assert report.load_error is not None
    return report.load_error.code


def test_files_named_get_their_own_report_even_inside_a_folder_named(tree: Path) -> None:
    shard = tree / "set" / "pytorch_model-00001-of-00002.bin"
    result = tw.scan_tree([shard, tree / "set"])
    assert [os.path.relpath(r.path, tree) for r in result.reports] == [
        "set/pytorch_model-00001-of-00002.bin",
        "set/pytorch_model.bin.index.json",
        "set/training_args.bin",
    ]
    # a file named and found again by the walk: one report, the named one
    twice = tw.scan_tree([tree / "sub" / "b.pth", tree / "sub"])
    assert [os.path.relpath(r.path, tree) for r in twice.reports] == ["sub/b.pth", "sub/data.npy", "sub/deep/evil.pt"]
    # a named index covers its shards: the walk does not scan them again, nor the index
    index = tw.scan_tree([tree / "set" / "pytorch_model.bin.index.json", tree / "set"])
    assert sorted(os.path.basename(r.path) for r in index.reports) == [
        "pytorch_model.bin.index.json",
        "training_args.bin",
    ]


def test_cli_globs_take_comma_lists(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(tree), "--exclude", "deep,set", "--exclude", "broken.bin"]) == 0
    out = capsys.readouterr().out
    assert "evil.pt" not in out and "set/" not in out and "broken.bin" not in out and "a.pt" in out
    assert main(["scan", str(tree), "--include", "*.pth, *.npy"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 files: 2 clean"
    _clean(tree / "a,b.pt")  # a literal comma: [,]
    assert main(["scan", str(tree), "--include", "a[,]b.pt,a.pt"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 files: 2 clean"
    with pytest.raises(SystemExit):
        main(["scan", str(tree), "--include", ","])
    assert "no glob in it" in capsys.readouterr().err


def test_completion_offers_fail_on_words(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    assert '--fail-on) COMPREPLY=($(compgen -W "dangerous unknown unreadable"' in capsys.readouterr().out
    assert main(["completion", "fish"]) == 0
    assert "-l fail-on -x -a 'dangerous unknown unreadable'" in capsys.readouterr().out


def test_an_unreadable_file_in_a_folder_shows_the_readers_own_code(tmp_path: Path) -> None:
    """A truncated safetensors file and a truncated .pt both read ``(truncated)`` in the folder's list, not the
    scan's generic ``load-refused``."""
    from safetensors.torch import save_file

    save_file({"w": torch.randn(50, 50)}, str(tmp_path / "a.safetensors"))
    torch.save({"w": torch.randn(50, 50)}, tmp_path / "b.pt")
    for name in ("a.safetensors", "b.pt"):
        path = tmp_path / name
        path.write_bytes(path.read_bytes()[:-500])
    rows = [line for line in str(tw.scan_tree(tmp_path)).splitlines() if line.startswith("unreadable")]
    assert len(rows) == 2 and all(row.endswith("(truncated)") for row in rows), rows
