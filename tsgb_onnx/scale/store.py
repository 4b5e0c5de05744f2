"""The output folder of a Ray run: resumable, idempotent, never a partial file.

```
OUT/run.json            what the run is (model digest, method, options, ...): a rerun must match
OUT/results/part-*.parquet   one part per batch: a row per input row × target (explain) or per
                        image × object × method (evaluate)
OUT/errors/part-*.parquet    the inputs of that batch that failed, with the reason
OUT/summary.json        written when the run completes
```

A part is named by a digest of the keys (input files, images) of its batch, and written by
the worker through `io.atomic` (a hidden temporary name, renamed when complete), so:

* a part is either complete under its name or absent;
* a batch retried by Ray after a worker died writes the same name again (it replaces the
  part, never adds a second copy of its rows);
* a rerun reads the keys of every part (results and errors), leaves those inputs out and
  does the rest; its new batches hold only inputs no part has, so no input is written
  twice. Temporary files left by a killed worker are removed when the next run starts.

One run at a time writes to a folder (a lock file; a second run is refused with one line).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tsgb_onnx.errors import InputError
from tsgb_onnx.io.atomic import atomic_open, write_text_atomic

RESULTS, ERRORS = "results", "errors"
RUN_FILE, SUMMARY_FILE, LOCK_FILE = "run.json", "summary.json", ".tsgb-run.lock"


def pyarrow_modules():
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def part_name(keys: Iterable[str]) -> str:
    """The part of a batch: named by its keys (order-independent)."""
    joined = "\n".join(sorted(str(k) for k in keys)).encode()
    return f"part-{hashlib.sha1(joined).hexdigest()[:24]}.parquet"


def write_part(root: str | os.PathLike, kind: str, keys: Sequence[str], columns: dict) -> str:
    """Write `columns` (name → list or pyarrow array) as the `kind` part of the batch
    `keys`, atomically. Returns its path relative to `root`."""
    pa, pq = pyarrow_modules()
    folder = Path(root) / kind
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / part_name(keys)
    table = pa.table(columns)
    with atomic_open(path, "wb") as f:
        pq.write_table(table, f)
    return f"{kind}/{path.name}"


def write_batch(root: str | os.PathLike, keys: Sequence[str], tables: dict) -> None:
    """Write one batch: `tables` maps a kind (RESULTS, ERRORS) to its columns, or to None
    when the batch has no such rows, in which case a part of that name left by an earlier
    attempt of the same batch is removed (a key is in one table only)."""
    for kind, columns in tables.items():
        if columns is not None:
            write_part(root, kind, keys, columns)
        else:
            with contextlib.suppress(FileNotFoundError):
                (Path(root) / kind / part_name(keys)).unlink()


def parts(root: str | os.PathLike, kind: str) -> list[Path]:
    folder = Path(root) / kind
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def read_parts(
    root: str | os.PathLike, kind: str, columns: Sequence[str] | None = None, filters=None
):
    """Every `kind` part as one pyarrow Table (None when there is none); `columns` and
    `filters` (pyarrow's DNF filters) read only what is needed."""
    pa, pq = pyarrow_modules()
    wanted = list(columns) if columns else None
    tables = [pq.read_table(p, columns=wanted, filters=filters) for p in parts(root, kind)]
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def _flat(table: dict, prefix: str = "") -> dict:
    """Nested dicts as dotted keys (what differs between two runs, named precisely)."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def keys_of(part: Path) -> list[str]:
    """The keys one part holds."""
    _, pq = pyarrow_modules()
    return [str(k) for k in pq.read_table(part, columns=["key"]).column("key").to_pylist()]


class OutDir:
    """The folder of one run (`with OutDir(...) as out:`): locked, checked against the run
    that wrote it, stale temporary files removed."""

    def __init__(self, root: str | os.PathLike, run: dict):
        self.root = Path(root)
        self.run = run
        self._lock = None

    def __enter__(self) -> OutDir:
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"--out-dir '{self.root}' exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._check_run()
            self._remove_stale()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._release()

    def _take_lock(self) -> None:
        import fcntl

        handle = open(self.root / LOCK_FILE, "a")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise InputError(
                f"another tsgb run is writing to '{self.root}': wait for it, or give another "
                "--out-dir"
            ) from None
        self._lock = handle

    def _release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.close()
            self._lock = None

    def _check_run(self) -> None:
        path = self.root / RUN_FILE
        if path.exists():
            try:
                before = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"'{path}' cannot be read ({exc}): remove the folder") from None
            old, new = _flat(before), _flat(json.loads(json.dumps(self.run)))
            names = sorted(set(old) | set(new))
            differ = [k for k in names if old.get(k) != new.get(k)]
            if differ:
                said = "; ".join(
                    f"{k}: {json.dumps(old.get(k))} there, {json.dumps(new.get(k))} now"
                    for k in differ[:3]
                )
                raise InputError(
                    f"--out-dir '{self.root}' holds the results of another run ({said}): "
                    "rerun the same command to complete it, or give another --out-dir"
                )
            return
        if parts(self.root, RESULTS) or parts(self.root, ERRORS):
            raise InputError(
                f"--out-dir '{self.root}' holds results without {RUN_FILE}: give another --out-dir"
            )
        write_text_atomic(path, json.dumps(self.run, indent=1, sort_keys=True) + "\n")

    def _remove_stale(self) -> None:
        """Temporary files of writers that died (`io.atomic`'s hidden `.NAME.x.tmp`)."""
        for tmp in self.root.rglob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()

    def done_keys(self) -> set[str]:
        """Keys every part holds (results and errors): the inputs a rerun leaves out."""
        done: set[str] = set()
        for kind in (RESULTS, ERRORS):
            table = read_parts(self.root, kind, ["key"])
            if table is not None:
                done.update(str(k) for k in table.column("key").to_pylist())
        return done

    def write_summary(self, summary: dict) -> None:
        write_text_atomic(self.root / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
