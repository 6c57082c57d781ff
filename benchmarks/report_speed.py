"""How long `multikpi report` takes on a run directory, phase by phase: the whole command in a fresh
process (imports included), then, in this process, reading the run, each figure and the template.

    python benchmarks/report_speed.py RUN_DIR [--repeat 3]

The issue's budget: under 10 s for the 1M-row feed benchmark run (`make bench-data`, then
`multikpi train configs/feed_benchmark.yaml data.valid=bench-data/test.parquet`). Prints wall and
CPU seconds; CPU seconds are the steadier number on a shared machine."""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from multikpi.report import eval_figures, figures
from multikpi.report.html_report import render_page, run_page
from multikpi.report.run_report import load_run_report
from multikpi.report.tables import render_table

FIGURES = [figures.loss_figure, figures.metric_figure, figures.weights_figure, eval_figures.calibration_figure,
           eval_figures.regression_figure, eval_figures.gates_figure, eval_figures.gates_over_steps_figure,
           eval_figures.coverage_figure]


def timed(work) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def whole_command(run_dir: str, repeat: int) -> list[list[object]]:
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for k in range(repeat):
            command = [sys.executable, "-c", "import resource, sys; from multikpi.cli.main import main; "
                       f"code = main(['report', {run_dir!r}, '--out', {out + '/report.html'!r}]); "
                       "usage = resource.getrusage(resource.RUSAGE_SELF); "
                       "print(usage.ru_utime + usage.ru_stime, file=sys.stderr)"]
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            size = Path(out, "report.html").stat().st_size / 1e6
            rows.append([f"multikpi report (run {k + 1})", time.perf_counter() - started,
                         float(result.stderr.split()[-1]), f"{size:.2f} MB"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = whole_command(args.run_dir, args.repeat)
    wall, cpu, report = timed(lambda: load_run_report(args.run_dir))
    rows.append([f"read the run ({len(report.history)} steps)", wall, cpu, ""])  # type: ignore[attr-defined]
    for draw in FIGURES:
        wall, cpu, figure = timed(lambda draw=draw: draw(report))
        size = f"{len(figure.png) / 1e3:.0f} kB" if figure is not None else "(no data)"  # type: ignore[attr-defined]
        rows.append([draw.__name__, wall, cpu, size])
    wall, cpu, page = timed(lambda: render_page("run.html.j2", run_page(report)))  # every figure again
    rows.append(["run_page + template (all figures)", wall, cpu, f"{len(page) / 1e6:.2f} MB"])  # type: ignore[arg-type]
    print(render_table(["phase", "wall s", "cpu s", "output"], rows, style="markdown"))


if __name__ == "__main__":
    main()
