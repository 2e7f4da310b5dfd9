"""Malformed and hostile data files through `recstack data import` (issue 11): wrong encodings,
binary garbage, gigantic fields, mixed types in a column, missing columns, an empty file. Each
ends with exit code 2 and one line on stderr naming the file, or (where the file is readable
after all, like latin-1 ids or mixed int/str ids) imports cleanly; never a traceback.

The in-process cases go through ``recstack.cli.main``; two go through the installed console
script in a subprocess, to see exactly what a user sees."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recstack.cli import main as cli_main

GOOD = "user,item,ts\n1,10,100\n1,11,101\n2,10,102\n2,12,103\n3,11,104\n"
BIG_FIELD = 16 * 1024 * 1024  # 16 MiB in one cell


def _rows_text(n: int = 30) -> str:
    return "user,item,ts\n" + "".join(f"{u % 5},{u % 7},{1_000 + u}\n" for u in range(n))


def _hostile_files(folder: Path) -> dict[str, tuple[Path, str | None]]:
    """kind -> (file, regex the one-line error must match; None: it must import)."""
    rng = np.random.default_rng(0)
    files: dict[str, tuple[bytes, str | None, str]] = {
        "empty file": (b"", r"file is empty", ".csv"),
        "header only": (b"user,item,ts\n", r"no data rows", ".csv"),
        "only newlines": (b"\n\n\n", r"file is empty|no data rows|no column", ".csv"),
        "binary garbage": (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), r"not UTF-8|malformed|no column|cannot read",
                           ".csv"),
        "NUL bytes": (b"user,item,ts\n1,\x00\x00,100\n", r"empty value|malformed|no column|cannot read", ".csv"),
        "UTF-16 with BOM": (GOOD.encode("utf-16"), r"not UTF-8|no column|malformed", ".csv"),
        "latin-1 ids": ("user,item,ts\nJosé,café,100\nJosé,thé,101\n".encode("latin-1"), r"not UTF-8 text .*save it as UTF-8", ".csv"),
        "UTF-8 BOM": (b"\xef\xbb\xbf" + GOOD.encode(), None, ".csv"),
        "gigantic field": (b"user,item,ts\n1," + b"x" * BIG_FIELD + b",100\n2,3,101\n", None, ".csv"),
        "gigantic line, no newline": (b"user,item,ts\n" + b"9" * BIG_FIELD, (r"no data rows|empty value|malformed|"
                                                                       r"too large|neither"), ".csv"),
        "50,000 columns": (",".join(f"c{i}" for i in range(50_000)).encode() + b"\n" + b",".join([b"1"] * 50_000)
                           + b"\n",
                                r"no column 'user' .*\(50000 columns in all\)", ".csv"),
        "mixed types in id column": (b"user,item,ts\n1,10,100\nbob,10.5,101\n2.0,[1],102\n", None, ".csv"),
        "mixed types in timestamp": (b"user,item,ts\n1,10,100\n1,11,2001-02-03\n1,12,tomorrow\n",
                                     r"column 'ts' mixes unix seconds \('100', data row 1\) and text", ".csv"),
        "dates and garbage": (b"user,item,ts\n1,10,2001-02-03\n1,12,tomorrow\n",
                              r"column 'ts' has a value that is neither unix seconds nor a date: 'tomorrow'", ".csv"),
        "huge integer timestamp": (b"user,item,ts\n1,10,99999999999999999999999999\n",
                                   r"column 'ts'.*(too large|neither)", ".csv"),
        "NaN and inf timestamps": (b"user,item,ts\n1,10,nan\n1,11,inf\n", r"column 'ts'", ".csv"),
        "ragged rows": (b"user,item,ts\n1,10,100\n1,11,101,7,8\n", r"malformed CSV", ".csv"),
        "unclosed quote": (b'user,item,ts\n1,"10,100\n2,11,101\n', r"malformed CSV|empty value|no data rows|neither",
                           ".csv"),
        "missing columns": (b"user,ts\n1,100\n", r"no column 'item' \(given as --item-col\)", ".csv"),
        "duplicate header names": (b"user,user,ts\n1,2,100\n", r"no column 'item'", ".csv"),
        "corrupt gzip": (gzip.compress(GOOD.encode())[:30], r"cannot read as CSV|malformed|not UTF-8", ".csv.gz"),
        "garbage parquet": (b"PAR1" + rng.integers(0, 256, 1000, dtype=np.uint8).tobytes() + b"PAR1",
                            r"not a readable parquet file", ".parquet"),
        "text named .parquet": (GOOD.encode(), r"not a readable parquet file", ".parquet"),
    }
    out = {}
    for i, (kind, (data, pattern, suffix)) in enumerate(files.items()):
        path = folder / f"f{i}{suffix}"
        path.write_bytes(data)
        out[kind] = (path, pattern)
    parquet = folder / "mixed.parquet"
    pd.DataFrame({"user": [1, 2], "item": [10, 11], "ts": [b"\xff\xfe", b"x"]}).to_parquet(parquet)
    out["binary timestamps in parquet"] = (parquet, r"column 'ts'")
    nested = folder / "nested.parquet"
    pd.DataFrame({"user": [[1], [2]], "item": [{"a": 1}, {"a": 2}], "ts": [1, 2]}).to_parquet(nested)
    out["nested values in parquet"] = (nested, r"column 'user'|column 'item'")
    return out


def _import_args(path: Path, home: Path, name: str) -> list[str]:
    return ["data", "import", "--name", name, "--interactions", str(path), "--user-col", "user",
            "--item-col", "item", "--timestamp-col", "ts", "--home", str(home), "--no-progress"]


def test_each_hostile_file_gets_one_clear_line(tmp_path, capsys):
    outcomes: Counter = Counter()
    failures = []
    for i, (kind, (path, pattern)) in enumerate(_hostile_files(tmp_path).items()):
        try:
            code = cli_main(_import_args(path, tmp_path / "home", f"h{i}"))
        except BaseException as exc:  # noqa: BLE001 - each escape is a failure of this test, reported below
            failures.append(f"{kind}: raised {type(exc).__name__}: {str(exc)[:200]}")
            continue
        err = capsys.readouterr().err
        if pattern is None:
            ok = code == 0
            outcomes["imported"] += ok
        else:
            import re

            ok = (code == 2 and err.count("\n") == 1 and err.startswith("recstack: error: ")
                  and re.search(pattern, err) is not None and len(err) < 2000)
            outcomes["one-line error"] += ok
        if not ok:
            failures.append(f"{kind}: exit {code}, stderr {err[:300]!r}")
    print(f"\ndata import: {sum(outcomes.values()) + len(failures)} hostile files tried: "
          + ", ".join(f"{k} {n}" for k, n in sorted(outcomes.items())) + f", failures {len(failures)}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("kind", ["binary garbage", "latin-1 ids"])
def test_the_console_script_prints_no_traceback(tmp_path, kind):
    path, _ = _hostile_files(tmp_path)[kind]
    cli = Path(sys.executable).with_name("recstack")
    result = subprocess.run([str(cli), *_import_args(path, tmp_path / "home", "x")], capture_output=True, text=True,
                            check=False, timeout=300, env={**os.environ})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr[-2000:]
