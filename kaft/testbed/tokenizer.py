"""The testbed's word-level tokenizer: every entity, value and template word is one token.

Punctuation is split off and the letters A-Z are tokens, so ``" A"`` is one token and
``ids(prompt + " A") == ids(prompt) + ids(" A")`` - the split lm-eval and kaft's training rely on. By default it
prepends ``<s>`` like Llama tokenizers. Decoding joins words with spaces (newlines are not restored).
"""

from __future__ import annotations

from kaft.prompts import LETTERS
from kaft.testbed.world import World

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
PUNCT = list(".,:;?!'\"()-/")


def _pre_tokenizer():
    from tokenizers import pre_tokenizers  # lazy: needed only to build the testbed tokenizer

    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])


def vocabulary(world: World) -> list[str]:
    """Specials, letters, digits, punctuation, then every word of every text the model is shown (sorted)."""
    pre = _pre_tokenizer()
    words: set[str] = set()
    for text in world.prompt_texts():
        words.update(w for w, _ in pre.pre_tokenize_str(text))
    fixed = SPECIALS + list(LETTERS) + list("0123456789") + PUNCT
    return fixed + sorted(words - set(fixed))


def build_tokenizer(world: World, max_length: int = 1024):
    """A word-level fast tokenizer over the world's vocabulary (``<s>`` prepended by default)."""
    # lazy: needed only to build the testbed tokenizer (transformers imports torch)
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary(world))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = _pre_tokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def letter_ids(tok, n: int) -> list[int]:
    """Token ids of the first ``n`` option letters as they follow a prompt's ``"Answer:"`` (``" A"``, ``" B"``, ...):
    the one definition both the letter probabilities and the release's letter calibration read."""
    return [tok(" " + c, add_special_tokens=False)["input_ids"][0] for c in LETTERS[:n]]
