"""The Node bridge as seen from Python: its wire protocol (see bridge/PROTOCOL.md)."""

from __future__ import annotations

from control_plane.bridge.protocol import (
    COMMAND_NAMES,
    EVENT_NAMES,
    PROTOCOL_VERSION,
    BridgeClosed,
    BridgeCommandFailed,
    BridgeConnection,
    BridgeError,
    BridgeEvent,
    BridgeStdoutProtocol,
    BridgeTimeout,
    ProtocolError,
    Response,
)

__all__ = [
    "COMMAND_NAMES",
    "EVENT_NAMES",
    "PROTOCOL_VERSION",
    "BridgeClosed",
    "BridgeCommandFailed",
    "BridgeConnection",
    "BridgeError",
    "BridgeEvent",
    "BridgeStdoutProtocol",
    "BridgeTimeout",
    "ProtocolError",
    "Response",
]
