"""Smoke test of the benchmark scripts: each runs in a tiny configuration and prints its table.

No timing assertions (no test may depend on machine speed); this only guards against the
scripts rotting as the package changes. The scripts' main(argv) runs in this process (no
second torch import); the per-path memory mode, which spawns subprocesses, is marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def _run(script: str, *args: str, timeout: float = 120.0) -> str:
    """Run a benchmark script with the test interpreter; return stdout (fail on non-zero exit)."""
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _main(script: str, *args: str) -> None:
    """Import a benchmark script as a module and call its main(argv) in this process."""
    spec = importlib.util.spec_from_file_location(f"_bench_{Path(script).stem}", BENCH / script)
    assert spec is not None and spec.loader is not None
    mod: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(list(args))


def test_data_path_quick_prints_table_and_json(tmp_path: Path, capsys) -> None:
    """--quick runs all three paths on the CPU and reports a positive rate for each."""
    out_json = tmp_path / "dp.json"
    _main("bench_data_path.py", "--quick", "--device", "cpu", "--threads", "1",
               "--n", "512", "--workers", "1", "0", "--json", str(out_json))
    out = capsys.readouterr().out
    assert "ratio project / ref-w1" in out and "load average" in out
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["path"] for r in rows] == ["project", "ref-w1", "ref-w0"]
    assert all(r["batches_per_s"] > 0 for r in rows)


def test_train_step_quick_prints_table_and_json(tmp_path: Path, capsys) -> None:
    """--quick trains both paths (HS on) for a few steps and reports the speed-up, and the
    ART run estimate from measured parts."""
    out_json = tmp_path / "ts.json"
    _main("bench_train_step.py", "--quick", "--device", "cpu", "--threads", "1",
               "--models", "resnet8", "--n", "256", "--workers", "1", "--art-epochs", "3",
               "--json", str(out_json))
    out = capsys.readouterr().out
    assert "speed-up project / reference" in out
    assert "project: estimated 60 + 3 + 160 epoch ART run" in out
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["path"] for r in rows] == ["project", "reference"]
    assert all(r["ms_per_step"] > 0 and r["epoch_s"] > 0 for r in rows)
    project = rows[0]
    assert project["run_min"] > project["run_train_min"] > 0 and "run_min" not in rows[1]
    # the training part is exactly the 223 epochs at the reported seconds per epoch
    assert abs(project["run_train_min"] * 60 - 223 * project["epoch_s"]) < 1e-6 * project["epoch_s"] * 223


@pytest.mark.slow
def test_per_path_memory_children_report_peaks(tmp_path: Path) -> None:
    """The per-path memory subprocesses run and return a positive peak RSS."""
    out_json = tmp_path / "mem.json"
    _run("bench_data_path.py", "--quick", "--device", "cpu", "--threads", "1", "--n", "512",
         "--workers", "1", "--memory", "subprocess", "--json", str(out_json))
    rows = json.loads(out_json.read_text())["rows"]
    assert all(r["peak_rss_mib"] > 0 for r in rows)
    assert rows[1]["workers_uss_mib"] > 0  # the reference's live worker was measured


@pytest.mark.slow  # bench_hs_overhead.py has no --quick mode yet: ~25 s on a loaded 2-core CPU
def test_hs_overhead_runs(capsys) -> None:
    """The other benchmark of `make bench` still runs (tiny model, two steps per mode)."""
    _main("bench_hs_overhead.py", "--models", "resnet8", "--steps", "2", "--block", "1",
          "--threads", "1")
    assert "resnet8" in capsys.readouterr().out


def test_engine_epoch_quick_and_the_gpu_suite_report(tmp_path: Path, capsys) -> None:
    """The real-engine epoch benchmark runs (tiny) and the GPU suite's report reads its JSON
    into the table of figures against targets."""
    _main("bench_engine_epoch.py", "--quick", "--device", "cpu", "--threads", "1",
          "--models", "resnet8", "--json", str(tmp_path / "engine.json"))
    out = capsys.readouterr().out
    assert "run min" in out and "resnet8" in out
    rows = json.loads((tmp_path / "engine.json").read_text())["rows"]
    assert rows[0]["step_mode"] == "off" and rows[0]["art_epoch_s"] > 0
    spec = importlib.util.spec_from_file_location("_report", BENCH / "gpu_suite_report.py")
    assert spec is not None and spec.loader is not None
    report: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    table = report.rows(tmp_path)
    assert [r[0] for r in table][:3] == ["engine s/epoch dense resnet8 (off, 512 images)",
                                         "engine s/epoch art resnet8 (off, 512 images)",
                                         "engine s/epoch finetune resnet8 (off, 512 images)"]
    assert all(r[1] != "missing" for r in table)


def test_gpu_suite_refuses_without_a_gpu() -> None:
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present: the suite would run for minutes")
    proc = subprocess.run(["bash", str(BENCH / "gpu_suite.sh")], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**__import__("os").environ,
                                                       "PYTHON": sys.executable})
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr
