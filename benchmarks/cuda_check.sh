#!/usr/bin/env bash
# CUDA run of both benchmarks, sized to finish in a few minutes on one data-centre GPU (H100/H200 class):
#   * no host synchronization on the coding rate's default path (cuda_sync_check.py, seconds);
#   * coding rate forward + backward, float32 and bfloat16 (bf16 inputs under autocast);
#   * logdet alone in float32 and float64, single matrices and batches of 64.
# Reports (JSON + markdown) and a log go to "$OUT" when it is set, else to benchmarks/results/.
# Needs torch with CUDA; jepa_rate is taken from this checkout's src/ when it is not installed.
# Each step runs even if an earlier one fails; the exit status is non-zero if any step failed.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${OUT:-$here/results}"
py="${PYTHON:-python}"
mkdir -p "$out"
export PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}"
log="$out/cuda_check.log"
: >"$log"

if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "cuda_check: torch.cuda.is_available() is False; nothing to run" | tee -a "$log" >&2
    exit 2
fi
"$py" -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name())" \
    2>&1 | tee -a "$log"

# Short blocked timing keeps the whole script well under five minutes; CUDA timings are far less noisy
# than the shared-CPU ones, so 0.1 s per measurement still gives tens of runs for the median and IQR.
common=(--device cuda --out-dir "$out" --timer blocked --min-run-time 0.1 --threads 4)
status=0
step() {
    echo "== $*" | tee -a "$log"
    local start=$SECONDS
    if ! "$py" "$@" 2>&1 | tee -a "$log"; then
        echo "!! failed: $*" | tee -a "$log"
        status=1
    fi
    echo "== $((SECONDS - start)) s" | tee -a "$log"
}

step "$here/cuda_sync_check.py"
step "$here/coding_rate.py" "${common[@]}" --dtype float32
step "$here/coding_rate.py" "${common[@]}" --dtype bfloat16
step "$here/logdet.py" "${common[@]}" --dtype both
step "$here/logdet.py" "${common[@]}" --dtype both --batch 64 --sizes 64,128,256,512

echo "cuda_check: reports in $out (status $status)" | tee -a "$log"
exit "$status"
