"""The timing report of a run: each phase planned and measured, throughput, accuracy when solutions
are known, and the projection for the hidden rerun.

Inputs: the runner's run.json (as a dict), optionally the accuracy figures and the projections.
Outputs: `timing_report(...)` -> a JSON-ready dict, and `render(report)` -> the text printed by the
dry run. Field names (JSON):
  phases[]           name, planned_s (None: not planned, e.g. the fallback), actual_s, status
  total              planned_s (the plan's end - start), actual_s (runner end - start), deviation
                     ((actual - planned) / planned), within_10pct
  throughput         train_samples_per_s, train_steps_per_s, predict_views_per_s, calibration (unit
                     times, warm-up and launch seconds measured on one device), achieved_gflops
  training           steps planned/done, stop reason, re-plans, fit (loss and accuracy on the
                     demonstration pairs: first and last logged interval)
  accuracy           per model ("post-trained", "un-adapted"; "post-trained (same views)" when the
                     baseline was cut short): pass@1, pass@2, oracle (Kaggle way, per test input),
                     passed/total, views; submission_score (Kaggle's metric on the file)
  projection[]       Projection.to_json() for each model projected, and the assumptions list
  answers            who answered the test inputs in submission.json: {"adapted", "unadapted",
                     "fallback": count} from run.json's "answers" (None when run.json has none)
  vote               run.json's "vote": the voter's first call at load and in calibration (compile_s,
                     calibration_compile_s; outside the plan), s_per_view measured, vote_write planned_s
                     and actual_s
  queue              per prediction phase run with --predict-queue dynamic: items, per_worker (items,
                     rows, seconds per worker slot), retried, given_up, left, rounds, incomplete
"""

from __future__ import annotations

from typing import Any


def _phase_rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": p["name"], "planned_s": p.get("planned_s"), "actual_s": p.get("actual_s"),
             "status": p.get("status")} for p in run.get("phases", [])]


def answer_counts(run: dict[str, Any]) -> dict[str, int] | None:
    """run.json's count of test inputs per source (adapted, unadapted, fallback); None when it has
    none or they are not counts."""
    counts = (run.get("answers") or {}).get("counts") if isinstance(run.get("answers"), dict) else None
    if not isinstance(counts, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                               for v in counts.values()):
        return None
    return {k: counts.get(k, 0) for k in ("adapted", "unadapted", "fallback")}


def answers_line(counts: dict[str, int]) -> str:
    """"N test inputs: a by the adapted model, u by the un-adapted model, f by the fallback"."""
    return (f"{sum(counts.values())} test inputs: {counts['adapted']} by the adapted model, {counts['unadapted']} "
            f"by the un-adapted model, {counts['fallback']} by the fallback")


def timing_report(run: dict[str, Any], *, accuracy: dict[str, Any] | None = None,
                  projections: list[dict[str, Any]] | None = None, assumptions: list[str] | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    planned = run.get("planned_total_s")
    actual = run.get("actual_total_s")
    deviation = (actual - planned) / planned if planned and actual is not None else None
    train = run.get("train") or {}
    cal = run.get("calibration") or {}
    plan = run.get("plan") or {}
    phases = {p["name"]: p for p in run.get("phases", [])}
    predict = run.get("predict") or {}
    pred_phase = phases.get(predict.get("tag", "adapted")) or {}
    views_per_s = predict.get("records", 0) / pred_phase["actual_s"] if pred_phase.get("actual_s") else None
    samples = train.get("samples_per_s")
    gflops = {}
    if cal.get("train_step_s"):
        gflops["train"] = cal["train_flops_per_step"] / cal["train_step_s"] / 1e9
    if cal.get("predict_batch_s"):
        gflops["predict"] = cal["predict_flops_per_batch"] / cal["predict_batch_s"] / 1e9
    return {
        "format": "trm-kit-timing-report/1",
        "device": {"run_mode": run.get("run_mode"), "device": run.get("device"), "world": run.get("world"),
                   "hardware": (run.get("environment") or {}).get("hardware")},
        "phases": _phase_rows(run),
        "total": {"planned_s": planned, "actual_s": actual, "deviation": deviation,
                  "within_10pct": deviation is not None and abs(deviation) <= 0.10,
                  "deadline_s": run.get("deadline", 0) - run.get("start_time", 0),
                  "finished_before_deadline": run.get("finished_before_deadline")},
        "throughput": {"train_samples_per_s": samples,
                       "train_steps_per_s": samples / plan["train_batch"] if samples and plan.get("train_batch") else None,
                       "predict_views_per_s": views_per_s, "calibration": cal, "achieved_gflops": gflops},
        "training": {"steps_planned": (plan or {}).get("steps"), "steps_done": train.get("steps_done"),
                     "stop_reason": train.get("stop_reason"), "replans": len(train.get("replans") or []),
                     "views": predict.get("views"), "fit": _fit(train), "spend": train.get("spend"),
                     "per_task": train.get("per_task")},
        "accuracy": accuracy,
        "projection": projections or [],
        "assumptions": assumptions or [],
        "problems": run.get("problems", []),
        "answers": answer_counts(run),
        "vote": run.get("vote"),
        "queue": {p["name"]: p["queue"] for p in run.get("phases", []) if p.get("queue")},
        **(extra or {}),
    }


def _fit(train: dict[str, Any]) -> dict[str, Any] | None:
    """How the demonstration pairs were fitted: the first and last logged interval (loss, token and
    exact accuracy over the training rows). Shows adaptation even when no test answer is right yet."""
    first, last = train.get("first_metrics") or {}, train.get("last_metrics") or {}
    if not first or not last:
        return None
    keys = ("step", "loss", "accuracy", "exact_accuracy")
    return {"first": {k: first.get(k) for k in keys}, "last": {k: last.get(k) for k in keys}}


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:8.1f}"


def render(report: dict[str, Any]) -> str:
    """The timing report as text. Long on purpose: one section after another, in the order the
    report prints them, each a few appends; split up it would only scatter the layout."""
    r = report
    lines = ["trm-kit timing report", "=" * 21]
    if r.get("data"):
        d = r["data"]
        lines.append(f"data: {d.get('label')} ({d.get('tasks')} tasks, {d.get('test_inputs')} test inputs); "
                     f"checkpoint: {r.get('checkpoint', {}).get('path')} ({r.get('checkpoint', {}).get('model')})")
    dev = r["device"]
    hw = dev.get("hardware") or {}
    lines.append(f"device here: {dev.get('world')} x {dev.get('device')} ({hw.get('cpu_count')} CPU cores, "
                 f"{hw.get('gpu_count', 0)} GPU); run mode {dev.get('run_mode')}")
    t = r["total"]
    lines.append(f"budget: {t['deadline_s']:.0f} s from start to the runner's deadline")
    lines.append("")
    lines.append(f"{'phase':16}{'planned s':>10}{'actual s':>10}  status")
    for p in r["phases"]:
        lines.append(f"{p['name']:16}{_s(p['planned_s']):>10}{_s(p['actual_s']):>10}  {p['status']}")
    dev_txt = "n/a" if t["deviation"] is None else f"{100 * t['deviation']:+.1f}%"
    ok = "within" if t["within_10pct"] else "OUTSIDE"
    lines.append(f"{'total':16}{_s(t['planned_s']):>10}{_s(t['actual_s']):>10}  {dev_txt} ({ok} the +-10% target); "
                 f"{'finished before' if t['finished_before_deadline'] else 'did NOT finish before'} the deadline")
    lines.append("")
    th = r["throughput"]
    cal = th.get("calibration") or {}
    if cal:
        lines.append(f"calibration on {cal.get('device')}: {cal.get('train_step_s', 0):.4g} s/step of "
                     f"{cal.get('train_batch')} rows, {cal.get('predict_batch_s', 0):.4g} s per prediction batch of "
                     f"{cal.get('predict_batch')}; warm-up {cal.get('train_warmup_s', 0):.1f} s (train) / "
                     f"{cal.get('predict_warmup_s', 0):.1f} s (predict), process launch {cal.get('launch_s', 0):.1f} s "
                     "(all excluded from the unit times)")
        lines.append(memory_line(cal))
    parts = []
    if th.get("train_samples_per_s"):
        parts.append(f"train {th['train_samples_per_s']:.1f} samples/s ({th['train_steps_per_s']:.2f} steps/s)")
    if th.get("predict_views_per_s"):
        parts.append(f"predict {th['predict_views_per_s']:.1f} views/s (launch included)")
    g = th.get("achieved_gflops") or {}
    if g:
        parts.append("achieved " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in g.items()))
    if parts:
        lines.append("throughput: " + "; ".join(parts))
    v = r.get("vote") or {}
    if v:
        per = v.get("s_per_view")
        lines.append(f"vote: first call {v.get('compile_s') or 0:.2f} s at load (compiling or loading the voter; "
                     f"{v.get('calibration_compile_s') or 0:.2f} s in calibration), outside the plan; "
                     + (f"{per * 1e6:.2f} us/view measured; " if per else "")
                     + f"vote_write planned {_s(v.get('planned_s')).strip()} s, took {_s(v.get('actual_s')).strip()} s")
    for tag, q in (r.get("queue") or {}).items():
        per = ", ".join(f"{w} {d['items']} ({d['rows']} rows)" for w, d in q.get("per_worker", {}).items())
        lines.append(f"work queue ({tag}): {q.get('items')} items, taken by {per}; retried {q.get('retried')}, "
                     f"given up {q.get('given_up')}")
    tr = r["training"]
    lines.append(f"training: {tr.get('steps_done')} steps done of {tr.get('steps_planned')} planned, "
                 f"{tr.get('replans')} re-plan(s); stop: {tr.get('stop_reason')}; K = {tr.get('views')} views")
    per = tr.get("per_task") or {}
    if per:
        spend = tr.get("spend")
        how = f"per-task, a fit check every {spend['every']} steps" if isinstance(spend, dict) else "uniform"
        line = f"spending: {how}; rows per task planned {per.get('rows_planned')}"
        if per.get("rows"):
            line += f", received min {per['rows']['min']} / median {per['rows']['median']} / max {per['rows']['max']}"
        if per.get("fitted"):
            line += "; tasks fitted at the checks: " + ", ".join(f"{n} at {s}" for s, n in per["fitted"][-12:])
        lines.append(line)
    fit = tr.get("fit")
    if fit:
        a, b = fit["first"], fit["last"]
        lines.append(f"demonstration pairs (training rows): loss {a['loss']:.3f} -> {b['loss']:.3f}, token accuracy "
                     f"{a['accuracy']:.3f} -> {b['accuracy']:.3f}, exact {a['exact_accuracy']:.3f} -> "
                     f"{b['exact_accuracy']:.3f} (steps {a['step']} -> {b['step']})")
    acc = r.get("accuracy")
    if acc:
        lines.append("")
        lines.append(f"accuracy on {acc.get('test_inputs')} test inputs (Kaggle way: per test input, two attempts):")
        for name in ("post-trained", "post-trained (same views)", "un-adapted"):
            a = acc.get(name)
            if a is None and name == "post-trained (same views)":
                continue
            if a is None:
                lines.append(f"  {name:25} not available ({acc.get(name + ' note', 'no predictions')})")
            else:
                lines.append(f"  {name:25} pass@2 {a['passed']}/{a['total']} = {a['pass@2']:.3f}   pass@1 "
                             f"{a['pass@1']:.3f}   oracle {a['oracle']:.3f}   ({a['views']} views per test input)")
        if acc.get("submission_score") is not None:
            lines.append(f"  submission.json scores {acc['submission_score']:.3f} (fallback attempts included)")
    if r.get("failed_tasks"):
        lines.append("")
        lines.append("tasks kept on the fallback (failed validation or larger than the canvas):")
        for f in r["failed_tasks"][:20]:
            lines.append(f"  {f}")
        if len(r["failed_tasks"]) > 20:
            lines.append(f"  ... and {len(r['failed_tasks']) - 20} more")
    sub = r.get("submission")
    if sub:
        lines.append("")
        state = "valid" if sub.get("valid") else f"INVALID ({len(sub.get('problems', []))} problems)"
        counts = r.get("answers")
        who = answers_line(counts) if counts else f"{sub.get('test_inputs')} test inputs (who answered is not " \
                                                   "recorded in run.json)"
        lines.append(f"submission: {state}; {who}")
    if r.get("projection"):
        lines.append("")
        lines.append("projection for the hidden rerun:")
        for p in r["projection"]:
            lines.append(p["text"])
        lines.append("assumptions:")
        for a in r.get("assumptions", []):
            lines.append(f"  - {a}")
    if r.get("problems"):
        lines.append("")
        lines.append(f"problems logged by the runner ({len(r['problems'])}):")
        for p in r["problems"][:15]:
            lines.append(f"  - {p.splitlines()[0]}")
    if r.get("wall_s") is not None:
        lines.append("")
        lines.append(f"dry run wall time: {r['wall_s']:.1f} s")
    return "\n".join(lines)


def memory_line(cal: dict[str, Any]) -> str:
    """How the calibration sized the batches: the peak-memory fits per row (CUDA), or why not."""
    compile_ = f"compile: train {cal.get('train_compile', 'off')}, predict {cal.get('predict_compile', 'off')}"
    if not cal.get("train_memory"):
        return f"memory: not measured on {cal.get('device')} (peak memory is fitted on CUDA only); {compile_}"
    from trm_core.memory import MemoryFit

    budget, head = cal.get("memory_budget_bytes"), cal.get("memory_headroom", 0.0)
    train = MemoryFit.from_json(cal["train_memory"]).render(budget, head)
    pred = MemoryFit.from_json(cal["predict_memory"]).render(budget, head) if cal.get("predict_memory") else "n/a"
    micro = cal.get("train_micro_batch") or cal.get("train_batch")
    return (f"memory fit (peak at two small batches): training {train}; prediction {pred}; micro-batch {micro} of "
            f"{cal.get('train_batch')} local rows, prediction batch {cal.get('predict_batch')}; {compile_}")


def timing_section(report: dict[str, Any]):
    """The timing report as a section of the HTML page: each phase planned vs actual as a chart and
    a table, then the whole text report."""
    from trm_lab.page import Section, bar_plot, esc, plot_or_hint, table

    phases = report.get("phases") or []
    names = [p["name"] for p in phases]
    chart = bar_plot(names, {"planned": [p.get("planned_s") or 0.0 for p in phases],
                             "actual": [p.get("actual_s") or 0.0 for p in phases]},
                     "phases: planned vs actual", "seconds", "timing chart") if phases else None
    t = report.get("total") or {}
    dev = t.get("deviation")
    rows = [(p["name"], _s(p.get("planned_s")).strip(), _s(p.get("actual_s")).strip(), p.get("status") or "-")
            for p in phases]
    rows.append(("total", _s(t.get("planned_s")).strip(), _s(t.get("actual_s")).strip(),
                 "n/a" if dev is None else f"{100 * dev:+.1f}%"))
    body = (plot_or_hint(chart) + table(["phase", "planned s", "actual s", "status"], rows, cls="phases")
            + f"<details><summary>the whole timing report</summary><pre>{esc(render(report))}</pre></details>")
    return Section("timing", "Timing", body)
