"""The fake game's SC2 process and the errors a dying or unreachable game raises (pysc2's own
classes where pysc2 is installed, so that one ``except`` catches the real and the fake game:
pysc2's ``protocol.ConnectionError`` and ``ProtocolError`` subclass ``Exception``, not the builtin
``ConnectionError``)."""

from __future__ import annotations

__all__ = ["GAME_ERRORS", "ProtocolError", "SC2ConnectionError", "ConnectError", "CRASH_MESSAGE",
           "LAUNCH_FAILURE_MESSAGE", "FakeProcess"]

try:  # pysc2's classes when installed, so that one ``except`` catches the real and the fake game
    from pysc2.lib.protocol import ConnectionError as SC2ConnectionError
    from pysc2.lib.protocol import ProtocolError
    from pysc2.lib.remote_controller import ConnectError
except ImportError:

    class ProtocolError(Exception):  # type: ignore[no-redef]
        """Stand-in for ``pysc2.lib.protocol.ProtocolError``."""

    class SC2ConnectionError(Exception):  # type: ignore[no-redef]
        """Stand-in for ``pysc2.lib.protocol.ConnectionError`` (not the builtin ConnectionError)."""

    class ConnectError(Exception):  # type: ignore[no-redef]
        """Stand-in for ``pysc2.lib.remote_controller.ConnectError`` (a launch that failed)."""


GAME_ERRORS = (ProtocolError, SC2ConnectionError, ConnectError)  # what a dying game raises
CRASH_MESSAGE = "Connection already closed. SC2 probably crashed. Check the error log."
LAUNCH_FAILURE_MESSAGE = "Failed to connect to the SC2 websocket. Is it up?"


class FakeProcess:
    """The SC2 process and its controller: every request fails once the process is dead."""

    def __init__(self) -> None:
        self.alive = True

    def close(self) -> None:
        self.alive = False

    def request(self) -> None:
        if not self.alive:
            raise SC2ConnectionError(CRASH_MESSAGE)

