#!/usr/bin/env bash
# Rebuild aromni's bundled default model from nothing: corpus -> BPE -> image VQ -> speech codec ->
# token shards (+ unconditional images) -> language model -> self-training (its own speech and drawings) ->
# bundle (fp16, with MODEL_CARD.md) -> low-confidence rules (calibrate) -> held-out evaluation.
#
#   scripts/build_default_model.sh [--ci] [--install] [--no-eval] [OUT]
#
#   OUT        build directory (default: build/default, or build/default-ci with --ci)
#   --ci       the scaled-down variant (recipes/default/ci/*.yaml, corpus preset ci): minutes, not hours
#   --install  copy the finished bundle to core/assets/default/ (the model `aromni` loads by default)
#   --no-eval  skip the held-out evaluation (the model card then says "not measured")
#
# Resumable: a finished stage leaves OUT/<stage>/DONE and is skipped on the next run; an interrupted LM
# run continues from its newest checkpoint (OUT/lm/checkpoints), an interrupted evaluation keeps the tasks it
# finished (OUT/eval/<task>.json, eval_default.py --resume). Delete OUT/<stage> to redo a stage (and
# the ones after it). Stage times (wall and CPU) go to OUT/times.tsv, logs to OUT/logs/<stage>.log.
# Environment: PYTHON (default .venv/bin/python if present, else python3), THREADS (torch threads, default
# all cores; use 1 on a busy machine), PARALLEL (1: train the image and speech tokenizers side by side, the
# default on 2+ cores), SEED (corpus seed, default 0), NICE (niceness of the stages, default 0), JUDGE (TTS judge of
# the evaluation: whisper (offline Whisper tiny.en), self (the model's own ASR; --ci default), or both: whisper,self
# (default; the speech is synthesised once; the tokenizer ceilings use the first)), RERUN (N > 0: after the LM,
# train it again from scratch for N steps into lm-rerun and compare the logged losses with the first run's:
# rerun.json, in the model card; default 0, off), RECIPE (a recipe folder to use instead of recipes/default or
# recipes/default/ci: an experiment's copy with other mix or decode settings), SELFTRAIN (1: after the LM, ASR lines
# of its own TTS of the training texts (steps.py self-asr), T2I lines of its own drawings of training requests that
# its captioner reads right, drawn with guidance (steps.py self-t2i), ASR and speech -> image lines of training
# texts in espeak-ng voices the corpus does not use and new sentences of its words, heard in those voices and spoken
# by the output voice (steps.py voice-lines), and 600 more LM steps with them (pretokenize_self.yaml,
# pretokenize_voices.yaml, selftrain.yaml); the bundle is then that LM; default 1; 0: the LM's bundle as it is;
# docs/default-model.md, "Recipe"), CORPUS (the corpus preset: default, or ci with --ci; wide: everyday lines, a
# neural output voice and many input voices, needs `pip install 'aromni[voices]'`; ci-wide: the same at the size of
# ci, with --ci), EVAL_SAMPLE (TASK=N,...: evaluate N held-out lines of each task, evenly spread over its groups
# (steps.py sample), instead of the whole held-out split: e.g.
# asr=120,caption=60,chat=10,s2i=60,t2i=80,text=30,tts=60, 420 lines in all; the card names the sample).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CI=0; INSTALL=0; EVAL=1; OUT=""
for a in "$@"; do
  case "$a" in
    --ci) CI=1 ;;
    --install) INSTALL=1 ;;
    --no-eval) EVAL=0 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "build_default_model.sh: unknown option $a (see --help)" >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "build_default_model.sh: one OUT directory only" >&2; exit 2; }; OUT="$a" ;;
  esac
done
if [ "$CI" = 1 ] && [ "$INSTALL" = 1 ]; then
  echo "build_default_model.sh: --install with --ci would replace the default model by the CI toy; refused" >&2; exit 2
fi
if [ "$CI" = 1 ]; then DEF_RECIPE="$ROOT/recipes/default/ci"; DEF_PRESET=ci; else DEF_RECIPE="$ROOT/recipes/default"; DEF_PRESET=default; fi
PRESET="${CORPUS:-$DEF_PRESET}"
RECIPE="${RECIPE:-$DEF_RECIPE}"
[ -f "$RECIPE/lm.yaml" ] || { echo "build_default_model.sh: RECIPE=$RECIPE is not a recipe folder (no lm.yaml)" >&2; exit 2; }
RECIPE="$(cd "$RECIPE" && pwd)"
OUT="${OUT:-$ROOT/build/default$([ "$CI" = 1 ] && echo -ci)}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
case "$PYTHON" in */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;; esac
SEED="${SEED:-0}"
JUDGE="${JUDGE:-$([ "$CI" = 1 ] && echo self || echo whisper,self)}"
NICE="${NICE:-0}"
SELFTRAIN="${SELFTRAIN:-1}"
THREADS="${THREADS:-$(nproc 2>/dev/null || echo 2)}"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" PYTHONHASHSEED=0

mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
cd "$OUT"   # every path in the recipe is relative to the build directory
STEPS="$ROOT/recipes/default/steps.py"

say() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
run_py() { nice -n "$NICE" "$PYTHON" "$@"; }

cpu_s() {  # CPU := CPU seconds (user + sys) used so far by this shell's finished children
  local f="logs/.times.$BASHPID"
  times > "$f"   # (not in a pipe or $(...): a subshell would see no children)
  CPU=$(tail -n 1 "$f" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] }
                                       printf "%d", s }')
  rm -f "$f"
}

# stage NAME DIR CMD...: run CMD unless DIR/DONE exists; log, time, then write DIR/DONE.
# times.tsv: stage, wall seconds, CPU seconds (the CPU time does not grow when other jobs share the cores).
stage() {
  local name="$1" dir="$2"; shift 2
  if [ -f "$dir/DONE" ]; then say "$name: done already ($dir/DONE)"; return 0; fi
  say "$name: running (log: $OUT/logs/$name.log)"
  local t0 t1 c0 c1
  t0=$(date +%s); cpu_s; c0=$CPU
  if [ "${STAGE_QUIET:-0}" = 1 ]; then  # (stages running side by side: their progress bars would interleave)
    "$@" >> "logs/$name.log" 2>&1 || { say "$name: FAILED (see $OUT/logs/$name.log); rerun this script to resume"; exit 1; }
  elif ! "$@" > >(tee -a "logs/$name.log") 2> >(tee -a "logs/$name.log" >&2); then
    say "$name: FAILED (see $OUT/logs/$name.log); rerun this script to resume"; exit 1
  fi
  t1=$(date +%s); cpu_s; c1=$CPU
  mkdir -p "$dir"
  echo "$((t1 - t0))" > "$dir/DONE"
  printf '%s\t%s\t%s\n' "$name" "$((t1 - t0))" "$((c1 - c0))" >> times.tsv
  say "$name: finished in $((t1 - t0)) s (CPU $((c1 - c0)) s)"
}

train() {  # train NAME: aromni train RECIPE/NAME.yaml (--resume when an LM checkpoint exists)
  local cfg="$RECIPE/$1.yaml"; shift
  local extra=()
  local name; name="$(basename "$cfg" .yaml)"
  if { [ "$name" = lm ] || [ "$name" = selftrain ]; } && ls -d "$name"/checkpoints/step-* >/dev/null 2>&1; then
    extra=(--resume)
  fi
  run_py -m aromni train "$cfg" --json "${extra[@]}" "$@"
}

say "recipe $RECIPE -> $OUT ($THREADS threads)"
stage corpus corpus run_py -m aromni corpus corpus --preset "$PRESET" --seed "$SEED" --sample-rate 16000
stage prompts prompts run_py "$STEPS" prompts prompts.jsonl
stage mix mix run_py "$STEPS" mix "$RECIPE/mix.yaml" corpus/train.jsonl corpus/mix.jsonl
stage bpe bpe train bpe
# The image and speech tokenizers do not depend on each other: with 2+ cores they train side by side, one
# thread each (two single-threaded jobs beat one job on two threads for these small convnets, and a busy
# machine does not stall them in OpenMP barriers).
if [ "$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)" -ge 2 ] && [ "${PARALLEL:-1}" = 1 ]; then
  say "image_vq and codec run side by side (one thread each); progress: logs/image_vq.log, logs/codec.log"
  ( export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 STAGE_QUIET=1; stage image_vq image_vq train image_vq ) & vq_pid=$!
  ( export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 STAGE_QUIET=1; stage codec codec train codec ) & codec_pid=$!
  rc=0; wait "$vq_pid" || rc=1; wait "$codec_pid" || rc=1
  [ "$rc" = 0 ] || exit 1
else
  stage image_vq image_vq train image_vq
  stage codec codec train codec
fi
stage ceilings ceilings run_py "$STEPS" ceilings corpus/heldout.jsonl ceilings.json \
  --tokenizers image=image_vq speech=codec --judge "${JUDGE%%,*}" --limit "$([ "$CI" = 1 ] && echo 8 || echo 100)"
stage pretokenize shards train pretokenize
stage uncond shards/uncond run_py "$STEPS" uncond shards/train shards/uncond --mix "$RECIPE/mix.yaml" \
  --tokenizers text=bpe image=image_vq speech=codec
stage lm lm train lm
if [ "${RERUN:-0}" -gt 0 ]; then
  rerun_lm() {  # the LM again, from scratch (resumed if this stage was interrupted), up to step $RERUN
    local extra=()
    if ls -d lm-rerun/checkpoints/step-* >/dev/null 2>&1; then extra=(--resume); fi
    run_py -m aromni train "$RECIPE/lm.yaml" --json "${extra[@]}" out_dir=lm-rerun "train.stop_at=$RERUN"
  }
  stage rerun lm-rerun rerun_lm
  run_py "$STEPS" rerun-compare lm/metrics.jsonl lm-rerun/metrics.jsonl --out rerun.json
fi
LM_BUNDLE=lm/bundle
if [ "$SELFTRAIN" = 1 ]; then  # its own TTS as ASR lines, its own checked drawings as T2I lines, many voices; 600 steps
  stage self_asr corpus/selfwav run_py "$STEPS" self-asr lm/bundle corpus/train.jsonl corpus/self_asr.jsonl \
    --decode "$RECIPE/decode.yaml" $([ "$CI" = 1 ] && echo "--limit 8")
  stage self_t2i corpus/selfimg run_py "$STEPS" self-t2i lm/bundle corpus/train.jsonl corpus/self_t2i.jsonl \
    --limit "$([ "$CI" = 1 ] && echo 8 || echo 1500)" --cfg-text 1.5
  stage voice_lines corpus/voice_lines run_py "$STEPS" voice-lines corpus/train.jsonl corpus/voice_lines.jsonl \
    --asr-per-text 8 --s2i-per-line 4 --wider 4 $([ "$CI" = 1 ] && echo "--limit 8")
  stage pretokenize_self shards/self train pretokenize_self
  stage pretokenize_voices shards/voices train pretokenize_voices
  stage selftrain selftrain train selftrain
  LM_BUNDLE=selftrain/bundle
fi
[ -f bundle/DONE ] || rm -rf calibrate   # a new bundle has no rules yet: calibrate it again
stage bundle bundle run_py "$STEPS" assemble "$LM_BUNDLE" bundle --build "$OUT" --recipe "$RECIPE"
# the low-confidence rules of asr and caption, from the bundle's answers on held-out corpus lines, into its aromni.json
stage calibrate calibrate run_py "$ROOT/scripts/confidence_calibration.py" --model bundle --data corpus/heldout.jsonl \
  --n "$([ "$CI" = 1 ] && echo 8 || echo 120)" --n-in "$([ "$CI" = 1 ] && echo 8 || echo 300)" --write --out calibration.json
if [ "$EVAL" = 1 ]; then
  # 32 rows a batch: the best-of-16 image tasks decode 15 sampled candidates per prompt, ~2.7x faster than at 8
  EVAL_DATA=corpus/heldout.jsonl
  if [ -n "${EVAL_SAMPLE:-}" ]; then
    EVAL_DATA=corpus/heldout-sample.jsonl
    run_py "$STEPS" sample corpus/heldout.jsonl "$EVAL_DATA" --n "$EVAL_SAMPLE" > /dev/null
  fi
  stage eval eval run_py "$ROOT/scripts/eval_default.py" --data "$EVAL_DATA" --model bundle --out eval \
    --resume --judge "$JUDGE" --seed 0 --batch-size 32 -q
fi
run_py "$STEPS" card bundle --build "$OUT" --recipe "$RECIPE"   # with every stage's time and the evaluation
if [ "$INSTALL" = 1 ]; then
  DEST="$ROOT/core/assets/default"
  say "installing the bundle into $DEST"
  rm -rf "$DEST.tmp" && cp -r bundle "$DEST.tmp" && rm -f "$DEST.tmp/DONE"
  rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
fi
say "bundle: $OUT/bundle ($(du -sh bundle | cut -f1)); times: $OUT/times.tsv"
