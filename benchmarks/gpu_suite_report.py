"""One table of the GPU suite's figures against the GPU issue's targets (reads the folder
that benchmarks/gpu_suite.sh wrote; also prints the lines for benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def rows(out: Path) -> list[tuple[str, str, str, str]]:
    """(what, measured, target, verdict) for every figure the suite produced."""
    table: list[tuple[str, str, str, str]] = []

    def add(what: str, value: float | None, target: str, ok: bool | None, fmt: str) -> None:
        shown = "missing" if value is None else format(value, fmt)
        verdict = "-" if ok is None else ("met" if ok else "MISSED")
        table.append((what, shown, target, verdict))

    xml = out / "cuda_tests.xml"
    if xml.is_file():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        n, bad = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(
            suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        table.append(("CUDA tests passed", f"{n - bad - skipped}/{n - skipped}", "all",
                      "met" if bad == 0 and n > skipped else "MISSED"))
    for r in _load(out / "hs.json") or []:
        add(f"HS step overhead {r['model']} (ours)", r["ratio_ours"], "<= 1.05",
            r["ratio_ours"] <= 1.05, ".3f")
        add(f"HS step overhead {r['model']} (authors' sort)", r.get("ratio_sort"), "-", None,
            ".3f")
    step = _load(out / "step.json")
    for r in (step or {}).get("rows", []):
        if r["path"] == "project":
            v = r["speedup_project_over_reference"]
            add(f"train step engine/reference {r['model']}", v, ">= 5x", v >= 5.0, ".2f")
    eng = _load(out / "engine.json")
    for r in (eng or {}).get("rows", []):
        n = r.get("train_images", 50_000)
        tag = f"{r['model']} ({r['step_mode']}{'' if n == 50_000 else f', {n} images'})"
        for k in ("dense", "art", "finetune"):
            v = r[f"{k}_epoch_s"]
            add(f"engine s/epoch {k} {tag}", v, "<= 3 s", v <= 3.0, ".2f")
        if r["model"] == "resnet32":
            add(f"whole ART run min {tag}", r["run_min"], "< 15 min", r["run_min"] < 15.0, ".1f")
    return table


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else ".")
    table = rows(out)
    device = (out / "device.txt").read_text().strip() if (out / "device.txt").is_file() else "?"
    commit = (out / "commit.txt").read_text().strip() if (out / "commit.txt").is_file() else "?"
    width = max(len(r[0]) for r in table) if table else 10
    print(f"device: {device} | commit {commit}")
    print(f"{'figure':{width}s}  {'measured':>9s}  {'target':>9s}  verdict")
    for what, value, target, verdict in table:
        print(f"{what:{width}s}  {value:>9s}  {target:>9s}  {verdict}")
    return 0 if all(r[3] != "MISSED" for r in table) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
