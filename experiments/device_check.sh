#!/usr/bin/env bash
# The accelerator check of docs/speed.md: on a machine with a GPU or TPU, install the project with
# jax's matching extra, run the benchmark and the default σ sweep under time limits, and write
# their JSON and logs to one folder.
#
#   experiments/device_check.sh [OPTIONS] [OUT_DIR]    # OUT_DIR: default $OUT, else
#                                                      # runs/device_check-<time>
#   --quick           benchmark.py --quick and sigma_sweep.py:quick (a few minutes: the plumbing)
#   --no-install      use $PYTHON (default python3) as it is: no venv, no pip
#   --extra NAME      jax's extra: cuda13, cuda12, tpu or none (default: detected, see below)
#   --wheelhouse DIR  install offline, from the wheels in DIR (pip --no-index --find-links DIR)
#   --venv DIR        the venv to create (default .venv-device in the repository root); it sees
#                     the machine's own packages (--system-site-packages), so an image's
#                     preinstalled, CUDA-matched jax is kept as it is
#   --benchmark-timeout S, --sweep-timeout S   each run's limit in seconds (default 900 and
#                     2400; with --quick 300 and 600); a run past it is stopped (status 124)
#   --dry-run         detect and write device.json with the plan; run nothing
# Detection: nvidia-smi's "CUDA Version: N" gives cuda13 for N ≥ 13, else cuda12; /dev/accel* or
# $TPU_ACCELERATOR_TYPE gives tpu; otherwise none (the CPU: jax as pyproject.toml has it).
#
# OUT_DIR receives: device.json (what was found, and each step's command, exit status and
# seconds), install.log, benchmark.json and benchmark.log, sweep.json and sweep.log (the sweep
# report: timing.json's split and efficiency inside), results.csv (the sweep's rows). The sweep's
# workdir (checkpoints, plots) stays outside it: $SWEEP_WORKDIR, default a new temporary folder.
# Exit status: 0 when every step passed, else that of the first step that failed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
quick=0 install=1 dry_run=0 extra="" wheelhouse="" venv="$REPO/.venv-device"
benchmark_timeout="" sweep_timeout="" out=""
usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
fail() { echo "error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --no-install) install=0 ;;
    --dry-run) dry_run=1 ;;
    --extra) extra=${2:?--extra needs a name}; shift ;;
    --wheelhouse) wheelhouse=${2:?--wheelhouse needs a folder}; shift ;;
    --venv) venv=${2:?--venv needs a folder}; shift ;;
    --benchmark-timeout) benchmark_timeout=${2:?--benchmark-timeout needs seconds}; shift ;;
    --sweep-timeout) sweep_timeout=${2:?--sweep-timeout needs seconds}; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) fail "unknown option $1 (--help lists them)" ;;
    *) [ -z "$out" ] || fail "one OUT_DIR only (got $out and $1)"; out=$1 ;;
  esac
  shift
done
case "$extra" in
  "" | cuda13 | cuda12 | tpu | none) ;;
  *) fail "--extra=$extra is not one of cuda13, cuda12, tpu, none" ;;
esac
if [ "$quick" = 1 ]; then
  benchmark_timeout=${benchmark_timeout:-300} sweep_timeout=${sweep_timeout:-600}
  benchmark_args=(--quick) sweep_config="experiments/configs/sigma_sweep.py:quick"
else
  benchmark_timeout=${benchmark_timeout:-900} sweep_timeout=${sweep_timeout:-2400}
  benchmark_args=() sweep_config="experiments/configs/sigma_sweep.py"
fi
out=${out:-${OUT:-$REPO/runs/device_check-$(date +%Y%m%d-%H%M%S)}}
mkdir -p "$out" || fail "cannot create $out"
out=$(cd "$out" && pwd)
steps=$(mktemp) # one line per step: name, status, seconds, command (tab-separated)
trap 'rm -f "$steps"' EXIT

# ----------------------------------------------------------------------------- what is here
gpu=""
cuda=""
if command -v nvidia-smi >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null) ||
    gpu=""
  cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -1)
fi
tpu=""
if compgen -G "/dev/accel*" >/dev/null || [ -n "${TPU_ACCELERATOR_TYPE:-}" ]; then
  tpu=${TPU_ACCELERATOR_TYPE:-$(ls /dev/accel* | tr '\n' ' ')}
fi
if [ -z "$extra" ]; then
  if [ -n "$cuda" ]; then
    if [ "$cuda" -ge 13 ]; then extra=cuda13; else extra=cuda12; fi
  elif [ -n "$tpu" ]; then
    extra=tpu
  else
    extra=none
  fi
  detected=1
else
  detected=0
fi

# ----------------------------------------------------------------------------- steps
# run NAME TIMEOUT LOG CMD...: CMD under `timeout`, its output in LOG; a line in $steps.
first_failure=0
run() {
  local name=$1 limit=$2 log=$3 start status ms
  shift 3
  printf '%s: %s\n' "$name" "$*"
  if [ "$dry_run" = 1 ]; then
    printf '%s\t%s\t%s\t%s\n' "$name" "planned" "0" "$*" >>"$steps"
    return 0
  fi
  start=$(date +%s%N)
  if [ "$limit" = 0 ]; then
    "$@" >"$log" 2>&1
  else
    timeout --kill-after=60 "$limit" "$@" >"$log" 2>&1
  fi
  status=$?
  ms=$((($(date +%s%N) - start) / 1000000))
  printf '%s\t%s\t%d.%03d\t%s\n' "$name" "$status" $((ms / 1000)) $((ms % 1000)) "$*" >>"$steps"
  if [ "$status" != 0 ]; then
    echo "$name: exit status $status$([ "$status" = 124 ] && echo ", past its $limit s limit")"
    echo "  (last lines of $log:)"
    tail -5 "$log" | sed 's/^/  /'
    [ "$first_failure" != 0 ] || first_failure=$status
  fi
  return "$status"
}

python=${PYTHON:-python3}
if [ "$install" = 1 ]; then
  pip_args=(--quiet)
  [ -z "$wheelhouse" ] || pip_args+=(--no-index --find-links "$wheelhouse")
  spec=$REPO
  [ "$extra" = none ] || spec="$REPO[$extra]"
  install_cmd="$python -m venv --system-site-packages $venv && $venv/bin/python -m pip install"
  install_cmd+=" ${pip_args[*]} -e '$spec'"
  run install 1800 "$out/install.log" bash -c "$install_cmd"
  python=$venv/bin/python
fi
cd "$REPO" || exit 2
if [ -n "${SWEEP_WORKDIR:-}" ]; then
  sweep_workdir=$SWEEP_WORKDIR
elif [ "$dry_run" = 1 ]; then
  sweep_workdir="<a new temporary folder>/sigma_sweep"
else
  sweep_workdir=$(mktemp -d)/sigma_sweep
fi
if [ "$first_failure" = 0 ]; then
  run benchmark "$benchmark_timeout" "$out/benchmark.log" \
    env PYTHONUNBUFFERED=1 "$python" experiments/benchmark.py "${benchmark_args[@]}" \
    --json "$out/benchmark.json"
  run sweep "$sweep_timeout" "$out/sweep.log" \
    env PYTHONUNBUFFERED=1 "$python" experiments/benchmark.py --run-sweep "$sweep_config" \
    --sweep-workdir "$sweep_workdir" --json "$out/sweep.json"
  [ ! -f "$sweep_workdir/results.csv" ] || cp "$sweep_workdir/results.csv" "$out/results.csv"
fi

# ----------------------------------------------------------------------------- device.json
writer=$python
"$writer" -c "" 2>/dev/null || writer=python3
GPU=$gpu CUDA=$cuda TPU=$tpu EXTRA=$extra DETECTED=$detected QUICK=$quick INSTALL=$install \
  DRY_RUN=$dry_run SWEEP_WORKDIR=$sweep_workdir STEPS=$steps PY=$python \
  "$writer" - "$out/device.json" <<'EOF'
import json, os, subprocess, sys

env = os.environ
steps = []
for line in open(env["STEPS"]):
    name, status, seconds, command = line.rstrip("\n").split("\t", 3)
    steps.append({
        "name": name,
        "status": status if status == "planned" else int(status),
        "seconds": float(seconds),
        "command": command,
    })
PROBE = (
    "import jax, json; print(json.dumps({'version': jax.__version__, 'backend': "
    "jax.default_backend(), 'devices': [str(d) for d in jax.devices()]}))"
)


def jax_info():
    """What jax sees with the python the runs used; None in --dry-run (nothing ran)."""
    if env["DRY_RUN"] == "1":
        return None
    try:
        found = subprocess.run([env["PY"], "-c", PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": str(e)}
    if found.returncode:
        return {"error": (found.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(found.stdout.strip().splitlines()[-1])


record = {
    "gpu": env["GPU"] or None,
    "cuda_version": int(env["CUDA"]) if env["CUDA"] else None,
    "tpu": env["TPU"] or None,
    "extra": env["EXTRA"],
    "extra_detected": env["DETECTED"] == "1",
    "quick": env["QUICK"] == "1",
    "installed": env["INSTALL"] == "1",
    "dry_run": env["DRY_RUN"] == "1",
    "python": env["PY"],
    "jax": jax_info(),
    "sweep_workdir": env["SWEEP_WORKDIR"],
    "steps": steps,
}
with open(sys.argv[1], "w") as f:
    json.dump(record, f, indent=2)
EOF
echo "wrote $out (device.json, logs and JSON); the sweep's workdir: $sweep_workdir"
exit "$first_failure"
