"""Turning a job's interpreter setting into an argv."""

from __future__ import annotations

import shutil

EXTENSIONS = {
    ".php": "php", ".sh": "bash", ".bash": "bash", ".py": "python", ".js": "node", ".mjs": "node",
    ".pl": "perl", ".rb": "ruby",
}
# Scripts see a cron-like, system-wide PATH: the worker's own PATH may point into a
# virtualenv or a home directory the job's user cannot read.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROGRAMS = {
    "python": "python3", "php": "php", "bash": "bash", "sh": "sh", "node": "node", "perl": "perl", "ruby": "ruby",
}


def detect(script: str) -> str:
    """Interpreter from the shebang, else the extension, else 'executable'."""
    try:
        with open(script, "rb") as fh:
            first = fh.readline(256)
    except OSError:
        first = b""
    if first.startswith(b"#!"):
        words = first[2:].decode("utf-8", "replace").split()
        if words:
            prog = words[0].rsplit("/", 1)[-1]
            if prog == "env" and len(words) > 1:
                rest = [w for w in words[1:] if not w.startswith("-")]
                prog = rest[0].rsplit("/", 1)[-1] if rest else prog
            for name in ("python", "php", "bash", "node", "perl", "ruby"):
                if prog.startswith(name):
                    return name
            if prog in ("sh", "dash"):
                return "sh"
            return "executable"
    for ext, name in EXTENSIONS.items():
        if script.endswith(ext):
            return name
    return "executable"


def interpreter_argv(interpreter: str, script: str) -> list[str]:
    name = interpreter or detect(script)
    if name == "executable":
        return [script]
    program = PROGRAMS.get(name, name)
    if name == "python":
        program = "python3"
    program = shutil.which(program, path=SYSTEM_PATH) or program
    return [program, script]
