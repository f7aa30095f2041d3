"""Parsing senders and statuses named by phone number, business-scoped user id (BSUID) or both, and
the fields Meta adds to messages (pure). Field names: whatsapp-api-js's src/types.ts
(github.com/Secreto31126/whatsapp-api-js) and Meta's business-scoped user ids page."""

from __future__ import annotations

import pytest

from control_plane.db.conversations import canonical_wa_id, is_bsuid
from control_plane.webhooks.payload import parse_delivery, unmodeled
from tests.fakes import graph_api as g

pytestmark = pytest.mark.smoke
PHONE = "16505551234"
BSUID = "US.13491208655302741918"


def _items(messages, contacts=None, statuses=()):
    value = g.change_value("2", messages=messages, contacts=contacts, statuses=statuses)
    batch = parse_delivery(g.envelope([g.entry("1", [g.change(value)])]))
    return batch.numbers["2"].messages, batch.numbers["2"].statuses, batch.skipped_items


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (BSUID, True),
        ("US.ENT.11815799212886844830", True),  # a parent BSUID
        ("BR.1502576394655843", True),
        ("US." + "a" * 128, True),
        ("US." + "a" * 129, False),
        ("us.123", False),
        ("16505551234", False),
        ("US.12 3", False),
        ("US.", False),
        (None, False),
    ],
)
def test_what_a_bsuid_looks_like(value, expected):
    assert is_bsuid(value) is expected
    if isinstance(value, str):
        assert canonical_wa_id(value) == (value if expected else "".join(c for c in value if c.isdigit()))


def test_a_sender_without_phone_is_named_by_its_bsuid():
    message = g.as_user(g.text_message(PHONE, "hi"), BSUID, phone=False)
    contacts = [{"profile": {"name": "Ana", "username": "@ana"}, "user_id": BSUID}]
    [item], _, skipped = _items([message], contacts)
    assert skipped == 0
    assert (item["wa_id"], item["bsuid"], item["username"], item["contact_name"]) == (
        BSUID,
        BSUID,
        "@ana",
        "Ana",
    )
    assert item["raw"] is None and item["content"] == {"text": "hi"}  # all of it kept elsewhere


def test_the_contacts_entry_completes_the_sender():
    """pywa's fixtures: the message has only ``from``, its contacts[] entry the ``user_id``; Meta's
    contact-request sample: the message has neither, the one contacts[] entry names the sender."""
    by_phone = g.text_message(PHONE, "a")
    anonymous = {k: v for k, v in g.text_message(PHONE, "b").items() if k != "from"}
    contacts = [{"profile": {"name": "Ana"}, "wa_id": PHONE, "user_id": BSUID}]
    items, _, _ = _items([by_phone, anonymous], contacts)
    assert [(i["wa_id"], i["bsuid"], i["contact_name"]) for i in items] == [(PHONE, BSUID, "Ana")] * 2


def test_a_message_naming_nobody_is_skipped_and_a_malformed_bsuid_is_not_kept():
    nobody = {k: v for k, v in g.text_message(PHONE, "x").items() if k != "from"}
    strange = {**g.text_message(PHONE, "y"), "from_user_id": "not a bsuid"}
    two = [{"profile": {"name": "A"}, "wa_id": "1"}, {"profile": {"name": "B"}, "wa_id": "2"}]
    items, _, skipped = _items([nobody, strange], two)
    assert skipped == 1
    [item] = items
    assert (item["wa_id"], item["bsuid"]) == (PHONE, None) and item["raw"]["from_user_id"] == "not a bsuid"


def test_a_status_to_a_bsuid_names_it():
    to_bsuid = g.status("wamid.a", "delivered", BSUID)
    to_phone = {**g.status("wamid.b", "read", PHONE), "recipient_user_id": BSUID}
    assert "recipient_id" not in to_bsuid
    _, statuses, _ = _items([], statuses=[to_bsuid, to_phone])
    assert [(s["recipient_id"], s["recipient_user_id"]) for s in statuses] == [(BSUID, BSUID), (PHONE, BSUID)]
    assert statuses[0]["raw"] == to_bsuid


def test_fields_meta_adds_are_kept_in_content():
    image = g.image_message(PHONE, caption="c")
    image["image"]["url"] = "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1"
    image["identity"] = {"acknowledged": True, "created_timestamp": 1602532300000, "hash": "Sjvjlx8G6Z0="}
    image["errors"] = [{"code": 131052, "title": "Media download error"}]
    reply = g.text_message(
        PHONE,
        "this one?",
        context={
            "from": "15550783881",
            "id": "wamid.p",
            "referred_product": {"catalog_id": "1", "product_retailer_id": "sku"},
        },
    )
    items, _, _ = _items([image, reply])
    content = items[0]["content"]
    assert content["url"] == image["image"]["url"] and content["caption"] == "c"
    assert content["identity"] == image["identity"] and content["errors"] == image["errors"]
    assert items[1]["content"]["context"]["referred_product"] == {
        "catalog_id": "1",
        "product_retailer_id": "sku",
    }


def test_meta_object_is_kept_whenever_a_field_is_not_modeled():

    text = {"from": "16505551234", "id": "wamid.A", "timestamp": "1", "type": "text", "text": {"body": "x"}}
    assert not unmodeled(text, "text")
    assert unmodeled({**text, "from_parent_user_id": "US.ENT.1"}, "text")  # a field we do not read
    assert unmodeled({**text, "text": {"body": "x", "new": 1}}, "text")  # inside the type's object
    assert unmodeled({**text, "context": {"id": "wamid.B", "new": 1}}, "text")
    assert unmodeled({**text, "type": "order", "order": {}}, "order")  # a type we do not model
    assert not unmodeled({**text, "context": {"id": "wamid.B", "from": "1"}}, "text")
