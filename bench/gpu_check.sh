#!/usr/bin/env bash
# One prepared GPU check (issue "Benchmarks"): run from the repo root on a machine with a CUDA card.
#   bench/gpu_check.sh [CHECKPOINT]        (default builtin:demo; OUT=dir for the results, default $OUT or ./var/gpu-check)
# 1. default vs published recipe (399 + 399 steps at L 400, batch 1), the recipe timed in full;
# 2. batch sizes 1..64: latency, studies/s, UNet TFLOP/s and fraction of the card's bf16 peak, eager and torch.compile.
# Goal on an H100: <= 1 s per study, >= 20 studies/s batched. CPU smoke run: DEVICE=cpu SIZES=1,2 QUICK=1.
set -euo pipefail
CKPT="${1:-builtin:demo}"
DEVICE="${DEVICE:-cuda}"
SIZES="${SIZES:-1,2,4,8,16,32,64}"
SIZES_COMPILED="${SIZES_COMPILED:-1,8,64}"  # each batch size is a recompile: keep the compiled sweep short
OUT="${OUT:-var/gpu-check}"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$OUT"
"$PY" - <<'PYEOF' || { echo "gpu_check: needs a Python with torch and this package importable ($PY)" >&2; exit 2; }
import torch, diff3m  # noqa: F401
PYEOF
{
  echo "## gpu_check $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>/dev/null || echo "(no nvidia-smi)"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} | tee "$OUT/env.txt"
if [ "${QUICK:-0}" = 1 ]; then RECIPE_STEPS=2; IMAGES=2; ROUNDS=1; REPEATS=1; else RECIPE_STEPS=399; IMAGES=64; ROUNDS=${ROUNDS:-3}; REPEATS=${REPEATS:-3}; fi
# 1. default (batched) vs the published recipe, same weights
"$PY" -m diff3m bench inference --checkpoint "$CKPT" --device "$DEVICE" --images "$IMAGES" --batch-size "$IMAGES" \
  --rounds "$ROUNDS" --recipe-steps "$RECIPE_STEPS" --json | tee "$OUT/inference.txt"
tail -n 1 "$OUT/inference.txt" > "$OUT/inference.json"
# 2. batch-size sweep, eager then compiled
"$PY" -m diff3m.bench.gpu --checkpoint "$CKPT" --device "$DEVICE" --batch-sizes "$SIZES" --repeats "$REPEATS" | tee "$OUT/sweep_eager.txt"
tail -n 1 "$OUT/sweep_eager.txt" > "$OUT/sweep_eager.json"
if [ "$DEVICE" != cpu ]; then
  "$PY" -m diff3m.bench.gpu --checkpoint "$CKPT" --device "$DEVICE" --batch-sizes "$SIZES_COMPILED" --repeats "$REPEATS" --compile \
    | tee "$OUT/sweep_compiled.txt" || echo "torch.compile sweep failed (eager numbers stand)" >&2
  [ -f "$OUT/sweep_compiled.txt" ] && tail -n 1 "$OUT/sweep_compiled.txt" > "$OUT/sweep_compiled.json"
fi
# summary against the goals
"$PY" - "$OUT" <<'PYEOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
inf = json.loads((out / "inference.json").read_text())
print(f"default {inf['default_seconds_per_image']:.4f} s/image, recipe {inf['reference_seconds_per_image']:.3f} "
      f"s/image, speedup {inf['speedup']:.1f}x ({'scaled' if inf['reference_scaled'] else 'recipe timed in full'})")
for name in ("sweep_eager", "sweep_compiled"):
    p = out / f"{name}.json"
    if not p.exists():
        continue
    pts = json.loads(p.read_text())["points"]
    lat1 = next((q["latency_seconds"] for q in pts if q["batch_size"] == 1), None)
    best = max(pts, key=lambda q: q["studies_per_second"])
    print(f"{name}: batch 1 latency {lat1:.3f} s (goal <= 1 s: {'met' if lat1 is not None and lat1 <= 1 else 'NOT met'}); "
          f"best {best['studies_per_second']:.1f} studies/s at batch {best['batch_size']} "
          f"(goal >= 20: {'met' if best['studies_per_second'] >= 20 else 'NOT met'})")
PYEOF
