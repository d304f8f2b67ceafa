#!/usr/bin/env bash
# The main job on the bundled default model, offline: speak a sentence, transcribe it back, draw a scene,
# caption it. Outputs land in ./demo-out/.
set -euo pipefail
out=${1:-demo-out}
mkdir -p "$out"
aromni tts "hello, how are you today" --stats > "$out/hello.wav"
echo "asr:     $(aromni asr "$out/hello.wav")"
aromni t2i "a small red circle on the left" --seed 0 > "$out/scene.png"
echo "caption: $(aromni caption "$out/scene.png")"
echo "wrote $out/hello.wav and $out/scene.png" >&2
