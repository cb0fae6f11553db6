"""The ``celery`` command, without loading what the command being run does not use.

``manage.py runstack`` starts beat, the workers and Flower with
``python -m smartcron_project.celery_cli <the usual celery arguments>``.  The arguments and
their meaning are exactly those of the ``celery`` program (this hands them to its ``main``),
but two of its start-up imports are deferred, since each process would otherwise keep them
for its whole life:

- every plugin sub-command (``celery.commands`` entry points) is imported by
  ``celery.bin.celery`` up front; here only a plugin named on the command line is loaded
  (Flower's pulls in tornado, humanize and prometheus_client: about 15 MB in a worker);
- ``celery amqp repl`` imports click-repl and prompt_toolkit (about 15 MB); here they load
  when that sub-command actually runs.
"""

from __future__ import annotations

import importlib.metadata
import sys
import types


def _lazy_click_repl() -> types.ModuleType:
    """A stand-in for ``click_repl`` whose ``register_repl`` imports the real one on use."""
    stub = types.ModuleType("click_repl")

    def register_repl(group, name: str = "repl") -> None:
        import click

        @group.command(name=name)
        @click.pass_context
        def repl(ctx) -> None:
            if sys.modules.get("click_repl") is stub:
                del sys.modules["click_repl"]
            from click_repl import repl as real_repl

            real_repl(ctx)

    stub.register_repl = register_repl
    return stub


def _only_named_plugins(argv: list[str]):
    """``importlib.metadata.entry_points`` keeping only the Celery sub-commands named in argv."""
    real = importlib.metadata.entry_points
    wanted = set(argv)

    def entry_points(**params):
        found = real(**params)
        if params.get("group") == "celery.commands":
            return importlib.metadata.EntryPoints(ep for ep in found if ep.name in wanted)
        return found

    return real, entry_points


def main(argv: list[str] | None = None) -> None:
    """What ``celery.__main__.main`` does, with the two imports above deferred."""
    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = ["celery", *args]
    from celery import maybe_patch_concurrency

    if "multi" not in args:
        maybe_patch_concurrency()
    if "click_repl" not in sys.modules:
        sys.modules["click_repl"] = _lazy_click_repl()
    real, filtered = _only_named_plugins(args)
    importlib.metadata.entry_points = filtered
    try:
        from celery.bin.celery import main as celery_main  # reads the plugin entry points once, here
    finally:
        importlib.metadata.entry_points = real
    sys.exit(celery_main())


if __name__ == "__main__":
    main()
