#!/usr/bin/env bash
# The prepared device check: one call of the `device` tool on a lent GPU (H200, 15 minutes of
# device time a session, machine start included) proves the CUDA paths and records their speed.
#
#   run: bash benchmarks/gpu_check.sh        (timeout_s 600; carry .whl and .data when present)
#
# Stages, in order, each under its own time limit, all inside GPU_CHECK_BUDGET_S (default 540 s):
#   setup  wheels from .whl/ (what the device image lacks: spikingjelly, snntorch, mlxtend) into
#          /tmp/site, then `pip install --no-deps --no-build-isolation -e .`; versions, nvidia-smi
#   tests  the `gpu`-marked tests (-x, 120 s a test), then the default suite (-x, 8 workers)
#   bench  benchmarks/bench_activation.py (HTAF and every baseline, fp32 + bf16, fwd and fwd+bwd
#          against the copy ideal, beside eager and torch.compile) and benchmarks/bench_lif.py
#          (T=8, [64, 128, 32, 32], against SpikingJelly and snnTorch where carried)
#   cifar  with what time is left: `htaf reproduce dhn` (GPU_CHECK_PART: dhn, snn, bnn or icbm)
#          on .data/cifar10.tar.xz, seed 0 (GPU_CHECK_SEEDS), no scale sweep, into docs/results/
#          with --resume: runs finished before the stage runs out of time are kept
# Everything lands in $OUT (the device tool brings back at most 8 files): gpu_check.log,
# summary.json (each stage's exit status and seconds), bench_activation.json, bench_lif.json,
# dhn_results.json and dhn_runs.jsonl (the part's folder's files). docs/gpu_runbook.md says
# what to do with them.
#
# Here, before the call: `GPU_CHECK_STAGES="wheels pack" bash benchmarks/gpu_check.sh` fills
# .whl/ (the wheels the device image lacks, 2.6 MB) and writes .data/cifar10.tar.xz (19 MB) from
# ../shared/datasets/cifar10-jpeg.zip, whose 59 MiB would not fit beside the working tree in the
# 64 MiB that travels; git ignores both folders: name them in `carry`.
# Knobs: GPU_CHECK_STAGES (default "setup tests bench cifar"), GPU_CHECK_BUDGET_S (540),
# GPU_CHECK_SMOKE=1 (tiny benchmark sizes: to check this script on a CPU, as a test does),
# GPU_CHECK_DATA (the folder holding cifar10.tar.xz, default .data).
set -u -o pipefail

OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.json
BUDGET=${GPU_CHECK_BUDGET_S:-540}
STAGES=${GPU_CHECK_STAGES:-setup tests bench cifar}
SMOKE=${GPU_CHECK_SMOKE:-0}
DATA=${GPU_CHECK_DATA:-.data}
PART=${GPU_CHECK_PART:-dhn}
SEEDS=${GPU_CHECK_SEEDS:-0}
PY=${PYTHON:-python3}
START=$(date +%s)
export PYTHONUNBUFFERED=1

left() { echo $((BUDGET - ($(date +%s) - START))); }
log() { echo "[gpu_check $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
wants() { [[ " $STAGES " == *" $1 "* ]]; }

echo "{" >"$SUMMARY"
first=1
record() {   # record NAME RC SECONDS
    [[ $first == 1 ]] || echo "," >>"$SUMMARY"
    first=0
    printf '  "%s": {"rc": %d, "seconds": %d}' "$1" "$2" "$3" >>"$SUMMARY"
}

# stage NAME LIMIT_S COMMAND...: runs COMMAND under min(LIMIT_S, time left - 5 s), logged.
stage() {
    local name=$1 limit=$2
    shift 2
    local avail=$(($(left) - 5))
    ((limit > avail)) && limit=$avail
    if ((limit < 10)); then
        log "$name: skipped, ${avail}s left"
        record "$name" 125 0
        return 125
    fi
    log "$name: $* (limit ${limit}s)"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    log "$name: rc $rc in $(($(date +%s) - t0))s"
    record "$name" "$rc" "$(($(date +%s) - t0))"
    return "$rc"
}

if wants pack; then   # here, not on the device: CIFAR-10 small enough to travel (64 MiB in all)
    # The shared zip (59 MiB, stored) and the working tree do not fit together; the same JPEGs
    # in one xz-compressed tar share their repeated JPEG headers: about 19 MB.
    export GPU_CHECK_DATA=$DATA
    stage pack 600 "$PY" - <<'PYEOF'
import os, tarfile, zipfile, io
src = os.environ.get("CIFAR_ZIP", "../shared/datasets/cifar10-jpeg.zip")
out = os.path.join(os.environ.get("GPU_CHECK_DATA", ".data"), "cifar10.tar.xz")
os.makedirs(os.path.dirname(out), exist_ok=True)
tmp = out + ".part"
with zipfile.ZipFile(src) as z, tarfile.open(tmp, "w:xz") as tar:
    for info in z.infolist():
        if info.is_dir():
            continue
        member = tarfile.TarInfo("cifar10/" + info.filename)
        member.size = info.file_size
        tar.addfile(member, io.BytesIO(z.read(info)))
os.replace(tmp, out)
print("wrote", out, os.path.getsize(out), "bytes")
PYEOF
fi

if wants wheels; then  # here, not on the device: what its image lacks, as wheels in .whl/
    # (the image has torch, triton, pytest, xdist, timeout, hypothesis, scikit-learn, onnxruntime;
    # the peers and mlxtend are missing, and spikingjelly imports loguru and scienceplots)
    stage wheels_download 300 "$PY" -m pip download -q --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        spikingjelly==2.0.0 snntorch==1.0.0 mlxtend==0.25.0 loguru==0.7.3 scienceplots==2.2.2
fi

if wants setup; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        stage wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile \
            --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    stage install 120 "$PY" -m pip install -q --no-deps --no-build-isolation -e .
    stage nvidia_smi 20 nvidia-smi -L
    stage environment 60 "$PY" - <<'PYEOF'
import torch, htaf
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
try:
    import triton
    print("triton", triton.__version__)
except ImportError as err:
    print("triton missing:", err)
print("htaf", htaf.__version__, "from", htaf.__file__)
for peer in ("spikingjelly", "snntorch", "mlxtend", "sklearn", "onnxruntime"):
    try:
        print(peer, "from", __import__(peer).__file__)
    except Exception as err:  # noqa: BLE001
        print(peer, "missing:", type(err).__name__, err)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
    print("fused on cuda:", htaf.kernels.fused(torch.empty(1, device="cuda")))
PYEOF
fi

if wants tests; then
    # -vv: one line per test as it ends (the addopts say -q), so a cut-short stage still shows
    # which passed; --durations: what a later call should budget for
    stage gpu_tests 150 "$PY" -m pytest -m gpu -x -n 0 -vv --durations 15 --timeout 120 \
        -p no:cacheprovider tests
    stage cpu_suite 150 "$PY" -m pytest -x -n 8 --timeout 120 -p no:cacheprovider -m "not slow and not gpu" tests
fi

if wants bench; then
    if [[ $SMOKE == 1 ]]; then
        act=(--size 4096 --reps 3 --skip-compile --dtypes fp32)
        lif=(--T 2 --size 4 8 --reps 2 --dtypes fp32)
    else
        act=()
        lif=()
    fi
    stage bench_activation 150 "$PY" benchmarks/bench_activation.py "${act[@]}" \
        --json "$OUT/bench_activation.json"
    stage bench_lif 90 "$PY" benchmarks/bench_lif.py "${lif[@]}" --json "$OUT/bench_lif.json"
fi

if wants cifar; then
    data=""
    if [[ -f $DATA/cifar10.tar.xz ]]; then   # what `GPU_CHECK_STAGES=pack` makes here
        stage unpack_cifar 120 "$PY" -c "import sys, tarfile
safe = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}
tarfile.open(sys.argv[1]).extractall(sys.argv[2], **safe)" "$DATA/cifar10.tar.xz" /tmp/htaf-data &&
            data=/tmp/htaf-data/cifar10
    elif [[ -f $DATA/cifar10-jpeg.zip ]]; then
        data=$DATA/cifar10-jpeg.zip
    fi
    if [[ -n $data ]]; then
        read -ra seeds <<<"$SEEDS"
        # Into docs/results/, which travels: --resume reuses the finished runs of the same recipe
        # there (a later call continues with other seeds once runs.jsonl is copied back).
        stage "cifar_$PART" 100000 "$PY" -m htaf reproduce "$PART" --data "$data" \
            --seeds "${seeds[@]}" --scales --readme "" --doc "$OUT/results.md" --resume
        for f in results.json runs.jsonl; do
            [[ -f docs/results/$PART/$f ]] && cp "docs/results/$PART/$f" "$OUT/${PART}_$f"
        done
        rm -f "$OUT/results.md"   # only 8 files come back
    else
        log "cifar: skipped, no $DATA/cifar10.tar.xz (GPU_CHECK_STAGES=pack makes it here; carry .data)"
        record "cifar_$PART" 125 0
    fi
fi

echo "" >>"$SUMMARY"
echo "}" >>"$SUMMARY"
log "done; $(left)s of the ${BUDGET}s budget left"
cat "$SUMMARY" | tee -a "$LOG"
