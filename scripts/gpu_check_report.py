"""The report of scripts/gpu_check.sh: every step's outcome and every figure, as markdown and JSON.

    python scripts/gpu_check_report.py OUT [--mode gpu|cpu-half]

Reads what the steps left in OUT: steps.jsonl (exit code and time of each step), the pytest JUnit
files (counts, failures, skip reasons), doctor.json (the machine, auto's path table), the kernel
benchmarks' JSON (bench/*.json) and the ladder's (ladder/ladder.json: rows and targets). Writes
OUT/gpu_check.json and OUT/gpu_check.md. Exit status 1 when a step failed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import xml.etree.ElementTree as ET


def _load(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def junit(path) -> dict | None:
    """Counts, failed tests with their first message line, and skip reasons of one JUnit file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    out = {"passed": 0, "failed": [], "skipped": []}
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            out["failed"].append({"test": name, "message": (bad.get("message") or "").splitlines()[:1]})
        elif skip is not None:
            out["skipped"].append({"test": name, "reason": skip.get("message") or ""})
        else:
            out["passed"] += 1
    return out


def _tail(path, n=15) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()[-n:]
    except OSError:
        return []


def collect(out: str, mode: str) -> dict:
    steps = []
    if os.path.isfile(os.path.join(out, "steps.jsonl")):
        with open(os.path.join(out, "steps.jsonl")) as f:
            steps = [json.loads(line) for line in f if line.strip()]
    for s in steps:
        if s["rc"] != 0:
            s["tail"] = _tail(s["log"])
    report = {"mode": mode, "steps": steps, "doctor": _load(os.path.join(out, "doctor.json")),
              "tests": {name: junit(os.path.join(out, f"{name}.xml")) for name in ("parity", "gpu-tests")},
              "benchmarks": {}, "ladder": _load(os.path.join(out, "ladder", "ladder.json"))}
    for path in sorted(glob.glob(os.path.join(out, "bench", "*.json"))):
        report["benchmarks"][os.path.basename(path)[:-5]] = _load(path)
    try:
        with open(os.path.join(out, "logs", "nvidia-smi.txt")) as f:
            report["gpu"] = f.read().strip()
    except OSError:
        report["gpu"] = None
    report["ok"] = all(s["rc"] == 0 for s in steps)
    return report


def _rows_table(rows: list[dict], limit: int = 40) -> list[str]:
    if not rows:
        return ["(no rows)"]
    known = [c for c in ("model", "batch", "rung", "videos/s", "p50 s", "peak RSS MiB", "top-1 agree",
                         "max err % range", "note") if c in rows[0]]
    cols = known if len(known) > 3 else [c for c in rows[0] if not isinstance(rows[0][c], (list, dict))][:10]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows[:limit]:
        lines.append("| " + " | ".join(f"{r.get(c):.4g}" if isinstance(r.get(c), float) else str(r.get(c, ""))
                                       for c in cols) + " |")
    return lines


def markdown(r: dict) -> str:
    md = [f"# gpu_check ({r['mode']}): {'all steps passed' if r['ok'] else 'SOME STEPS FAILED'}", ""]
    machine = (r.get("doctor") or {}).get("machine") or {}
    md += [f"- GPU: {r.get('gpu') or ', '.join(machine.get('gpus') or []) or 'none'}",
           f"- CPU: {machine.get('cpu')} ({machine.get('cores')} cores)",
           f"- torch {((machine.get('packages') or {}).get('torch'))}, CUDA {machine.get('torch_cuda')}", "",
           "## Steps", "", "| step | exit | seconds |", "|---|---|---|"]
    md += [f"| {s['step']} | {s['rc']} | {s['ms'] / 1000:.1f} |" for s in r["steps"]]
    for s in r["steps"]:
        if s["rc"] != 0:
            md += ["", f"### {s['step']} failed (exit {s['rc']}); last lines of {s['log']}", "```", *s.get("tail", []),
                   "```"]
    for name, t in r["tests"].items():
        if t is None:
            continue
        md += ["", f"## pytest {name}: {t['passed']} passed, {len(t['failed'])} failed, {len(t['skipped'])} skipped"]
        md += [f"- FAILED {f['test']}: {' '.join(f['message'])}" for f in t["failed"]]
        md += [f"- skipped {s['test']}: {s['reason']}" for s in t["skipped"][:30]]
    doctor = r.get("doctor")
    if doctor:
        auto = doctor["auto"]
        md += ["", "## backend auto (doctor)", "", auto["note"], "",
               "| path | runs | verified | error | bound | s/video |", "|---|---|---|---|---|---|"]
        for p in auto["paths"]:
            md.append(f"| {p['backend']} {p['precision']} | {'yes' if p['available'] else 'no: ' + p['why']} | "
                      f"{p['verified']} | {p['error']} | {p['bound']} | {p['seconds']} |")
    for name, data in r["benchmarks"].items():
        if data:
            md += ["", f"## {name}", "", *_rows_table(data.get("rows") or [])]
    lad = r.get("ladder")
    if lad:
        md += ["", "## ladder", "", *_rows_table(lad.get("rows") or [])]
        md += [f"- target {t['what']}: {t['value']} ({'met' if t['met'] else 'NOT met'})"
               for t in lad.get("targets", [])]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--mode", default="gpu", choices=["gpu", "cpu-half"])
    args = p.parse_args(argv)
    report = collect(args.out, args.mode)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    text = markdown(report)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"report: {os.path.join(args.out, 'gpu_check.md')} and gpu_check.json", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
