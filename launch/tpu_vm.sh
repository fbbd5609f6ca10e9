#!/usr/bin/env bash
# Cloud TPU VM slices (single host or pod): create, set up, train, follow logs, delete.
#
#   launch/tpu_vm.sh create --name=idlm-v5e --accelerator-type=v5litepod-16 [--spot|--preemptible] [--queued]
#   launch/tpu_vm.sh setup  --name=idlm-v5e --accelerator-type=v5litepod-16
#   launch/tpu_vm.sh run    --name=idlm-v5e --accelerator-type=v5litepod-16 \
#       --config=configs/mdlm_owt.py --workdir=gs://BUCKET/mdlm_owt [-- --config.optim.lr=1e-4]
#   launch/tpu_vm.sh logs   --name=idlm-v5e --accelerator-type=v5litepod-16
#   launch/tpu_vm.sh stop | status | delete ...
#
# --dry-run (or DRY_RUN=1) prints the gcloud commands instead of running them. The zone and
# software version default from the accelerator type (see launch/README.md); --zone,
# --project and --version override them. Relaunching `run` on the same workdir resumes.

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# Per-host log file on each worker ($(hostname) is expanded on the worker).
LOG_NAME="${LOG_NAME:-train}"
REMOTE_LOG="\$HOME/${REMOTE_DIR}/logs/${LOG_NAME}-\$(hostname).log"
REMOTE_PID="\$HOME/${REMOTE_DIR}/logs/${LOG_NAME}-\$(hostname).pid"

tpu() {
  run gcloud compute tpus "$@"
}

# Run a shell command on every worker of the slice (--worker=all).
on_all_workers() {
  tpu tpu-vm ssh "${TPU_NAME}" "${LOCATION[@]}" --worker=all --command="$1"
}

cmd_create() {
  local flags=("--accelerator-type=${ACCELERATOR_TYPE}")
  if [[ "${QUEUED:-0}" == "1" ]]; then
    # queued resources: waits in Cloud TPU's queue until capacity is free
    [[ "${PROVISIONING:-}" != "preemptible" ]] || die "queued resources take --spot, not --preemptible"
    flags+=("--runtime-version=${RUNTIME_VERSION}" "--node-id=${TPU_NAME}")
    if [[ "${PROVISIONING:-}" == "spot" ]]; then
      flags+=(--spot)
    fi
    tpu queued-resources create "${TPU_NAME}-qr" "${LOCATION[@]}" "${flags[@]}"
    note "waiting for the queued resource: launch/tpu_vm.sh status --name=${TPU_NAME} ..."
    return
  fi
  flags+=("--version=${RUNTIME_VERSION}")
  case "${PROVISIONING:-ondemand}" in
    spot) flags+=(--spot) ;;
    preemptible) flags+=(--preemptible) ;;
  esac
  tpu tpu-vm create "${TPU_NAME}" "${LOCATION[@]}" "${flags[@]}"
}

cmd_setup() {
  local tarball="/tmp/${TPU_NAME}-idlm_jax.tar.gz"
  # warm up ssh keys on every worker first (the first --worker=all ssh can time out otherwise)
  on_all_workers "true"
  run tar -czf "${tarball}" -C "${REPO_ROOT}" --exclude=.git --exclude=venv \
    --exclude=__pycache__ --exclude='*.egg-info' .
  tpu tpu-vm scp "${tarball}" "${TPU_NAME}:${REMOTE_DIR}.tar.gz" "${LOCATION[@]}" --worker=all
  on_all_workers "mkdir -p ${REMOTE_DIR} && tar -xzf ${REMOTE_DIR}.tar.gz -C ${REMOTE_DIR} && cd ${REMOTE_DIR} && EXTRA=tpu bash launch/setup_venv.sh"
}

cmd_run() {
  require CONFIG --config
  require_gcs_workdir
  local train
  train="$(train_command "${ARGS[@]}")"
  # nohup + a log file per host: --worker=all buffers output until every command ends
  on_all_workers "cd ${REMOTE_DIR} && mkdir -p logs && source venv/bin/activate && { nohup ${train} > ${REMOTE_LOG} 2>&1 < /dev/null & echo \$! > ${REMOTE_PID}; }"
  note "training started; follow it with: launch/tpu_vm.sh logs --name=${TPU_NAME} ..."
}

cmd_logs() {
  # worker 0 holds process 0, the only one that writes metrics; --worker=all shows every host
  tpu tpu-vm ssh "${TPU_NAME}" "${LOCATION[@]}" "--worker=${WORKER:-0}" \
    --command="tail -n 100 -F ${REMOTE_LOG}"
}

cmd_stop() {
  # SIGINT to the process started by `run` on each host (its pid file), nothing else
  on_all_workers "kill -INT \$(cat ${REMOTE_PID}) 2> /dev/null || true"
}

cmd_status() {
  if [[ "${QUEUED:-0}" == "1" ]]; then
    tpu queued-resources describe "${TPU_NAME}-qr" "${LOCATION[@]}"
  else
    tpu tpu-vm describe "${TPU_NAME}" "${LOCATION[@]}"
  fi
}

cmd_delete() {
  if [[ "${QUEUED:-0}" == "1" ]]; then
    tpu queued-resources delete "${TPU_NAME}-qr" "${LOCATION[@]}" --force --quiet
  else
    tpu tpu-vm delete "${TPU_NAME}" "${LOCATION[@]}" --quiet
  fi
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
  require TPU_NAME --name
  require ACCELERATOR_TYPE --accelerator-type
  ZONE="${ZONE:-$(default_zone_for "${ACCELERATOR_TYPE}")}"
  RUNTIME_VERSION="${RUNTIME_VERSION:-$(runtime_version_for "${ACCELERATOR_TYPE}")}"
  gcloud_location
  case "${sub}" in
    create | setup | run | logs | stop | status | delete) "cmd_${sub}" ;;
    *) die "unknown command '${sub}': create, setup, run, logs, stop, status or delete" ;;
  esac
}

main "$@"
