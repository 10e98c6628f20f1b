#!/usr/bin/env python3
"""The GPU check's report: gathers what gpu_check.sh recorded into
OUT/gpu_check.json and OUT/gpu_check.md, and prints the final summary table.

Called by tools/gpu/gpu_check.sh as its last step (standard library only):

    python3 tools/gpu/gpu_report.py --out OUT --detail OUT/detail [--budget-s 420 ...]

Reads:
  DETAIL/stages.tsv          one line per stage: name, status, rc, budget_s, elapsed_s, note
  DETAIL/cuda_libs.tsv       library -> resolved path (or MISSING)
  DETAIL/gpu.csv             nvidia-smi --query-gpu line(s)
  DETAIL/<stage>/result.json what an slmlp stage binary wrote (optional), in the form
      {"status": "pass"|"fail"|..., "summary": [{"figure", "value", "unit", "ref"}],
       "rows": [{"key": "<same key as a torch_baselines row>", "ms_median": ...,
                 "vs_torch": ["<other torch_baselines keys to set it against>"], ...}],
       "failures": ["op ... rel err 3e-2 > 1e-2", ...]}
  OUT/torch_baselines.json   tools/gpu/torch_baselines.py's report
Rows of an slmlp stage whose "key" equals a PyTorch row's key, or is listed in
its "vs_torch", are joined into the "slmlp vs PyTorch" table (time ratio; < 1
means slmlp is faster).
"""

import argparse
import json
import os
import sys


def read_tsv(path):
    try:
        with open(path) as f:
            lines = [ln.rstrip("\n").split("\t") for ln in f if ln.strip()]
    except OSError:
        return []
    if not lines:
        return []
    head = lines[0]
    return [dict(zip(head, ln + [""] * (len(head) - len(ln)))) for ln in lines[1:]]


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"_unreadable": f"{type(e).__name__}: {e}"} if os.path.exists(path) else None


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join("" if v is None else str(v).replace("|", "/") for v in r) + " |")
    return "\n".join(out)


def torch_rows_by_key(tb):
    rows = {}
    for sec in (tb or {}).get("sections", {}).values():
        for r in sec.get("rows", []):
            if "key" in r:
                rows[r["key"]] = r
    return rows


def build(args):
    d = args.detail
    stages = read_tsv(os.path.join(d, "stages.tsv"))
    libs = read_tsv(os.path.join(d, "cuda_libs.tsv"))
    gpu = []
    try:
        with open(os.path.join(d, "gpu.csv")) as f:
            gpu = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        pass
    tb = read_json(os.path.join(args.out, "torch_baselines.json"))
    torch_keys = torch_rows_by_key(tb) if tb and "_unreadable" not in tb else {}
    if tb and "_unreadable" not in tb:
        secs = ", ".join(f"{n} {v.get('status')}" for n, v in tb.get("sections", {}).items())
        for s in stages:
            if s["stage"] == "torch_baselines" and secs:
                s["note"] = (s["note"] + "; " if s["note"] else "") + "sections: " + secs
    slmlp = {}
    joined = []
    for s in stages:
        res = read_json(os.path.join(d, s["stage"], "result.json"))
        if res is None:
            continue
        slmlp[s["stage"]] = res
        for r in res.get("rows", []) if isinstance(res, dict) else []:
            # its own key, then the PyTorch rows it also asks to be set against
            # ("vs_torch": e.g. our overlapped step against torch's eager and
            # compiled steps)
            keys = [r.get("key")] + [k for k in r.get("vs_torch") or [] if k != r.get("key")]
            for k in keys:
                t = torch_keys.get(k)
                if t and r.get("ms_median") and t.get("ms_median"):
                    shown = r["key"] if k == r["key"] else f"{r['key']} vs {k}"
                    joined.append({"stage": s["stage"], "key": shown, "slmlp_ms": r["ms_median"],
                                   "torch_ms": t["ms_median"],
                                   "ratio": r["ms_median"] / t["ms_median"],
                                   # both max allocated over the timed steps
                                   # (ours: with the cuDNN/cuBLASLt workspace
                                   # part; theirs includes theirs)
                                   "slmlp_peak_gib": r.get("peak_gib"),
                                   "slmlp_workspace_gib": r.get("peak_workspace_gib"),
                                   "torch_peak_gib": t.get("peak_gib")})
    return {"schema": "slmlp.gpu_check/1", "started": args.started, "wall_s": args.wall_s,
            "budget_s": args.budget_s, "command": args.command, "gpu": gpu, "stages": stages,
            "cuda_libs": libs, "slmlp_results": slmlp, "slmlp_vs_torch": joined,
            "torch_baselines": {"summary": (tb or {}).get("summary"), "env": (tb or {}).get("env"),
                                "file": "torch_baselines.json" if tb else None,
                                "unreadable": (tb or {}).get("_unreadable")}}


def summary_md(rep, tb_summary_md):
    if rep["gpu"]:
        f = [x.strip() for x in rep["gpu"][0].split(",")]
        card = f[0] + (f", driver {f[1]}" if len(f) > 1 else "") + (f", {f[2]}" if len(f) > 2 else "")
    else:
        card = "no GPU seen by nvidia-smi"
    out = [f"## GPU check summary: {card}", "",
           f"{rep['started']}, {rep['wall_s']} s of a {rep['budget_s']} s budget; `{rep['command']}`", ""]
    out.append(md_table(["stage", "status", "s (budget)", "note"],
                        [(s["stage"], s["status"], f"{s['elapsed_s']} ({s['budget_s']})", s["note"])
                         for s in rep["stages"]]))
    for name, res in rep["slmlp_results"].items():
        if not isinstance(res, dict):
            continue
        out += ["", f"### slmlp stage {name}: {res.get('status', res.get('_unreadable', '?'))}"]
        fails = res.get("failures") or []
        if fails:
            out.append(f"{len(fails)} failure(s): " + "; ".join(map(str, fails[:10])))
        if res.get("summary"):
            out += ["", md_table(["figure", "value", "unit", "ceiling / reference"],
                                 [(x.get("figure"), x.get("value"), x.get("unit"), x.get("ref"))
                                  for x in res["summary"]])]
    if rep["slmlp_vs_torch"]:
        def gib(v):
            return "" if v is None else f"{v:.4g}"

        out += ["", "### slmlp vs PyTorch (same key, or the PyTorch key after \"vs\"; ratio = slmlp time / PyTorch time, < 1 is faster; peaks: max allocated in the timed steps, ours with its cuDNN/cuBLASLt workspace part)", "",
                md_table(["key", "stage", "slmlp ms", "PyTorch ms", "ratio", "slmlp peak GiB (workspace)",
                          "PyTorch peak GiB"],
                         [(j["key"], j["stage"], f"{j['slmlp_ms']:.4g}", f"{j['torch_ms']:.4g}",
                           f"{j['ratio']:.2f}",
                           gib(j.get("slmlp_peak_gib")) + (f" ({gib(j['slmlp_workspace_gib'])})"
                                                           if j.get("slmlp_workspace_gib") is not None else ""),
                           gib(j.get("torch_peak_gib")))
                          for j in rep["slmlp_vs_torch"]])]
    if tb_summary_md:
        out += ["", tb_summary_md.strip()]
    elif rep["torch_baselines"]["unreadable"]:
        out += ["", f"torch_baselines.json unreadable: {rep['torch_baselines']['unreadable']}"]
    else:
        out += ["", "No PyTorch baselines in this run (see the stage table)."]
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--detail", required=True)
    p.add_argument("--budget-s", type=int, default=None)
    p.add_argument("--started", default="?")
    p.add_argument("--wall-s", type=int, default=None)
    p.add_argument("--command", default="?")
    args = p.parse_args()
    rep = build(args)
    tb_md = None
    if rep["torch_baselines"]["file"] and rep["torch_baselines"]["summary"] is not None:
        # Reuse torch_baselines.py's own rendering so both reports show one table.
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        sys.dont_write_bytecode = True  # no __pycache__ in the source tree
        try:
            import torch_baselines  # standard library only at import time
            with open(os.path.join(args.out, "torch_baselines.json")) as f:
                tb_md = torch_baselines.summary_markdown(json.load(f))
        except Exception as e:  # noqa: BLE001 - the report must still come out
            tb_md = f"(could not render the PyTorch summary: {type(e).__name__}: {e})"
    summary = summary_md(rep, tb_md)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(rep, f, indent=1, default=str)
    libs = md_table(["library", "path"], [(x.get("library"), x.get("path")) for x in rep["cuda_libs"]])
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write("# GPU check report (tools/gpu/gpu_check.sh)\n\n"
                "Full PyTorch tables: torch_baselines.md. Logs and stage outputs: "
                "gpu_check.log, gpu_check_detail.tar.gz.\n\n"
                "## CUDA libraries found\n\n" + libs + "\n\n" + summary)
    print()
    print(summary, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
