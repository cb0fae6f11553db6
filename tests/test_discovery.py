"""discover_jobs: scanner (pure logic), crontab mapping, registry and the command.

The fixture tree is generated in tmp_path at test time, because permissions,
ownership and setuid bits must be real.  Tests that chown to 'nobody' need root
(CI runs as root); they are skipped otherwise.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
from pathlib import Path

import jsonschema
import pytest
from django.core.management import CommandError, call_command

from discovery import crontab, scanner
from discovery.management.commands.discover_jobs import JSON_SCHEMA, SUMMARY_KEYS

NOBODY = 65534
IS_ROOT = os.geteuid() == 0
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")

# name -> (relative path, content, expected interpreter, category, priority, schedule)
SCRIPTS = {
    "backup": ("backup_db.sh",
               "#!/bin/bash\n# Dump the orders database to object storage.\n# cron: 0 2 * * *\nset -eu\n"
               "mysqldump orders | gzip > /srv/dumps/orders.sql.gz\n",
               "bash", "backup", "high", "0 2 * * *"),
    "report": ("reports/sales_summary.php",
               "<?php\n/**\n * Weekly sales figures for the finance team.\n *\n * @schedule 0 6 * * 1\n */\n"
               "require __DIR__ . '/bootstrap.php';\necho build_summary();\n",
               "php", "reporting", "low", "0 6 * * 1"),
    "sync": ("sync_products.py",
             '#!/usr/bin/env python3\n"""Import the product feed from the supplier API.\n\nruns every 15 minutes\n"""\n'
             "import json\nprint(json.dumps({}))\n",
             "python", "sync", "medium", "*/15 * * * *"),
    "cleanup": ("cleanup_uploads.pl",
                "#!/usr/bin/perl\n# Purge abandoned uploads older than a day.\n# daily at 02:30\nuse strict;\n",
                "perl", "cleanup", "low", "30 2 * * *"),
    "monitor": ("check_disk.rb",
                "#!/usr/bin/env ruby\n# Health probe: warn when the disk is nearly full.\n# hourly\nputs 'ok'\n",
                "ruby", "monitoring", "high", "0 * * * *"),
    "maintenance": ("maintenance/optimize_tables.sh",
                    "#!/bin/sh\n# Optimize the database tables.\n# schedule: weekly on sunday at 04:00\n"
                    "mysqlcheck -o --all-databases\n",
                    "sh", "maintenance", "medium", "0 4 * * 0"),
    "queue": ("queue_mailer.js",
              "#!/usr/bin/env node\n'use strict';\n// Drain the outgoing mail queue.\n// runs every 5 minutes\n"
              "require('./mailer').drain();\n",
              "node", "queue", "high", "*/5 * * * *"),
    "critical": ("payment_reconcile.sh",
                 "#!/bin/bash\n# Reconcile card payments with the bank statement.\nexit 0\n",
                 "bash", "other", "critical", None),
    "env_s": ("misc_task",
              "#!/usr/bin/env -S python3 -u\n# Does a miscellaneous thing.\nprint('x')\n",
              "python", "other", "medium", None),
    "zsh": ("tool.zsh", "#!/bin/zsh\n# A zsh helper.\necho hi\n", "executable", "other", "medium", None),
}


def write(path: Path, content: str | bytes, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    os.chmod(path, mode)
    return path


def build_tree(tmp_path: Path) -> dict[str, Path]:
    """Real scripts of every kind, noise that must be ignored, and one file per refusal reason."""
    root = tmp_path / "scripts"
    paths = {key: write(root / rel, content) for key, (rel, content, *_) in SCRIPTS.items()}
    # Noise: not scripts, or in ignored places.
    write(root / "README.md", "# Scripts\n", 0o644)
    write(root / "data.json", "{}", 0o644)
    write(root / "notes", "just some notes, no shebang\n", 0o644)
    write(root / "compiled.sh", b"\x7fELF\x00\x00binary", 0o755)
    write(root / "node_modules/pkg/cli.js", "#!/usr/bin/env node\n// not ours\n")
    write(root / ".git/hooks/pre-commit", "#!/bin/sh\n# git hook\n")
    write(root / "backups/backup_db.sh", "#!/bin/bash\n# an old copy\n")
    write(root / "backup_db.sh~", "#!/bin/bash\n# editor backup\n")
    write(root / ".backup_db.sh.swp", "#!/bin/bash\n# vim swap\n")
    # Refusals, one per reason.
    paths["world_writable"] = write(root / "open.sh", "#!/bin/sh\necho\n", 0o777)
    paths["setuid"] = write(root / "suid.sh", "#!/bin/sh\necho\n", 0o4755)
    paths["ww_dir_script"] = write(root / "shared/inner.sh", "#!/bin/sh\necho\n")
    os.chmod(root / "shared", 0o777)
    paths["dash"] = write(root / "-rf.sh", "#!/bin/sh\necho\n")
    paths["control"] = write(root / "bad\x01name.sh", "#!/bin/sh\necho\n")
    outside = write(tmp_path / "outside/evil.sh", "#!/bin/sh\necho evil\n")
    paths["escape"] = root / "escape.sh"
    paths["escape"].symlink_to(outside)
    paths["broken"] = root / "broken.sh"
    paths["broken"].symlink_to(root / "nowhere.sh")
    (root / "alias.sh").symlink_to(paths["backup"])  # inside the root: same job as its target
    paths["fifo"] = root / "pipe.sh"
    os.mkfifo(paths["fifo"])
    if IS_ROOT:
        paths["foreign"] = write(root / "foreign.sh", "#!/bin/sh\necho\n")
        os.chown(paths["foreign"], NOBODY, NOBODY)
    # A discovery root that is not a script root.
    paths["not_allowed"] = write(tmp_path / "elsewhere/other.sh", "#!/bin/sh\n# elsewhere\n")
    return paths


@pytest.fixture
def tree(tmp_path, settings) -> dict[str, Path]:
    paths = build_tree(tmp_path)
    settings.SCRIPT_ROOTS = [str(tmp_path / "scripts")]
    settings.DISCOVERY_ROOTS = [str(tmp_path / "scripts"), str(tmp_path / "elsew*")]
    return paths


@pytest.fixture
def slots(db):
    from slots.models import ensure_default_slots

    ensure_default_slots()


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("discover_jobs", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def run_json(*args: str) -> dict:
    out, _ = run("--json", *args)
    doc = json.loads(out)
    jsonschema.validate(doc, JSON_SCHEMA)
    return doc


def job_for(path: Path):
    from jobs.models import Job

    return Job.objects.get(script_path=str(path.resolve()))


# --- scanner: pure logic, no database ----------------------------------------------------------
@pytest.mark.parametrize(("text", "cron"), [
    ("runs every 15 minutes", "*/15 * * * *"),
    ("Runs every minute", "* * * * *"),
    ("every 2 hours", "0 */2 * * *"),
    ("hourly", "0 * * * *"),
    ("hourly at :15", "15 * * * *"),
    ("daily at 02:30", "30 2 * * *"),
    ("Nightly at 3am, after the dump", "0 3 * * *"),
    ("runs daily at 11:45 pm", "45 23 * * *"),
    ("every monday at 06:00", "0 6 * * 1"),
    ("weekdays at 07:15", "15 7 * * 1-5"),
    ("weekly on friday at 18:00", "0 18 * * 5"),
    ("monthly on the 15th at noon", "0 12 15 * *"),
    ("Daily report of sales", None),
    ("Every hour or so we poke the API", None),
    ("Heartbeat: proves the scheduler is alive.", None),
])
def test_natural_schedules(text, cron):
    assert scanner.parse_natural(text)[0] == cron


def test_natural_schedule_timezone_and_bad_time():
    assert scanner.parse_natural("daily at 02:30 Europe/Paris") == ("30 2 * * *", "Europe/Paris")
    with pytest.raises(scanner.ScheduleError):
        scanner.parse_natural("runs daily at 25:00")


@pytest.mark.parametrize(("line", "expected"), [
    ("#!/usr/bin/php", "php"), ("#!/usr/bin/env php8.2", "php"), ("#!/bin/bash", "bash"), ("#!/bin/sh", "sh"),
    ("#!/bin/dash", "sh"), ("#!/usr/bin/python3", "python"), ("#!/usr/bin/env -S python3 -u", "python"),
    ("#!/usr/bin/env node", "node"), ("#!/usr/bin/perl -w", "perl"), ("#!/usr/bin/env ruby", "ruby"),
    ("#!/bin/zsh", "executable"), ("#!", "executable"),
])
def test_shebang_interpreters(line, expected):
    assert scanner.interpreter_from_shebang(line) == expected


def test_scan_decisions(tree, tmp_path):
    result = scanner.scan([str(tmp_path / "scripts")])
    found = {s.script_path: s for s in result.scripts}
    for key, (_rel, _content, interpreter, category, priority, schedule) in SCRIPTS.items():
        script = found[str(tree[key].resolve())]
        assert (script.interpreter, script.category, script.priority, script.schedule) == \
               (interpreter, category, priority, schedule), key
        assert NAME_RE.match(script.name) and script.description
        assert {"interpreter", "category", "priority", "slot", "schedule"} <= set(script.reasons)
    assert found[str(tree["report"])].description == "Weekly sales figures for the finance team."
    assert found[str(tree["report"])].name == "reports.sales_summary.php"
    assert found[str(tree["sync"])].description == "Import the product feed from the supplier API."
    # Resources: a backup is heavy, a short monitoring probe is light.
    assert found[str(tree["backup"])].slot == "heavy"
    assert found[str(tree["monitor"])].slot == "light"
    assert found[str(tree["monitor"])].timeout_seconds < found[str(tree["backup"])].timeout_seconds
    # Nothing from ignored places, no data files, no binary, the in-root symlink only once.
    assert len(result.scripts) == len(SCRIPTS)
    assert not any(part in s.path for s in result.scripts for part in ("node_modules", ".git", "backups", "~"))


def test_scan_refusals(tree, tmp_path):
    result = scanner.scan([str(tmp_path / "scripts"), str(tmp_path / "elsewhere")])
    codes = {r.path: r.codes for r in result.refused}
    expected = {
        "world_writable": "world_writable", "setuid": "setuid", "ww_dir_script": "world_writable_dir",
        "dash": "unsafe_name", "control": "unsafe_name", "escape": "symlink_escapes_root",
        "broken": "broken_symlink", "fifo": "not_regular_file", "not_allowed": "outside_script_roots",
    }
    if IS_ROOT:
        expected["foreign"] = "foreign_owner"
    for key, code in expected.items():
        assert code in codes[str(tree[key])], (key, codes.get(str(tree[key])))
    assert all(r.reasons and len(r.reasons) == len(r.codes) for r in result.refused)
    # A refusal never stops the scan.
    assert len(result.scripts) == len(SCRIPTS)


def test_job_names_are_valid_and_distinct(settings, tmp_path):
    settings.SCRIPT_ROOTS = [str(tmp_path)]
    names = {scanner.job_name_for(str(tmp_path / p), [str(tmp_path)])
             for p in ("a/b.sh", "a.b.sh", "sp ace.sh", "_x.sh", "é.sh", "x" * 300 + ".sh")}
    assert all(NAME_RE.match(n) and len(n) <= 200 for n in names)
    assert scanner.job_name_for(str(tmp_path / "app/cron/backup.sh"), [str(tmp_path)]) == "app.cron.backup.sh"
    # "a/b.sh" and "a.b.sh" collide on the plain name; finalize() disambiguates them.
    write(tmp_path / "a/b.sh", "#!/bin/sh\n")
    write(tmp_path / "a.b.sh", "#!/bin/sh\n")
    result = scanner.scan([str(tmp_path)], scanner.ScanOptions.from_settings())
    assert len({s.name for s in result.scripts}) == 2


def test_scan_depth_and_ignore_options(tree, tmp_path):
    opts = scanner.ScanOptions.from_settings(max_depth=0, ignore=("check_*",))
    result = scanner.scan([str(tmp_path / "scripts")], opts)
    names = {os.path.basename(s.path) for s in result.scripts}
    assert "sales_summary.php" not in names  # one level down
    assert "check_disk.rb" not in names  # ignored by pattern
    assert "backup_db.sh" in names


def test_only_head_is_read_and_lines_estimated(tmp_path, settings):
    settings.SCRIPT_ROOTS = [str(tmp_path)]
    write(tmp_path / "big_export.py", "#!/usr/bin/env python3\n# Export everything.\n" + "x = 1\n" * 40000)
    (script,) = scanner.scan([str(tmp_path)]).scripts
    assert script.lines_estimated and 35000 < script.lines < 45000
    assert script.slot == "heavy"


# --- crontab parsing ------------------------------------------------------------------------------
@pytest.mark.parametrize(("command", "script", "args", "cwd", "interpreter"), [
    ("/opt/s/backup.sh --full >> /var/log/b.log 2>&1", "/opt/s/backup.sh", ["--full"], None, None),
    ("cd /srv/app && php artisan schedule:run > /dev/null", "artisan", ["schedule:run"], "/srv/app", "php"),
    ("flock -n /tmp/x.lock /usr/bin/python3 -u /opt/s/sync.py --since 1h", "/opt/s/sync.py", ["--since", "1h"],
     None, "python"),
    ("nice -n 10 ionice -c3 timeout 3600 /opt/a.sh arg", "/opt/a.sh", ["arg"], None, None),
    ("bash -c 'cd /opt/q && ./run.sh'", "./run.sh", [], "/opt/q", None),
    ("FOO=bar /opt/env.sh 2>/dev/null | logger -t x", "/opt/env.sh", [], None, None),
    ("/usr/bin/php -d memory_limit=1G -f /var/www/cron.php", "/var/www/cron.php", [], None, "php"),
    ("python3 -m app.tasks", None, [], None, None),
    ("run-parts /etc/cron.daily", None, [], None, None),
])
def test_split_command(command, script, args, cwd, interpreter):
    parsed = crontab.split_command(command)
    assert parsed.script == script
    if script:
        assert (parsed.args, parsed.cwd, parsed.interpreter) == (args, cwd, interpreter)
    else:
        assert parsed.reason


def test_parse_crontab_lines():
    text = (
        "SHELL=/bin/bash\nMAILTO=ops@example.com\nCRON_TZ=Europe/Paris\nAPP_ENV = \"prod\"\n"
        "*/5 * * * * /opt/a.sh%stdin\n@daily /opt/b.sh\n@reboot /opt/c.sh\n61 * * * * /opt/d.sh\n"
        "0 1 * * * ./relative.sh\nnot a cron line\n"
    )
    entries = crontab.parse_crontab(text, "user")
    assert [(e.status, e.schedule) for e in entries] == [
        ("mapped", "*/5 * * * *"), ("mapped", "0 0 * * *"), ("unsupported", None), ("invalid", None),
        ("unmapped", "0 1 * * *"), ("invalid", None),
    ]
    assert entries[0].timezone == "Europe/Paris" and entries[0].environment["APP_ENV"] == "prod"
    assert entries[0].command == "/opt/a.sh"
    system = crontab.parse_crontab("0 4 * * * www-data /usr/bin/php /var/www/cron.php\n", "cron.d/app", system=True)
    assert (system[0].user, system[0].script, system[0].interpreter) == ("www-data", "/var/www/cron.php", "php")


# --- the command against the database ---------------------------------------------------------------
@pytest.mark.django_db
def test_discover_registers_jobs(tree, slots):
    from jobs.models import Job

    out, _ = run()
    assert "discover_jobs: found" in out.strip().splitlines()[-1]
    assert Job.objects.count() == len(SCRIPTS)
    for key, (_rel, _content, interpreter, category, priority, schedule) in SCRIPTS.items():
        job = job_for(tree[key])
        assert (job.interpreter, job.category, job.priority) == (interpreter, category, priority)
        assert job.auto_discovered and not job.enabled and job.status == Job.Status.TESTING
        if schedule:
            assert (job.schedule_type, job.cron_expression) == ("cron", schedule)
        else:
            assert job.schedule_type == "manual"
    assert job_for(tree["backup"]).slot.name == "heavy"
    assert job_for(tree["monitor"]).slot.name == "light"


@pytest.mark.django_db
def test_rerun_is_idempotent(tree, slots):
    from jobs.models import Job

    first = run_json()
    assert first["summary"]["new"] == len(SCRIPTS)
    before = list(Job.objects.order_by("pk").values())
    second = run_json()
    assert {k: second["summary"][k] for k in ("new", "updated", "unchanged")} == \
           {"new": 0, "updated": 0, "unchanged": len(SCRIPTS)}
    assert list(Job.objects.order_by("pk").values()) == before


@pytest.mark.django_db
def test_hand_edited_fields_are_kept(tree, slots):
    run()
    job = job_for(tree["backup"])
    job.priority = "low"
    job.cron_expression = "15 1 * * *"
    job.mark_manual(["priority", "cron_expression"])
    job.save()
    # The script changes: new description, new schedule comment, new category keyword.
    write(tree["backup"], "#!/bin/bash\n# Archive snapshot of the orders database.\n# cron: 0 3 * * *\n")
    doc = run_json()
    (outcome,) = [j for j in doc["jobs"] if j["script_path"] == str(tree["backup"])]
    assert outcome["action"] == "updated"
    assert {"priority", "cron_expression"} <= set(outcome["kept_manual"])
    assert "description" in outcome["changes"]
    job.refresh_from_db()
    assert (job.priority, job.cron_expression) == ("low", "15 1 * * *")
    assert job.description == "Archive snapshot of the orders database."


@pytest.mark.django_db
def test_job_registered_by_hand_is_skipped(tree, slots):
    from jobs.models import Job
    from slots.models import ExecutionSlot

    manual = Job(name="orders-dump", script_path=str(tree["backup"]), slot=ExecutionSlot.objects.get(name="default"),
                 schedule_type="manual", description="mine", priority="low")
    manual.full_clean()
    manual.save()
    doc = run_json()
    (outcome,) = [j for j in doc["jobs"] if j["script_path"] == str(tree["backup"])]
    assert outcome["action"] == "skipped" and "manually configured" in outcome["reason"]
    assert doc["summary"]["skipped"] == 1
    manual.refresh_from_db()
    assert (manual.description, manual.priority, manual.auto_discovered) == ("mine", "low", False)
    assert Job.objects.filter(script_path=str(tree["backup"])).count() == 1


@pytest.mark.django_db
def test_name_taken_by_another_job_gets_a_path_hash(tree, slots):
    from jobs.models import Job
    from slots.models import ExecutionSlot

    other = Job(name="backup_db.sh", script_path=str(tree["cleanup"]), schedule_type="manual",
                slot=ExecutionSlot.objects.get(name="default"))
    other.full_clean()
    other.save()
    run()
    job = job_for(tree["backup"])
    assert job.name.startswith("backup_db.sh-") and NAME_RE.match(job.name)
    other.refresh_from_db()
    assert other.name == "backup_db.sh" and not other.auto_discovered


@pytest.mark.django_db
def test_disappeared_script_is_reported_not_deleted(tree, slots):
    run()
    tree["cleanup"].unlink()
    doc = run_json()
    assert doc["summary"]["missing"] == 1
    assert doc["missing"][0]["newly_missing"] is True
    job = job_for(tree["cleanup"])
    assert job.script_missing
    again = run_json()
    assert again["missing"][0]["newly_missing"] is False
    write(tree["cleanup"], SCRIPTS["cleanup"][1])
    back = run_json()
    (outcome,) = [j for j in back["jobs"] if j["script_path"] == str(tree["cleanup"])]
    assert outcome["changes"]["script_missing"] == {"old": True, "new": False}
    job.refresh_from_db()
    assert not job.script_missing


@pytest.mark.django_db
def test_dry_run_writes_nothing_and_enable(tree, slots):
    from jobs.models import Job

    out, _ = run("--dry-run")
    assert "dry run" in out and Job.objects.count() == 0
    run("--enable")
    job = job_for(tree["sync"])
    assert job.enabled and job.status == Job.Status.ACTIVE


@pytest.mark.django_db
def test_refusals_reported_and_counted(tree, slots):
    doc = run_json()
    refused = {r["path"]: r["codes"] for r in doc["refused"]}
    assert "outside_script_roots" in refused[str(tree["not_allowed"])]
    assert "symlink_escapes_root" in refused[str(tree["escape"])]
    assert doc["summary"]["refused"] == len(doc["refused"]) >= 9
    out, _ = run()
    assert "refused" in out and "world-writable file" in out
    # File names cannot drive the operator's terminal: control characters are escaped.
    assert "bad\\x01name.sh" in out and "\x01" not in out


@pytest.mark.django_db
def test_crontab_mapping(tree, slots, tmp_path):
    from jobs.models import Job

    user_tab = write(tmp_path / "user.crontab", (
        "PATH=/usr/bin:/bin\nAPP_ENV=prod\n"
        f"*/10 * * * * cd {tree['sync'].parent} && /usr/bin/python3 sync_products.py --full >> /tmp/s.log 2>&1\n"
        f"0 5 * * * {tree['sync']}\n"  # a second entry for the same script
        "0 0 * * * run-parts /etc/cron.daily\n"
        f"0 1 * * * {tree['world_writable']}\n"
    ), 0o644)
    cron_d = tmp_path / "cron.d"
    write(cron_d / "app", f"30 4 * * * root {tree['critical']} --commit\n", 0o644)
    write(cron_d / "ignored.dpkg-old", f"30 4 * * * root {tree['zsh']}\n", 0o644)
    doc = run_json("--crontab-file", str(user_tab), "--cron-dir", str(cron_d))
    by_status = {}
    for entry in doc["crontab"]["entries"]:
        by_status.setdefault(entry["status"], []).append(entry)
    assert {e["line"] for e in by_status["mapped"]} == {3, 1}
    assert len(by_status["duplicate"]) == 1 and len(by_status["unmapped"]) == 1
    assert len(by_status["refused"]) == 1 and "world-writable" in by_status["refused"][0]["reason"]
    assert len(doc["crontab"]["sources"]) == 2  # the .dpkg-old file is skipped like cron does

    sync = job_for(tree["sync"])
    assert (sync.cron_expression, sync.args, sync.working_dir) == ("*/10 * * * *", "--full", str(tree["sync"].parent))
    assert sync.environment == {"PATH": "/usr/bin:/bin", "APP_ENV": "prod"}
    critical = job_for(tree["critical"])
    assert (critical.schedule_type, critical.cron_expression, critical.args) == ("cron", "30 4 * * *", "--commit")
    # The crontab wins over the comment; re-running changes nothing.
    again = run_json("--crontab-file", str(user_tab), "--cron-dir", str(cron_d))
    assert again["summary"]["new"] == again["summary"]["updated"] == 0
    assert Job.objects.count() == len(SCRIPTS)


@pytest.mark.django_db
def test_crontab_command_is_injectable(tree, slots, tmp_path):
    tab = write(tmp_path / "tab", f"0 7 * * * {tree['zsh']}\n", 0o644)
    doc = run_json("--crontab", "--crontab-command", f"cat {tab}", "--no-system-crontabs")
    assert doc["crontab"]["sources"][0]["source"] == f"cat {tab}"
    assert job_for(tree["zsh"]).cron_expression == "0 7 * * *"
    missing = run_json("--crontab", "--crontab-command", "/nonexistent/crontab -l", "--no-system-crontabs")
    assert missing["crontab"]["sources"][0]["status"] == "unavailable"


@pytest.mark.django_db
def test_crontab_script_outside_discovery_roots(tree, slots, tmp_path, settings):
    extra = write(tmp_path / "scripts/deep/a/b/c/d/e/f/g/h/i/j/poll_feed.sh", "#!/bin/sh\n# Poll the feed.\n")
    tab = write(tmp_path / "tab", f"*/2 * * * * {extra}\n", 0o644)
    doc = run_json("--crontab-file", str(tab), "--no-system-crontabs", "--max-depth", "2")
    assert doc["crontab"]["entries"][0]["status"] == "mapped"
    assert job_for(extra).cron_expression == "*/2 * * * *"


@pytest.mark.django_db
def test_crontab_path_through_linked_directory(tree, slots, tmp_path):
    linked = tmp_path / "linked"
    linked.symlink_to(tmp_path / "scripts")
    # backups/ is pruned by the walk, so only the crontab leads to this file.
    tab = write(tmp_path / "tab", f"5 5 * * * {linked / 'backups' / 'backup_db.sh'}\n", 0o644)
    doc = run_json("--crontab-file", str(tab), "--no-system-crontabs")
    assert doc["crontab"]["entries"][0]["status"] == "mapped"
    job = job_for(tmp_path / "scripts" / "backups" / "backup_db.sh")  # stored resolved
    assert job.cron_expression == "5 5 * * *"
    assert run_json("--crontab-file", str(tab), "--no-system-crontabs")["summary"]["new"] == 0


@pytest.mark.django_db
def test_bad_data_is_an_error_not_a_crash(tree, slots):
    write(tree["zsh"], "#!/bin/zsh\n# A zsh helper.\n# slot: gpu\n")
    doc = run_json()
    (outcome,) = [j for j in doc["jobs"] if j["script_path"] == str(tree["zsh"])]
    assert outcome["action"] == "error" and "gpu" in outcome["error"]
    assert doc["summary"]["errors"] == 1
    assert doc["summary"]["new"] == len(SCRIPTS) - 1


@pytest.mark.django_db
def test_json_schema_and_summary(tree, slots):
    doc = run_json("--dry-run")
    assert doc["schema_version"] == 1 and doc["dry_run"] is True
    assert list(doc["summary"]) == list(SUMMARY_KEYS)
    assert doc["summary"]["found"] == len(SCRIPTS)
    new = [j for j in doc["jobs"] if j["action"] == "new"]
    assert new and all(j["script"]["reasons"]["category"] for j in new)
    assert {r["status"] for r in doc["roots"]} == {"ok"}
    assert doc["stats"]["files_seen"] > len(SCRIPTS)


@pytest.mark.django_db
def test_verbose_and_progress(tree, slots):
    out, err = run("--verbose", "--progress", "--dry-run")
    assert "category" in out and "score" in out and "priority" in out
    assert "inspect" in err


@pytest.mark.django_db
def test_bad_path_is_a_command_error(tree, slots, tmp_path):
    with pytest.raises(CommandError, match="does-not-exist.*does not exist"):
        run("--path", str(tmp_path / "does-not-exist"))
    with pytest.raises(CommandError, match="outside the allowed script roots"):
        run("--path", str(tmp_path / "elsewhere"))
    with pytest.raises(CommandError, match="not a directory"):
        run("--path", str(tree["backup"]))
    out, _ = run("--path", str(tmp_path / "scripts" / "reports"))
    assert "found 1," in out


def test_world_writable_sticky_parent_above_root_is_tolerated(tmp_path, settings):
    """/tmp-like parents (sticky, world-writable) above the root do not refuse everything."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    root = sticky / "root"
    write(root / "ok.sh", "#!/bin/sh\n")
    settings.SCRIPT_ROOTS = [str(root)]
    result = scanner.scan([str(root)])
    assert [os.path.basename(s.path) for s in result.scripts] == ["ok.sh"]
    os.chmod(sticky, 0o777)  # without the sticky bit anyone could swap the root away
    assert scanner.scan([str(root)]).refused[0].codes == ["world_writable_dir"]
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o755
