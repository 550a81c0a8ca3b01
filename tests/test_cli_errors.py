"""What reaches the user when something unexpected happens mid-run: one line and an exit code, never a traceback
(unless ``--verbose`` asks for it)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import medattn.cli as cli


def _run_with(monkeypatch: pytest.MonkeyPatch, error: BaseException, *extra: str) -> int:
    def handler(args: object) -> int:
        raise error

    monkeypatch.setitem(cli._COMMANDS, "models", (handler, cli._COMMANDS["models"][1], "list models"))
    return cli.main(["models", *extra])


def test_a_full_disk_mid_run_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "case.nii.gz"))
    assert _run_with(monkeypatch, full) == cli.EXIT_DATA
    err = capsys.readouterr().err
    assert (
        err
        == f"medattn models: error: cannot read or write {tmp_path / 'out' / 'case.nii.gz'}: No space left on device\n"
    )


def test_a_bug_is_one_line_and_verbose_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert _run_with(monkeypatch, ValueError("something odd\nsecond line")) == cli.EXIT_PROBLEMS
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: ValueError: something odd" in err and "--verbose" in err
    with pytest.raises(ValueError, match="something odd"):
        _run_with(monkeypatch, ValueError("something odd"), "--verbose")
    with pytest.raises(OSError):
        _run_with(monkeypatch, OSError(errno.EIO, "I/O error"), "--verbose")


def test_out_of_memory_names_the_remedy(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    class OutOfMemoryError(RuntimeError):  # torch.cuda.OutOfMemoryError's name, without CUDA
        pass

    assert _run_with(monkeypatch, OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")) == cli.EXIT_DATA
    err = capsys.readouterr().err
    assert "out of memory on the device" in err and "--window-batch" in err and err.count("\n") == 1
