"""``manage.py slot_status``: live usage of the execution slots."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from slots.models import ExecutionSlot
from slots.status import admission_latency, hosts, slot_usage


class Command(BaseCommand):
    help = ("Live usage of the execution slots: running jobs and their leases, memory and CPU claimed against the "
            "budgets, runs waiting for admission (in admission order, with the reason), host memory guards and "
            "admission decision latency.  Read-only: usage is always the live lease set, nothing to reset.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--slot", help="Only this slot (default: all).")
        parser.add_argument("--json", action="store_true", help="Print the result as JSON (for automation).")

    def handle(self, *args, **opts) -> str:
        name = opts.get("slot")
        if name and not ExecutionSlot.objects.filter(name=name).exists():
            known = ", ".join(ExecutionSlot.objects.values_list("name", flat=True))
            raise CommandError(f"--slot: no slot named {name!r} (known: {known})")
        data = {"slots": slot_usage(name), "hosts": hosts(), "admission_latency": admission_latency()}
        if opts["json"]:
            self.stdout.write(json.dumps(data, indent=2, default=str))
            return ""
        for s in data["slots"]:
            flag = "" if s["enabled"] else "  [DISABLED]"
            self.stdout.write(
                f"{s['slot']:<12} {s['running_count']}/{s['max_concurrent']} running  "
                f"memory {s['memory_in_use_mb']:.0f}/{s['memory_budget_mb']} MB  "
                f"cpu {s['cpu_in_use']:.0f}/{s['cpu_percent']} %  {s['waiting_count']} waiting{flag}")
            for r in s["running"]:
                paused = "  PAUSED" if r["paused"] else ""
                self.stdout.write(f"    run {r['run_id']:<7} {r['job'] or '?':<30} {r['priority'] or '':<8} "
                                  f"{r['expected_memory_mb']:>7.0f} MB  lease {r['lease_expires_in_s']:>5.1f} s"
                                  f"  {r['worker_host']}{paused}")
            for w in s["waiting"]:
                pos = f"#{w['position'] + 1}" if w["position"] is not None else "-"
                self.stdout.write(f"  . run {w['run_id']:<7} {w['job']:<30} {w['priority']:<8} {pos:>4} "
                                  f"waiting {w['waiting_s']:>6.1f} s  {w['reason']}")
        for h in data["hosts"]:
            state = "BELOW RESERVE" if h["low"] else "ok"
            self.stdout.write(f"host {h['host']} (worker pid {h['pid']}, queues {','.join(h['queues'])}): "
                              f"{h['available_mb']:.0f} MB available, reserve {h['reserve_mb']} MB: {state}"
                              + (f", paused runs {h['paused_runs']}" if h["paused_runs"] else ""))
        lat = data["admission_latency"]
        if lat["samples"]:
            self.stdout.write(f"admission decisions: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms "
                              f"({lat['samples']} recent)")
        return ""
