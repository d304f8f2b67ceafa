#!/usr/bin/env bash
# The main job on the bundled default model, offline: speak a sentence, transcribe it back, draw the scene the
# transcript describes, caption the drawing. Outputs land in OUT (default ./demo-out/): speech.wav,
# transcript.txt, scene.png, caption.txt; the transcript and caption are also printed.
set -euo pipefail
out=${1:-demo-out}
mkdir -p "$out"
aromni tts "a large red circle on the left" --seed 0 > "$out/speech.wav"
aromni asr "$out/speech.wav" | tee "$out/transcript.txt" | sed 's/^/asr:     /'
aromni t2i --seed 0 < "$out/transcript.txt" > "$out/scene.png"
aromni caption "$out/scene.png" | tee "$out/caption.txt" | sed 's/^/caption: /'
echo "wrote $out/speech.wav, $out/transcript.txt, $out/scene.png and $out/caption.txt" >&2
