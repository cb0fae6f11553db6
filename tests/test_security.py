"""Secure by default: keys never logged, constant-time checks, headers, production settings, admin."""

from __future__ import annotations

import logging
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.cache import cache
from django.test import Client

from api import authentication, keys
from api.models import ApiKey
from jobs.models import Job
from tests.helpers import TEST_PASSWORD
from tests.test_api_helpers import Api, default_slots, issue_key, new_job

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()


@pytest.mark.django_db
def test_api_keys_never_reach_the_logs(caplog, scripts_root):
    caplog.set_level(logging.DEBUG)
    default_slots()
    job = new_job(scripts_root, "logged")
    raw = issue_key("secretive")
    secret = raw.split("_", 2)[2]
    wrong = raw[:-4] + "AAAA"
    Api(raw).get("/api/v1/jobs/")
    Api(raw, header="x-api-key").post(f"/api/v1/jobs/{job.pk}/run/")
    Api(wrong).get("/api/v1/jobs/")
    Api(raw).post("/api/v1/jobs/", raw="{broken")
    Client().get("/api/v1/jobs/", HTTP_AUTHORIZATION=f"Bearer {raw}", HTTP_X_API_KEY=wrong)
    assert "invalid API key from" in caplog.text  # failures are logged, without the key
    for needle in (secret, wrong.split("_", 2)[2], raw[:20]):
        assert needle not in caplog.text


@pytest.mark.django_db
def test_keys_are_compared_in_constant_time_even_when_unknown(monkeypatch):
    issue_key("known")
    calls = []
    real = authentication.keys.matches
    monkeypatch.setattr(authentication.keys, "matches", lambda raw, stored: calls.append(stored) or real(raw, stored))
    compared = []
    real_digest = keys.hmac.compare_digest
    monkeypatch.setattr(keys.hmac, "compare_digest", lambda a, b: compared.append(1) or real_digest(a, b))
    Api("sck_ffffffffffff_" + "q" * 43).get("/api/v1/jobs/")  # well-formed, unknown prefix
    assert calls == ["0" * 64] and compared  # a hash was computed and compared all the same


@pytest.mark.django_db
def test_the_hash_is_keyed_not_a_plain_digest():
    import hashlib

    raw = issue_key("keyed")
    key = ApiKey.objects.get(name="keyed")
    assert key.key_hash != hashlib.sha256(raw.encode()).hexdigest()


@pytest.mark.django_db
def test_api_answers_carry_security_headers_and_no_tracebacks():
    raw = issue_key("headers")
    response = Api(raw).post("/api/v1/jobs/", raw="{not json")
    assert response.status_code == 400
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert "Traceback" not in response.content.decode()


@pytest.mark.django_db
def test_the_docs_and_schema_are_not_public():
    for path in ("/api/v1/schema/", "/api/v1/docs/", "/api/v1/redoc/"):
        assert Client().get(path).status_code in (401, 403, 404), path


@pytest.mark.django_db
def test_a_session_cannot_be_used_cross_site_to_write(django_user_model, scripts_root):
    default_slots()
    job = new_job(scripts_root, "csrf-target")
    client = Client(enforce_csrf_checks=True)
    client.force_login(django_user_model.objects.create_superuser("ops", "o@example.com", TEST_PASSWORD))
    assert client.post(f"/api/v1/jobs/{job.pk}/disable/", content_type="application/json").status_code == 403
    assert client.post(f"/jobs/{job.pk}/enabled/", {"enabled": "0"}).status_code == 403
    assert Job.objects.get(pk=job.pk).enabled


def test_templates_load_nothing_from_other_origins():
    for path in list((ROOT / "dashboard" / "templates").rglob("*.html")) + list(
            (ROOT / "api" / "templates").rglob("*.html")):
        text = path.read_text()
        assert not re.search(r'(src|href)="(https?:)?//', text), path


def run_manage(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SECRET_KEY", "ALLOWED_HOSTS", "SMARTCRON_"))}
    full.update(env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=120)


def production(tmp_path, **extra: str) -> dict[str, str]:
    return {"SMARTCRON_MODE": "production", "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "cron.example.com", "SMARTCRON_VAR_DIR": str(tmp_path), **extra}


def test_production_settings_with_the_api_pass_the_deploy_checks(tmp_path):
    result = run_manage(["check", "--deploy", "--fail-level", "WARNING"],
                        **production(tmp_path, SMARTCRON_API_KEY_PEPPER=secrets.token_urlsafe(48)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    env = production(tmp_path)
    del env["SECRET_KEY"]
    result = run_manage(["check"], **env)
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


def test_production_refuses_to_start_without_allowed_hosts(tmp_path):
    env = production(tmp_path)
    del env["ALLOWED_HOSTS"]
    result = run_manage(["check"], **env)
    assert result.returncode != 0 and "ALLOWED_HOSTS" in result.stderr


def test_a_short_api_key_pepper_is_refused(tmp_path):
    result = run_manage(["check"], **production(tmp_path, SMARTCRON_API_KEY_PEPPER="short"))
    assert result.returncode != 0 and "api.E001" in result.stderr
