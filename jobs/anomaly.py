"""Judging a finished run against its job's baseline, and a job's trend.

Robust z-score: ``z = (x - median) / (1.4826 * MAD)``; 1.4826*MAD estimates the standard
deviation of normal data, but a few wild runs barely move it (unlike mean and stddev).  A
spread floor of 5% of the median keeps a job whose runs are all identical (MAD = 0) from
calling a 1% wobble "infinitely anomalous".  A run is only anomalous when it is ALSO beyond
the baseline p95 and beyond a minimum absolute and relative margin, so short or jittery
jobs stay quiet.  No judgement at all before the job has a baseline (BASELINE_MIN_RUNS
successful runs).

- high_duration: z > ANOMALY_Z, x > p95, x - median >= max(ANOMALY_MIN_SECONDS, ANOMALY_MIN_REL*median)
- too_fast (successful runs): z < -ANOMALY_Z, x < TOO_FAST_RATIO*median, median - x >= ANOMALY_MIN_SECONDS
- high_memory: like high_duration with ANOMALY_MIN_MB
- anomaly (trend): recent median (TREND_WINDOW latest successes) DEGRADED_PCT above the
  reference median (the baseline window without its newest TREND_WINDOW runs) ("degraded"),
  or a robust spread 1.4826*MAD/median above UNSTABLE_CV ("unstable").
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jobs import alerts
from jobs.baselines import has_baseline
from jobs.conf import conf
from jobs.models import Alert, Job, JobRun, RunState

MAD_TO_SIGMA = 1.4826
SPREAD_FLOOR_REL = 0.05


@dataclasses.dataclass(frozen=True)
class Finding:
    type: str
    severity: str
    message: str
    value: float
    median: float
    z: float


def robust_z(value: float, median: float, mad: float | None, abs_floor: float) -> float:
    """Distance of ``value`` from ``median`` in robust standard deviations."""
    scale = max(MAD_TO_SIGMA * (mad or 0.0), SPREAD_FLOOR_REL * abs(median), abs_floor)
    return (value - median) / scale


def judge_duration(job: Job, duration: float, *, succeeded: bool) -> Finding | None:
    """high_duration or too_fast for one run (None: normal, or no baseline)."""
    if not has_baseline(job):
        return None
    med = float(job.baseline_duration_p50)
    p95 = float(job.baseline_duration_p95 or med)
    z = robust_z(duration, med, job.baseline_duration_mad, 1e-3)
    margin = max(conf.ANOMALY_MIN_SECONDS, conf.ANOMALY_MIN_REL * med)
    if z > conf.ANOMALY_Z and duration > p95 and duration - med >= margin:
        severity = Alert.Severity.WARNING
        if job.timeout_seconds and duration >= 0.8 * job.timeout_seconds:
            severity = Alert.Severity.ERROR  # about to hit its timeout
        return Finding(Alert.Type.HIGH_DURATION, severity,
                       f"{job.name}: run took {duration:.2f} s, {duration / med:.1f}x its median {med:.2f} s "
                       f"(baseline p95 {p95:.2f} s, robust z {z:.1f})", duration, med, z)
    if (succeeded and z < -conf.ANOMALY_Z and duration < conf.TOO_FAST_RATIO * med
            and med - duration >= conf.ANOMALY_MIN_SECONDS):
        return Finding(Alert.Type.TOO_FAST, Alert.Severity.WARNING,
                       f"{job.name}: run succeeded in {duration:.2f} s, only {duration / med:.0%} of its median "
                       f"{med:.2f} s: did it really do its work?", duration, med, z)
    return None


def judge_memory(job: Job, peak_mb: float) -> Finding | None:
    if not has_baseline(job) or job.baseline_memory_p50 is None:
        return None
    med = float(job.baseline_memory_p50)
    p95 = float(job.baseline_memory_p95 or med)
    z = robust_z(peak_mb, med, job.baseline_memory_mad, 0.5)
    margin = max(conf.ANOMALY_MIN_MB, conf.ANOMALY_MIN_REL * med)
    if z > conf.ANOMALY_Z and peak_mb > p95 and peak_mb - med >= margin:
        severity = Alert.Severity.WARNING
        if job.memory_limit_mb and peak_mb >= 0.9 * job.memory_limit_mb:
            severity = Alert.Severity.ERROR  # about to be killed by its memory limit
        return Finding(Alert.Type.HIGH_MEMORY, severity,
                       f"{job.name}: run peaked at {peak_mb:.1f} MB, {peak_mb / med:.1f}x its median {med:.1f} MB "
                       f"(baseline p95 {p95:.1f} MB, robust z {z:.1f})", peak_mb, med, z)
    return None


def trend(*, baseline_runs: int, duration_p50: float | None, duration_mad: float | None,
          memory_p50: float | None, recent_runs: int | None, recent_duration_p50: float | None,
          recent_memory_p50: float | None, reference_duration_p50: float | None = None,
          reference_memory_p50: float | None = None) -> dict[str, Any]:
    """Recent behaviour versus the job's normal.

    The normal is the reference median (baseline window without its newest runs) when known,
    else the baseline median.  Returns ``status`` ('learning' | 'degraded' | 'unstable' |
    'stable'), ``reasons`` (list of str), ``percent_slower`` and ``memory_change_pct`` (recent
    median vs the normal, %, None without data) and ``duration_cv`` (robust spread
    1.4826*MAD/median of the baseline).
    """
    out: dict[str, Any] = {"status": "learning", "reasons": [], "percent_slower": None,
                           "memory_change_pct": None, "duration_cv": None}
    if not baseline_runs or baseline_runs < conf.BASELINE_MIN_RUNS or duration_p50 is None:
        return out
    reasons: list[str] = []
    enough_recent = (recent_runs or 0) >= min(conf.TREND_WINDOW, 3)
    normal_d = reference_duration_p50 or duration_p50
    normal_m = reference_memory_p50 or memory_p50
    if recent_duration_p50 is not None and normal_d > 0:
        pct = (recent_duration_p50 / normal_d - 1) * 100
        out["percent_slower"] = round(pct, 1)
        if enough_recent and pct >= conf.DEGRADED_PCT and recent_duration_p50 - normal_d >= conf.ANOMALY_MIN_SECONDS:
            reasons.append(f"recent runs take {recent_duration_p50:.2f} s, {pct:.0f}% slower than the usual "
                           f"{normal_d:.2f} s")
    if recent_memory_p50 is not None and normal_m:
        pct = (recent_memory_p50 / normal_m - 1) * 100
        out["memory_change_pct"] = round(pct, 1)
        if enough_recent and pct >= conf.DEGRADED_PCT and recent_memory_p50 - normal_m >= conf.ANOMALY_MIN_MB:
            reasons.append(f"recent runs peak at {recent_memory_p50:.1f} MB, {pct:.0f}% above the usual "
                           f"{normal_m:.1f} MB")
    unstable: list[str] = []
    if duration_p50 > 0:
        spread = MAD_TO_SIGMA * (duration_mad or 0.0)
        out["duration_cv"] = round(spread / duration_p50, 3)
        if out["duration_cv"] >= conf.UNSTABLE_CV and spread >= conf.ANOMALY_MIN_SECONDS:
            unstable.append(f"unstable: durations spread +-{spread:.2f} s around {duration_p50:.2f} s "
                            f"(cv {out['duration_cv']:.2f})")
    out["status"] = "degraded" if reasons else "unstable" if unstable else "stable"
    out["reasons"] = reasons + unstable
    return out


def job_trend(job: Job, recent: tuple[int, float | None, float | None] | None,
              reference: tuple[float | None, float | None] = (None, None)) -> dict[str, Any]:
    n, d50, m50 = recent or (0, None, None)
    return trend(baseline_runs=job.baseline_runs, duration_p50=job.baseline_duration_p50,
                 duration_mad=job.baseline_duration_mad, memory_p50=job.baseline_memory_p50, recent_runs=n,
                 recent_duration_p50=d50, recent_memory_p50=m50, reference_duration_p50=reference[0],
                 reference_memory_p50=reference[1])


def evaluate(run: JobRun, job: Job, open_alerts: dict[str, str],
             recent: tuple[int, float | None, float | None] | None = None,
             reference: tuple[float | None, float | None] = (None, None)) -> list[Finding]:
    """Raise the alerts ``run`` deserves and resolve the ones it shows recovered.

    ``open_alerts`` (type -> severity of the job's open alerts) is read by the caller once
    and kept up to date here, so that nothing is written when nothing changes.
    """
    findings: list[Finding] = []
    succeeded = run.state == RunState.SUCCEEDED
    executed = run.duration_s is not None and run.state in (RunState.SUCCEEDED, RunState.FAILED)
    if not executed:
        return findings
    recovered: list[str] = []
    duration_finding = judge_duration(job, float(run.duration_s), succeeded=succeeded)
    if duration_finding:
        findings.append(duration_finding)
    if succeeded:
        recovered += [t for t in (Alert.Type.HIGH_DURATION, Alert.Type.TOO_FAST)
                      if duration_finding is None or duration_finding.type != t]
    if run.peak_memory_mb is not None:
        memory_finding = judge_memory(job, float(run.peak_memory_mb))
        if memory_finding:
            findings.append(memory_finding)
        elif succeeded:
            # Also clears a "killed for memory" alert: this run stayed within its limit.
            recovered.append(Alert.Type.HIGH_MEMORY)
    if succeeded and recent is not None:
        tr = job_trend(job, recent, reference)
        if tr["status"] in ("degraded", "unstable"):
            severity = Alert.Severity.WARNING if tr["status"] == "degraded" else Alert.Severity.INFO
            findings.append(Finding(Alert.Type.ANOMALY, severity, f"{job.name}: " + "; ".join(tr["reasons"]),
                                    recent[1] or 0.0, job.baseline_duration_p50 or 0.0, 0.0))
        elif tr["status"] == "stable":
            recovered.append(Alert.Type.ANOMALY)
    for finding in findings:
        alerts.raise_alert(job, finding.type, finding.severity, finding.message, run, open_alerts=open_alerts)
        open_alerts[finding.type] = finding.severity
    to_resolve = [t for t in recovered if t in open_alerts]
    if to_resolve:
        alerts.resolve_alerts(job, to_resolve)
        for t in to_resolve:
            open_alerts.pop(t, None)
    return findings
