"""Benchmark discover_jobs on a generated tree.

    .venv/bin/python bench/bench_discover.py [--files 10000 --scripts 1000] [--keep]

Generates a tree of ``--files`` files (``--scripts`` of them cron scripts of every
interpreter, the rest docs, data, binaries, vendored dependencies and VCS metadata)
in a temp dir, then measures:
- scan only (discovery.scanner.scan: walk, security checks, parsing; no database);
- discover_jobs with the database writes (a throwaway SQLite DB, migrated first);
- a second discover_jobs run (idempotent: everything unchanged).
Target: the full discovery under 10 s.  Exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 10.0

TEMPLATES = [
    ("{n}_backup.sh", "#!/bin/bash\n# Dump database {i} to the backup bucket.\n# cron: {m} 2 * * *\n"
                      "set -eu\nmysqldump db{i} | gzip > /srv/dumps/db{i}.sql.gz\n"),
    ("{n}_report.php", "<?php\n/**\n * Weekly sales report number {i}.\n * @schedule {m} 6 * * 1\n */\n"
                       "require 'bootstrap.php';\necho report({i});\n"),
    ("{n}_sync.py", '#!/usr/bin/env python3\n"""Import feed {i} from the partner API.\n\nruns every 15 minutes\n"""\n'
                    "import json\nprint(json.dumps({{'feed': {i}}}))\n"),
    ("{n}_cleanup.pl", "#!/usr/bin/perl\n# Purge temporary files of tenant {i}.\n# daily at 03:{m:02d}\nuse strict;\n"),
    ("{n}_check.rb", "#!/usr/bin/env ruby\n# Health probe {i}.\n# hourly\nputs 'ok'\n"),
    ("{n}_worker.js", "#!/usr/bin/env node\n// Drain mail queue {i}.\n// runs every 5 minutes\n"
                      "require('./q').drain();\n"),
    ("{n}_optimize", "#!/bin/sh\n# Optimize tables of shard {i}.\n# schedule: weekly on sunday at 04:00\n"
                     "mysqlcheck -o shard{i}\n"),
]
NOISE = [
    ("README{i}.md", "# Notes {i}\n\nSome documentation.\n"),
    ("config{i}.json", '{{"id": {i}}}\n'),
    ("data{i}.csv", "a,b,c\n1,2,3\n"),
    ("run{i}.log", "2024-01-01 started\n"),
    ("notes{i}", "plain text without a shebang {i}\n"),
    ("lib{i}.so", b"\x7fELF\x02\x01\x01\x00\x00\x00binary"),
]
IGNORED = [("node_modules/pkg{d}/cli{i}.js", "#!/usr/bin/env node\n// vendored\n"),
           (".git/objects/{d}/obj{i}", "blob {i}\n"),
           ("vendor/lib{d}/tool{i}.php", "<?php // vendored\n")]


def generate(root: Path, files: int, scripts: int, seed: int = 7) -> int:
    """Write the tree; returns the number of directories."""
    rng = random.Random(seed)
    dirs: set[Path] = set()

    def put(rel: str, content: str | bytes, mode: int) -> None:
        path = root / rel
        if path.parent not in dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            dirs.add(path.parent)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        os.chmod(path, mode)

    for i in range(files):
        app = f"app{i % 25:02d}"
        if i < scripts:
            name, body = TEMPLATES[i % len(TEMPLATES)]
            sub = ("cron", "cron/nightly", "cron/hourly/extra")[i % 3]
            put(f"{app}/{sub}/{name.format(n=f'job{i:05d}')}", body.format(i=i, m=rng.randrange(60)), 0o755)
        elif i % 10 == 0:
            rel, body = IGNORED[i % len(IGNORED)]
            put(f"{app}/{rel.format(d=i % 7, i=i)}", body.format(i=i), 0o644)
        else:
            rel, body = NOISE[i % len(NOISE)]
            content = body if isinstance(body, bytes) else body.format(i=i)
            put(f"{app}/{('docs', 'data', 'cron/logs')[i % 3]}/{rel.format(i=i)}", content, 0o644)
    return len(dirs)


def setup_django(tmp: Path, tree: Path) -> None:
    """A throwaway SQLite DB: the settings read these variables at import time."""
    os.environ["SMARTCRON_VAR_DIR"] = str(tmp / "var")
    os.environ["SMARTCRON_SCRIPT_ROOTS"] = str(tree)
    os.environ["SMARTCRON_DISCOVERY_ROOTS"] = str(tree)
    os.environ["DJANGO_SETTINGS_MODULE"] = "smartcron_project.settings"
    os.environ.pop("DATABASE_URL", None)  # never write into a real database
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(REPO))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def discover(*args: str) -> tuple[float, dict]:
    from django.core.management import call_command

    out = io.StringIO()
    started = time.perf_counter()
    call_command("discover_jobs", "--json", "--no-progress", *args, stdout=out, stderr=io.StringIO())
    return time.perf_counter() - started, json.loads(out.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000, help="files in the tree (default 10000)")
    parser.add_argument("--scripts", type=int, default=1_000, help="of which cron scripts (default 1000)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (printed) for inspection")
    args = parser.parse_args()
    if not 0 < args.scripts <= args.files:
        parser.error("--scripts must be between 1 and --files")

    tmp = Path(tempfile.mkdtemp(prefix="smartcron-bench-")).resolve()
    tree = tmp / "scripts"
    try:
        started = time.perf_counter()
        ndirs = generate(tree, args.files, args.scripts)
        print(f"tree:              {args.files} files ({args.scripts} scripts) in {ndirs} dirs, "
              f"generated in {time.perf_counter() - started:.2f} s  [{tree}]")
        setup_django(tmp, tree)
        from discovery import scanner

        started = time.perf_counter()
        result = scanner.scan([str(tree)])
        scan_s = time.perf_counter() - started
        print(f"scan only:         {scan_s:6.2f} s  {args.files / scan_s:9.0f} files/s  "
              f"({len(result.scripts)} scripts, {len(result.refused)} refused, {result.files_seen} files seen, "
              f"{result.dirs_pruned} dirs pruned)")
        first_s, first = discover()
        s = first["summary"]
        print(f"discover (create): {first_s:6.2f} s  {args.files / first_s:9.0f} files/s  "
              f"(new {s['new']}, errors {s['errors']}; scan {first['stats']['scan_seconds']:.2f} s, "
              f"db {first['stats']['register_seconds']:.2f} s)")
        second_s, second = discover()
        s = second["summary"]
        print(f"discover (rerun):  {second_s:6.2f} s  {args.files / second_s:9.0f} files/s  "
              f"(unchanged {s['unchanged']}, new {s['new']}, updated {s['updated']})")
        worst = max(first_s, second_s)
        ok = worst < TARGET_SECONDS and first["summary"]["new"] == args.scripts
        print(f"target:            full discovery < {TARGET_SECONDS:.0f} s: {'PASS' if ok else 'FAIL'} "
              f"(worst {worst:.2f} s)")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
