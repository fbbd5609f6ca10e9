#!/usr/bin/env bash
# Train on every GPU of one host: one process sees all local GPUs, the mesh spans them.
#
#   launch/gpu_host.sh [--setup] --config=configs/mdlm_owt.py --workdir=/ckpt/mdlm_owt \
#       [--log=/ckpt/mdlm_owt.log] [-- --config.train.global_batch_size=512]
#
# --setup first creates ./venv with jax[cuda12] (launch/setup_venv.sh). The log goes to
# --log (default <workdir>/train.log for a local workdir, ./logs/train.log otherwise).
# CUDA_VISIBLE_DEVICES limits the GPUs. For several GPU hosts, run it on each host with
# -- --coordinator_address=HOST0:8476 --num_processes=N --process_id=I (same workdir, on
# storage that every host reaches). --dry-run (or DRY_RUN=1) prints the commands.

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
  parse_args "$@"
  require CONFIG --config
  require WORKDIR --workdir
  cd "${REPO_ROOT}"
  if [[ "${SETUP:-0}" == "1" ]]; then
    local dry=()
    if [[ "${DRY_RUN}" == "1" ]]; then
      dry=(--dry-run)
    fi
    EXTRA=gpu bash "${LAUNCH_DIR}/setup_venv.sh" "${dry[@]}"
  fi
  local log="${LOG_FILE:-}"
  if [[ -z "${log}" && "${WORKDIR}" != gs://* ]]; then
    log="${WORKDIR}/train.log"
  fi
  log="${log:-logs/train.log}"
  local train
  # one process per host: no jax.distributed unless multi-host flags are passed after --
  train="$(DISTRIBUTED=0 train_command "${ARGS[@]}")"
  run mkdir -p "$(dirname "${log}")"
  # XLA_PYTHON_CLIENT_MEM_FRACTION: JAX preallocates 75% of each GPU by default
  run env "XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}" \
    bash -c "set -o pipefail && source venv/bin/activate && ${train} 2>&1 | tee -a $(quote_arg "${log}")"
}

main "$@"
