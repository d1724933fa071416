"""Typed errors of the host link; each names the device and the command it was running."""

from __future__ import annotations

from tinyfed.errors import TinyfedError
from tinyfed.firmware_bridge.link.framing import Status, status_name


class LinkError(TinyfedError):
    """Root of the link errors: ``device`` is the board's name or URL, ``command`` the request."""

    def __init__(self, problem: str, *, device: str, command: str | None = None, fix: str | None = None) -> None:
        self.device = device
        self.command = command
        what = f"{command}: " if command else ""
        super().__init__(f"{what}{problem}", fix=fix, source=device)

    def to_dict(self) -> dict[str, object]:
        d = super().to_dict()
        d["device"] = self.device
        d["command"] = self.command
        return d


class DeviceUnreachable(LinkError):
    """The port cannot be opened, or it went away (unplugged, emulator stopped)."""


class PortInUse(DeviceUnreachable):
    """Another process holds the board's tty (tinyfed locks every tty it opens)."""

    def __init__(self, tty: str, *, device: str) -> None:
        self.tty = tty
        super().__init__(
            f"{tty} is in use by another process (tinyfed holds a board's tty exclusively, so two programs "
            "never read halves of each other's frames)",
            device=device,
            fix=f"stop the other program using it (`fuser -v {tty}` names it: another `tinyfed run`, "
                "`devices`, `check`, or a terminal such as screen/minicom), or wait for it to finish",
        )


class LinkTimeout(LinkError):
    """No valid response after every retransmission."""

    def __init__(self, *, device: str, command: str, attempts: int, waited_s: float) -> None:
        self.attempts = attempts
        self.waited_s = waited_s
        super().__init__(
            f"no valid response after {attempts} attempt(s) over {waited_s:.2f} s",
            device=device,
            command=command,
            fix="check the board is powered, runs the tinyfed firmware and is on this port "
                "(`tinyfed devices`); a noisy link may need a longer --timeout",
        )


class ProtocolVersionMismatch(LinkError):
    """The board speaks another protocol version."""

    def __init__(self, *, device: str, board_version: int, host_version: int, command: str = "HELLO") -> None:
        self.board_version = board_version
        self.host_version = host_version
        super().__init__(
            f"board speaks protocol v{board_version}, this host speaks v{host_version}",
            device=device,
            command=command,
            fix=f"flash the firmware of this tinyfed version (`tinyfed firmware build` then `tinyfed flash`), "
                f"or use a tinyfed release that speaks protocol v{board_version}",
        )


class ProtocolError(LinkError):
    """A response that is valid on the wire but makes no sense (wrong size, wrong kind)."""


#: What to do about each error status a board can answer.
STATUS_FIXES: dict[int, str] = {
    Status.BAD_CRC: "the data was corrupted on the way; run the command again (a fragment is re-sent whole)",
    Status.UNKNOWN_COMMAND: "the firmware is older than this host; rebuild and flash it",
    Status.FRAGMENT_TOO_LARGE: "the fragment is larger than the board's fragment slot; plan with a smaller cut "
                               "(`tinyfed plan`)",
    Status.OUT_OF_MEMORY: "the fragment's arena does not fit the board's arena; plan with a smaller cut",
    Status.UNSUPPORTED_OP: "the fragment uses an op this firmware has no kernel for; re-plan or update the firmware",
    Status.WRONG_VERSION: "host and firmware versions differ; flash the firmware of this tinyfed version",
    Status.BAD_LENGTH: "the request had the wrong size for the board (a host/firmware mismatch); "
                       "check the input shape, or flash matching firmware",
    Status.OUT_OF_ORDER: "a chunk arrived out of order; run the command again (the upload resumes)",
    Status.NO_MODEL: "no fragment is loaded; load one first (`tinyfed check` loads and runs it)",
    Status.BAD_MODEL: "the fragment blob is malformed; recompile it from the .tflite",
    Status.FRAME_TOO_LARGE: "a frame exceeded the board's max_payload; a host bug or a wrong board profile",
    Status.BUSY: "the board is busy; try again",
    Status.NO_DATA: "the board has no usable local data; provision it (BoardClient.load_data) for this fragment",
    Status.BAD_ARGUMENT: "a training parameter is out of range (epochs, batch >= 1; finite lr > 0; finite w*)",
    Status.NO_UPDATE: "no update to read; run TRAIN first (setting w* discards the previous update)",
}

#: Commands where WRONG_VERSION means the model version of w*, not the protocol version.
MODEL_VERSION_COMMANDS = frozenset({"TRAIN", "TRAIN_SET"})
MODEL_VERSION_FIX = "w* on the board is at another model version; send w* at this version (TRAIN_SET) first"


class DeviceError(LinkError):
    """The board answered with an error status."""

    def __init__(self, status: int, detail: int, message: str, *, device: str, command: str) -> None:
        self.status = status
        self.status_name = status_name(status)
        self.detail = detail
        self.message = message
        said = f" ({message})" if message else ""
        super().__init__(
            f"board answered {self.status_name}{said}, detail {detail}",
            device=device,
            command=command,
            fix=(MODEL_VERSION_FIX if status == Status.WRONG_VERSION and command in MODEL_VERSION_COMMANDS
                 else STATUS_FIXES.get(status, "update the host or the firmware so they agree")),
        )

    def to_dict(self) -> dict[str, object]:
        d = super().to_dict()
        d.update(status=self.status_name, detail=self.detail, message=self.message)
        return d


#: Why an exchange failed authentication; the engine's ``rejection`` events carry these as ``reason``.
AUTH_REASONS = frozenset({"no_key", "no_session", "bad_mac", "replayed_counter", "unknown_device",
                          "bad_update_mac", "wrong_version"})

_AUTH_FIXES: dict[str, str] = {
    "no_key": "the board holds no device key: provision it (`tinyfed firmware flash --board B` for a real board, "
              "`tinyfed emulate` relaunches emulated ones with keys)",
    "unknown_device": "this host never provisioned that board, or the key store is another one: pass the key store "
                      "that provisioned it (--key-store FILE) or provision the board again",
    "bad_mac": "something on the link is not the board this host provisioned (another program on the port, or "
               "the board was re-provisioned): check the port and the key store",
    "no_session": "the board lost its session (it was reset, or another program said HELLO): reconnect",
    "replayed_counter": "a request was replayed on the link: check what else talks to this port",
    "bad_update_mac": "the update was not produced by this board for this task: the board or the link is "
                      "compromised; the update was not aggregated",
    "wrong_version": "the update is bound to another model version than the one sent for this task; it was "
                     "not aggregated",
}


class AuthenticationFailed(LinkError):
    """A message failed authentication: ``reason`` is one of :data:`AUTH_REASONS`. Never carries key bytes."""

    def __init__(self, reason: str, problem: str, *, device: str, command: str | None = None) -> None:
        self.reason = reason
        super().__init__(problem, device=device, command=command,
                         fix=_AUTH_FIXES.get(reason, "check the port and the key store"))

    def to_dict(self) -> dict[str, object]:
        d = super().to_dict()
        d["reason"] = self.reason
        return d


class UnknownDevice(AuthenticationFailed):
    """HELLO named a device id that is not in this host's key store."""

    def __init__(self, device_id_hex: str, *, device: str, key_store: str) -> None:
        self.device_id_hex = device_id_hex
        super().__init__("unknown_device", f"device id {device_id_hex} is not in the key store {key_store}",
                         device=device, command="HELLO")
