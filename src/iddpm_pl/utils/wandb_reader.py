"""Read offline W&B runs (``run-<id>.wandb``) back from disk, without the network.

An offline run directory ``wandb/offline-run-<time>-<id>/`` contains the run's records in
``run-<id>.wandb`` and the logged media under ``files/media/``. wandb 0.31 writes no
``config.yaml`` or ``wandb-summary.json`` there and ships no public reader for the records.

The file layout, checked against the files wandb 0.31 writes (it is the LevelDB log
format): a 7-byte header (``b":W&B"``, the magic number 0xBEE1 as little-endian uint16,
version byte 0), then blocks of 32 KiB. A block holds chunks, each with a 7-byte header
(CRC-32 of the type byte and the data, uint32 LE; data length, uint16 LE; type, uint8:
1 full, 2 first, 3 middle, 4 last) and its data. A record that does not fit in the rest of
a block is split into first/middle/last chunks, and a block tail too short for a chunk
header is zero padding. Each whole record parses as ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

log = logging.getLogger(__name__)

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
CHUNK_FULL, CHUNK_FIRST, CHUNK_MIDDLE, CHUNK_LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """A ``.wandb`` file that is not in the expected format or is corrupted."""


def iter_record_bytes(path: str | Path) -> Iterator[bytes]:
    """Yield the serialized records of a ``.wandb`` file, in the order they were written.

    Raises :class:`WandbFileError` on a wrong file header, a CRC mismatch or chunks out of
    order. A record cut off at the end of the file (a run still being written, or a
    process that was killed) is skipped with a warning.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[: len(FILE_HEADER)] != FILE_HEADER:
        raise WandbFileError(
            f"{path} does not start with the W&B file header {FILE_HEADER!r} "
            f"(got {data[: len(FILE_HEADER)]!r}); is it a run-<id>.wandb file?"
        )
    pos = len(FILE_HEADER)
    pending: bytearray | None = None  # the parts of a record split over several chunks
    while pos < len(data):
        room = BLOCK_SIZE - pos % BLOCK_SIZE
        if room < CHUNK_HEADER.size:  # zero padding at the end of a block
            pos += room
            continue
        if pos + CHUNK_HEADER.size > len(data):
            log.warning("%s: the file ends inside a chunk header at byte %d", path, pos)
            break
        checksum, length, chunk_type = CHUNK_HEADER.unpack_from(data, pos)
        if checksum == 0 and length == 0 and chunk_type == 0:  # zeros: no chunk in this block
            pos += room
            continue
        start = pos + CHUNK_HEADER.size
        payload = data[start : start + length]
        if len(payload) < length:
            log.warning("%s: the last record is cut off at byte %d; skipping it", path, pos)
            return
        if zlib.crc32(payload, zlib.crc32(bytes([chunk_type]))) != checksum:
            raise WandbFileError(f"{path}: CRC mismatch in the chunk at byte {pos}")
        pos = start + length

        if chunk_type == CHUNK_FULL and pending is None:
            yield payload
        elif chunk_type == CHUNK_FIRST and pending is None:
            pending = bytearray(payload)
        elif chunk_type in (CHUNK_MIDDLE, CHUNK_LAST) and pending is not None:
            pending += payload
            if chunk_type == CHUNK_LAST:
                yield bytes(pending)
                pending = None
        else:
            raise WandbFileError(
                f"{path}: chunk of type {chunk_type} at byte {pos - length - CHUNK_HEADER.size} "
                f"is out of order (a split record is {'open' if pending else 'not open'})"
            )
    if pending is not None:
        log.warning("%s: the last record is cut off at the end of the file; skipping it", path)


def iter_records(path: str | Path) -> Iterator[wandb_internal_pb2.Record]:
    """Yield the records of a ``.wandb`` file as ``wandb_internal_pb2.Record`` messages."""
    for raw in iter_record_bytes(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        yield record


def _item_path(item: Any) -> list[str]:
    """Return the key path of a history, config or summary item (``key`` or ``nested_key``)."""
    return [item.key] if item.key else list(item.nested_key)


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    for name in path[:-1]:
        target = target.setdefault(name, {})
    target[path[-1]] = value


def _remove_path(target: dict[str, Any], path: list[str]) -> None:
    for name in path[:-1]:
        target = target.get(name, {})
    target.pop(path[-1], None)


def _apply_items(target: dict[str, Any], updates: Any, removes: Any = ()) -> None:
    for item in updates:
        _set_path(target, _item_path(item), json.loads(item.value_json))
    for item in removes:
        _remove_path(target, _item_path(item))


@dataclass
class OfflineRun:
    """What an offline W&B run recorded: its identity, config, history rows and exit.

    ``history`` holds one dict per logged row, with nested keys as nested dicts (an image
    key maps to ``{"_type": "images/separated", "filenames": [...], ...}``). ``exit_code``
    is ``None`` when the run never finished (no exit record), else the code passed to
    ``finish`` (0 for success).
    """

    path: Path
    run_id: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    @property
    def run_dir(self) -> Path:
        """The ``offline-run-*`` folder that holds the ``.wandb`` file and ``files/``."""
        return self.path.parent

    @property
    def failed(self) -> bool:
        """Whether the run finished with a non-zero exit code."""
        return self.exit_code not in (None, 0)

    def history_keys(self) -> set[str]:
        """Return every top-level key logged to the history."""
        return set().union(*(row.keys() for row in self.history)) if self.history else set()

    def values(self, key: str) -> list[Any]:
        """Return the logged values of ``key``, in the order of the history rows."""
        return [row[key] for row in self.history if key in row]

    def media_files(self, key: str | None = None) -> list[Path]:
        """Return the image files logged under ``key`` (all keys if ``None``), as paths.

        The paths come from the history rows, so each is a file that was logged, in order.
        """
        files = []
        for row in self.history:
            for name, value in row.items():
                if key not in (None, name) or not isinstance(value, dict):
                    continue
                for filename in value.get("filenames", []):
                    files.append(self.run_dir / "files" / filename)
                if "path" in value:
                    files.append(self.run_dir / "files" / value["path"])
        return files


def read_run(path: str | Path) -> OfflineRun:
    """Read an offline run from its ``run-<id>.wandb`` file or its ``offline-run-*`` folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if len(files) != 1:
            raise FileNotFoundError(
                f"expected one run-<id>.wandb file in {path}, found {[f.name for f in files]}"
            )
        path = files[0]
    run = OfflineRun(path=path)
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info = record.run
            run.run_id, run.project = info.run_id, info.project
            run.group, run.job_type = info.run_group, info.job_type
            run.tags = list(info.tags)
            _apply_items(run.config, info.config.update, info.config.remove)
        elif kind == "config":
            _apply_items(run.config, record.config.update, record.config.remove)
        elif kind == "history":
            row: dict[str, Any] = {}
            _apply_items(row, record.history.item)
            run.history.append(row)
        elif kind == "summary":
            _apply_items(run.summary, record.summary.update, record.summary.remove)
        elif kind == "exit":
            run.exit_code = int(record.exit.exit_code)
    return run


def find_runs(root: str | Path) -> list[OfflineRun]:
    """Read every offline run found below ``root`` (its ``run-*.wandb`` files), sorted by path."""
    return [read_run(path) for path in sorted(Path(root).rglob("run-*.wandb"))]
