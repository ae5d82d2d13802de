#!/usr/bin/env bash
# The GPU checks as one prepared run, for a session that is lent a device machine (an H200 with
# 15 minutes of device time, no internet, Python 3.12 with its own PyTorch, no zstandard).
#
#   bash bench/device_check.sh --prepare   # here: what travels, into var/device (about 20 MB)
#   bash bench/device_check.sh             # there, from the repository root, carrying var/device
#
# Through the device tool: run(command="bash bench/device_check.sh", carry=["var/device"],
# timeout_s=540). Each step logs to $OUT as it goes (var/device-out where $OUT is unset), so a
# run stopped at its limit still returns what it did:
#   1. gpu.log      the tests marked gpu: the pipeline, k-means, PQ and the runtime on CUDA;
#   2. cli.log      pqz train, compress and eval on digits with --device cuda;
#   3. cifar.log    bench/reproduce.py on CIFAR-10 (JPEG copy), results in cifar.json.
# ROWS (default: cifar) and SCHEDULE (default: short) choose step 3's rows; STEPS (default:
# "1 2 3") the steps; DEVICE (default: cuda) lets the script be tried on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
CARRIED=var/device

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$CARRIED/wheels"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$CARRIED/wheels" "zstandard>=0.22" || exit
    cp ../shared/datasets/cifar10-jpeg.tar.gz "$CARRIED/" || exit
    du -sh "$CARRIED"
    exit 0
fi

PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-var/device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PQZ_SHARED_DATASETS="$PWD/$CARRIED"
if compgen -G "$CARRIED/wheels/*.whl" >/dev/null && ! "$PYTHON" -c "import zstandard" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/pqz-site \
        "$CARRIED"/wheels/*.whl || exit
    export PYTHONPATH=/tmp/pqz-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME COMMAND...: run it, log it, say how it ended and how long it took
    local name=$1 started=$SECONDS status
    shift
    echo "== $name: $*" | tee -a "$OUT/summary.log"
    "$@" >"$OUT/$name.log" 2>&1
    status=$?
    echo "== $name: exit $status in $((SECONDS - started)) s" | tee -a "$OUT/summary.log"
    tail -n 15 "$OUT/$name.log"
}

{
    date -u
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, \
torch.cuda.is_available() and torch.cuda.get_device_name(0))"
} | tee "$OUT/summary.log"

for number in ${STEPS:-1 2 3}; do
    case $number in
    1) step gpu "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/compression ;;
    2)
        work=$(mktemp -d)
        pqz=("$PYTHON" -m cli.main)
        step cli bash -c "set -e
            ${pqz[*]} train --arch lenet-5 --data digits --epochs 4 --device $DEVICE -o $work/base.pt
            ${pqz[*]} compress $work/base.pt --arch lenet-5 --data digits --device $DEVICE \
                -o $work/small.pqz --json
            ${pqz[*]} eval $work/small.pqz --data digits --device $DEVICE --json
            ${pqz[*]} eval $work/small.pqz --data digits --device cpu --json"
        ;;
    3)
        step cifar "$PYTHON" bench/reproduce.py --rows "${ROWS:-cifar}" \
            --schedule "${SCHEDULE:-short}" --device "$DEVICE" --threads 8 --workdir /tmp/pqz-bench
        cp /tmp/pqz-bench/results.json "$OUT/cifar.json" 2>/dev/null
        ;;
    esac
done
