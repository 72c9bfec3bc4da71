#!/usr/bin/python3
"""Analysis of experiments/growth/run.sh: OUT/runs/<arm>/seed<N>/metrics.jsonl -> OUT/summary.json,
OUT/growth_repro.png and a table on stdout.

    /usr/bin/python3 experiments/growth/analyze.py [OUT]          (OUT defaults to out/growth_repro)

What it computes (PAPER.md: speedup at equal loss, sp = FLOPs_scratch / FLOPs_grown - 1, compute counted over
both phases):
- Curves on the cumulative-training-FLOPs axis. Evaluations happen every N optimizer steps, and a grown arm's
  steps are cheaper before growth, so each arm has its own FLOPs points (identical across the seeds of an arm;
  seeds are put on the union of their points by linear interpolation all the same). Per arm: the mean over seeds,
  the sample std and the min-max band (the plot shades min-max).
- Final validation loss per arm: mean, std (ddof=1), min, max over seeds.
- Speedup at equal loss (the headline): L* = the scratch arm's final mean validation loss;
  FLOPs_grown = the first FLOPs where the arm's mean curve reaches L* (linear interpolation between the two
  evaluations around the crossing; null = never reached within the budget);
  sp = FLOPs_scratch_final / FLOPs_grown - 1, with FLOPs_scratch_final the scratch runs' final FLOPs.
  Per seed, seed-matched (same seed = same data order, same init of the shared parts): L*_s = scratch seed s's
  final loss, the arm's seed-s curve, sp_s; their mean, std, min, max show the spread (not-reached seeds counted).
- sp at a few intermediate levels: L = the scratch mean curve at 25/50/75/100% of its FLOPs; sp(L) =
  FLOPs_scratch(L) / FLOPs_arm(L) - 1 (first crossings of both mean curves). Mid-run both arms are in the middle of
  their LR schedules, so these compare partially trained models (as the paper's curves do).
- sp at the arm's own final loss: the FLOPs scratch needed to reach the arm's final mean loss over the arm's
  budget, minus 1. Defined for arms worse than scratch (negative values, as the paper reports for G_random and
  the width operators); null when the arm ends below anything scratch reached.
- Every crossing is also computed "settled" (sp_settled: from the FLOPs after which the curve stays at or below
  the level), which ignores an early dip that the curve climbs back out of; the table notes where they differ.
- The same headline speedup on the training loss (the paper's metric: each batch is unseen, runs are < 1 epoch),
  smoothed by a trailing mean over SMOOTH steps, as a secondary check of the held-out (Moby-Dick) numbers. The
  smoothed training curve is noisy (1024-token batches), so its crossing is the settled one.
"""
import json
import math
import os
import sys

import numpy as np

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("analyze.py: error: matplotlib is missing (apt-get install python3-matplotlib)")

ARM_ORDER = ["scratch", "stack", "interpolate", "zero", "random", "learn", "width", "width_learn", "small"]
SMOOTH = 50  # steps in the trailing mean of the training loss
LEVEL_FRACS = [0.25, 0.5, 0.75, 1.0]


def load_run(d):
    evals, steps, growth = [], [], []
    with open(os.path.join(d, "metrics.jsonl")) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            t = r.get("type")
            if t == "eval":
                evals.append((r["flops"], r["tokens"], r["step"], r["val_loss"], r["val_bpb"]))
            elif t == "step":
                steps.append((r["flops"], r["tokens"], r["step"], r["loss"]))
            elif t == "growth":
                growth.append({k: r[k] for k in ("step", "tokens", "flops", "spec", "wall_s") if k in r})
    ev = np.array(evals, dtype=float).reshape(-1, 5)
    st = np.array(steps, dtype=float).reshape(-1, 4)
    wall = None
    wf = os.path.join(d, "wall_s")
    if os.path.exists(wf):
        with open(wf) as f:
            vals = [float(x) for x in f.read().split()]
        wall = sum(vals) if vals else None
    # Trailing mean of the training loss over SMOOTH steps.
    if len(st):
        c = np.concatenate([[0.0], np.cumsum(st[:, 3])])
        i = np.arange(1, len(st) + 1)
        lo = np.maximum(i - SMOOTH, 0)
        smooth = (c[i] - c[lo]) / (i - lo)
    else:
        smooth = np.zeros(0)
    return {
        "eval_flops": ev[:, 0], "eval_tokens": ev[:, 1], "eval_step": ev[:, 2], "val_loss": ev[:, 3],
        "val_bpb": ev[:, 4], "step_flops": st[:, 0], "train_smooth": smooth,
        "final_flops": float(st[-1, 0]) if len(st) else 0.0, "final_tokens": float(st[-1, 1]) if len(st) else 0.0,
        "final_step": int(st[-1, 2]) if len(st) else 0, "growth": growth, "wall_s": wall,
    }


def first_crossing(x, y, level):
    """First x where the piecewise-linear curve (x, y) reaches y <= level; None if it never does."""
    idx = np.nonzero(y <= level)[0]
    if len(idx) == 0:
        return None
    i = int(idx[0])
    if i == 0:
        return float(x[0])
    return float(x[i - 1] + (level - y[i - 1]) * (x[i] - x[i - 1]) / (y[i] - y[i - 1]))


def settled_crossing(x, y, level):
    """The x from which the curve stays at or below level to its end (None if it ends above): equals
    first_crossing for a monotone curve, and ignores an early dip that the curve climbs back out of."""
    if y[-1] > level:
        return None
    above = np.nonzero(y > level)[0]
    if len(above) == 0:
        return float(x[0])
    j = int(above[-1])
    return float(x[j] + (level - y[j]) * (x[j + 1] - x[j]) / (y[j + 1] - y[j]))


def band(xs, ys):
    """Seeds' curves -> (grid, mean, std, min, max) on the union of their x points (within the common range)."""
    hi = min(x[-1] for x in xs)
    grid = np.unique(np.concatenate([x[x <= hi] for x in xs]))
    m = np.stack([np.interp(grid, x, y) for x, y in zip(xs, ys)])
    std = m.std(axis=0, ddof=1) if len(xs) > 1 else np.zeros(len(grid))
    return grid, m.mean(axis=0), std, m.min(axis=0), m.max(axis=0)


def stats(v):
    v = [x for x in v if x is not None]
    if not v:
        return None
    a = np.array(v, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "n": len(a)}


def sp(f_ref, f_arm):
    return None if f_arm is None or f_ref is None or f_arm <= 0 else f_ref / f_arm - 1.0


def seed_matched(runs, ref_runs, crossing, flops_key, loss_key):
    """Per seed s: the speedup of run s at the final loss of reference run s (both seeds present), with
    `crossing` (first or settled) on the run's (flops_key, loss_key) curve."""
    out = {}
    for s, r in runs.items():
        if s in ref_runs:
            sr = ref_runs[s]
            out[s] = sp(sr["final_flops"], crossing(r[flops_key], r[loss_key], float(sr[loss_key][-1])))
    return out


def fmt_sp(x):
    return "not reached" if x is None else f"{100 * x:+.1f}%"


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "out/growth_repro"
    runs_dir = os.path.join(out, "runs")
    if not os.path.isdir(runs_dir):
        sys.exit(f"analyze.py: error: {runs_dir} does not exist (run experiments/growth/run.sh first)")
    setup = {}
    if os.path.exists(os.path.join(out, "experiment.json")):
        with open(os.path.join(out, "experiment.json")) as f:
            setup = json.load(f)

    arms, skipped = {}, []
    names = sorted(os.listdir(runs_dir), key=lambda a: (ARM_ORDER.index(a) if a in ARM_ORDER else 99, a))
    for arm in names:
        ad = os.path.join(runs_dir, arm)
        if not os.path.isdir(ad):
            continue
        for sd in sorted(os.listdir(ad)):
            d = os.path.join(ad, sd)
            if not sd.startswith("seed") or not os.path.exists(os.path.join(d, "metrics.jsonl")):
                continue
            if not os.path.exists(os.path.join(d, "DONE")):
                skipped.append(f"{arm}/{sd}")
                continue
            r = load_run(d)
            if len(r["val_loss"]) < 2:
                skipped.append(f"{arm}/{sd}")
                continue
            arms.setdefault(arm, {})[int(sd[4:])] = r
    if not arms:
        sys.exit(f"analyze.py: error: no finished runs under {runs_dir}")
    if skipped:
        print(f"analyze.py: skipping unfinished runs: {', '.join(skipped)}")

    # Per-arm curves.
    curves = {}
    for arm, seeds in arms.items():
        rs = [seeds[s] for s in sorted(seeds)]
        g, m, sd, mn, mx = band([r["eval_flops"] for r in rs], [r["val_loss"] for r in rs])
        tg, tm, tsd, tmn, tmx = band([r["step_flops"] for r in rs], [r["train_smooth"] for r in rs])
        curves[arm] = {"val": (g, m, sd, mn, mx), "train": (tg, tm, tsd, tmn, tmx)}

    ref = "scratch" if "scratch" in arms else None
    summary = {
        "setup": setup,
        "band": "shaded region = min-max over seeds; std is the sample std (ddof=1)",
        "train_loss_smoothing_steps": SMOOTH,
        "skipped_unfinished": skipped,
        "reference": None,
        "arms": {},
    }
    if ref:
        sf = float(np.mean([r["final_flops"] for r in arms[ref].values()]))
        l_star = float(curves[ref]["val"][1][-1])
        lt_star = float(curves[ref]["train"][1][-1])
        g, m = curves[ref]["val"][0], curves[ref]["val"][1]
        levels = [float(np.interp(fr * g[-1], g, m)) for fr in LEVEL_FRACS]
        summary["reference"] = {"arm": ref, "L_star_val": l_star, "L_star_train_smoothed": lt_star,
                                "flops_final": sf, "levels_val": dict(zip([str(f) for f in LEVEL_FRACS], levels))}
    else:
        print("analyze.py: no scratch arm: speedups are not computed")

    for arm, seeds in arms.items():
        rs = {s: seeds[s] for s in sorted(seeds)}
        g, m, sd, mn, mx = curves[arm]["val"]
        tg, tm = curves[arm]["train"][:2]
        finals = {s: float(r["val_loss"][-1]) for s, r in rs.items()}
        a = {
            "seeds": sorted(rs),
            "final_flops": float(np.mean([r["final_flops"] for r in rs.values()])),
            "final_tokens": float(np.mean([r["final_tokens"] for r in rs.values()])),
            "final_step": int(np.mean([r["final_step"] for r in rs.values()])),
            "evals": int(len(g)),
            "wall_s": stats([r["wall_s"] for r in rs.values()]),
            "growth": next(iter(rs.values()))["growth"],
            "final_val_loss": {**stats(list(finals.values())), "per_seed": finals},
            "final_val_bpb": stats([float(r["val_bpb"][-1]) for r in rs.values()]),
            "final_train_loss_smoothed": stats([float(r["train_smooth"][-1]) for r in rs.values()]),
        }
        if ref:
            rr = summary["reference"]
            f_cross = first_crossing(g, m, rr["L_star_val"])
            per_seed = seed_matched(rs, arms[ref], first_crossing, "eval_flops", "val_loss")
            ps = stats(list(per_seed.values()))
            f_settled = settled_crossing(g, m, rr["L_star_val"])
            a["speedup_val"] = {
                "sp": sp(rr["flops_final"], f_cross),
                "flops_to_L_star": f_cross,
                "reached": f_cross is not None,
                "sp_settled": sp(rr["flops_final"], f_settled),
                "flops_to_L_star_settled": f_settled,
                "per_seed": per_seed,
                "per_seed_stats": ps,
                "per_seed_not_reached": sum(v is None for v in per_seed.values()),
            }
            gs, ms = curves[ref]["val"][0], curves[ref]["val"][1]
            lv = []
            for fr, level in rr["levels_val"].items():
                fs, fa = first_crossing(gs, ms, level), first_crossing(g, m, level)
                fss, fas = settled_crossing(gs, ms, level), settled_crossing(g, m, level)
                lv.append({"scratch_flops_frac": float(fr), "loss": level, "flops_scratch": fs, "flops_arm": fa,
                           "sp": sp(fs, fa), "sp_settled": sp(fss, fas)})
            a["speedup_val_levels"] = lv
            fs_final = first_crossing(gs, ms, float(m[-1]))
            fs_final_settled = settled_crossing(gs, ms, float(m[-1]))
            a["speedup_at_arm_final"] = {"loss": float(m[-1]), "flops_scratch": fs_final,
                                         "sp": sp(fs_final, float(g[-1])),
                                         "sp_settled": sp(fs_final_settled, float(g[-1])),
                                         "note": None if fs_final is not None else "below every scratch value"}
            tgs, tms = curves[ref]["train"][0], curves[ref]["train"][1]
            ft = settled_crossing(tg, tm, rr["L_star_train_smoothed"])
            per_seed_t = seed_matched(rs, arms[ref], settled_crossing, "step_flops", "train_smooth")
            a["speedup_train"] = {"sp": sp(rr["flops_final"], ft), "flops_to_L_star": ft,
                                  "per_seed": per_seed_t, "per_seed_stats": stats(list(per_seed_t.values())),
                                  "per_seed_not_reached": sum(v is None for v in per_seed_t.values())}
        a["curve_val"] = {"flops": g.tolist(), "mean": m.tolist(), "std": sd.tolist(), "min": mn.tolist(),
                          "max": mx.tolist()}
        summary["arms"][arm] = a

    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else o)
        f.write("\n")

    plot(out, arms, curves, summary)
    table(summary)
    print(f"wrote {os.path.join(out, 'summary.json')} and {os.path.join(out, 'growth_repro.png')}")


def plot(out, arms, curves, summary):
    colors = {a: plt.get_cmap("tab10")(i % 10) for i, a in enumerate(ARM_ORDER)}
    extra = [a for a in arms if a not in colors]
    for i, a in enumerate(extra):
        colors[a] = plt.get_cmap("tab10")((len(ARM_ORDER) + i) % 10)
    fig, axes = plt.subplots(1, 3, figsize=(19, 6))
    xmax = max(c["val"][0][-1] for c in curves.values())
    zoom_lo = 0.35 * xmax
    ref = summary["reference"]
    for k, ax in enumerate(axes):
        key = "train" if k == 2 else "val"
        ylo, yhi = np.inf, -np.inf
        for arm in arms:
            g, m, _, mn, mx = curves[arm][key]
            n = len(arms[arm])
            ax.plot(g, m, color=colors[arm], lw=1.6, label=f"{arm} (n={n})",
                    marker="o" if key == "val" else None, ms=2.5)
            ax.fill_between(g, mn, mx, color=colors[arm], alpha=0.18, lw=0)
            sel = g >= zoom_lo
            if sel.any():
                ylo, yhi = min(ylo, mn[sel].min()), max(yhi, mx[sel].max())
            for gr in summary["arms"][arm]["growth"]:
                ax.axvline(gr["flops"], color=colors[arm], ls=":", lw=1.2)
        if ref:
            ax.axhline(ref["L_star_train_smoothed" if key == "train" else "L_star_val"], color="0.4", ls="--",
                       lw=0.8)
        ax.set_xlabel("cumulative training FLOPs")
        ax.grid(alpha=0.3)
        if k > 0 and np.isfinite(ylo):
            pad = 0.05 * (yhi - ylo + 1e-9)
            ax.set_xlim(zoom_lo, xmax * 1.01)
            ax.set_ylim(ylo - pad, yhi + pad)
    axes[0].set_ylabel("validation loss (nats/token)")
    axes[0].set_title("validation loss (held out), mean over seeds, band = min-max")
    axes[1].set_title("validation loss, last 65% of the budget")
    axes[2].set_ylabel(f"training loss, trailing mean over {SMOOTH} steps")
    axes[2].set_title("training loss (smoothed), last 65% of the budget")
    axes[0].legend(fontsize=8, title="dotted: growth points; dashed: scratch final", title_fontsize=8)
    s = summary["setup"]
    if s:
        fig.suptitle(f"growth reproduction: {s.get('budget_flops', '?'):.3g} FLOPs per run, growth at "
                     f"{s.get('grow_at_tokens', '?'):.0f} tokens, seeds {s.get('seeds')}", fontsize=11)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "growth_repro.png"), dpi=110)
    plt.close(fig)


def table(summary):
    ref = summary["reference"]
    if ref:
        print(f"L* (scratch final mean val loss) = {ref['L_star_val']:.4f} at {ref['flops_final']:.3e} FLOPs; "
              f"smoothed train loss {ref['L_star_train_smoothed']:.4f}")
    hdr = (f"{'arm':<12} {'n':>2} {'final val loss':>18} {'sp (mean curve)':>16} {'sp per seed mean±std [min,max]':>34}"
           f" {'sp @arm final':>14} {'sp train':>12} {'wall s':>7}")
    print(hdr)
    print("-" * len(hdr))
    for arm, a in summary["arms"].items():
        fv = a["final_val_loss"]
        line = f"{arm:<12} {fv['n']:>2} {fv['mean']:>10.4f} ± {fv['std']:.4f}"
        if ref:
            sv = a["speedup_val"]
            ps = sv["per_seed_stats"]
            nr = sv["per_seed_not_reached"]
            pstxt = ("—" if ps is None else
                     f"{100 * ps['mean']:+.1f}±{100 * ps['std']:.1f}% [{100 * ps['min']:+.1f},{100 * ps['max']:+.1f}]")
            if nr:
                pstxt += f" ({nr} n.r.)"
            line += (f" {fmt_sp(sv['sp']):>16} {pstxt:>34} {fmt_sp(a['speedup_at_arm_final']['sp']):>14}"
                     f" {fmt_sp(a['speedup_train']['sp']):>12}")
        w = a["wall_s"]
        line += f" {w['mean']:>7.0f}" if w else f" {'':>7}"
        print(line)
    if ref:
        differ = []
        for arm, a in summary["arms"].items():
            for name, d in (("sp", a["speedup_val"]), ("sp @arm final", a["speedup_at_arm_final"])):
                x, y = d["sp"], d["sp_settled"]
                if (x is None) != (y is None) or (x is not None and abs(x - y) > 0.02):
                    differ.append(f"{arm} {name} {fmt_sp(y)}")
        if differ:
            print("note: a curve dips below the level and climbs back; counted from where it stays below "
                  "(sp_settled): " + "; ".join(differ))
        print("sp at intermediate loss levels (scratch mean curve at 25/50/75/100% of its FLOPs):")
        for arm, a in summary["arms"].items():
            print(f"  {arm:<12} " + "  ".join(f"L={x['loss']:.3f}: {fmt_sp(x['sp']):>11}"
                                               for x in a["speedup_val_levels"]))


if __name__ == "__main__":
    main()
