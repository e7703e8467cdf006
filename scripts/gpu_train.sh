#!/usr/bin/env bash
# Train on a machine that has Python with torch, lightning, tokenizers, safetensors and numpy but
# not the crystal stack (pymatgen, spglib, pyxtal): e.g. a lent GPU machine that receives a copy of
# this repository plus one packed folder.
#
#   scripts/gpu_train.sh pack PACK --train DIR [--train DIR ...] [--val DIR ...] [--init MODEL]
#       copies prepared directories (`crystalformer data prepare`) and optionally a model directory
#       to start from into PACK (PACK/train/<name>, PACK/val/<name>, PACK/init), refusing more
#       than 64 MiB in all (what a device call can carry).
#
#   scripts/gpu_train.sh run PACK OUT MINUTES [PRESET] [-- extra `crystalformer train` options]
#       trains PRESET (default base) on PACK for MINUTES of training wall time from the repository
#       checkout itself (no install), then writes into OUT:
#         OUT/model/          the best model by validation NLL (a model directory)
#         OUT/metrics.csv     the training log (train/val NLL per slot, learning rate)
#         OUT/summary.json    steps, epochs, wall time, best val NLL, hardware
#         OUT/val_nll.json    NLL per validation set, p(X) and p(X | composition), by slot
#         OUT/train.log       everything the run printed
#
# Example (tested on CPU in tests/test_gpu_train.py with the tiny preset and seconds of budget):
#   scripts/gpu_train.sh pack gpu_pack --train runs/prepared/mp_20-train --train runs/prepared/mpts_52-dedup \
#       --val runs/prepared/mp_20-val
#   scripts/gpu_train.sh run gpu_pack "$OUT" 8 base
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
limit_bytes=$((64 * 1024 * 1024))
die() { echo "gpu_train.sh: error: $*" >&2; exit 2; }

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

pack() {
  [ $# -ge 1 ] || usage
  local pack_dir="$1"; shift
  local -a train=() val=()
  local init=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --train) [ $# -ge 2 ] || die "--train needs a prepared directory"; train+=("$2"); shift 2 ;;
      --val) [ $# -ge 2 ] || die "--val needs a prepared directory"; val+=("$2"); shift 2 ;;
      --init) [ $# -ge 2 ] || die "--init needs a model directory"; init="$2"; shift 2 ;;
      *) die "unknown option $1 (pack takes --train, --val, --init)" ;;
    esac
  done
  [ ${#train[@]} -gt 0 ] || die "pack needs at least one --train prepared directory"
  for d in "${train[@]}" "${val[@]}"; do
    [ -f "$d/meta.json" ] && [ -f "$d/tokens.safetensors" ] || die "$d is not a prepared directory (run crystalformer data prepare)"
  done
  if [ -n "$init" ]; then
    [ -f "$init/config.json" ] && [ -f "$init/model.safetensors" ] || die "--init $init is not a model directory"
  fi
  local tmp="$pack_dir.tmp-$$"
  rm -rf "$tmp"; mkdir -p "$tmp/train" "$tmp/val"
  trap 'rm -rf "$tmp"' EXIT
  for d in "${train[@]}"; do
    [ ! -e "$tmp/train/$(basename "$d")" ] || die "two --train folders are named $(basename "$d")"
    cp -r "$d" "$tmp/train/$(basename "$d")"
  done
  for d in "${val[@]}"; do
    [ ! -e "$tmp/val/$(basename "$d")" ] || die "two --val folders are named $(basename "$d")"
    cp -r "$d" "$tmp/val/$(basename "$d")"
  done
  [ -z "$init" ] || cp -r "$init" "$tmp/init"
  local size
  size=$(du -sb "$tmp" | cut -f1)
  [ "$size" -le "$limit_bytes" ] || die "the pack holds $((size / 1024 / 1024)) MiB, more than the 64 MiB a device call carries; pack fewer or smaller data sets"
  rm -rf "$pack_dir"; mv "$tmp" "$pack_dir"; trap - EXIT
  echo "packed $(du -sh "$pack_dir" | cut -f1) into $pack_dir: train ${train[*]}; val ${val[*]:-none}${init:+; init $init}"
}

run() {
  [ $# -ge 3 ] || usage
  local pack_dir="$1" out="$2" minutes="$3"; shift 3
  local preset="base"
  if [ $# -gt 0 ] && [ "$1" != "--" ]; then preset="$1"; shift; fi
  [ $# -eq 0 ] || { [ "$1" = "--" ] && shift; }
  [ -d "$pack_dir/train" ] || die "$pack_dir is not a pack (no train/ folder): run '$0 pack' first"
  local python="${PYTHON:-python3}"
  mkdir -p "$out"
  # the run directory (checkpoints, logs) stays outside OUT: only the 8 files above come back
  local run_dir="${RUN_DIR:-$(mktemp -d)/run}"
  local -a args=(train --preset "$preset" --out "$run_dir" --time-budget "$minutes" --quiet --overwrite)
  for d in "$pack_dir"/train/*/; do args+=(--data "${d%/}"); done
  local -a vals=()
  if [ -d "$pack_dir/val" ]; then
    for d in "$pack_dir"/val/*/; do [ -d "$d" ] && vals+=("${d%/}"); done
  fi
  for d in "${vals[@]}"; do args+=(--val "$d"); done
  [ ! -d "$pack_dir/init" ] || args+=(--init "$pack_dir/init")
  echo "+ crystalformer ${args[*]} $*" | tee "$out/train.log"
  (cd "$repo" && PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 \
     "$python" -m crystalformer "${args[@]}" "$@") 2>&1 | tee -a "$out/train.log"
  rm -rf "$out/model"; cp -r "$run_dir/model" "$out/model"
  cp "$run_dir/summary.json" "$out/summary.json"
  local log
  log=$(ls -d "$run_dir"/logs/version_* | sort -V | tail -1)/metrics.csv
  cp "$log" "$out/metrics.csv"
  if [ ${#vals[@]} -gt 0 ]; then
    (cd "$repo" && PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$python" scripts/val_nll.py \
       --model "$out/model" --prepared "${vals[@]}" --json "$out/val_nll.json" \
       --device "$("$python" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')") \
       2>&1 | tee -a "$out/train.log"
  fi
  echo "wrote $out: model/, metrics.csv, summary.json${vals:+, val_nll.json}, train.log"
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  run) shift; run "$@" ;;
  *) usage ;;
esac
