"""API keys: the commands, the admin (shown once), hashing, revocation."""

from __future__ import annotations

import io
import json
import re
import secrets

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.test import Client

from api import keys
from api.models import ApiKey
from tests.helpers import TEST_PASSWORD
from tests.test_api_helpers import Api

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()


def create(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_key", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def test_create_api_key_prints_the_key_once_and_stores_a_hash():
    raw, note = create("--name", "grafana", "--read-only")
    assert re.fullmatch(r"sck_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", raw)
    assert "shown only this once" in note and raw not in note
    key = ApiKey.objects.get(name="grafana")
    assert key.scope == ApiKey.Scope.READ_ONLY and raw.startswith(f"sck_{key.prefix}_")
    secret = raw.split("_", 2)[2]
    stored = json.dumps([str(v) for v in ApiKey.objects.filter(pk=key.pk).values().get().values()])
    assert secret not in stored and raw not in stored
    assert key.key_hash == keys.hash_key(raw) and len(key.key_hash) == 64
    assert Api(raw).get("/api/v1/jobs/").status_code == 200


def test_create_api_key_defaults_to_read_write_and_can_expire():
    raw, _ = create("--name", "deploy-bot", "--expires-days", "30")
    key = ApiKey.objects.get(name="deploy-bot")
    assert key.can_write and key.expires_at is not None


@pytest.mark.parametrize("args, message", [
    (["--name", "has space"], "--name"),
    (["--name", "x", "--expires-days", "0"], "--expires-days"),
])
def test_create_api_key_names_the_bad_option(args, message):
    with pytest.raises(CommandError, match=message):
        create(*args)


def test_a_duplicate_name_is_refused():
    create("--name", "twice")
    with pytest.raises(CommandError, match="--name: .*already exists"):
        create("--name", "twice")


def test_revoke_by_name_or_prefix_and_list():
    raw, _ = create("--name", "ci")
    other, _ = create("--name", "backup-monitor", "--read-only")
    out = io.StringIO()
    call_command("list_api_keys", stdout=out)
    listing = out.getvalue()
    assert "ci" in listing and "backup-monitor" in listing and "never" in listing
    assert raw not in listing and other.split("_", 2)[2] not in listing
    assert call_command("revoke_api_key", "--name", "ci") == "API key 'ci' revoked"
    assert "already revoked" in call_command("revoke_api_key", "--name", "ci")
    assert call_command("revoke_api_key", "--prefix", other[:16]) == "API key 'backup-monitor' revoked"
    assert Api(raw).get("/api/v1/jobs/").status_code == 401
    data = json.loads(call_command("list_api_keys", "--json"))
    assert {d["state"] for d in data} == {"revoked"}
    with pytest.raises(CommandError, match="--name: no API key named 'nope'"):
        call_command("revoke_api_key", "--name", "nope")


def test_changing_the_pepper_invalidates_keys(settings):
    raw, _ = create("--name", "peppered")
    settings.API_KEY_PEPPER = secrets.token_urlsafe(48)  # a different pepper, >= 32 chars
    assert Api(raw).get("/api/v1/jobs/").status_code == 401


@pytest.fixture
def admin_client(django_user_model) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", "r@example.com", TEST_PASSWORD))
    return client


def test_the_admin_creates_a_key_and_shows_it_once(admin_client):
    response = admin_client.post("/admin/api/apikey/add/", {"name": "from-admin", "scope": "read_write"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    html = response.content.decode()
    raw = re.search(r'value="(sck_[0-9a-f]{12}_[A-Za-z0-9_-]+)"', html).group(1)
    assert "shown only this once" in html
    key = ApiKey.objects.get(name="from-admin")
    assert key.created_by.username == "root" and key.key_hash == keys.hash_key(raw)
    # Never again: not on the list, not on the change page, not in a message or cookie.
    for path in ("/admin/api/apikey/", f"/admin/api/apikey/{key.pk}/change/"):
        page = admin_client.get(path).content.decode()
        assert raw.split("_", 2)[2] not in page and f"sck_{key.prefix}_" in page
    assert raw not in str(admin_client.cookies)
    assert Api(raw).post("/api/v1/jobs/", {}).status_code == 400  # a write key: validation, not 403


def test_the_admin_revokes_keys(admin_client):
    raw, _ = create("--name", "to-revoke")
    key = ApiKey.objects.get(name="to-revoke")
    admin_client.post("/admin/api/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk]})
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert Api(raw).get("/api/v1/jobs/").status_code == 401
