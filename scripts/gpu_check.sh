#!/usr/bin/env bash
# The CUDA checks on a lent GPU machine (see scripts/gpu_prepare.sh), in two parts of one device call each,
# every step under its own time limit and its output in $OUT/<step>.log:
#   encoder  the CUDA tests, then the encoder figures the issues ask for (bf16, the paper's 200 x 12)
#   node     ROS 2 from the carried wheels and ddclip's interfaces built there, then the node's latency
#            and its stream with the view cache on and off (16 tracks at 30 Hz, 60 s each)
# Never run yet: no GPU has been lent.
#
#   bash scripts/gpu_check.sh encoder|node [more benchmarks/node.py options, which win]
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:-encoder}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DDCLIP_CACHE=/tmp/ddclip_cache
if ls .gpu/whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD

step() {  # step NAME SECONDS COMMAND...: run it, keep its output, return its exit status
    local name=$1 limit=$2
    shift 2
    echo "== $name ($limit s): $*"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    echo "-- $name: exit $status"
    tail -n 25 "$OUT/$name.log"
    return $status
}

ros_environment() {  # a venv at $1 that sees the image's packages, with the ROS 2 wheels and ddclip's interfaces
    local prefix=$1
    python3 -m venv --without-pip "$prefix" || return 1
    local site
    site="$("$prefix/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    # Its own site-packages first (ROS, whose .pth sets the library path), then the carried wheels,
    # this checkout and the image's packages (torch).
    python3 -c 'import site, sys; print("\n".join([*sys.argv[1:], *site.getsitepackages()]))' \
        /tmp/site "$PWD" > "$site/ddclip_gpu_machine.pth"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --ignore-installed \
        --prefix "$prefix" .gpu/ros/*.whl \
        || return 1
    while read -r link target; do ln -sfn "$target" "$prefix/$link"; done < .gpu/ros/links.txt
    bash scripts/build_interfaces.sh "$prefix"
}
export -f ros_environment

case $part in
encoder)
    published=()
    [ -d .gpu/published/src/custom_clip ] && published=(--published .gpu/published)
    step env 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"'
    step tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_half_weights.py tests/test_view_cache.py
    step encoder 200 python3 benchmarks/encoder.py --device cuda --settings 1x12,200x12 "${published[@]}"
    step half_weights 60 python3 benchmarks/half_weights.py --device cuda --settings 1x12,200x12
    step view_cache 90 python3 benchmarks/view_cache.py --device cuda --precision bf16 --batch 200
    ;;
node)
    export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-42} ROS_LOG_DIR=/tmp/ros_log
    step ros 150 bash -c 'rm -rf /tmp/ddclip_ros && ros_environment /tmp/ddclip_ros' || exit 1
    step node 400 /tmp/ddclip_ros/bin/python benchmarks/node.py --device cuda --precision bf16 \
        --sections latency,stream --repeats 10 --stream-seconds 60 --stream-warmup 10 "${@:2}"
    ;;
*)
    echo "usage: bash scripts/gpu_check.sh encoder|node" >&2
    exit 2
    ;;
esac
exit 0
