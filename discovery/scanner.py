"""Find cron scripts on disk and decide how each one should be registered.

Pure logic, no database: the scanner walks the discovery roots, applies the
security checks, reads the first few KB of every candidate and turns it into a
:class:`DiscoveredScript` that carries every decision (interpreter, schedule,
category, priority, resources, name) together with the reason for it.  Files it
will not register are returned as :class:`Refusal` objects with their reasons; a
refusal never stops the scan.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import hashlib
import os
import pwd
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

from django.conf import settings

from jobs.interpreters import EXTENSIONS
from jobs.paths import PathNotAllowed, check_script_path
from jobs.schedule import ALIASES, ScheduleError, validate_timezone
from jobs.schedule import normalize_cron as _normalize_cron_uncached

# Only the head of a file is read: comments that matter sit at the top, and reading
# whole files would make large trees slow.
HEAD_BYTES = 8192
DEFAULT_MAX_DEPTH = 8
# Directories never descended into: VCS metadata and hidden dirs, dependency trees,
# backup copies (an old copy of a script must not become a second job).
DEFAULT_IGNORE_DIRS = (
    ".*", "node_modules", "vendor", "bower_components", "__pycache__", "venv", "site-packages",
    "backup", "backups", "*.bak", "*.old", "*.orig", "*~", "lost+found",
)
# Files never considered: hidden files, editor swap/backup files, package-manager leftovers.
DEFAULT_IGNORE_FILES = (
    ".*", "*~", "#*#", "*.swp", "*.swo", "*.swx", "*.bak", "*.orig", "*.rej", "*.tmp", "*.old",
    "*.dpkg-*", "*.rpmnew", "*.rpmsave", "*.ucf-*",
)
# Extensions that are never scripts: skipped without even opening the file.
DATA_EXTENSIONS = frozenset(
    ".txt .md .rst .json .yml .yaml .xml .csv .tsv .log .ini .cfg .conf .toml .lock .html .htm .css .scss "
    ".map .png .jpg .jpeg .gif .svg .ico .webp .pdf .zip .gz .tgz .bz2 .xz .7z .tar .jar .war .so .o .a "
    ".pyc .pyo .class .dll .exe .bin .dat .db .sqlite .sqlite3 .sql .pem .crt .key .env .dist .twig .tpl "
    ".ts .mp3 .mp4 .woff .woff2 .ttf .eot .otf .doc .docx .xls .xlsx .odt .sample .pid .out .err".split()
)
SCRIPT_EXTENSIONS = {**EXTENSIONS, ".cjs": "node"}
SHEBANG_INTERPRETERS = ("python", "php", "bash", "node", "perl", "ruby")
POSIX_SHELLS = frozenset({"sh", "dash", "ash"})

CATEGORIES = ("backup", "reporting", "sync", "cleanup", "monitoring", "maintenance", "queue", "other")
PRIORITIES = ("critical", "high", "medium", "low")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
NAME_MAX = 200
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_NAME_BAD_RE = re.compile(r"[^A-Za-z0-9._-]+")

# Keywords per category.  Entries ending in "!" must be whole words ("gc" but not
# "gcc"); the others match the start of a word ("backup" matches "backups").
CATEGORY_KEYWORDS: dict[str, tuple[str, ...]] = {
    "backup": ("backup", "dump", "snapshot", "archiv", "mysqldump", "pg_dump", "pgdump", "restic", "borg!",
               "duplicity", "tarball"),
    "reporting": ("report", "stats!", "statistic", "analytic", "digest", "summar", "kpi!", "dashboard", "export",
                  "invoic", "newsletter", "aggregat"),
    "sync": ("sync", "import", "fetch", "pull!", "mirror", "replicat", "feed", "etl!", "rsync", "upload",
             "download", "crawl", "scrap"),
    "cleanup": ("cleanup", "clean", "purge", "prune", "delete", "rotat", "expire", "garbage", "gc!", "tmp!",
                "temp!", "trash", "logrotate", "remove"),
    "monitoring": ("monitor", "check", "health", "ping!", "heartbeat", "alert", "watchdog", "uptime", "probe",
                   "nagios", "status"),
    "maintenance": ("maintenance", "maintain", "optimi", "vacuum", "reindex", "analyze", "rebuild", "migrat",
                    "upgrade", "update", "cache", "warm", "compact", "renew", "certbot"),
    "queue": ("queue", "worker", "consum", "dispatch", "mailer", "notif", "enqueue", "jobs!", "sendmail",
              "send!", "process!"),
}
# Evidence weights: the file name says most about a cron script, its directory a bit
# less, its comments less again; code only breaks ties.
NAME_WEIGHT, DIR_WEIGHT, COMMENT_WEIGHT, CODE_WEIGHT = 3.0, 2.0, 1.0, 0.25
COMMENT_CAP, CODE_CAP = 3.0, 1.0

PRIORITY_KEYWORDS: dict[str, tuple[str, ...]] = {
    "critical": ("critical", "payment", "billing", "payroll", "security", "certificat", "ssl!", "tls!",
                 "failover"),
    "high": ("urgent", "important", "production", "prod!", "customer"),
    "low": ("test", "debug", "demo", "example", "sample", "experiment", "tmp!", "temp!", "optional"),
}
CATEGORY_PRIORITY = {
    "backup": "high", "monitoring": "high", "queue": "high", "sync": "medium", "maintenance": "medium",
    "reporting": "low", "cleanup": "low", "other": "medium",
}
RESOURCE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "heavy": ("backup", "dump", "mysqldump", "pg_dump", "archiv", "tar!", "gzip", "zip!", "compress", "ffmpeg",
              "video", "thumbnail", "pdf!", "reindex", "rebuild", "migrat", "etl!", "bulk", "vacuum"),
    "light": ("ping!", "heartbeat", "health", "check", "poke", "touch", "status", "notif"),
    "cpu": ("gzip", "compress", "ffmpeg", "encod", "hash", "pdf!", "image", "thumbnail", "crypt"),
    "memory": ("export", "import", "bulk", "dump", "aggregat", "pandas", "spreadsheet", "xlsx"),
}
SLOT_PROFILES = {
    # timeout s, expected duration s, memory multiplier, cpu weight, memory weight
    "light": (300, 5.0, 1, 0.5, 0.5),
    "default": (1800, 60.0, 2, 1.0, 1.0),
    "heavy": (4 * 3600, 600.0, 8, 1.5, 1.5),
}
# Typical resident memory of a small script, per interpreter (MB).
INTERPRETER_MEMORY_MB = {
    "php": 64, "python": 48, "node": 64, "ruby": 48, "perl": 24, "bash": 8, "sh": 4, "executable": 32,
}
LARGE_SCRIPT_BYTES = 64 * 1024
LARGE_SCRIPT_LINES = 1000
SMALL_SCRIPT_LINES = 60

DAYS = {
    "sun": 0, "sunday": 0, "mon": 1, "monday": 1, "tue": 2, "tues": 2, "tuesday": 2, "wed": 3, "wednesday": 3,
    "thu": 4, "thur": 4, "thurs": 4, "thursday": 4, "fri": 5, "friday": 5, "sat": 6, "saturday": 6,
}
SCHEDULE_KEYS = frozenset({"cron", "crontab", "schedule"})
DIRECTIVE_KEYS = SCHEDULE_KEYS | {"timezone", "tz", "priority", "category", "slot", "timeout"}
_DIRECTIVE_RE = re.compile(
    r"^(?:@(?P<akey>[a-z][a-z_-]*)\s+|(?P<ckey>[a-z][a-z_-]*)\s*[:=]\s*)(?P<value>\S.*)$", re.IGNORECASE
)
# Lines that are never part of a description.
_BOILERPLATE_RE = re.compile(
    r"^(?:-\*-|vim?:|shellcheck|copyright|\(c\)|license|spdx|author|@|eslint|jshint|phpcs|noqa|type:|"
    r"pylint|flake8|fmt:|isort|=+$|-+$|\*+$|#+$)",
    re.IGNORECASE,
)
# Lines that may precede the leading comment without ending it.
_PREAMBLE_RE = re.compile(r"^(?:<\?php|<\?|['\"]use strict['\"];?|declare\s*\(|from __future__ import)")




@functools.lru_cache(maxsize=4096)
def normalize_cron(expr: str) -> str:
    """jobs.schedule.normalize_cron, memoized: croniter validation is the costliest step of a scan
    and the same few schedules recur across thousands of scripts (errors are not cached)."""
    return _normalize_cron_uncached(expr)


# --- data --------------------------------------------------------------------------------
@dataclass
class DiscoveredScript:
    """One script the scanner accepted, with every decision and the reason for it."""

    path: str
    script_path: str
    root: str
    name: str
    interpreter: str
    description: str
    schedule: str | None
    schedule_source: str
    timezone: str | None
    category: str
    priority: str
    slot: str
    timeout_seconds: int
    memory_limit_mb: int
    expected_duration_s: float
    expected_memory_mb: float
    cpu_weight: float
    memory_weight: float
    size: int
    lines: int
    lines_estimated: bool
    mode: str
    uid: int
    args: str = ""
    working_dir: str = ""
    run_as_user: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    crontab_sources: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Refusal:
    """A file that looks like a script but will not be registered; ``reasons`` say why."""

    path: str
    resolved_path: str
    codes: list[str]
    reasons: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScanIssue:
    """Something that went wrong while scanning (unreadable file or directory)."""

    path: str
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RootInfo:
    """A configured root (or glob pattern) and what it expanded to."""

    pattern: str
    path: str | None
    status: str  # ok | missing | not_a_directory | no_match

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Candidate:
    path: str
    root: str
    is_symlink: bool


@dataclass
class ScanResult:
    roots: list[RootInfo] = field(default_factory=list)
    scripts: list[DiscoveredScript] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    errors: list[ScanIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files_seen: int = 0
    dirs_seen: int = 0
    dirs_pruned: int = 0
    files_ignored: int = 0
    binary_skipped: int = 0

    @property
    def scanned_roots(self) -> list[str]:
        return [r.path for r in self.roots if r.status == "ok" and r.path]


@dataclass
class ScanOptions:
    """Knobs of a scan; :meth:`from_settings` fills the ones that come from settings."""

    max_depth: int = DEFAULT_MAX_DEPTH
    ignore: tuple[str, ...] = ()
    head_bytes: int = HEAD_BYTES
    script_roots: tuple[str, ...] = ()
    max_timeout: int = 6 * 3600
    uid: int = field(default_factory=os.geteuid)

    @classmethod
    def from_settings(cls, **overrides) -> ScanOptions:
        values = {
            "max_depth": getattr(settings, "DISCOVERY_MAX_DEPTH", DEFAULT_MAX_DEPTH),
            "ignore": tuple(getattr(settings, "DISCOVERY_IGNORE", ())),
            "script_roots": tuple(os.path.realpath(r) for r in settings.SCRIPT_ROOTS),
            "max_timeout": int(settings.MAX_JOB_TIMEOUT_SECONDS),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def dir_matcher(self) -> Callable[[str], object]:
        return _compile_globs(DEFAULT_IGNORE_DIRS + self.ignore)

    def file_matcher(self) -> Callable[[str], object]:
        return _compile_globs(DEFAULT_IGNORE_FILES + self.ignore)


ProgressFn = Callable[[str, int, int], None]


# --- roots & walking --------------------------------------------------------------------
def _compile_globs(patterns: Iterable[str]) -> Callable[[str], object]:
    """One regex for all patterns: a single match call per name keeps the walk fast."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match


def is_within(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or below it (both already resolved)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def expand_roots(patterns: Sequence[str]) -> list[RootInfo]:
    """Expand glob patterns and resolve symlinks; every pattern is reported with a status."""
    out: list[RootInfo] = []
    seen: set[str] = set()
    for pattern in patterns:
        expanded = os.path.expanduser(str(pattern))
        if glob.has_magic(expanded):
            matches = sorted(glob.glob(expanded))
            if not matches:
                out.append(RootInfo(str(pattern), None, "no_match"))
        else:
            matches = [expanded]
        for match in matches:
            real = os.path.realpath(match)
            if real in seen:
                continue
            seen.add(real)
            if not os.path.exists(real):
                out.append(RootInfo(str(pattern), real, "missing"))
            elif not os.path.isdir(real):
                out.append(RootInfo(str(pattern), real, "not_a_directory"))
            else:
                out.append(RootInfo(str(pattern), real, "ok"))
    return out


def walk_root(root: str, opts: ScanOptions, result: ScanResult) -> list[Candidate]:
    """List candidate files below ``root`` (an os.scandir walk that prunes ignored dirs early).

    Symlinked directories are not followed (no loops, no escaping the root through a
    directory link); symlinked files are returned and checked later.
    """
    ignore_dir, ignore_file = opts.dir_matcher(), opts.file_matcher()
    out: list[Candidate] = []
    stack: list[tuple[str, int]] = [(root, 0)]
    while stack:
        directory, depth = stack.pop()
        result.dirs_seen += 1
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            result.errors.append(ScanIssue(directory, f"cannot list directory: {exc.strerror or exc}"))
            continue
        subdirs: list[str] = []
        for entry in entries:
            name = entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if ignore_dir(name):
                        result.dirs_pruned += 1
                    elif depth < opts.max_depth:
                        subdirs.append(entry.path)
                    else:
                        result.notes.append(f"{entry.path}: deeper than --max-depth {opts.max_depth}, not scanned")
                    continue
                is_link = entry.is_symlink()
                if is_link and entry.is_dir():
                    result.notes.append(f"{entry.path}: symlinked directory, not followed")
                    continue
                ext = os.path.splitext(name)[1].lower()
                if not is_link and not entry.is_file(follow_symlinks=False):
                    if ext in SCRIPT_EXTENSIONS:
                        result.refused.append(Refusal(entry.path, entry.path, ["not_regular_file"],
                                                      ["not a regular file (device, fifo or socket)"]))
                    continue
            except OSError as exc:
                result.errors.append(ScanIssue(entry.path, f"cannot stat: {exc.strerror or exc}"))
                continue
            result.files_seen += 1
            if ignore_file(name) or ext in DATA_EXTENSIONS:
                result.files_ignored += 1
                continue
            out.append(Candidate(entry.path, root, is_link))
        stack.extend((d, depth + 1) for d in reversed(subdirs))
    return out


# --- security ---------------------------------------------------------------------------
class _DirChecker:
    """World-writable directory check with a per-directory cache (thousands of files share dirs)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, bool] | None] = {}

    def _mode(self, directory: str) -> tuple[int, bool] | None:
        if directory not in self._cache:
            try:
                mode = os.stat(directory).st_mode
                self._cache[directory] = (mode, bool(mode & stat.S_IWOTH))
            except OSError:
                self._cache[directory] = None
        return self._cache[directory]

    def problem(self, real: str, root: str | None) -> str | None:
        """The first unsafe parent directory of ``real``, described, or None.

        Inside the root any world-writable directory is refused.  Above it, sticky
        world-writable directories (like /tmp) are tolerated: others cannot rename
        or replace entries they do not own there.
        """
        directory = os.path.dirname(real)
        while True:
            info = self._mode(directory)
            if info and info[1]:
                mode = info[0]
                inside = root is not None and is_within(directory, root)
                if inside or not mode & stat.S_ISVTX:
                    return f"parent directory {directory} is world-writable (mode {oct(mode & 0o7777)})"
            parent = os.path.dirname(directory)
            if parent == directory:
                return None
            directory = parent


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "unknown user"


def security_problems(path: str, real: str, root: str | None, st: os.stat_result, opts: ScanOptions,
                      dirs: _DirChecker) -> list[tuple[str, str]]:
    """Every reason not to run this file, as (code, reason) pairs; empty when it is safe."""
    problems: list[tuple[str, str]] = []
    name = os.path.basename(path)
    rel = os.path.relpath(path, root) if root else path
    if _CONTROL_RE.search(rel):
        problems.append(("unsafe_name", "the path contains control characters"))
    if name.startswith("-"):
        problems.append(("unsafe_name", "the file name starts with '-' and could be taken for an option"))
    mode = st.st_mode
    if mode & (stat.S_ISUID | stat.S_ISGID):
        problems.append(("setuid", f"setuid/setgid bit set (mode {oct(mode & 0o7777)})"))
    if mode & stat.S_IWOTH:
        problems.append(("world_writable", f"world-writable file (mode {oct(mode & 0o7777)}): anyone could "
                                           "change what runs"))
    if st.st_uid not in (0, opts.uid):
        problems.append(("foreign_owner", f"owned by uid {st.st_uid} ({_user_name(st.st_uid)}), neither root "
                                          f"nor the user running discovery (uid {opts.uid})"))
    bad_dir = dirs.problem(real, root)
    if bad_dir:
        problems.append(("world_writable_dir", bad_dir))
    try:
        check_script_path(real)
    except PathNotAllowed as exc:
        if str(exc) not in (reason for _, reason in problems):  # e.g. control characters, already said
            problems.append(("outside_script_roots", str(exc)))
    return problems


# --- inspecting one file ------------------------------------------------------------------
def inspect_candidate(cand: Candidate, opts: ScanOptions,
                      dirs: _DirChecker) -> DiscoveredScript | Refusal | ScanIssue | None:
    """Security-check and analyse one candidate; None when it is not a script at all."""
    path = cand.path
    ext = os.path.splitext(path)[1].lower()
    real = path
    if cand.is_symlink:
        real = os.path.realpath(path)
        if not is_within(real, cand.root):
            return Refusal(path, real, ["symlink_escapes_root"],
                           [f"symlink resolves to {real}, outside the scanned root {cand.root}"])
    try:
        # O_NONBLOCK: opening a fifo must not hang the scan; fstat below rejects it.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        if cand.is_symlink:
            return Refusal(path, real, ["broken_symlink"], [f"symlink target {real} does not exist"])
        return None  # vanished while scanning
    except OSError as exc:
        return ScanIssue(path, f"cannot open: {exc.strerror or exc}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            if ext in SCRIPT_EXTENSIONS:
                return Refusal(path, real, ["not_regular_file"], ["not a regular file"])
            return None
        head = os.read(fd, opts.head_bytes)
    except OSError as exc:
        return ScanIssue(path, f"cannot read: {exc.strerror or exc}")
    finally:
        os.close(fd)
    if not head.startswith(b"#!") and ext not in SCRIPT_EXTENSIONS:
        return None
    if b"\0" in head:
        return None  # binary: compiled or data, not a script we can read
    problems = security_problems(path, real, cand.root, st, opts, dirs)
    if problems:
        return Refusal(path, real, [c for c, _ in problems], [r for _, r in problems])
    return analyse(path, real, cand.root, head, st, opts)


def inspect_path(path: str, opts: ScanOptions | None = None) -> DiscoveredScript | Refusal | ScanIssue | None:
    """Inspect a single file named from elsewhere (a crontab line), against the script roots."""
    opts = opts or ScanOptions.from_settings()
    abspath = os.path.abspath(path)
    real = os.path.realpath(abspath)
    root = _deepest_root(real, opts.script_roots)
    if root is None:
        try:
            check_script_path(real)
            reason = f"{real} is outside the allowed script roots"
        except PathNotAllowed as exc:
            reason = str(exc)
        return Refusal(abspath, real, ["outside_script_roots"], [reason])
    # "Symlink" here means any path that does not resolve to itself (a linked parent directory
    # counts too), so that the job stores, and is matched by, the resolved path.
    return inspect_candidate(Candidate(abspath, root, abspath != real), opts, _DirChecker())


def _deepest_root(real: str, roots: Iterable[str]) -> str | None:
    inside = [r for r in roots if is_within(real, r)]
    return max(inside, key=len) if inside else None


# --- analysis ---------------------------------------------------------------------------
def interpreter_from_shebang(line: str) -> str:
    """php/bash/sh/python/node/perl/ruby from a shebang line, env-style included; else 'executable'."""
    words = line[2:].strip().split()
    if not words:
        return "executable"
    prog = os.path.basename(words[0])
    if prog == "env":
        rest = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        if not rest:
            return "executable"
        prog = os.path.basename(rest[0])
    for name in SHEBANG_INTERPRETERS:
        if prog.startswith(name):
            return name
    if prog in POSIX_SHELLS:
        return "sh"
    return "executable"


@dataclass
class _Parsed:
    comments: list[tuple[int, str]]
    leading: list[str]
    code: list[str]


def extract_comments(text: str, interpreter: str) -> _Parsed:
    """Split the head of a script into comment lines (numbered), the leading block and code."""
    slash_comments = interpreter in ("php", "node")
    hash_comments = interpreter != "node"
    lines = text.splitlines()
    comments: list[tuple[int, str]] = []
    leading: list[str] = []
    code: list[str] = []
    leading_done = False
    block_end: str | None = None
    for number, raw in enumerate(lines, start=1):
        s = raw.strip()
        if number == 1 and s.startswith("#!"):
            continue
        if block_end is not None:
            end = s.find(block_end)
            content = s if end < 0 else s[:end]
            if block_end == "*/":
                content = content.lstrip("*").strip()
            comments.append((number, content))
            if not leading_done:
                leading.append(content)
            if end >= 0:
                if s[end + len(block_end):].strip():
                    leading_done = True  # code follows the closing marker
                block_end = None
            continue
        if not s:
            if not leading_done and leading:
                leading.append("")
            continue
        content: str | None = None
        if hash_comments and s.startswith("#"):
            content = s.lstrip("#").strip()
        elif slash_comments and s.startswith("//"):
            content = s.lstrip("/").strip()
        elif slash_comments and s.startswith("/*"):
            body = s[2:].lstrip("*")
            if "*/" in body:
                content = body[: body.index("*/")].strip()
            else:
                content, block_end = body.strip(), "*/"
        elif interpreter == "python" and not leading_done and s[:4].lstrip("rRuU")[:3] in ('"""', "'''"):
            quote = s.lstrip("rRuU")[:3]
            body = s.lstrip("rRuU")[3:]
            if quote in body:
                content = body[: body.index(quote)].strip()
                leading_done = True if body[body.index(quote) + 3:].strip() else leading_done
            else:
                content, block_end = body.strip(), quote
        elif _PREAMBLE_RE.match(s):
            continue
        if content is None:
            leading_done = True
            code.append(s)
            continue
        comments.append((number, content))
        if not leading_done:
            leading.append(content)
    return _Parsed(comments, leading, code)


def _is_directive(line: str) -> bool:
    m = _DIRECTIVE_RE.match(line)
    return bool(m and (m.group("akey") or m.group("ckey")).lower() in DIRECTIVE_KEYS)


def _is_schedule_phrase(line: str) -> bool:
    try:
        return parse_natural(line)[0] is not None
    except ScheduleError:
        return True


def description_from(leading: list[str], file_name: str) -> str:
    """The first paragraph of the leading comment/docstring, without directives and boilerplate."""
    paragraphs: list[list[str]] = [[]]
    for line in leading:
        if not line:
            paragraphs.append([])
            continue
        if _is_directive(line) or _BOILERPLATE_RE.match(line) or _is_schedule_phrase(line):
            continue
        paragraphs[-1].append(line)
    for para in paragraphs:
        text = " ".join(" ".join(para).split())
        if text and text.lower() not in (file_name.lower(), os.path.splitext(file_name)[0].lower()):
            return text[:500]
    return ""


# --- schedules ----------------------------------------------------------------------------
_PREFIX_RE = re.compile(
    r"^(?:(?:this\s+)?(?:script|job|task)\s+)?(?:runs?|is\s+run|executes?|scheduled|should\s+run|fires?)"
    r"(?:\s+(?:once|automatically))?\s+",
)
_TIME_RE = re.compile(
    r"^\s*(?P<at>at\s+)?(?:(?P<noon>noon)|(?P<midnight>midnight)|"
    r"(?P<h>\d{1,2})(?:[:h.](?P<m>\d{2}))?\s*(?P<ampm>am|pm|a\.m\.|p\.m\.)?)(?![\w:])"
)
_TZ_RE = re.compile(r"^\s*\(?(?P<tz>utc|gmt|[a-z]+/[a-z_+\-/]+)\)?", re.IGNORECASE)
_DAY_ALT = "|".join(sorted(DAYS, key=len, reverse=True))


def _take_time(s: str) -> tuple[int, int, str] | None:
    """Parse a leading 'at 02:30' / '2am' / 'noon'; returns (hour, minute, rest) or None."""
    m = _TIME_RE.match(s)
    if not m:
        return None
    if m.group("noon"):
        return 12, 0, s[m.end():]
    if m.group("midnight"):
        return 0, 0, s[m.end():]
    if not m.group("at") and m.group("m") is None and m.group("ampm") is None:
        return None
    hour, minute = int(m.group("h")), int(m.group("m") or 0)
    ampm = (m.group("ampm") or "").replace(".", "")
    if ampm:
        if not 1 <= hour <= 12:
            raise ScheduleError(f"invalid time of day {m.group(0).strip()!r}")
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    if hour > 23 or minute > 59:
        raise ScheduleError(f"invalid time of day {m.group(0).strip()!r}")
    return hour, minute, s[m.end():]


def _with_time(s: str, fmt: str) -> tuple[str, str]:
    """Fill ``fmt`` ({m} {h}) from an optional 'at TIME' in ``s`` (midnight when absent)."""
    taken = _take_time(s)
    if taken is None:
        if _P_AT_DIGIT.match(s):
            raise ScheduleError(f"could not understand the time in {s.strip()!r}")
        return fmt.format(m=0, h=0), s
    hour, minute, rest = taken
    return fmt.format(m=minute, h=hour), rest


_P_AT_DIGIT = re.compile(r"^\s*at\s+\d")
_P_START = re.compile(rf"^(?:every|each|once|on\s|hourly|daily|nightly|weekly|monthly|weekdays|weekends|"
                      rf"(?:{_DAY_ALT})s)")
_P_MINUTE = re.compile(r"^every\s+minute\b")
_P_MINUTES = re.compile(r"^every\s+(\d+)\s*(?:minutes?|mins?)\b")
_P_HOURS = re.compile(r"^every\s+(\d+)\s*(?:hours?|hrs?)\b")
_P_HOURLY = re.compile(r"^(?:every\s+hour|hourly|once\s+an\s+hour)\b")
_P_HOURLY_AT = re.compile(r"^\s+at\s+(?::(\d{1,2})|(\d{1,2})\s+(?:minutes?\s+)?past(?:\s+the\s+hour)?|"
                          r"minute\s+(\d{1,2}))\b")
_P_DAYS = re.compile(r"^every\s+(\d+)\s*days?\b")
_P_DAILY = re.compile(r"^(?:every\s+day|daily|nightly|every\s+night|each\s+day|once\s+a\s+day)\b")
_P_WEEKDAY = re.compile(rf"^(?:(?:every|each|on)\s+({_DAY_ALT}|weekday|weekend)s?|({_DAY_ALT}|weekday|weekend)s)\b")
_P_WEEKLY = re.compile(r"^(?:weekly|every\s+week|once\s+a\s+week)\b")
_P_ON_DAY = re.compile(rf"^\s+on\s+({_DAY_ALT})s?\b")
_P_MONTHLY = re.compile(r"^(?:monthly|every\s+month|once\s+a\s+month)\b")
_P_ON_DOM = re.compile(r"^\s+on\s+(?:the\s+)?(\d{1,2})(?:st|nd|rd|th)?(?:\s+day)?\b")


def _phrase(s: str) -> tuple[str, str] | None:
    """Match one natural-language schedule at the start of ``s``: (cron, rest) or None."""
    if not _P_START.match(s):
        return None  # the common case (an ordinary comment), decided with one regex
    if m := _P_MINUTE.match(s):
        return "* * * * *", s[m.end():]
    if m := _P_MINUTES.match(s):
        n = int(m.group(1))
        return ("* * * * *" if n == 1 else f"*/{n} * * * *"), s[m.end():]
    if m := _P_HOURS.match(s):
        n = int(m.group(1))
        return ("0 * * * *" if n == 1 else f"0 */{n} * * *"), s[m.end():]
    if m := _P_HOURLY.match(s):
        rest = s[m.end():]
        if at := _P_HOURLY_AT.match(rest):
            minute = next(g for g in at.groups() if g is not None)
            return f"{int(minute)} * * * *", rest[at.end():]
        return "0 * * * *", rest
    if m := _P_DAYS.match(s):
        return _with_time(s[m.end():], "{m} {h} */" + m.group(1) + " * *")
    if m := _P_DAILY.match(s):
        return _with_time(s[m.end():], "{m} {h} * * *")
    if m := _P_WEEKDAY.match(s):
        day = m.group(1) or m.group(2)
        dow = {"weekday": "1-5", "weekend": "6,0"}.get(day, str(DAYS.get(day, 0)))
        return _with_time(s[m.end():], "{m} {h} * * " + dow)
    if m := _P_WEEKLY.match(s):
        rest, dow = s[m.end():], "0"
        if on := _P_ON_DAY.match(rest):
            dow, rest = str(DAYS[on.group(1)]), rest[on.end():]
        return _with_time(rest, "{m} {h} * * " + dow)
    if m := _P_MONTHLY.match(s):
        rest, dom = s[m.end():], "1"
        if on := _P_ON_DOM.match(rest):
            dom, rest = on.group(1), rest[on.end():]
        return _with_time(rest, "{m} {h} " + dom + " * *")
    return None


def parse_natural(text: str) -> tuple[str | None, str | None]:
    """A cron expression from an English schedule ('runs every 15 minutes', 'daily at 02:30').

    Returns (cron or None, timezone or None).  Without a 'runs'-style prefix the line
    must be the phrase itself (optionally followed by punctuation), so that a
    description like "Daily report of sales" is not read as a schedule.
    """
    original = text.strip().rstrip(".")
    s = original.lower()
    prefix = _PREFIX_RE.match(s)
    offset = prefix.end() if prefix else 0
    try:
        found = _phrase(s[offset:])
    except ScheduleError:
        if prefix:
            raise
        return None, None
    if not found:
        return None, None
    cron, rest = found
    tz = None
    tz_match = _TZ_RE.match(rest)
    if tz_match:
        start = len(original) - len(rest) + tz_match.start("tz")
        candidate = original[start:start + len(tz_match.group("tz"))]
        try:
            validate_timezone("UTC" if candidate.lower() in ("utc", "gmt") else candidate)
            tz = "UTC" if candidate.lower() in ("utc", "gmt") else candidate
            rest = rest[tz_match.end():]
        except ScheduleError:
            pass
    if not prefix and rest.strip() and rest.strip()[0] not in ".,;:-–—()[]":
        return None, None
    return cron, tz


def parse_schedule_value(value: str) -> tuple[str, str | None]:
    """A directive value: a cron expression/@alias, else English.  Raises ScheduleError."""
    value = value.strip()
    looks_cron = value.startswith("@") or len(value.split()) in (5, 6) and re.match(r"^[\d*]", value)
    if looks_cron:
        return normalize_cron(value), None
    cron, tz = parse_natural(value if _PREFIX_RE.match(value.lower()) else f"runs {value}")
    if cron is None:
        raise ScheduleError(f"not a cron expression or a schedule I understand: {value!r}")
    return normalize_cron(cron), tz


def parse_duration(value: str) -> int:
    """'600', '90s', '10m', '2h' -> seconds.  Raises ValueError."""
    m = re.match(r"^\s*(\d+)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?)?\s*$", value, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    unit = (m.group(2) or "s").lower()[0]
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[unit]


# --- scoring ------------------------------------------------------------------------------
def _keyword_regex(groups: dict[str, tuple[str, ...]]) -> re.Pattern[str]:
    parts = []
    for group, words in groups.items():
        alts = "|".join(re.escape(w[:-1]) + r"(?![a-z0-9])" if w.endswith("!") else re.escape(w) for w in words)
        parts.append(f"(?P<{group}>{alts})")
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(parts) + ")")


_CATEGORY_RE = _keyword_regex(CATEGORY_KEYWORDS)
_PRIORITY_RE = _keyword_regex(PRIORITY_KEYWORDS)
_RESOURCE_RE = _keyword_regex(RESOURCE_KEYWORDS)


def words_of(text: str) -> str:
    """Lower-case text with camelCase and separators turned into spaces (for keyword matching)."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)
    return re.sub(r"[^a-z0-9]+", " ", text.lower())


def keyword_hits(regex: re.Pattern[str], text: str) -> dict[str, list[str]]:
    """group -> distinct keywords found, in order of first appearance."""
    hits: dict[str, list[str]] = {}
    for m in regex.finditer(text):
        words = hits.setdefault(m.lastgroup or "", [])
        if m.group() not in words:
            words.append(m.group())
    return hits


@dataclass
class _Texts:
    """The texts evidence comes from, already normalised for keyword matching."""

    name: str
    dirs: str
    comments: str
    code: str


def decide_category(texts: _Texts) -> tuple[str, str]:
    """Category with the best weighted keyword score; (category, reason)."""
    scores: dict[str, float] = {}
    evidence: dict[str, list[str]] = {}
    first_in_name: dict[str, int] = {}
    for source, text, weight, cap in (
        ("name", texts.name, NAME_WEIGHT, None),
        ("directory", texts.dirs, DIR_WEIGHT, None),
        ("comments", texts.comments, COMMENT_WEIGHT, COMMENT_CAP),
        ("code", texts.code, CODE_WEIGHT, CODE_CAP),
    ):
        for cat, words in keyword_hits(_CATEGORY_RE, text).items():
            gained = weight * len(words)
            scores[cat] = scores.get(cat, 0.0) + (min(gained, cap) if cap else gained)
            evidence.setdefault(cat, []).append(f"{source} has {', '.join(repr(w) for w in words)}")
            if source == "name":
                first_in_name[cat] = min(text.find(w) for w in words)
    if not scores or max(scores.values()) < 1.0:
        return "other", "no category keyword in the name or comments"
    # Ties: the keyword that comes first in the file name wins ("cleanup_old_backups").
    best = min(scores, key=lambda c: (-scores[c], first_in_name.get(c, 10**6), CATEGORIES.index(c)))
    others = ", ".join(f"{c} {scores[c]:g}" for c in sorted(scores, key=lambda c: -scores[c]) if c != best)
    reason = f"score {scores[best]:g}: {'; '.join(evidence[best])}"
    return best, reason + (f" (also: {others})" if others else "")


def decide_priority(category: str, texts: _Texts) -> tuple[str, str]:
    """Priority from keywords in the name and comments, else from the category."""
    hits = keyword_hits(_PRIORITY_RE, f"{texts.name} {texts.dirs} {texts.comments}")
    for level in ("critical", "high", "low"):
        if level in hits:
            return level, f"keyword {', '.join(repr(w) for w in hits[level])} means {level}"
    default = CATEGORY_PRIORITY[category]
    return default, f"default for category {category}"


def decide_resources(category: str, interpreter: str, size: int, lines: int, texts: _Texts,
                     max_timeout: int) -> tuple[dict[str, float | int | str], dict[str, str]]:
    """Slot, timeout, memory and CPU estimates from size, line count and keywords."""
    hits = keyword_hits(_RESOURCE_RE, f"{texts.name} {texts.dirs} {texts.comments}")
    code_hits = keyword_hits(_RESOURCE_RE, texts.code)
    if category == "backup" or "heavy" in hits:
        slot = "heavy"
        why = "backup category" if category == "backup" else f"heavy keyword {', '.join(hits['heavy'])!r}"
    elif size > LARGE_SCRIPT_BYTES or lines > LARGE_SCRIPT_LINES:
        slot, why = "heavy", f"large script ({size} bytes, {lines} lines)"
    elif lines <= SMALL_SCRIPT_LINES and (category == "monitoring" or "light" in hits):
        slot = "light"
        why = f"short ({lines} lines) and " + (
            "monitoring category" if category == "monitoring" else f"light keyword {', '.join(hits['light'])!r}")
    else:
        slot, why = "default", f"{lines} lines, no heavy or light hint"
    timeout, duration, mem_factor, cpu, mem_w = SLOT_PROFILES[slot]
    timeout = min(timeout, max_timeout)
    expected_mb = float(INTERPRETER_MEMORY_MB.get(interpreter, 32) * mem_factor)
    memory_limit = max(128, -(-int(expected_mb * 4) // 64) * 64)
    reasons = {"slot": why, "timeout": f"{timeout} s for the {slot} slot"}
    if "cpu" in hits or "cpu" in code_hits:
        cpu = min(2.0, cpu + 0.25)
        reasons["cpu"] = f"{cpu:g} ({slot} profile + CPU-bound keyword {', '.join((hits | code_hits)['cpu'])!r})"
    else:
        reasons["cpu"] = f"{cpu:g} ({slot} profile)"
    if "memory" in hits or "memory" in code_hits:
        mem_w = min(2.0, mem_w + 0.25)
        reasons["memory"] = f"weight {mem_w:g} (data-heavy keyword " \
                            f"{', '.join((hits | code_hits)['memory'])!r}); "
    else:
        reasons["memory"] = f"weight {mem_w:g}; "
    reasons["memory"] += f"expect {expected_mb:g} MB ({interpreter} x{mem_factor}), limit {memory_limit} MB"
    values = {"slot": slot, "timeout_seconds": timeout, "expected_duration_s": duration,
              "expected_memory_mb": expected_mb, "memory_limit_mb": memory_limit,
              "cpu_weight": cpu, "memory_weight": mem_w}
    return values, reasons


# --- naming ---------------------------------------------------------------------------------
def job_name_for(real: str, script_roots: Sequence[str]) -> str:
    """A stable job name from the path below its script root: 'app/cron/backup.sh' -> 'app.cron.backup.sh'.

    Characters the Job.name validator refuses become '_' and a short hash of the
    path is appended so that two different paths never share a name.
    """
    root = _deepest_root(real, script_roots)
    rel = os.path.relpath(real, root) if root else real.lstrip(os.sep)
    parts = [p for p in rel.split(os.sep) if p]
    clean = [_NAME_BAD_RE.sub("_", p) for p in parts]
    name = ".".join(clean)
    lossy = clean != parts
    if not name[:1].isalnum():
        name, lossy = "x" + name, True
    if lossy or len(name) > NAME_MAX or not NAME_RE.match(name):
        name = f"{name[:NAME_MAX - 9]}-{path_hash(real)}"
    return name


def path_hash(path: str) -> str:
    return hashlib.sha1(path.encode("utf-8", "surrogateescape"), usedforsecurity=False).hexdigest()[:8]


def with_hash(name: str, real: str) -> str:
    suffix = f"-{path_hash(real)}"
    return name if name.endswith(suffix) else name[:NAME_MAX - len(suffix)] + suffix


# --- the analysis proper --------------------------------------------------------------------
def _apply_directives(comments: list[tuple[int, str]], warnings: list[str]) -> dict[str, tuple[str, int, str]]:
    """key -> (value, line, original text) for the first valid directive of each kind."""
    found: dict[str, tuple[str, int, str]] = {}
    for number, line in comments:
        if line.lower() in ALIASES and "cron" not in found:  # a bare "# @hourly"
            found["cron"] = (ALIASES[line.lower()], number, line)
            continue
        m = _DIRECTIVE_RE.match(line)
        if not m:
            continue
        key = (m.group("akey") or m.group("ckey")).lower()
        key = {"crontab": "cron", "schedule": "cron", "tz": "timezone"}.get(key, key)
        if key not in {"cron", "timezone", "priority", "category", "slot", "timeout"} or key in found:
            continue
        value = m.group("value").strip()
        try:
            if key == "cron":
                cron, tz = parse_schedule_value(value)
                found[key] = (cron, number, line)
                if tz and "timezone" not in found:
                    found["timezone"] = (tz, number, line)
                continue
            if key == "timezone":
                validate_timezone(value)
            elif key == "priority" and value.lower() not in PRIORITIES:
                raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}")
            elif key == "category" and value.lower() not in CATEGORIES:
                raise ValueError(f"category must be one of {', '.join(CATEGORIES)}")
            elif key == "slot" and not re.match(r"^[a-z][a-z0-9_-]*$", value):
                raise ValueError("slot must be a slot name like light, default or heavy")
            elif key == "timeout":
                value = str(parse_duration(value))
            found[key] = (value if key == "timezone" else value.lower(), number, line)
        except (ScheduleError, ValueError) as exc:
            warnings.append(f"line {number}: ignored {line!r}: {exc}")
    return found


def _natural_schedule(comments: list[tuple[int, str]],
                      warnings: list[str]) -> tuple[str, str | None, int, str] | None:
    for number, line in comments:
        if _is_directive(line):
            continue
        try:
            cron, tz = parse_natural(line)
            if cron:
                return normalize_cron(cron), tz, number, line
        except ScheduleError as exc:
            warnings.append(f"line {number}: ignored {line!r}: {exc}")
    return None


def analyse(path: str, real: str, root: str, head: bytes, st: os.stat_result, opts: ScanOptions) -> DiscoveredScript:
    """Every registration decision for one (already security-checked) script."""
    text = head.decode("utf-8", "replace")
    file_name = os.path.basename(real)
    ext = os.path.splitext(file_name)[1].lower()
    reasons: dict[str, str] = {}
    warnings: list[str] = []

    first_line = text.split("\n", 1)[0]
    if first_line.startswith("#!"):
        interpreter = interpreter_from_shebang(first_line)
        reasons["interpreter"] = f"shebang {first_line.strip()!r}"
    elif ext in SCRIPT_EXTENSIONS:
        interpreter = SCRIPT_EXTENSIONS[ext]
        reasons["interpreter"] = f"extension {ext}"
    else:
        interpreter = "executable"
        reasons["interpreter"] = "no shebang and no known extension: run directly"
    if interpreter == "executable" and not st.st_mode & stat.S_IXUSR:
        warnings.append("run directly but not executable (chmod +x it, or set an interpreter)")

    size = st.st_size
    if len(head) >= size:
        lines, estimated = text.count("\n") + (0 if text.endswith("\n") or not text else 1), False
    else:
        # Only the head was read: extrapolate from its line density.
        lines, estimated = max(1, round(size * text.count("\n") / max(len(head), 1))), True

    parsed = extract_comments(text, interpreter)
    description = description_from(parsed.leading, file_name)
    reasons["description"] = "first paragraph of the leading comment" if description else \
        "no leading comment or docstring"

    directives = _apply_directives(parsed.comments, warnings)
    schedule, timezone, source = None, None, ""
    if "cron" in directives:
        schedule, number, line = directives["cron"]
        source = f"comment line {number}: {line!r}"
    else:
        natural = _natural_schedule(parsed.comments, warnings)
        if natural:
            schedule, timezone, number, line = natural
            source = f"comment line {number}: {line!r}"
    if "timezone" in directives:
        timezone = directives["timezone"][0]
    reasons["schedule"] = f"{schedule} from {source}" if schedule else "no schedule comment: manual job"
    if timezone:
        reasons["timezone"] = f"{timezone} from the comments"

    rel_dir = os.path.relpath(os.path.dirname(real), root) if is_within(real, root) else os.path.dirname(real)
    texts = _Texts(
        name=words_of(os.path.splitext(file_name)[0]),
        dirs=words_of("" if rel_dir == "." else rel_dir),
        comments=words_of(" ".join(c for _, c in parsed.comments)),
        code=words_of(" ".join(parsed.code)),
    )
    category, reasons["category"] = decide_category(texts)
    if "category" in directives:
        category, reasons["category"] = directives["category"][0], f"set by comment line {directives['category'][1]}"
    priority, reasons["priority"] = decide_priority(category, texts)
    if "priority" in directives:
        priority, reasons["priority"] = directives["priority"][0], f"set by comment line {directives['priority'][1]}"
    resources, resource_reasons = decide_resources(category, interpreter, size, lines, texts, opts.max_timeout)
    reasons.update(resource_reasons)
    if "slot" in directives:
        resources["slot"] = directives["slot"][0]
        reasons["slot"] = f"set by comment line {directives['slot'][1]}"
    if "timeout" in directives:
        wanted = int(directives["timeout"][0])
        resources["timeout_seconds"] = max(1, min(wanted, opts.max_timeout))
        reasons["timeout"] = f"set by comment line {directives['timeout'][1]}"
        if wanted > opts.max_timeout:
            warnings.append(f"timeout {wanted} s capped to the maximum {opts.max_timeout} s")

    name = job_name_for(real, opts.script_roots)
    reasons["name"] = "derived from the path below its script root"
    return DiscoveredScript(
        path=path, script_path=real, root=root, name=name, interpreter=interpreter, description=description,
        schedule=schedule, schedule_source=source, timezone=timezone, category=category, priority=priority,
        slot=str(resources["slot"]), timeout_seconds=int(resources["timeout_seconds"]),
        memory_limit_mb=int(resources["memory_limit_mb"]),
        expected_duration_s=float(resources["expected_duration_s"]),
        expected_memory_mb=float(resources["expected_memory_mb"]),
        cpu_weight=float(resources["cpu_weight"]), memory_weight=float(resources["memory_weight"]),
        size=size, lines=lines, lines_estimated=estimated, mode=oct(st.st_mode & 0o7777), uid=st.st_uid,
        reasons=reasons, warnings=warnings,
    )


# --- the scan ---------------------------------------------------------------------------------
def scan(patterns: Sequence[str], opts: ScanOptions | None = None, progress: ProgressFn | None = None) -> ScanResult:
    """Walk every root, inspect every candidate, return scripts, refusals and errors."""
    opts = opts or ScanOptions.from_settings()
    result = ScanResult(roots=expand_roots(patterns))
    candidates: list[Candidate] = []
    for root in result.scanned_roots:
        candidates.extend(walk_root(root, opts, result))
        if progress:
            progress("walk", len(candidates), 0)
    dirs = _DirChecker()
    total = len(candidates)
    for done, cand in enumerate(candidates, start=1):
        outcome = inspect_candidate(cand, opts, dirs)
        if isinstance(outcome, DiscoveredScript):
            result.scripts.append(outcome)
        elif isinstance(outcome, Refusal):
            result.refused.append(outcome)
        elif isinstance(outcome, ScanIssue):
            result.errors.append(outcome)
        if progress:
            progress("inspect", done, total)
    finalize(result)
    return result


def finalize(result: ScanResult) -> None:
    """Drop duplicates (a symlink and its target), make names unique, sort for stable output."""
    by_real: dict[str, DiscoveredScript] = {}
    for script in result.scripts:
        kept = by_real.get(script.script_path)
        if kept is None:
            by_real[script.script_path] = script
            continue
        # Prefer the entry found under its own name over one reached through a symlink.
        if kept.path != kept.script_path and script.path == script.script_path:
            by_real[script.script_path], kept, script = script, script, kept
        result.notes.append(f"{script.path}: same file as {kept.path}, registered once")
    scripts = sorted(by_real.values(), key=lambda s: s.script_path)
    by_name: dict[str, list[DiscoveredScript]] = {}
    for script in scripts:
        by_name.setdefault(script.name, []).append(script)
    for name, group in by_name.items():
        if len(group) > 1:
            for script in group:
                script.name = with_hash(name, script.script_path)
                script.reasons["name"] += f"; {name!r} is shared by {len(group)} paths, so a path hash was added"
    result.scripts = scripts
    result.refused.sort(key=lambda r: r.path)
