"""Read crontabs and map each entry to the script it calls.

Understands user crontabs (``crontab -l``: five fields + command) and system files
(``/etc/cron.d/*``, ``/etc/crontab``: five fields + user + command), ``@aliases``,
environment assignments (``PATH=...``, ``CRON_TZ=...``), ``%`` (stdin) in commands,
``cd /x && php script.php`` forms, wrappers (``nice``, ``flock``, ``timeout``, ``env``,
``sh -c '...'``) and redirections (``>> log 2>&1``).

Pure logic except for reading the crontab sources; merging into a scan result reuses
the scanner's security checks, so a crontab can never register a script the scanner
would refuse.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from discovery import scanner
from jobs.schedule import ALIASES, ScheduleError, normalize_cron, validate_timezone

_ENV_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
_ASSIGN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Debian's cron ignores /etc/cron.d files whose names contain anything else (dots
# included, so that package leftovers like foo.dpkg-old never run); so do we.
_CRON_D_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_INTERPRETER_RE = re.compile(r"^(php|python|bash|sh|dash|node|nodejs|perl|ruby)[\d.]*$")
_INTERPRETER_NAMES = {"dash": "sh", "nodejs": "node"}
# Options that take a value, per interpreter (so the value is not taken for the script).
_INTERPRETER_OPTIONS = {
    "php": {"-d", "-c", "-z"}, "python": {"-W", "-X", "-Q"}, "node": {"-r", "--require", "--import"},
    "perl": set(), "ruby": {"-I", "-r", "-E"}, "bash": {"-o", "-O"}, "sh": {"-o"},
}
# Wrapper commands: (options that take a value, number of positional words before the command).
_WRAPPERS: dict[str, tuple[set[str], int]] = {
    "nice": ({"-n", "--adjustment"}, 0),
    "ionice": ({"-c", "-n", "-p", "--class", "--classdata"}, 0),
    "nohup": (set(), 0),
    "exec": (set(), 0),
    "chronic": (set(), 0),
    "cronic": (set(), 0),
    "time": ({"-f", "-o", "--format", "--output"}, 0),
    "timeout": ({"-s", "--signal", "-k", "--kill-after"}, 1),
    "flock": ({"-w", "--wait", "--timeout", "-E", "--conflict-exit-code"}, 1),
    "setlock": (set(), 1),
    "run-one": (set(), 0),
    "sudo": ({"-u", "-g", "--user", "--group", "-C", "-h"}, 0),
    "env": ({"-u", "--unset", "-C", "--chdir"}, 0),
}
_SEPARATORS = {"&&", "||", ";", "|", "&", "|&", ";;", "(", ")"}
# Variables that configure cron itself rather than the job.
_CRON_ONLY_ENV = {
    "MAILTO", "MAILFROM", "SHELL", "CRON_TZ", "HOME", "LOGNAME", "USER", "RANDOM_DELAY", "START_HOURS_RANGE",
    "CONTENT_TYPE", "CONTENT_TRANSFER_ENCODING",
}


@dataclass
class CrontabEntry:
    """One schedule line and what it maps to."""

    source: str
    line: int
    raw: str
    schedule: str | None = None
    user: str | None = None
    command: str = ""
    timezone: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    script: str | None = None
    interpreter: str | None = None
    args: str = ""
    working_dir: str = ""
    # mapped | unmapped | invalid | unsupported | refused | duplicate | error
    status: str = "mapped"
    reason: str = ""
    job_name: str | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CrontabSource:
    """A crontab that was read (or could not be), for the report."""

    source: str
    kind: str  # user | system
    status: str  # ok | empty | unavailable
    message: str = ""
    entries: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Command:
    script: str | None = None
    interpreter: str | None = None
    args: list[str] = field(default_factory=list)
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    reason: str = ""


# --- parsing ------------------------------------------------------------------------------
def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _cut_percent(command: str) -> str:
    r"""Cron turns an unescaped % into a newline and feeds the rest to stdin; keep the command part."""
    out = []
    i = 0
    while i < len(command):
        ch = command[i]
        if ch == "\\" and i + 1 < len(command) and command[i + 1] == "%":
            out.append("%")
            i += 2
            continue
        if ch == "%":
            break
        out.append(ch)
        i += 1
    return "".join(out).strip()


def parse_crontab(text: str, source: str, *, system: bool = False) -> list[CrontabEntry]:
    """Parse a crontab; ``system`` files have a user field after the schedule."""
    entries: list[CrontabEntry] = []
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if m := _ENV_RE.match(line):
            env[m.group(1)] = _unquote(m.group(2))
            continue
        entries.append(_parse_line(line, source, number, dict(env), system))
    return entries


def _parse_line(line: str, source: str, number: int, env: dict[str, str], system: bool) -> CrontabEntry:
    entry = CrontabEntry(source=source, line=number, raw=line, environment=env)
    if line.startswith("@"):
        alias, _, rest = line.partition(" ")
        if alias == "@reboot":
            entry.status, entry.reason = "unsupported", "@reboot is not a recurring schedule"
            return entry
        if alias not in ALIASES:
            entry.status, entry.reason = "invalid", f"unknown alias {alias}"
            return entry
        schedule, rest = ALIASES[alias], rest.strip()
    else:
        parts = line.split(None, 5)
        if len(parts) < 6:
            entry.status, entry.reason = "invalid", "expected five schedule fields and a command"
            return entry
        schedule, rest = " ".join(parts[:5]), parts[5]
    try:
        entry.schedule = normalize_cron(schedule)
    except ScheduleError as exc:
        entry.status, entry.reason = "invalid", str(exc)
        return entry
    if system:
        user, _, rest = rest.strip().partition(" ")
        entry.user = user
    entry.command = _cut_percent(rest)
    tz = env.get("CRON_TZ")
    if tz:
        try:
            validate_timezone(tz)
            entry.timezone = tz
        except ScheduleError as exc:
            entry.status, entry.reason = "invalid", f"CRON_TZ: {exc}"
            return entry
    _map_entry(entry)
    return entry


def _map_entry(entry: CrontabEntry) -> None:
    parsed = split_command(entry.command)
    if parsed.script is None:
        entry.status, entry.reason = "unmapped", parsed.reason
        return
    script = parsed.script
    home = entry.environment.get("HOME")
    if script.startswith("~/") and home:
        script = os.path.join(home, script[2:])
    if not os.path.isabs(script):
        base = parsed.cwd or home
        if not base or not os.path.isabs(base):
            entry.status = "unmapped"
            entry.reason = f"relative script path {script!r} without an absolute 'cd': cron runs it from the " \
                           "user's home directory"
            return
        script = os.path.join(base, script)
    entry.script = os.path.normpath(script)
    entry.interpreter = parsed.interpreter
    entry.args = shlex.join(parsed.args)
    entry.working_dir = parsed.cwd or ""
    entry.environment.update(parsed.env)


def _tokens(command: str) -> list[str]:
    lex = shlex.shlex(command, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def _segments(tokens: list[str]) -> list[list[str]]:
    """Split on command separators and drop redirections (``>> log 2>&1``, ``< in``)."""
    segments: list[list[str]] = [[]]
    skip_next = False
    for tok in tokens:
        if skip_next:
            skip_next = False
            continue
        if tok in _SEPARATORS:
            segments.append([])
            continue
        if tok and set(tok) <= set("<>&") and ("<" in tok or ">" in tok):
            current = segments[-1]
            # "2>&1" arrives as "2", ">&", "1": the digit is a file descriptor, not an argument.
            if current and current[-1].isdigit():
                current.pop()
            skip_next = True
            continue
        segments[-1].append(tok)
    return [s for s in segments if s]


def _skip_options(words: list[str], takes_value: set[str]) -> list[str]:
    i = 0
    while i < len(words) and words[i].startswith("-") and words[i] != "-":
        if words[i] == "--":
            return words[i + 1:]
        i += 2 if words[i] in takes_value else 1
    return words[i:]


def split_command(command: str) -> _Command:
    """Find the script a cron command runs, its arguments, directory and interpreter."""
    try:
        tokens = _tokens(command)
    except ValueError as exc:
        return _Command(reason=f"cannot parse the command: {exc}")
    cwd: str | None = None
    env: dict[str, str] = {}
    last_reason = "no command"
    for words in _segments(tokens):
        if words[0] == "cd":
            cwd = words[1] if len(words) > 1 else None
            continue
        found = _script_of(words, env)
        if found.script or found.reason.startswith("inline"):
            found.cwd = found.cwd or cwd
            found.env = {**env, **found.env}
            return found
        last_reason = found.reason
    return _Command(reason=last_reason)


def _script_of(words: list[str], env: dict[str, str]) -> _Command:
    """The script one simple command runs, looking through wrappers and interpreters."""
    while words:
        while words and _ASSIGN_RE.match(words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        if not words:
            break
        prog = os.path.basename(words[0])
        if prog in _WRAPPERS:
            if prog == "flock" or prog == "sudo":
                inner = _dash_c(words[1:])
                if inner is not None:
                    return split_command(inner)
            takes_value, positional = _WRAPPERS[prog]
            words = _skip_options(words[1:], takes_value)[positional:]
            continue
        if m := _INTERPRETER_RE.match(prog):
            name = _INTERPRETER_NAMES.get(m.group(1), m.group(1))
            inner = _dash_c(words[1:]) if name in ("bash", "sh") else None
            if inner is not None:
                return split_command(inner)
            rest = words[1:]
            if name == "php" and "-f" in rest:
                rest = rest[rest.index("-f") + 1:]
            if name == "python" and any(w in ("-m", "-c") for w in rest):
                return _Command(reason="inline: 'python -m/-c' runs a module or inline code, not a script file")
            if name == "node" and any(w in ("-e", "--eval", "-p") for w in rest):
                return _Command(reason="inline: 'node -e' runs inline code, not a script file")
            rest = _skip_options(rest, _INTERPRETER_OPTIONS.get(name, set()))
            if not rest:
                return _Command(reason=f"{prog} is called without a script")
            return _Command(script=rest[0], interpreter=name, args=rest[1:])
        if "/" in words[0]:
            return _Command(script=words[0], args=words[1:])
        return _Command(reason=f"calls the command {words[0]!r}, not a script path")
    return _Command(reason="no command")


def _dash_c(words: list[str]) -> str | None:
    """The command string of ``-c 'cmd'`` (bash, sh, flock), if present."""
    for i, word in enumerate(words[:-1]):
        if word in ("-c", "--command"):
            return words[i + 1]
    return None


# --- reading sources ----------------------------------------------------------------------
def read_user_crontab(command: Sequence[str] | None = None, file: str | None = None,
                      timeout: float = 10.0) -> tuple[str, CrontabSource]:
    """The current user's crontab, from ``file`` when given, else by running ``command`` (crontab -l)."""
    if file is not None:
        with open(file, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        return text, CrontabSource(file, "user", "ok" if text.strip() else "empty")
    argv = list(command or ["crontab", "-l"])
    label = " ".join(argv)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return "", CrontabSource(label, "user", "unavailable", f"{argv[0]} not found")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", CrontabSource(label, "user", "unavailable", str(exc))
    if proc.returncode != 0:
        message = proc.stderr.strip() or f"exit status {proc.returncode}"
        # "no crontab for <user>" is the normal answer of a user without a crontab.
        status = "empty" if "no crontab" in message.lower() else "unavailable"
        return "", CrontabSource(label, "user", status, message)
    return proc.stdout, CrontabSource(label, "user", "ok" if proc.stdout.strip() else "empty")


def read_system_crontabs(path: str) -> list[tuple[str, CrontabSource]]:
    """The files of an /etc/cron.d style directory (or one system crontab file)."""
    if os.path.isfile(path):
        files = [path]
    else:
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            return [("", CrontabSource(path, "system", "unavailable", exc.strerror or str(exc)))]
        files = [os.path.join(path, n) for n in names if _CRON_D_NAME_RE.match(n)]
    out: list[tuple[str, CrontabSource]] = []
    for file in files:
        if not os.path.isfile(file):
            continue
        try:
            with open(file, encoding="utf-8", errors="replace") as fh:
                text = fh.read(1024 * 1024)
        except OSError as exc:
            out.append(("", CrontabSource(file, "system", "unavailable", exc.strerror or str(exc))))
            continue
        out.append((text, CrontabSource(file, "system", "ok" if text.strip() else "empty")))
    return out


# --- merging into a scan ---------------------------------------------------------------------
def apply_entries(result: scanner.ScanResult, entries: list[CrontabEntry],
                  opts: scanner.ScanOptions) -> None:
    """Give scripts their crontab schedule; scripts only a crontab names are inspected and added.

    The crontab wins over a schedule comment because it is what actually runs today.
    One job per script: a second entry for the same script is reported, not registered.
    """
    by_real = {s.script_path: s for s in result.scripts}
    refused = {r.resolved_path: r for r in result.refused}
    for entry in entries:
        if entry.status != "mapped" or entry.script is None:
            continue
        real = os.path.realpath(entry.script)
        script = by_real.get(real)
        if script is None:
            if real in refused:
                entry.status, entry.reason = "refused", "; ".join(refused[real].reasons)
                continue
            outcome = scanner.inspect_path(entry.script, opts)
            if isinstance(outcome, scanner.Refusal):
                result.refused.append(outcome)
                refused[real] = outcome
                entry.status, entry.reason = "refused", "; ".join(outcome.reasons)
                continue
            if isinstance(outcome, scanner.ScanIssue):
                result.errors.append(outcome)
                entry.status, entry.reason = "error", outcome.message
                continue
            if outcome is None:
                entry.status = "unmapped"
                entry.reason = f"{entry.script} is not a text script (missing, binary, or no shebang/extension)"
                continue
            script = outcome
            result.scripts.append(script)
            by_real[real] = script
        if script.crontab_sources:
            entry.status = "duplicate"
            entry.reason = f"{script.path} already takes its schedule from {script.crontab_sources[0]} " \
                           "(one job per script; add another by hand if you need both)"
            script.warnings.append(f"also scheduled by {entry.where}: {entry.schedule} (not registered)")
            continue
        _merge(script, entry)
    scanner.finalize(result)
    by_real = {s.script_path: s for s in result.scripts}
    for entry in entries:
        if entry.status == "mapped" and entry.script:
            found = by_real.get(os.path.realpath(entry.script))
            entry.job_name = found.name if found else None


def _merge(script: scanner.DiscoveredScript, entry: CrontabEntry) -> None:
    old = script.schedule
    script.schedule = entry.schedule
    script.schedule_source = f"crontab {entry.where}"
    note = f" (overrides the comment schedule {old})" if old and old != entry.schedule else ""
    script.reasons["schedule"] = f"{entry.schedule} from crontab {entry.where}{note}"
    script.crontab_sources.append(entry.where)
    if entry.timezone:
        script.timezone = entry.timezone
        script.reasons["timezone"] = f"{entry.timezone} from CRON_TZ in {entry.source}"
    if entry.interpreter and entry.interpreter != script.interpreter:
        script.reasons["interpreter"] = f"{entry.interpreter}: the crontab runs it that way " \
                                        f"(file says {script.interpreter})"
        script.interpreter = entry.interpreter
    script.args = entry.args
    script.working_dir = entry.working_dir
    script.environment = {k: v for k, v in entry.environment.items() if k not in _CRON_ONLY_ENV}
    if entry.user and entry.user != "root":
        try:
            pwd.getpwnam(entry.user)
            script.run_as_user = entry.user
            script.reasons["run_as_user"] = f"{entry.user}, the user field of {entry.where}"
        except KeyError:
            script.warnings.append(f"{entry.where} runs it as {entry.user!r}, who does not exist here")
