#!/usr/bin/env bash
# Create ./venv and install this package into it, on a TPU worker or a GPU host.
#
#   EXTRA=tpu bash launch/setup_venv.sh     # jax[tpu] (runs on every TPU worker via tpu_vm.sh setup)
#   EXTRA=gpu bash launch/setup_venv.sh     # jax[cuda12]
#   EXTRA=""  bash launch/setup_venv.sh     # CPU only
#
# Run from the repository root. PYTHON picks the interpreter (default python3, 3.10+);
# --dry-run (or DRY_RUN=1) prints the commands.

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
  parse_args "$@"
  local python="${PYTHON:-python3}" extra="${EXTRA-tpu}" spec="."
  if [[ -n "${extra}" ]]; then
    spec=".[${extra}]"
  fi
  cd "${REPO_ROOT}"
  run "${python}" -m venv venv
  run venv/bin/pip install --upgrade pip
  run venv/bin/pip install -e "${spec}"
  run venv/bin/python -c "import jax; print(jax.__version__, jax.devices())"
}

main "$@"
