#!/usr/bin/env bash
# One worker per array task, one GPU each. The URL comes from a file only you can read:
#   printf '%s' 'postgresql://hpo:PASSWORD@db:5432/hpo' > ~/.hpo-storage && chmod 600 ~/.hpo-storage
#   hpo create studies/rotten-tomatoes-gpu.yaml --storage "$(cat ~/.hpo-storage)"
#   sbatch --array=0-7 deploy/slurm.sh rotten-tomatoes-full
#SBATCH --job-name=hpo-worker
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --output=hpo-worker-%A_%a.log
set -euo pipefail
study="${1:?usage: sbatch --array=0-N deploy/slurm.sh STUDY}"
# From the environment, not argv: the password stays out of process titles.
HPO_STORAGE="$(cat "${HPO_STORAGE_FILE:-$HOME/.hpo-storage}")"
export HPO_STORAGE
# Slurm sends SIGTERM 120 s before the time limit (--signal); the worker re-queues its trial.
# The array index is the sampler stream: distinct per task, repeatable per run. Outside an
# array (a plain sbatch) no --stream: each job draws a random one (a fixed 0 would give every
# such job the same points).
stream=()
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    stream=(--stream "$SLURM_ARRAY_TASK_ID")
fi
exec hpo worker --study "$study" --device cuda:0 "${stream[@]}"
