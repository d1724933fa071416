"""Device identities and the host's fleet key store (``docs/security.md``).

Every board holds a 16-byte device id and a 32-byte secret key in its *key page*, a flash page
written at provisioning (``tinyfed firmware build/flash`` for a real board, the launcher for an
emulated one, the transport for a ``sim://`` board) that no protocol command reads back. The host
keeps the same pairs in a key store: one JSON file, mode 0600, written atomically under a lock so
that concurrent launchers never lose each other's keys.

A key is never printed, logged, put in an event, a checkpoint, the dashboard or an exception:
:class:`DeviceKey` hides it from ``repr`` and nothing here formats it except the store's writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import stat
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tinyfed.errors import TinyfedError

log = logging.getLogger(__name__)

DEVICE_ID_BYTES = 16
KEY_BYTES = 32
SEED_BYTES = 8
KEY_PAGE_MAGIC = b"TFK1"
#: magic, device id, key, seed, CRC-32 of the 60 bytes before it
KEY_PAGE = struct.Struct(f"<4s{DEVICE_ID_BYTES}s{KEY_BYTES}s{SEED_BYTES}sI")
KEY_PAGE_BYTES = KEY_PAGE.size  # 64
STORE_FORMAT = 1
#: Environment variable that names the key store (the global ``--key-store`` option sets it).
KEY_STORE_ENV = "TINYFED_KEY_STORE"


class KeyStoreError(TinyfedError):
    """The key store is unreadable, damaged, or readable by others."""


@dataclass(frozen=True)
class DeviceKey:
    """One board's identity: ``device_id`` is public (HELLO says it), ``key`` is secret."""

    device_id: bytes
    key: bytes = field(repr=False)
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.device_id) != DEVICE_ID_BYTES or len(self.key) != KEY_BYTES:
            raise ValueError(f"a device id is {DEVICE_ID_BYTES} bytes and a key {KEY_BYTES} bytes")

    @property
    def id_hex(self) -> str:
        return self.device_id.hex()

    @classmethod
    def generate(cls, name: str = "") -> DeviceKey:
        return cls(secrets.token_bytes(DEVICE_ID_BYTES), secrets.token_bytes(KEY_BYTES), name)


def key_page(device: DeviceKey, seed: bytes | None = None) -> bytes:
    """The 64-byte key page a board reads at boot. ``seed`` feeds the random generator of a board
    without a hardware RNG (fresh for every emulator launch); a real board gets zeros."""
    seed = bytes(SEED_BYTES) if seed is None else seed
    if len(seed) != SEED_BYTES:
        raise ValueError(f"the seed is {SEED_BYTES} bytes")
    body = KEY_PAGE.pack(KEY_PAGE_MAGIC, device.device_id, device.key, seed, 0)[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def parse_key_page(page: bytes) -> tuple[DeviceKey, bytes] | None:
    """The identity and seed in a key page, or None for a blank or damaged page (no key)."""
    if len(page) < KEY_PAGE_BYTES:
        return None
    magic, device_id, key, seed, crc = KEY_PAGE.unpack_from(page)
    if magic != KEY_PAGE_MAGIC or crc != zlib.crc32(page[:KEY_PAGE_BYTES - 4]):
        return None
    return DeviceKey(device_id, key), seed


def default_key_store_path() -> Path:
    """``$TINYFED_KEY_STORE``, else ``$XDG_DATA_HOME/tinyfed/keys.json`` (``~/.local/share``)."""
    named = os.environ.get(KEY_STORE_ENV)
    if named:
        return Path(named).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tinyfed" / "keys.json"


class KeyStore:
    """The host's record of every board's key, one JSON file (mode 0600).

    Reads take the file as it is; every change re-reads it under an exclusive lock on
    ``<file>.lock`` and replaces it atomically, so two processes provisioning boards at once both
    keep their keys.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_key_store_path()

    def __repr__(self) -> str:
        return f"KeyStore({str(self.path)!r})"

    # -- reading ---------------------------------------------------------------------------

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise KeyStoreError(f"the key store is readable by other users (mode {stat.S_IMODE(st.st_mode):o})",
                                fix=f"chmod 600 {self.path}", source=str(self.path))
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KeyStoreError(f"the key store cannot be read ({type(exc).__name__})",
                                fix="restore it from a backup, or move it away and provision the boards again",
                                source=str(self.path)) from None
        devices = doc.get("devices") if isinstance(doc, dict) else None
        if not isinstance(doc, dict) or doc.get("format") != STORE_FORMAT or not isinstance(devices, dict):
            raise KeyStoreError(f"the key store is not a tinyfed key store of format {STORE_FORMAT}",
                                fix="point --key-store at a tinyfed key store", source=str(self.path))
        return devices

    @staticmethod
    def _entry(id_hex: str, row: object) -> DeviceKey | None:
        if not isinstance(row, dict):
            return None
        try:
            return DeviceKey(bytes.fromhex(id_hex), bytes.fromhex(row["key"]), str(row.get("name", "")))
        except (KeyError, TypeError, ValueError):
            return None

    def lookup(self, device_id: bytes) -> DeviceKey | None:
        """The key of ``device_id``, or None for a device this host never provisioned."""
        row = self._read().get(device_id.hex())
        return None if row is None else self._entry(device_id.hex(), row)

    def devices(self) -> list[DeviceKey]:
        """Every stored identity (for listing: id and name; the keys stay in the objects)."""
        found = (self._entry(k, v) for k, v in self._read().items())
        return [d for d in found if d is not None]

    def __len__(self) -> int:
        return len(self._read())

    def __contains__(self, device_id: object) -> bool:
        return isinstance(device_id, bytes) and device_id.hex() in self._read()

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, str]]]:
        """The stored devices, to change in place; written back atomically on exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            devices = self._read()
            yield devices
            self._write(devices)
        finally:
            os.close(fd)

    def _write(self, devices: dict[str, dict[str, str]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        text = json.dumps({"format": STORE_FORMAT, "devices": devices}, indent=1, sort_keys=True) + "\n"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise KeyStoreError(f"the key store cannot be written ({exc.strerror})",
                                fix="free disk space or fix the directory's permissions",
                                source=str(self.path)) from None

    def add(self, device: DeviceKey) -> DeviceKey:
        """Record ``device`` (replacing an entry with the same id)."""
        with self._locked() as devices:
            devices[device.id_hex] = {"name": device.name, "key": device.key.hex()}
        log.info("key store %s: recorded device %s (%s)", self.path, device.id_hex, device.name or "unnamed")
        return device

    def provision(self, name: str = "") -> DeviceKey:
        """A fresh identity for a board named ``name``, recorded before anything writes it to a board."""
        return self.add(DeviceKey.generate(name))

    def remove(self, device_id: bytes) -> bool:
        """Forget a device (a board retired or re-provisioned); True if it was there."""
        with self._locked() as devices:
            return devices.pop(device_id.hex(), None) is not None
