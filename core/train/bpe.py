"""Train a SentencePiece BPE text tokenizer in-process (for aromni's own models)."""
from __future__ import annotations

import os

from ..errors import AromniError


def train_bpe(texts: list[str], vocab_size: int, out_prefix: str) -> str:
    """Train a byte-fallback BPE on ``texts``; write ``out_prefix.model`` (and ``.vocab``); return the model path.

    No BOS/EOS/PAD pieces (control ids live in the joint layout), ``<unk>`` is piece 0, 256 byte pieces
    make every string encodable. Text is kept verbatim (identity normalisation, no dummy prefix, spaces
    kept), so ``decode(encode(s)) == s`` and segment-by-segment encoding concatenates exactly.
    Single-threaded and unshuffled: the same texts give the same model. ``vocab_size`` is an upper
    bound; a small corpus yields fewer pieces.
    """
    import sentencepiece as spm

    texts = [t for t in texts if t]
    if not texts:
        raise AromniError("cannot train a BPE tokenizer on an empty corpus")
    if vocab_size < 260:
        raise AromniError(f"BPE vocab_size {vocab_size} is too small: 256 byte pieces + <unk> + merges need >= 260")
    d = os.path.dirname(out_prefix)
    if d:
        os.makedirs(d, exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_prefix=out_prefix, vocab_size=vocab_size, model_type="bpe",
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, byte_fallback=True, character_coverage=0.9995,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True, split_digits=True, hard_vocab_limit=False,
            num_threads=1, shuffle_input_sentence=False, input_sentence_size=0, max_sentence_length=1 << 16,
            minloglevel=2)
    except RuntimeError as e:
        raise AromniError(f"BPE training failed: {e}") from None
    return out_prefix + ".model"
