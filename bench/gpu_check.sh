#!/usr/bin/env bash
# One prepared run of issue 20's GPU checks; every result lands under $OUT (at most 9 files):
#   tests.log      trainer / resume / sampling / speed-switch tests on CUDA in bf16 and fp16
#   sync.json      host syncs in the step under torch.cuda.set_sync_debug_mode("warn")
#   bench.json     bench/train_speed.py at SD1.5 size, eager (and profile.txt: 3 profiled steps)
#   bench-compile.json   the same 512² batch 16 with --compile
#   bench-flux.json      bench/train_speed.py --family flux at FLUX.1-dev size: 1024², batch 1 and 2,
#                        rank 16 and 32, fp8_base on and off, checkpointing on (peak VRAM beside the plan's estimate)
#   run.json       a real `loradeck train` at SD1.5 size: it/s, samples, the LoRA in diffusers, and the OOM line
#   summary.md     the table; gpu_check.log: everything else the parts printed
#
#   bash bench/gpu_check.sh            on the GPU (about 7 minutes on an H200, 10 with the Flux part)
#   bash bench/gpu_check.sh --quick    tiny model, tiny sizes, CPU: checks the script itself
# Each part runs under its own `timeout` and a failed part does not stop the next.
# PARTS="tests sync bench compile train oom" picks some (default: all).
set -u
QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check_out}; mkdir -p "$OUT"
WORK=${WORK:-/tmp/gpu_check_work}; rm -rf "$WORK"; mkdir -p "$WORK"
PARTS=${PARTS:-"tests sync bench compile flux train oom"}
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
say() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
part() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
if [ $QUICK = 1 ]; then
  T_TESTS=900; T_SYNC=60; T_BENCH=120; T_COMPILE=60; T_MODEL=120; T_TRAIN=60; T_OOM=120; T_FLUX=120
  BENCH="--quick --steps 2 --warmup 1"; MODEL="--quick"; WS="--images 8 --size 64 --batch 2 --epochs 3 --sample-every 1 --oom-batch 4"
  TESTS="tests/test_trainer_resume.py"; TRAIN_SECONDS=25
else
  T_TESTS=75; T_SYNC=30; T_BENCH=70; T_COMPILE=90; T_MODEL=50; T_TRAIN=130; T_OOM=40; T_FLUX=150
  BENCH="--steps 10 --warmup 3"; MODEL=""; WS="--images 320 --size 512 --batch 8 --epochs 100 --sample-every 4 --oom-batch 256"
  TESTS="tests/test_trainer.py tests/test_trainer_resume.py tests/test_samples_training.py tests/test_speed_switches.py"
  TRAIN_SECONDS=95
fi
say "start: $($PY -c 'import torch,sys; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")' 2>&1)"
$PY -c 'import diffusers, transformers, accelerate, peft; print("diffusers", diffusers.__version__, "transformers", transformers.__version__, "accelerate", accelerate.__version__, "peft", peft.__version__)' 2>&1 | tee -a "$LOG"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee -a "$LOG"

# 1b. no host syncs in the step
if part sync; then
  say "sync"
  if [ $QUICK = 1 ] && ! $PY -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    echo '{"skipped": "no CUDA"}' >"$OUT/sync.json"
  else
    timeout -k 5 $T_SYNC $PY bench/gpu_check.py sync >"$OUT/sync.json" 2>>"$LOG"; echo "sync exit $?" | tee -a "$LOG"
  fi
fi

# 2. the speed bench at SD1.5 size (random weights)
if part bench; then
  say "bench eager"
  if [ $QUICK = 1 ]; then
    timeout -k 5 $T_BENCH $PY bench/train_speed.py $BENCH --json --text-encoder off --checkpointing off --ranks 4 \
      --resolutions 64 --batches 2 4 --profile "$OUT/profile.txt" >"$OUT/bench.json" 2>>"$LOG"
  else
    # 512² batch 16 first (it is profiled), then 512² batch 4; 768² batch 4 and 8 (one model, one process)
    timeout -k 5 $T_BENCH $PY bench/train_speed.py $BENCH --json --text-encoder off --checkpointing off --ranks 16 \
      --resolutions 512 768 --batches 16 4 8 --profile "$OUT/profile.txt" >"$OUT/bench.json" 2>>"$LOG"
  fi
  echo "bench exit $?" | tee -a "$LOG"
fi
if part flux; then
  say "bench flux"
  if [ $QUICK = 1 ]; then
    timeout -k 5 $T_BENCH $PY bench/train_speed.py $BENCH --json --family flux --checkpointing on --ranks 4 \
      --resolutions 64 --batches 1 >"$OUT/bench-flux.json" 2>>"$LOG"
  else
    # the real architecture with random weights: 12 B + T5 made on the GPU (about 35 GB in bf16)
    timeout -k 5 $T_FLUX $PY bench/train_speed.py --steps 5 --warmup 2 --json --family flux --checkpointing on \
      >"$OUT/bench-flux.json" 2>>"$LOG"
  fi
  echo "bench flux exit $?" | tee -a "$LOG"
fi
if part compile; then
  say "bench compiled"
  R=512; [ $QUICK = 1 ] && R=64
  timeout -k 5 $T_COMPILE $PY bench/train_speed.py $BENCH --json --text-encoder off --checkpointing off --ranks 16 \
    --resolutions $R --batches 16 --compile >"$OUT/bench-compile.json" 2>>"$LOG"
  echo "bench compile exit $?" | tee -a "$LOG"
fi

# 3. a real `loradeck train` at SD1.5 size from a random single-file checkpoint, stopped after TRAIN_SECONDS
RUNS="$WORK/ws/runs"
if part train || part oom; then
  say "model + workspace"
  timeout -k 5 $T_MODEL $PY bench/gpu_check.py make-model "$WORK/model" $MODEL >"$WORK/model.json" 2>>"$LOG"
  echo "make-model exit $? $(cat "$WORK/model.json" | tr -d '\n ')" | tee -a "$LOG"
  # the tiny model's single file does not fit SD1.5's shipped configs: --quick trains from its folder
  M="$WORK/model/model.safetensors"; [ $QUICK = 1 ] && M="$WORK/model/diffusers"
  $PY bench/gpu_check.py workspace "$WORK/ws" "$M" $WS >>"$LOG" 2>&1
  echo "workspace exit $?" | tee -a "$LOG"
fi
if part train; then
  say "train"
  timeout -k 5 $T_TRAIN $PY -m tui.cli train "$WORK/ws/train.toml" >"$WORK/train.out" 2>"$WORK/train.err" &
  TRAIN_PID=$!
  for _ in $(seq $TRAIN_SECONDS); do kill -0 $TRAIN_PID 2>/dev/null || break; sleep 1; done
  if kill -0 $TRAIN_PID 2>/dev/null; then $PY -m tui.cli stop "$RUNS/gpu-train" >>"$LOG" 2>&1; fi
  wait $TRAIN_PID; echo "train exit $?" | tee -a "$LOG"
  tail -n 30 "$WORK/train.err" >>"$LOG"; tail -n 40 "$RUNS/gpu-train/engine.log" >>"$LOG" 2>/dev/null
  timeout -k 5 60 $PY bench/gpu_check.py check-run "$RUNS/gpu-train" "$WORK/model/diffusers" >"$WORK/run.json" 2>>"$LOG"
  echo "check-run exit $?" | tee -a "$LOG"
fi
# 4. one deliberate out-of-memory: batch far too big
if part oom; then
  say "oom"
  timeout -k 5 $T_OOM $PY -m tui.cli train "$WORK/ws/oom.toml" >"$WORK/oom.out" 2>"$WORK/oom.err"
  echo "oom train exit $?" | tee -a "$LOG"
  $PY bench/gpu_check.py check-oom "$RUNS/gpu-oom" "$WORK/oom.err" >"$WORK/oom.json" 2>>"$LOG"
  echo "check-oom exit $?" | tee -a "$LOG"
fi
# 1. (last: the figures come first) the CUDA-relevant tests, bf16 then fp16 (the tests pick CUDA when it is there)
if part tests; then
  for precision in bf16 fp16; do
    say "tests $precision"
    LORADECK_TEST_PRECISION=$precision timeout -k 5 $T_TESTS $PY -m pytest -q -p no:cacheprovider -m "not slow" \
      -W ignore::DeprecationWarning --durations=5 $TESTS >>"$OUT/tests.log" 2>&1
    echo "tests $precision exit $?" | tee -a "$OUT/tests.log" "$LOG"
  done
fi

$PY - "$WORK" "$OUT/run.json" <<'PY'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
def read(name):
    path = work / name
    try:
        return json.loads(path.read_text())
    except Exception as error:
        return {"missing": f"{name}: {error}", "text": path.read_text()[-2000:] if path.is_file() else ""}
out.write_text(json.dumps({"model": read("model.json"), "train": read("run.json"), "oom": read("oom.json")}, indent=1))
PY
$PY bench/gpu_check.py summary "$OUT" >>"$LOG" 2>&1
say "done"
