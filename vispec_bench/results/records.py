"""Run records (seam 5 of docs/architecture.md): manifest.json, records.jsonl (append-only), summary.json.

Under torchrun each rank appends its own shard, records.rank<N>.jsonl; every reader merges
records.jsonl and all shards, so reports, summaries and resume see one run.

Records are never overwritten or deduplicated: each is one JSON line written with a single
append and flushed to disk before the next sample starts. A corrupt line is an error naming
its line number; the file is left as it is for the user to inspect.

Every manifest and record carries `schema_version` (SCHEMA_VERSION when written). Readers accept
this version and older ones (a manifest or record without the field is version 1) and refuse
newer ones with an error saying so. A report keeps its runs' records gzip-compressed
(records.jsonl.gz); readers take both.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from vispec_bench.errors import ExistingOutputError, MissingInputError, UserError

MANIFEST, RECORDS, SUMMARY = "manifest.json", "records.jsonl", "summary.json"
# 1: the original layout (no field). 2: schema_version stamped; per-token speedups; the float32
# referee's verdict in a low-precision record's equivalence dict.
SCHEMA_VERSION = 2


def record_engine(record: dict) -> str:
    """The engine a record was decoded on; records from before engines existed ran on eager."""
    return record.get("engine") or "eager"


def record_key(record: dict) -> tuple:
    """What identifies a record in a run: (sample, method, engine, repeat); resume skips these."""
    return record["sample_id"], record["method"], record_engine(record), record.get("repeat", 0)


class NewerSchemaError(ValueError):
    pass


def check_schema_version(data: dict, where) -> None:
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise NewerSchemaError(f"{where} has schema_version {version!r}, but this vispec-bench reads versions 1 to "
                               f"{SCHEMA_VERSION}: it was written by a newer vispec-bench; upgrade to read it")


class CorruptRecordsError(UserError, ValueError):
    pass


class ConfigMismatchError(UserError, ValueError):
    pass


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line with a single write, then fsync: a kill leaves at most one partial
    last line, which load_records reports by its line number."""
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MissingInputError(f"{path} does not exist: is this a vispec-bench run directory?") from None
    except json.JSONDecodeError as err:
        raise CorruptRecordsError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None


def load_records(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with (gzip.open(path, "rt") if path.suffix == ".gz" else path.open()) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                last = not line.endswith("\n")
                why = " (an incomplete last write: the run was killed mid-write)" if last else ""
                raise CorruptRecordsError(
                    f"{path}:{line_number} is not a valid JSON record{why}: {err.msg}. Nothing was skipped; "
                    f"move that line out of the file to resume, and the sample will be redone.") from None
            if not isinstance(record, dict) or "method" not in record or "sample_id" not in record:
                raise CorruptRecordsError(f"{path}:{line_number} is JSON but not a run record "
                                          "(needs 'method' and 'sample_id')")
            check_schema_version(record, f"{path}:{line_number}")
            records.append(record)
    return records


class RunStore:
    def __init__(self, run_dir: Path, shard: str | None = None):
        self.run_dir = Path(run_dir)
        self.shard = shard  # e.g. "rank1": this process appends to records.rank1.jsonl

    @property
    def records_path(self) -> Path:
        return self.run_dir / (RECORDS if self.shard is None else f"records.{self.shard}.jsonl")

    def record_files(self) -> list[Path]:
        return sorted(self.run_dir.glob("records*.jsonl")) + sorted(self.run_dir.glob("records*.jsonl.gz"))

    @classmethod
    def create(cls, run_dir: Path, manifest: dict) -> "RunStore":
        run_dir = Path(run_dir)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ExistingOutputError(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-id")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / MANIFEST, {"schema_version": SCHEMA_VERSION} | manifest)
        return cls(run_dir)

    @classmethod
    def resume(cls, run_dir: Path, config: dict, shard: str | None = None, added: dict | None = None) -> "RunStore":
        """Reopen a run; the resolved config must equal the stored one, or records would mix.
        `added`: settings that came after the run was made, with the value its records imply
        (a run from before engines ran on eager): a stored config without one reads as that."""
        run_dir = Path(run_dir)
        stored = (added or {}) | read_json(run_dir / MANIFEST)["config"]
        differing = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
        if differing:
            details = "; ".join(f"{k}: stored {stored.get(k)!r}, now {config.get(k)!r}" for k in differing)
            raise ConfigMismatchError(f"cannot resume {run_dir}: the config differs ({details})")
        return cls(run_dir, shard)

    def manifest(self) -> dict:
        manifest = read_json(self.run_dir / MANIFEST)
        check_schema_version(manifest, self.run_dir / MANIFEST)
        return manifest

    def add_to_manifest(self, key: str, entries: list) -> None:
        """Append `entries` to the manifest's list under `key` (what a session learnt after the
        run started, e.g. each engine's warm-up and compile time); one writer: rank 0."""
        manifest = self.manifest()
        manifest[key] = [*manifest.get(key, []), *entries]
        write_json_atomic(self.run_dir / MANIFEST, manifest)

    def records(self) -> list[dict]:
        return [record for path in self.record_files() for record in load_records(path)]

    def append(self, record: dict) -> None:
        append_jsonl(self.records_path, {"schema_version": SCHEMA_VERSION} | record)

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.run_dir / SUMMARY, summary)
