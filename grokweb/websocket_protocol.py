"""Daphne's websocket protocol, answering the messages it will not hand to the app with the
`error` frame of docs/protocol.md instead of dropping the connection.

Daphne (through autobahn) drops the TCP connection, with no close frame, on a message over its
size limit (`--websocket-max-message-size`, 1 MiB by default) and on a text message that is not
UTF-8: the page sees an abnormal close and no reason, and reconnects into the same wall. Here
such a message is read to its end without being kept and answered `too_large` or `bad_json`;
the socket stays open, as for every other refused frame. Daphne has no setting for its protocol
class: `install` puts this one on its factory (grokweb/asgi.py calls it, so every way of
starting Daphne on our application gets it).
"""

from __future__ import annotations

import json

from daphne import ws_protocol

TOO_LARGE = "The frame is larger than 64 KiB."  # as chat/consumers.py says of a smaller one
NOT_UTF8 = "The frame is not UTF-8 text."


class ChatWebSocketProtocol(ws_protocol.WebSocketProtocol):
    refused: tuple[str, str] | None = None  # (code, message) of the message being skipped

    def onMessageBegin(self, isBinary: bool) -> None:
        self.refused = None
        super().onMessageBegin(isBinary)

    def _max_message_size_exceeded(self, msg_size, max_msg_size, reason) -> None:
        self._refuse("too_large", TOO_LARGE)

    def _invalid_payload(self, reason: str) -> bool:
        if self.state != self.STATE_OPEN or not self.inside_message:
            return super()._invalid_payload(reason)  # e.g. a close frame's reason: fail as before
        self.utf8validateIncomingCurrentMessage = False  # nothing more to learn from the rest
        self._refuse("bad_json", NOT_UTF8)
        return False  # go on reading the message, to its end

    def _refuse(self, code: str, message: str) -> None:
        self.refused = self.refused or (code, message)
        self.message_data, self.frame_data = [], []  # what was kept of it so far

    def onMessageFrameData(self, payload: bytes) -> None:
        if self.refused is None:
            super().onMessageFrameData(payload)

    def onMessageFrame(self, payload: list[bytes]) -> None:
        if self.refused is None:
            super().onMessageFrame(payload)

    def onMessageEnd(self) -> None:
        if self.refused is None:
            return super().onMessageEnd()
        code, message = self.refused
        self.refused = None
        self.sendMessage(json.dumps({"type": "error", "code": code, "message": message}).encode())


def install() -> None:
    ws_protocol.WebSocketFactory.protocol = ChatWebSocketProtocol
