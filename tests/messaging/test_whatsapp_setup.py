"""The WhatsApp setup rules on their own (no app): what a request changes, when a config makes sense,
and how a stored config is shown (what the API and the admin pages both render)."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from control_plane import errors
from control_plane.messaging.whatsapp_config import (
    WhatsAppConfigIn,
    check_consistency,
    config_out,
    merged_view,
    requested_changes,
)


def test_requested_changes_keep_nulls_on_update_and_drop_them_on_create():
    body = WhatsAppConfigIn.model_validate({"api_type": "web", "waba_id": None})
    assert requested_changes(body, create=False) == {"api_type": "web", "waba_id": None}
    assert requested_changes(body, create=True) == {"api_type": "web"}
    with pytest.raises(ValidationError) as caught:  # refused by the model, as its schema says
        WhatsAppConfigIn.model_validate({"is_active": None})
    error = caught.value.errors()[0]
    assert (error["type"], error["ctx"]["field"]) == ("invalid_field", "is_active")


@pytest.mark.parametrize(
    ("merged", "field"),
    [
        ({"api_type": "business_api", "fallback_policy": "business_api_only"}, "phone_number_id"),
        ({"api_type": "both", "phone_number_id": "1"}, "access_token"),
        ({"api_type": "web", "fallback_policy": "business_api_only"}, "fallback_policy"),
        ({"api_type": "business_api", "phone_number_id": "1", "access_token": "t"}, "fallback_policy"),
    ],
)
def test_inconsistent_configs_name_the_field(merged, field):
    with pytest.raises(errors.InvalidInput) as caught:
        check_consistency(merged)
    assert caught.value.field == field


def test_the_stored_config_is_merged_under_the_changes():
    stored = {
        "api_type": "both",
        "fallback_policy": "web_first",
        "phone_number_id": "1",
        "access_token_enc": "sealed",
    }
    view = merged_view(stored, {"fallback_policy": "business_api_first"})
    assert view == {
        "api_type": "both",
        "fallback_policy": "business_api_first",
        "phone_number_id": "1",
        "access_token": "sealed",
    }
    check_consistency(view)


def test_config_out_masks_secrets_and_has_defaults():
    empty = config_out(None)
    assert (empty.configured, empty.api_type, empty.fallback_policy, empty.business_api_ready) == (
        False,
        "web",
        "web_only",
        False,
    )
    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    row = {
        "api_type": "both",
        "fallback_policy": "web_first",
        "phone_number_id": "1",
        "waba_id": "2",
        "api_version": None,
        "access_token_enc": "sealed-token",
        "app_secret_enc": None,
        "verify_token_enc": "sealed-verify",
        "is_active": True,
        "verification_status": "verified",
        "verification_message": "ok",
        "verified_at": now,
        "created_at": now,
        "updated_at": now,
    }
    out = config_out(row).model_dump(mode="json")
    assert out["access_token"] == out["verify_token"] == "********" and out["app_secret"] is None
    assert out["business_api_ready"] is True and out["verification"]["status"] == "verified"
    assert out["created_at"] == "2026-01-02T03:04:05Z"
