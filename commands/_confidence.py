"""Output of text answers that carry a confidence (asr, caption): JSON fields, or a stderr warning."""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from aromni.commands._decode import one_line, print_line

if TYPE_CHECKING:  # the tasks module imports torch: not at CLI start-up
    from aromni.core.confidence import Answer


def print_answer(name: str, answer: "Answer", json_out: bool) -> None:
    """One answer for input ``name``: a JSON line with its confidence, or the text with a
    one-line warning on stderr when the input held no speech or the model was unsure (below its calibrated
    threshold)."""
    if json_out:
        print_line(json.dumps({"input": name, **answer.to_dict()}))
        return
    if answer.no_speech:
        print(f"aromni: no speech: {name}: {answer.why_no_speech}", file=sys.stderr, flush=True)
    elif answer.low:
        print(f"aromni: low confidence: {name}: {answer.why_low}; the input may be outside what the model knows",
              file=sys.stderr, flush=True)
    print_line(one_line(answer.text))
