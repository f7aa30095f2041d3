"""Meta's webhook payloads for messages that change an earlier one (reaction, edit, revoke), built from
Meta's reference pages: each sample is the page's "Syntax" with its placeholders replaced by the
"Example value" column of the page's parameter table (ids made unique per call, so a test can send
several; the edited image's sha256, id and url, for which the page gives no example, are made up).
Sources:

- reaction: https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/reaction/
  ("When an end user removes a reaction emoji, WhatsApp sends a webhook without the emoji field")
- edit: https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/edit
  (WhatsApp Business app users, "Coexistence"; ``edit.message`` is the edited message, e.g. an
  image with a new caption and the ``context`` it replied to)
- revoke: https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/revoke
- smb_message_echoes (the business edits or revokes its own message from the Business app; types
  "include text, image, video, document, revoke, and edit"):
  https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/smb_message_echoes
  and the revoke/edit echo shapes quoted at https://dualhook.com/docs/webhook-smb-message-echoes
"""

from __future__ import annotations

import secrets
from typing import Any

WABA_ID = "102290129340398"
DISPLAY_NUMBER = "15550783881"
PHONE_NUMBER_ID = "106540352242922"
PROFILE_NAME = "Sheena Nelson"
USER = "16505551234"
TIMESTAMP = "1739321024"


def wamid() -> str:
    """A wamid shaped like the reference pages' (``wamid.HBgLMTY1MDM4Nzk0MzkV...``), unique."""
    return "wamid.HBgLMTY1MDM4Nzk0MzkV" + secrets.token_hex(12).upper()


def envelope(messages: list[dict[str, Any]], *, pnid: str = PHONE_NUMBER_ID, field: str = "messages") -> dict:
    key = "message_echoes" if field == "smb_message_echoes" else "messages"
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY_NUMBER, "phone_number_id": pnid},
        key: messages,
    }
    if field == "messages":
        value["contacts"] = [{"profile": {"name": PROFILE_NAME}, "wa_id": USER}]
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": [{"value": value, "field": field}]}],
    }


def reaction(
    target: str, emoji: str | None, *, sender: str = USER, ts: str = TIMESTAMP, id_: str | None = None
):
    """Reaction reference: ``reaction: {message_id, emoji}``; no ``emoji`` when it was removed."""
    part: dict[str, Any] = {"message_id": target}
    if emoji is not None:
        part["emoji"] = emoji
    return {"from": sender, "id": id_ or wamid(), "timestamp": ts, "type": "reaction", "reaction": part}


def edit_image_caption(
    target: str, caption: str, *, context_id: str, ts: str = TIMESTAMP, id_: str | None = None
):
    """Edit reference, as its Syntax shows it: an image whose caption was edited."""
    return {
        "from": USER,
        "id": id_ or wamid(),
        "timestamp": ts,
        "type": "edit",
        "edit": {
            "original_message_id": target,
            "message": {
                "context": {"id": context_id},
                "type": "image",
                "image": {
                    "caption": caption,
                    "mime_type": "image/jpeg",
                    "sha256": "P2Tt1ax7/JQOhCcFw1S+2Ju8o7MrNH3tbhZXivHaa6E=",
                    "id": "1003383421387256",
                    "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1003383421387256",
                },
            },
        },
    }


def edit_text(target: str, body: str, *, ts: str = TIMESTAMP, id_: str | None = None):
    """Edit reference, for a text message (``edit.message`` is a text message object)."""
    return {
        "from": USER,
        "id": id_ or wamid(),
        "timestamp": ts,
        "type": "edit",
        "edit": {"original_message_id": target, "message": {"type": "text", "text": {"body": body}}},
    }


def revoke(target: str, *, ts: str = TIMESTAMP, id_: str | None = None):
    """Revoke reference: ``revoke: {original_message_id}``."""
    return {
        "from": USER,
        "id": id_ or wamid(),
        "timestamp": ts,
        "type": "revoke",
        "revoke": {"original_message_id": target},
    }


def echo_revoke(target: str, *, ts: str = TIMESTAMP):
    """smb_message_echoes: the business deleted its own message (``from`` = the business number)."""
    return {
        "from": DISPLAY_NUMBER,
        "to": USER,
        "id": wamid(),
        "timestamp": ts,
        "type": "revoke",
        "revoke": {"original_message_id": target},
    }


def echo_edit(target: str, caption: str, *, ts: str = TIMESTAMP):
    """smb_message_echoes: the business edited the caption of an image it sent."""
    return {
        "from": DISPLAY_NUMBER,
        "to": USER,
        "id": wamid(),
        "timestamp": ts,
        "type": "edit",
        "edit": {"original_message_id": target, "message": {"type": "image", "image": {"caption": caption}}},
    }
