#!/usr/bin/env bash
# TPU (or GPU) slices on GKE through xpk (pip install xpk): cluster, workload, list, delete.
#
#   launch/xpk.sh cluster --cluster=idlm --tpu-type=v6e-16 [--num-slices=2] [--spot]
#   launch/xpk.sh run --cluster=idlm --workload=mdlm-owt --tpu-type=v6e-16 [--num-slices=2] \
#       --config=configs/mdlm_owt.py --workdir=gs://BUCKET/mdlm_owt \
#       [--docker-image=IMAGE | --base-docker-image=IMAGE] [-- --config.optim.lr=1e-4]
#   launch/xpk.sh list | delete --cluster=idlm [--workload=mdlm-owt]
#   launch/xpk.sh delete-cluster --cluster=idlm
#
# `run` builds an image from this repository on --base-docker-image (default: a Python image;
# the command installs the package with jax[tpu] when the job starts) unless --docker-image
# names a ready one. GPU clusters: --device-type=h100-80gb-8 instead of --tpu-type.
# --zone and --project default from the accelerator type and gcloud. xpk restarts a
# preempted workload, which resumes from the latest checkpoint in the gs:// workdir.
# --dry-run (or DRY_RUN=1) prints the xpk commands instead of running them.

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# --tpu-type=... or --device-type=... (GPU)
device_flag() {
  if [[ -n "${DEVICE_TYPE:-}" ]]; then
    echo "--device-type=${DEVICE_TYPE}"
  else
    echo "--tpu-type=${ACCELERATOR_TYPE}"
  fi
}

cmd_cluster() {
  local flags=("$(device_flag)" "--num-slices=${NUM_SLICES:-1}")
  if [[ "${PROVISIONING:-}" == "spot" ]]; then
    flags+=(--spot)
  fi
  run xpk cluster create "--cluster=${CLUSTER}" "${flags[@]}" "${LOCATION[@]}"
}

cmd_run() {
  require WORKLOAD --workload
  require CONFIG --config
  require_gcs_workdir
  local image=() train setup=""
  if [[ -n "${DOCKER_IMAGE:-}" ]]; then
    image=("--docker-image=${DOCKER_IMAGE}")
  else
    image=("--base-docker-image=${BASE_DOCKER_IMAGE:-python:3.11}")
    # the base image holds the repository (xpk copies the working directory into it)
    if [[ -n "${DEVICE_TYPE:-}" ]]; then
      setup="pip install -e '.[gpu]' && "
    else
      setup="pip install -e '.[tpu]' && "
    fi
  fi
  train="$(train_command "${ARGS[@]}")"
  (cd "${REPO_ROOT}" && run xpk workload create "--cluster=${CLUSTER}" "--workload=${WORKLOAD}" \
    "$(device_flag)" "--num-slices=${NUM_SLICES:-1}" "${image[@]}" "${LOCATION[@]}" \
    --command="${setup}${train}")
}

cmd_list() {
  run xpk workload list "--cluster=${CLUSTER}" "${LOCATION[@]}"
}

cmd_delete() {
  require WORKLOAD --workload
  run xpk workload delete "--cluster=${CLUSTER}" "--workload=${WORKLOAD}" "${LOCATION[@]}"
}

cmd_delete_cluster() {
  run xpk cluster delete "--cluster=${CLUSTER}" "${LOCATION[@]}"
}

main() {
  (($# > 0)) || { usage; exit 2; }
  local sub="$1"
  shift
  if [[ "${sub}" == "-h" || "${sub}" == "--help" ]]; then
    usage
    exit 0
  fi
  parse_args "$@"
  require CLUSTER --cluster
  if [[ -z "${DEVICE_TYPE:-}" ]]; then
    require ACCELERATOR_TYPE --tpu-type
    ZONE="${ZONE:-$(default_zone_for "${ACCELERATOR_TYPE}")}"
  fi
  require ZONE --zone
  gcloud_location
  case "${sub}" in
    cluster) cmd_cluster ;;
    run | list | delete) "cmd_${sub}" ;;
    delete-cluster) cmd_delete_cluster ;;
    *) die "unknown command '${sub}': cluster, run, list, delete or delete-cluster" ;;
  esac
}

main "$@"
