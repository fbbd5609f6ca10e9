# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables set here are read by the sourcing scripts
# Shared helpers for the launch scripts (sourced, never executed).
#
# Every external command goes through `run`, so DRY_RUN=1 (or --dry-run) prints the exact
# gcloud / xpk / ssh command line, one per line prefixed by "+ ", instead of running it.

set -euo pipefail

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${LAUNCH_DIR}/.." && pwd)"
DRY_RUN="${DRY_RUN:-0}"

# Where the code and its virtual environment live on each TPU worker (relative to $HOME).
REMOTE_DIR="${REMOTE_DIR:-idlm}"

die() {
  echo "error: $*" >&2
  exit 2
}

note() {
  echo "[launch] $*" >&2
}

# One argument as a shell word that pastes back as the same argument (--flag='a value').
quote_arg() {
  local arg="$1"
  if [[ "${arg}" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "${arg}"
  elif [[ "${arg}" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    printf "%s'%s'" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]//\'/\'\\\'\'}"
  else
    printf "'%s'" "${arg//\'/\'\\\'\'}"
  fi
}

# The command line of "$@", quoted so that it can be pasted into a shell.
quote_cmd() {
  local out="" arg
  for arg in "$@"; do
    out+="$(quote_arg "${arg}") "
  done
  printf '%s' "${out% }"
}

# Run "$@", or only print it when DRY_RUN=1.
run() {
  if [[ "${DRY_RUN}" == "1" ]]; then
    echo "+ $(quote_cmd "$@")"
  else
    note "$(quote_cmd "$@")"
    "$@"
  fi
}

# Fail naming the variable (and the flag that sets it) when it is empty.
require() {
  local name="$1" flag="$2"
  [[ -n "${!name:-}" ]] || die "${flag} is required (or set ${name})"
}

# Pod runs checkpoint to storage that every host can reach: a GCS bucket, not local disk.
require_gcs_workdir() {
  require WORKDIR --workdir
  [[ "${WORKDIR}" == gs://* ]] || die "--workdir must be a gs:// path on multi-host runs, got '${WORKDIR}'"
}

# TPU software version for an accelerator type (Cloud TPU docs, "TPU software versions":
# v6e -> v2-alpha-tpuv6e, v5p -> v2-alpha-tpuv5, v5e -> v2-alpha-tpuv5-lite, v4 and older ->
# tpu-ubuntu2204-base).
runtime_version_for() {
  case "$1" in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    v4-* | v3-* | v2-*) echo "tpu-ubuntu2204-base" ;;
    *) die "unknown accelerator type '$1': pass --version explicitly" ;;
  esac
}

# A zone that offers the accelerator type (Cloud TPU docs, "TPU regions and zones").
default_zone_for() {
  case "$1" in
    v6e-*) echo "us-east5-b" ;;
    v5p-*) echo "us-east5-a" ;;
    v5litepod-*) echo "us-west4-a" ;;
    v4-*) echo "us-central2-b" ;;
    *) die "no default zone for accelerator type '$1': pass --zone" ;;
  esac
}

# The training command every host runs (the same program on every host; jax.distributed
# auto-detects the TPU pod). Extra arguments are passed on to idlm_jax.main.
train_command() {
  local cmd
  cmd="python -m idlm_jax.main $(quote_cmd "--config=${CONFIG}" "--workdir=${WORKDIR}")"
  if [[ "${DISTRIBUTED:-1}" == "1" ]]; then
    cmd+=" --distributed"
  fi
  if (($# > 0)); then
    cmd+=" $(quote_cmd "$@")"
  fi
  printf '%s' "${cmd}"
}

# Parses the options shared by the scripts into globals; what is left goes to ARGS.
# Everything after "--" is passed to idlm_jax.main unchanged.
parse_args() {
  ARGS=()
  while (($# > 0)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      --name=*) TPU_NAME="${1#*=}" ;;
      --zone=*) ZONE="${1#*=}" ;;
      --project=*) PROJECT="${1#*=}" ;;
      --accelerator-type=* | --tpu-type=*) ACCELERATOR_TYPE="${1#*=}" ;;
      --version=*) RUNTIME_VERSION="${1#*=}" ;;
      --config=*) CONFIG="${1#*=}" ;;
      --workdir=*) WORKDIR="${1#*=}" ;;
      --spot) PROVISIONING=spot ;;
      --preemptible) PROVISIONING=preemptible ;;
      --queued) QUEUED=1 ;;
      --cluster=*) CLUSTER="${1#*=}" ;;
      --workload=*) WORKLOAD="${1#*=}" ;;
      --num-slices=*) NUM_SLICES="${1#*=}" ;;
      --docker-image=*) DOCKER_IMAGE="${1#*=}" ;;
      --base-docker-image=*) BASE_DOCKER_IMAGE="${1#*=}" ;;
      --device-type=*) DEVICE_TYPE="${1#*=}" ;;
      --log=*) LOG_FILE="${1#*=}" ;;
      --setup) SETUP=1 ;;
      --) shift; ARGS+=("$@"); break ;;
      -h | --help) usage; exit 0 ;;
      --*) die "unknown option '$1' (see --help)" ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
}

# gcloud's --zone/--project pair (the project only when given; gcloud's default otherwise).
gcloud_location() {
  LOCATION=("--zone=${ZONE}")
  if [[ -n "${PROJECT:-}" ]]; then
    LOCATION+=("--project=${PROJECT}")
  fi
}
