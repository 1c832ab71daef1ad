"""Named tensors in one flat file, read back one at a time with plain reads (no mmap), so that a
large read-mostly set (D-Pruner's G, the dense weights kept for restoring) costs disk and page
cache instead of process memory. `<path>` holds the bytes, `<path>.json` the index, the notes and
the byte count (plus, for files kept across runs, the bytes' sha256, computed while writing, and
a sha256 of the index itself); both are staged and renamed into place, the index last."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from core.errors import ConfigError
from core.files import Damaged, atomic_open, read_json, sha256_file, write_atomic

DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


def _bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def _read_index(meta: Path) -> dict[str, Any]:
    """The index file's payload; anything else than {index: {...}, ...} is damage."""
    try:
        payload = read_json(meta, "a tensor file index {index, notes, size}")
    except ConfigError as err:
        raise Damaged(f"index {meta.name} is not readable JSON") from err
    if not isinstance(payload, dict) or not isinstance(payload.get("index"), dict):
        raise Damaged(f"index {meta.name} lacks its entries")
    return payload


def _index_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check(path: Path, payload: dict[str, Any]) -> None:
    """The index and the bytes are exactly what the writer recorded."""
    if "sha256" not in payload or "index_sha256" not in payload:
        raise Damaged("no checksum recorded (written without one, or by an earlier version)")
    body = {key: value for key, value in payload.items() if key != "index_sha256"}
    if _index_digest(body) != payload["index_sha256"]:
        raise Damaged("index checksum differs")
    size = path.stat().st_size
    if size != payload["size"]:
        raise Damaged(f"{size} bytes, expected {payload['size']}")
    if sha256_file(path) != payload["sha256"]:
        raise Damaged("checksum differs")


class TensorFile(Mapping[str, torch.Tensor]):
    """Write inside `with TensorFile.writing(path) as f: f.put(name, tensor)`; read with
    `TensorFile.open(path)[name]`."""

    def __init__(self, path: Path, index: dict[str, dict] | None = None, notes: Any = None,
                 device: torch.device | str = "cpu") -> None:
        self.path = Path(path)
        self.index = index if index is not None else {}
        self.notes = notes
        self.device = torch.device(device)
        self._writer = None
        self._digest = None

    @classmethod
    @contextmanager
    def writing(cls, path: Path, device: torch.device | str = "cpu",
                checksum: bool = False) -> Iterator[TensorFile]:
        """A new file; it appears at `path`, with its index and `notes`, only when the block ends
        without error. `checksum` records the sha256 of the bytes and of the index for
        `open(verify=True)` (caches; scratch files skip the hashing)."""
        store = cls(path, device=device)
        store._digest = hashlib.sha256() if checksum else None
        with atomic_open(store.path, "wb") as handle:
            store._writer = handle
            yield store
            size = handle.tell()
            store._writer = None
        body = {"index": store.index, "notes": store.notes, "size": size}
        if store._digest is not None:
            body = json.loads(json.dumps({**body, "sha256": store._digest.hexdigest()}))  # as read back
            body["index_sha256"] = _index_digest(body)
        write_atomic(Path(f"{path}.json"), json.dumps(body))

    @classmethod
    def open(cls, path: Path, device: torch.device | str = "cpu", verify: bool = False) -> TensorFile | None:
        """A finished file, or None when there is nothing at `path`. Half a file (bytes or index
        missing) or an unreadable index raises Damaged; with `verify`, so do bytes that differ
        from the size and checksum recorded when they were written."""
        path, meta = Path(path), Path(f"{path}.json")
        if not path.exists() and not meta.exists():
            return None
        if not meta.exists():
            raise Damaged("its index file is missing")
        payload = _read_index(meta)
        if not path.exists():
            raise Damaged("its bytes file is missing")
        if verify:
            _check(path, payload)
        return cls(path, payload["index"], payload.get("notes"), device)

    def put(self, name: str, tensor: torch.Tensor) -> None:
        data = tensor.detach().to("cpu").contiguous()
        offset = self._writer.tell()
        self.index[name] = {"offset": offset, "shape": list(data.shape), "dtype": str(data.dtype)}
        view = _bytes(data)
        self._writer.write(view)
        if self._digest is not None:
            self._digest.update(view)

    def __getitem__(self, name: str) -> torch.Tensor:
        entry = self.index[name]
        out = torch.empty(entry["shape"], dtype=DTYPES[entry["dtype"]])
        with open(self.path, "rb") as handle:
            handle.seek(entry["offset"])
            handle.readinto(_bytes(out))
        return out.to(self.device)

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)
