#!/usr/bin/env bash
# One prepared GPU run for the demo model (issues "data, evaluation and demo weights" and "Benchmarks"):
#   1. train builtin:demo with scripts/train_demo.py --recipe gpu, the EHR and the image-only arm side by side
#      on the same card for the same wall-time budget (equal training budget), sized by a speed probe;
#   2. evaluate both arms (and the EHR arm with the EHR hidden) on the phantom test split, and sweep noise
#      level L x DDIM steps on the EHR arm, the published recipe (L 400, 399 + 399 steps) included;
#   3. bench/gpu_check.sh on the new weights: default vs recipe speed, batch sizes 1..64, peak fraction.
# Every phase has a time box so that whatever finished comes back. From the repo root:
#   OUT=dir bench/gpu_demo.sh            (results: OUT/demo.tar = the EHR checkpoint, OUT/results.tgz = the rest)
# CPU smoke run: RECIPE=cpu DEVICE=cpu TRAIN_SECONDS=20 PER_CLASS=4 SWEEP="300:2" QUICK=1 bench/gpu_demo.sh
set -uo pipefail
OUT="${OUT:-var/gpu-demo}"
WORK="${WORK:-var/gpu-demo-work}"
DATA="${DATA:-var/phantoms-2500}"
DEVICE="${DEVICE:-cuda}"
RECIPE="${RECIPE:-gpu}"  # cpu: the small demo-cpu recipe (smoke runs)
TRAIN_SECONDS="${TRAIN_SECONDS:-210}"
EVAL_SECONDS="${EVAL_SECONDS:-120}"
CHECK_SECONDS="${CHECK_SECONDS:-150}"
PER_CLASS="${PER_CLASS:-1000}"  # test images per class (1000: all of them)
BATCH="${BATCH:-256}"
# sweep groups run side by side: "L:steps,steps L:steps ..."
SWEEP="${SWEEP:-300:5,10,25,50,100 400:10,25,50,100 200:10,25,50 400:399}"
PY="${PYTHON:-python3}"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
T0=$(date +%s)
stamp() { echo "[gpu_demo +$(($(date +%s) - T0))s] $*"; }

if [ ! -f "$DATA/mimic-cxr-2.0.0-split.csv" ] && [ -f .gpu-carry/phantoms.tar ]; then  # a tar of $DATA's folder
  mkdir -p "$DATA" && tar -xf .gpu-carry/phantoms.tar -C "$DATA" --strip-components=1
fi
{
  echo "## gpu_demo $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>/dev/null || echo "(no nvidia-smi)"
  "$PY" -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', platform.python_version(), 'cpus', __import__('os').cpu_count())"
} | tee "$WORK/env.txt"

stamp "1. training both arms for ${TRAIN_SECONDS}s each, side by side"
train() {  # arm out extra-args...
  local arm=$1 out=$2
  shift 2
  timeout $((TRAIN_SECONDS + 120)) "$PY" scripts/train_demo.py --recipe "$RECIPE" --data "$DATA" --out "$out" \
    --budget-seconds "$TRAIN_SECONDS" --device "$DEVICE" --threads 4 --quiet "$@" > "$WORK/train_$arm.log" 2>&1
  echo "train $arm exit $?" >> "$WORK/train_$arm.log"
}
train ehr "$WORK/demo" &
train noehr "$WORK/noehr" --no-ehr &
wait
tail -n 3 "$WORK/train_ehr.log" "$WORK/train_noehr.log"
if [ -f "$WORK/demo/model.safetensors" ]; then
  tar -cf "$OUT/demo.tar" -C "$WORK" demo && stamp "EHR checkpoint saved to $OUT/demo.tar"
fi

stamp "2. evaluation (time box ${EVAL_SECONDS}s)"
EV=(timeout "$EVAL_SECONDS" "$PY" bench/ablation.py --data "$DATA" --ehr-ckpt "$WORK/demo" --noehr-ckpt "$WORK/noehr"
  --out "$WORK/ablation" --device "$DEVICE" --batch-size "$BATCH" --per-class "$PER_CLASS" --sweep-per-class "$PER_CLASS"
  --threads 2)
for part in ehr noehr ehr-off; do
  "${EV[@]}" --part "$part" > "$WORK/eval_$part.log" 2>&1 &
done
i=0
for group in $SWEEP; do
  i=$((i + 1))
  "${EV[@]}" --part sweep --noise-levels "${group%%:*}" --steps "${group#*:}" > "$WORK/eval_sweep$i.log" 2>&1 &
done
wait
ls "$WORK/ablation" | grep -c json | xargs -I{} echo "{} evaluation reports"
"$PY" - "$WORK/ablation" <<'PYEOF'
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(p.read_text())
    v = ", ".join(f"{k} {x:.3f}" for k, x in sorted(r["score_variants_auroc"].items()))
    print(f"{p.stem}: L {r['params']['noise_level']} steps {r['params']['steps']} n {r['n_normal']}/{r['n_abnormal']} "
          f"AUROC {r['auroc']:.3f} ({v}) {r['seconds_per_image']:.4f} s/img")
PYEOF

stamp "3. bench/gpu_check.sh on the new weights (time box ${CHECK_SECONDS}s)"
if [ -f "$WORK/demo/model.safetensors" ]; then
  OUT="$WORK/gpu-check" DEVICE="$DEVICE" PYTHON="$PY" ROUNDS=2 REPEATS=2 timeout "$CHECK_SECONDS" bench/gpu_check.sh "$WORK/demo" \
    > "$WORK/gpu_check.log" 2>&1
  echo "gpu_check exit $?" >> "$WORK/gpu_check.log"
  tail -n 5 "$WORK/gpu_check.log"
fi

stamp "packing results"
tar -czf "$OUT/results.tgz" --exclude='*.safetensors' --exclude='train_state.pt' -C "$WORK" .
stamp "done"
