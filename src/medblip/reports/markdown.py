"""The Markdown summary (``report.md``): the headline tables and counts, linking to report.html."""

from __future__ import annotations

from typing import Any

from medblip.formatting import ci_text, fmt_cost, fmt_int, fmt_num, fmt_params, fmt_seconds
from medblip.reports.collect import Report, lower_is_better


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]], align_right_from: int = 1) -> list[str]:
    sep = ["---" if k < align_right_from else "---:" for k in range(len(header))]
    return ["| " + " | ".join(map(_cell, header)) + " |", "| " + " | ".join(sep) + " |",
            *("| " + " | ".join(map(_cell, r)) + " |" for r in rows), ""]


def _metric_cell(v: dict[str, Any] | None, best: bool) -> str:
    if not v:
        return "–"
    text = fmt_num(v.get("value"))
    if best:
        text = f"**{text}**"
    text += (v.get("mark") or "").replace("*", "\\*")
    ci = ci_text(v)
    return f"{text} {ci}" if ci else text


def _metric_choice(mc: dict) -> list[str]:
    """The metric sets chosen, the metric models (with revisions) and what could not be computed."""
    who = f" ({', '.join(mc['systems'])})" if mc.get("systems") else ""
    lines = [f"Metrics chosen{who}: {', '.join(f'`{n}`' for n in mc['sets'])}"
             + (" with the ImageCLEF text preprocessing" if mc.get("imageclef_preprocessing") else "") + "."]
    if mc.get("models"):
        lines.append("Metric models: " + "; ".join(
            f"{m['metric']}: `{m['model']}`" + (f" (revision {m['revision'][:12]})" if m.get("revision") else "")
            for m in mc["models"]) + ".")
    lines += [f"Not computed: {name}: {why}" for name, why in (mc.get("unavailable") or {}).items()]
    return [line for x in lines for line in (x, "")]


def render_markdown(rep: Report) -> str:
    out = [f"# {rep.title}", "", f"Generated {rep.created} by `medblip report`; the full report with examples, "
           "attention overlays and failure cases is [report.html](report.html).", ""]

    out += ["## Dataset", ""]
    if not rep.datasets:
        out += ["_No dataset summary among the inputs._", ""]
    for ds in rep.datasets:
        out += [f"**{ds.get('path') or ds['name']}** ({ds.get('format')}), {fmt_int(ds.get('records'))} usable records, "
                f"{fmt_int(ds.get('total_dropped'))} dropped.", ""]
        rows = [[s["split"], fmt_int(s["records"]), fmt_num(s["words_mean"], 1), fmt_num(s["words_p95"], 1)]
                for s in ds["splits"]]
        out += _table(["split", "records", "words mean", "words p95"], rows)

    out += ["## Comparison", ""]
    if not rep.comparisons:
        out += ["_No comparison or evaluation among the inputs._", ""]
    for c in rep.comparisons:
        where = ", ".join(x for x in (c.get("split"), f"{fmt_int(c['n_images'])} images" if c.get("n_images") else None) if x)
        out += [f"### {c['name']}" + (f" ({where})" if where else ""), ""]
        legend = ("Value [95% CI]; **bold** = best per column among comparable rows (same images, output "
                  "not collapsed; ↓ lower is better).")
        if c.get("has_p") and c.get("reference"):
            legend += (f" * p<{c['alpha']:g}, ** p<0.01, *** p<0.001, paired test against the reference "
                       f"`{c['reference']}`.")
        out += [legend, ""]
        out += [line for mc in c.get("metric_choices") or [] for line in _metric_choice(mc)]
        for k, g in enumerate(c.get("groups") or [{"title": "", "metrics": c["metrics"]}]):
            header = ["system", *(m + (" ↓" if lower_is_better(m) else "") for m in g["metrics"])]
            rows = []
            for s in c["systems"]:
                name = s["name"] + (" (ref)" if s["name"] == c.get("reference") else "")
                rows.append([name, *(_metric_cell(s["metrics"].get(m), s["name"] in c["best"].get(m, []))
                                     for m in g["metrics"])])
            if k == 0:
                header.append("s/image")
                for row, s in zip(rows, c["systems"], strict=True):
                    row.append(fmt_num(s.get("seconds_per_image")))
            out += _table(header, rows)

    out += ["## Ablation", ""]
    if not rep.ablations:
        out += ["_No ablation among the inputs._", ""]
    for a in rep.ablations:
        out += [f"### {a['name']}", ""]
        if a["cost_columns"]:
            out += _table(["strategy", *(col["label"] for col in a["cost_columns"])],
                          [[row["strategy"], *(fmt_cost(col["key"], row["cost"].get(col["key"]))
                                               for col in a["cost_columns"])] for row in a["rows"]])
        for g in a.get("groups") or [{"metrics": a["metrics"]}]:
            header = ["strategy", *(m + (" ↓" if lower_is_better(m) else "") for m in g["metrics"])]
            rows = [[row["strategy"], *(_metric_cell(row["metrics"].get(m), row["strategy"] in a["best"].get(m, []))
                                        for m in g["metrics"])] for row in a["rows"]]
            out += _table(header, rows)
        if a.get("cost_plot") and a["cost_plot"].get("asset"):
            out += [f"![{a['headline']} vs. cost]({a['cost_plot']['asset']})", ""]

    out += ["## Training", ""]
    if not rep.training:
        out += ["_No training run among the inputs._", ""]
    else:
        rows = [[t["name"], t.get("strategy") or "–", t.get("status") or "–", fmt_int(t.get("epochs")),
                 f"{fmt_num(t['best_metric'])} {t.get('best_metric_name') or ''}".strip() if t.get("best_metric")
                 is not None else "–", fmt_params(t.get("trainable_params")),
                 fmt_seconds(t["cost"].get("time_per_epoch")), fmt_num(t["cost"].get("images_per_second"), 1)]
                for t in rep.training]
        out += _table(["run", "strategy", "status", "epochs", "best", "trainable", "time/epoch", "images/s"], rows, 3)
        if rep.training_plot:
            out += [f"![training curves]({rep.training_plot})", ""]

    out += ["## Failure cases", ""]
    if not rep.failures.get("systems"):
        out += ["_No predictions among the inputs._", ""]
    else:
        score = rep.failures.get("score")
        rows = []
        for f in rep.failures["systems"]:
            worst = f["lowest"][0] if f["lowest"] else None
            worst_txt = "–"
            if worst and worst["systems"]:
                sc = worst["systems"][0]["scores"].get(score)
                worst_txt = f"{worst['id']} ({score} {fmt_num(sc, 2)})"
            rows.append([f["system"], fmt_int(f["n"]), f"{f['wrong_modality_count']} / {f['modality_checked']}",
                         f"{f['wrong_side_count']} / {f['side_checked']}", worst_txt])
        out += _table(["system", "images", "wrong modality", "wrong side", "lowest-scoring"], rows)

    if rep.grounding:
        out += ["## Grounding", ""]
        for g in rep.grounding:
            out += [f"### {g['name']} ({fmt_int(g.get('n'))} findings)", ""]
            out += _table(["map", "pointing (strict)", "pointing (tolerant)", "energy"],
                          [[x["map"], fmt_num(x["hit"]), fmt_num(x["hit_tol"]), fmt_num(x["energy"])] for x in g["table"]])

    out += ["## Inputs", ""]
    out += [f"- {i['kind']}: `{i['path']}`" for i in rep.inputs]
    if rep.notes:
        out += ["", "## Notes", "", *(f"- {n}" for n in rep.notes)]
    return "\n".join(out).rstrip("\n") + "\n"
