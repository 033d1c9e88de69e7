#!/usr/bin/env bash
# Every GPU figure of the performance pass, one run, one markdown table in $OUT/gpu_check.md (< 8 min on an
# H100/H200). Runs as is from the source tree: no install, no network; a missing package is a row saying so.
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh          # on the GPU machine
#   GPU_CHECK_DRY=1 OUT=/tmp/x bash benchmarks/gpu_check.sh   # CPU smoke test of the script itself
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
DRY="${GPU_CHECK_DRY:-0}"
DEV=cuda; DRYFLAG=""
if [ "$DRY" = 1 ]; then DEV=cpu; DRYFLAG="--dry"; fi
TABLE="$OUT/gpu_check.md"
LOG="$OUT/gpu_check.log"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
: > "$LOG"

row() { echo "| $1 | $2 | $3 | $4 |" >> "$TABLE"; }

{
  echo "# calibscope GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  "$PY" - <<'EOF'
import platform, torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
print(f"Python {platform.python_version()}, torch {torch.__version__}, {name}")
EOF
  echo
  echo "| check | figure | target | status |"
  echo "|---|---|---|---|"
} > "$TABLE"

# 1. the in-process figures: engine vs raw loop, ECE, temperature, HVP, OOM back-off
timeout 360 "$PY" benchmarks/gpu_check.py $DRYFLAG >> "$TABLE" 2>> "$LOG" \
  || row "benchmarks/gpu_check.py" "exit $? (see gpu_check.log)" "" "FAIL"

# 2. calibscope ece on CUDA equal to CPU within 1e-5 (sample checkpoints)
S=sample_checkpoints
ece_json() {  # $1 device, $2 output file, rest: prefix command
  local dev="$1" out="$2"; shift 2
  timeout 120 "$@" ece "$S/digits_hard.pt2" --data "$S/digits_test.npz" --device "$dev" --no-cache --json \
    > "$out" 2>> "$LOG"
}
ece_value() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['results'][0]['ece'])" "$1" 2>> "$LOG"; }
if ece_json cpu "$WORK/cpu.json" "$PY" -m calibscope && ece_json "$DEV" "$WORK/dev.json" "$PY" -m calibscope; then
  a=$(ece_value "$WORK/cpu.json"); b=$(ece_value "$WORK/dev.json")
  ok=$("$PY" -c "print('pass' if abs(float('$a') - float('$b')) <= 1e-5 else 'FAIL')" 2>> "$LOG" || echo FAIL)
  row "calibscope ece --device $DEV vs cpu (digits_hard.pt2)" "ECE $b vs $a" "\|Δ\| ≤ 1e-5" "$ok"
else
  row "calibscope ece --device $DEV vs cpu" "error (see gpu_check.log)" "\|Δ\| ≤ 1e-5" "FAIL"
fi

# 3. torchrun --nproc_per_node=1 equal to the plain command
if command -v torchrun > /dev/null 2>&1; then
  if ece_json "$DEV" "$WORK/torchrun.json" torchrun --nproc_per_node=1 --master_port=29517 -m calibscope; then
    a=$(ece_value "$WORK/dev.json" 2>/dev/null || echo nan); b=$(ece_value "$WORK/torchrun.json")
    ok=$("$PY" -c "print('pass' if float('$a') == float('$b') else 'FAIL')" 2>> "$LOG" || echo FAIL)
    row "torchrun --nproc_per_node=1 calibscope ece vs plain" "ECE $b vs $a" "equal" "$ok"
  else
    row "torchrun --nproc_per_node=1 calibscope ece" "error (see gpu_check.log)" "equal" "FAIL"
  fi
else
  row "torchrun --nproc_per_node=1" "skipped: torchrun not on PATH" "equal" "n/a"
fi

# 4. Hugging Face and ONNX checkpoints on CUDA vs CPU (when their packages are installed)
timeout 120 "$PY" - "$WORK" "$DEV" >> "$TABLE" 2>> "$LOG" <<'EOF' || row "HF / ONNX paths" "error (see gpu_check.log)" "" "FAIL"
import json, subprocess, sys
work, dev = sys.argv[1], sys.argv[2]
import numpy as np
import torch

g = np.random.default_rng(0)
np.savez(f"{work}/tokens.npz", input_ids=g.integers(0, 100, (64, 12)), y=g.integers(0, 3, 64))

def ece(path, device, data):
    out = subprocess.run([sys.executable, "-m", "calibscope", "ece", path, "--data", data, "--device", device,
                          "--no-cache", "--json"], capture_output=True, text=True, timeout=100)
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
    return float(json.loads(out.stdout)["results"][0]["ece"])

def report(name, path, data):
    try:
        a, b = ece(path, "cpu", data), ece(path, dev, data)
        print(f"| {name} calibscope ece --device {dev} vs cpu | ECE {b:.8f} vs {a:.8f} | \\|Δ\\| ≤ 1e-5 | "
              f"{'pass' if abs(a - b) <= 1e-5 else 'FAIL'} |")
    except Exception as exc:  # noqa: BLE001
        print(f"| {name} | error: {str(exc)[:160]} | \\|Δ\\| ≤ 1e-5 | FAIL |")

try:
    import transformers
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(cfg).eval().save_pretrained(f"{work}/hf")
    report(f"HF folder (transformers {transformers.__version__})", f"{work}/hf", f"{work}/tokens.npz")
except ImportError:
    print("| HF folder | skipped: transformers not installed | \\|Δ\\| ≤ 1e-5 | n/a |")
try:
    import onnxruntime  # noqa: F401
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    torch.onnx.export(net, (torch.randn(2, 1, 8, 8),), f"{work}/m.onnx", input_names=["x"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    report("ONNX (onnxruntime)", f"{work}/m.onnx", "sample_checkpoints/digits_test.npz")
except ImportError as exc:
    print(f"| ONNX | skipped: {exc} | \\|Δ\\| ≤ 1e-5 | n/a |")
EOF

echo >> "$TABLE"
echo "stderr of the checks: gpu_check.log" >> "$TABLE"
cat "$TABLE"
