"""Length-trimmed text encoding equals open_clip's encode_text; truncation flags; the text LRU cache."""

from __future__ import annotations

import copy
import random
import string
import threading

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.tokenizer import HFTokenizer, get_clean_fn

from clip_filter.ml.precision import cast_model
from clip_filter.ml.text import WORD_WINDOW, BpeCache, TextEmbeddingCache, can_trim, encode_text_trimmed, tokenize

SHORT = ["a dog", "a photo of a cat sitting on a red mat", "x", "two people riding bicycles at dusk"]
LONG = ["a very long caption about " + "many small things and " * 30, "word " * 200]
MIXED_SHORT = ["a", "a much longer caption that goes on for a while, describing a busy street at night"]


@pytest.fixture(scope="module")
def vit_b32() -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32", pretrained=None).eval()


@pytest.fixture(scope="module")
def clip_tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")


def transformer_lengths(transformer: torch.nn.Module, run) -> list[int]:
    """Sequence lengths the text transformer was called with while `run()` ran."""
    seen: list[int] = []
    handle = transformer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        run()
    finally:
        handle.remove()
    return seen


# ---- parity on ViT-B-32 ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "texts",
    [SHORT, LONG, SHORT + LONG, MIXED_SHORT, ["a single caption"], [""], ["", "a dog"]],
    ids=["short", "long", "mixed-with-long", "mixed-short", "single", "empty", "empty-and-short"],
)
def test_trimmed_equals_encode_text_fp32(vit_b32, clip_tokenizer, texts):
    tokens = clip_tokenizer(texts)
    with torch.inference_mode():
        full = vit_b32.encode_text(tokens)
        trimmed = encode_text_trimmed(vit_b32, tokens)
    assert trimmed.shape == full.shape and trimmed.dtype == torch.float32
    assert (trimmed - full).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_short_batches_run_only_the_needed_positions(vit_b32, clip_tokenizer):
    assert can_trim(vit_b32)
    tokens = clip_tokenizer(["a dog", "a cat on a mat"])  # SOT a cat on a mat EOT: 7 positions
    with torch.no_grad():
        lengths = transformer_lengths(vit_b32.transformer, lambda: encode_text_trimmed(vit_b32, tokens))
    assert lengths == [7]
    empty = clip_tokenizer([""])  # SOT EOT
    with torch.no_grad():
        assert transformer_lengths(vit_b32.transformer, lambda: encode_text_trimmed(vit_b32, empty)) == [2]


@pytest.mark.slow
def test_trimmed_bf16_is_close_to_fp32_full(vit_b32, clip_tokenizer):
    model_bf16 = cast_model(copy.deepcopy(vit_b32), torch.bfloat16)
    texts = SHORT + MIXED_SHORT + [""]
    tokens = clip_tokenizer(texts)
    with torch.inference_mode():
        reference = vit_b32.encode_text(tokens)
        low = encode_text_trimmed(model_bf16, tokens)
    assert low.dtype == torch.bfloat16
    cosine = F.cosine_similarity(low.float(), reference, dim=-1)
    assert cosine.min().item() >= 0.999, cosine


# ---- tower variants (tiny models, fast) ----------------------------------------------------------------
TINY_VISION = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}
TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}


def tiny_clip(custom_text: bool = False, **text_overrides) -> torch.nn.Module:
    torch.manual_seed(1)
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    model = cls(embed_dim=16, vision_cfg=TINY_VISION, text_cfg={**TINY_TEXT, **text_overrides}).eval()
    with torch.no_grad():  # non-trivial LayerNorm weights, as in trained models
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.05)
    return model


def eos_tokens(eos_id: int, pad_id: int, lengths: list[int]) -> torch.Tensor:
    """Rows of random ids in [3, 1000) ending in eos_id at the given lengths, padded with pad_id."""
    generator = torch.Generator().manual_seed(3)
    tokens = torch.full((len(lengths), 77), pad_id, dtype=torch.long)
    for row, length in enumerate(lengths):
        tokens[row, : length - 1] = torch.randint(3, 1000, (length - 1,), generator=generator)
        tokens[row, length - 1] = eos_id
    return tokens


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"custom_text": True}, {"proj_bias": True}, {"custom_text": True, "proj_type": "none"}],
    ids=["clip", "custom-text", "linear-projection", "custom-no-projection"],
)
def test_argmax_towers_are_trimmed_exactly(clip_tokenizer, kwargs):
    model = tiny_clip(**kwargs)
    assert can_trim(model)
    tokens = clip_tokenizer(SHORT)
    tower = model.text.transformer if kwargs.get("custom_text") else model.transformer
    with torch.inference_mode():
        full = model.encode_text(tokens)
        lengths = transformer_lengths(tower, lambda: encode_text_trimmed(model, tokens))
        trimmed = encode_text_trimmed(model, tokens)
    assert lengths and lengths[0] < 20
    assert (trimmed - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("pad_id", [0, 1])
def test_eos_pooling_is_trimmed_exactly(pad_id):
    model = tiny_clip(pool_type="eos", eos_id=2, pad_id=pad_id)
    assert can_trim(model)
    tokens = eos_tokens(eos_id=2, pad_id=pad_id, lengths=[3, 9, 5])
    with torch.inference_mode():
        full = model.encode_text(tokens)
        lengths = transformer_lengths(model.transformer, lambda: encode_text_trimmed(model, tokens))
        trimmed = encode_text_trimmed(model, tokens)
    assert lengths == [9]
    assert (trimmed - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"no_causal_mask": True},  # bidirectional: the padding changes every position
        {"custom_text": True, "no_causal_mask": True, "pool_type": "last"},  # SigLIP-style
        {"custom_text": True, "embed_cls": True},  # CoCa-style class token appended at the end
    ],
    ids=["non-causal", "last-pool", "class-token"],
)
def test_untrimmable_towers_fall_back_to_encode_text(clip_tokenizer, kwargs):
    model = tiny_clip(**kwargs)
    assert not can_trim(model)
    tokens = clip_tokenizer(SHORT)
    with torch.inference_mode():
        torch.testing.assert_close(encode_text_trimmed(model, tokens), model.encode_text(tokens), rtol=0, atol=0)


def test_a_mask_that_is_not_causal_where_we_cut_falls_back(clip_tokenizer):
    model = tiny_clip()
    model.attn_mask = torch.zeros_like(model.attn_mask)  # full attention, but still a mask tensor
    tokens = clip_tokenizer(SHORT)
    with torch.inference_mode():
        lengths = transformer_lengths(model.transformer, lambda: encode_text_trimmed(model, tokens))
        torch.testing.assert_close(encode_text_trimmed(model, tokens), model.encode_text(tokens), rtol=0, atol=0)
    assert lengths == [77]


def test_empty_batch(clip_tokenizer):
    model = tiny_clip()
    tokens = torch.zeros((0, 77), dtype=torch.long)
    with torch.inference_mode():
        assert encode_text_trimmed(model, tokens).shape == (0, 16)


# ---- tokenize and truncation flags -----------------------------------------------------------------------
def test_tokens_are_the_tokenizers_own(clip_tokenizer):
    odd = [
        "",
        "  Spaces\tand\nnewlines  ",
        "Caf&eacute; &amp; cr\u00e8me br\u00fbl\u00e9e",
        "emoji \U0001f436\U0001f431",
        "UPPER case",
        "don't stop",
        "\u00c3\u00a9 mojibake",
    ]
    texts = SHORT + LONG + odd
    tokens, truncated = tokenize(clip_tokenizer, texts, 77)
    assert tokens.dtype == torch.long
    torch.testing.assert_close(tokens, clip_tokenizer(texts), rtol=0, atol=0)
    assert truncated == [False] * len(SHORT) + [True, True] + [False] * len(odd)


def test_truncation_flag_boundary(clip_tokenizer):
    fits = " ".join(["a"] * 75)  # 75 BPE tokens + SOT + EOT = 77
    too_long = " ".join(["a"] * 76)
    assert len(clip_tokenizer.encode(fits)) == 75 and len(clip_tokenizer.encode(too_long)) == 76
    tokens, truncated = tokenize(clip_tokenizer, [fits, too_long], 77)
    assert truncated == [False, True]
    assert tokens[0, 76].item() == tokens[1, 76].item() == clip_tokenizer.eot_token_id
    # Cleaning happens before counting: html entities and extra whitespace do not count as tokens.
    _, flags = tokenize(clip_tokenizer, ["  " + "   ".join(["a"] * 75) + " \n", "&amp; " * 75], 77)
    assert flags == [False, False]
    # A shorter context moves the boundary.
    _, flags = tokenize(clip_tokenizer, [" ".join(["a"] * 14), " ".join(["a"] * 15)], 16)
    assert flags == [False, True]


def long_texts(seed: int, count: int) -> list[str]:
    """Long captions of every shape that stresses the prefix encoding: words, one long word, emoji, CJK,
    whitespace runs and html entities (which cleaning collapses), special tokens, punctuation runs."""
    rng = random.Random(seed)
    words = ["photograph", "international", "a", "dog", "riding", "skateboards", "qu", "zz", "the", "x"]
    makers = [
        lambda n: " ".join(rng.choice(words) for _ in range(n // 5)),
        lambda n: "".join(rng.choice(words) for _ in range(n // 5)),  # one long word of real sub-words
        lambda n: "".join(rng.choices(string.ascii_lowercase, k=n)),  # one long word of random letters
        lambda n: "".join(rng.choices("\U0001f602\U0001f60d\U0001f1fa\U0001f1f8\U0001f44d\U0001f3fd ab", k=n)),
        lambda n: "".join(rng.choices("\u6f22\u5b57\u304b\u306a\u30ab\u30ca\ud55c\uad6d\uc5b4", k=n)),
        lambda n: " " * n + " a dog &amp;amp; a cat " * 40,
        lambda n: "&amp; " * (n // 6) + "<start_of_text> the end",
        lambda n: "".join(rng.choices("!?.-~*#@", k=n)),
        lambda n: "".join(rng.choices(string.printable, k=n)),
    ]
    return [makers[i % len(makers)](rng.choice([60, 400, 1500])) for i in range(count)]


def test_long_texts_give_open_clips_tokens_exactly():
    # A fresh tokenizer as the reference: open_clip's own __call__ BPE-encodes every word of every caption.
    reference, ours = open_clip.get_tokenizer("ViT-B-32"), open_clip.get_tokenizer("ViT-B-32")
    texts = [*long_texts(0, 90), " ".join(["word"] * 2000), "a " * 5000 + "dog"]
    tokens, truncated = tokenize(ours, texts, 77, BpeCache(1000))
    expected = reference(texts)
    for i, text in enumerate(texts):
        assert torch.equal(tokens[i], expected[i]), f"text {i}: {text[:60]!r}"
        assert truncated[i] == (len(reference.encode(text)) > 75), i


def test_only_what_the_context_holds_is_bpe_encoded(clip_tokenizer):
    encoded: list[int] = []
    tokenizer = copy.copy(clip_tokenizer)
    real_bpe = tokenizer.bpe
    tokenizer.bpe = lambda word: encoded.append(len(word)) or real_bpe(word)
    rng = random.Random(3)
    captions = [
        " ".join("".join(rng.choices(string.ascii_lowercase, k=7)) for _ in range(1400)),  # 10k chars
        "".join(rng.choices(string.ascii_lowercase, k=10_000)),
    ]  # one 10,000-letter word
    for caption in captions:
        encoded.clear()
        _, truncated = tokenize(tokenizer, [caption], 77, BpeCache(0))
        assert truncated == [True]
        # At most one word per kept token (plus the one that shows the caption is cut), each BPE'd once;
        # a long word only in windows that together cover what 76 tokens can span.
        assert len(encoded) <= 77 and sum(encoded) <= 76 * 32 + 2 * WORD_WINDOW, (len(encoded), sum(encoded))


def test_the_word_cache_stays_within_its_bound_and_open_clips_memo_does_not_grow():
    reference, ours = open_clip.get_tokenizer("ViT-B-32"), open_clip.get_tokenizer("ViT-B-32")
    rng = random.Random(5)
    captions = [" ".join("".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(300)) for _ in range(60)]
    cache = BpeCache(500)
    for start in range(0, len(captions), 10):
        tokenize(ours, captions[start : start + 10], 77, cache)
        assert len(cache) <= 500
    assert len(ours.cache) == 2  # open_clip's memo keeps its two special tokens and nothing else
    reference(captions)  # what open_clip alone does: every word of every caption, remembered for ever
    assert len(reference.cache) > 10_000


class _FakeEncoding(dict):
    @property
    def input_ids(self):
        return self["input_ids"]


class _FakeHF:
    """Whitespace 'tokenizer' with BERT-like specials (CLS=101, SEP=102), enough to test the counting."""

    bos_token_id, eos_token_id, pad_token_id, cls_token_id, sep_token_id = 101, 102, 0, 103, 102

    def _ids(self, text: str) -> list[int]:
        return [1000 + len(word) for word in text.split()]

    def __call__(
        self, texts, add_special_tokens=True, truncation=False, max_length=None, padding=False, return_tensors=None, **_
    ):
        single = isinstance(texts, str)
        rows = []
        for text in [texts] if single else texts:
            ids = self._ids(text)
            if add_special_tokens:
                if truncation:
                    ids = ids[: max_length - 2]
                ids = [101, *ids, 102]
            rows.append(ids + [0] * ((max_length or 0) - len(ids)) if padding == "max_length" else ids)
        if return_tensors == "pt":
            return _FakeEncoding(input_ids=torch.tensor(rows))
        return _FakeEncoding(input_ids=rows[0] if single else rows)


def fake_hf_tokenizer(mode: str = "") -> HFTokenizer:
    tokenizer = object.__new__(HFTokenizer)  # skip __init__: it needs transformers and a download
    tokenizer.tokenizer_mode, tokenizer.context_length = mode, 8
    tokenizer.clean_fn, tokenizer.strip_sep_token = get_clean_fn("whitespace"), False
    tokenizer.tokenizer = _FakeHF()
    return tokenizer


@pytest.mark.parametrize(("mode", "limit"), [("", 6), ("clips", 5)])
def test_hf_truncation_flags_match_what_the_tokenizer_keeps(mode, limit):
    tokenizer = fake_hf_tokenizer(mode)
    texts = [" ".join(["w"] * n) for n in (limit - 1, limit, limit + 1, limit + 5)]
    tokens, truncated = tokenize(tokenizer, texts, 8)
    assert tokens.shape == (4, 8)
    assert truncated == [False, False, True, True]


def test_unknown_tokenizer_reports_no_truncation():
    def unknown(texts, context_length):
        return torch.zeros(len(texts), context_length, dtype=torch.long)

    tokens, truncated = tokenize(unknown, ["a", "b"], 77)
    assert tokens.shape == (2, 77) and truncated == [False, False]


# ---- text embedding cache -------------------------------------------------------------------------------
def row(value: float) -> np.ndarray:
    return np.full(4, value, dtype=np.float32)


def test_cache_evicts_least_recently_used():
    cache = TextEmbeddingCache(2)
    cache.put_many("m", {"a": (row(1), False), "b": (row(2), True)})
    assert set(cache.get_many("m", ["a"])) == {"a"}  # "a" is now more recent than "b"
    cache.put_many("m", {"c": (row(3), False)})
    found = cache.get_many("m", ["a", "b", "c"])
    assert set(found) == {"a", "c"}
    np.testing.assert_array_equal(found["c"][0], row(3))
    assert found["a"][1] is False and len(cache) == 2
    assert (cache.hits, cache.misses) == (3, 1)


def test_cache_keys_include_the_model_identity():
    cache = TextEmbeddingCache(10)
    cache.put_many("ViT-B-32/openai", {"a dog": (row(1), False)})
    assert cache.get_many("ViT-B-32/random", ["a dog"]) == {}
    assert set(cache.get_many("ViT-B-32/openai", ["a dog", "a dog"])) == {"a dog"}
    assert (cache.hits, cache.misses) == (1, 1)  # a caption repeated in one lookup counts once


def test_cache_rows_are_private_read_only_copies():
    cache = TextEmbeddingCache(10)
    batch = np.stack([row(1), row(2)])
    cache.put_many("m", {"a": (batch[0], False)})
    batch[0] = 99.0
    stored = cache.get_many("m", ["a"])["a"][0]
    np.testing.assert_array_equal(stored, row(1))
    assert stored.dtype == np.float32 and not stored.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        stored[0] = 5.0


def test_cache_capacity_zero_disables_it():
    cache = TextEmbeddingCache(0)
    cache.put_many("m", {"a": (row(1), False)})
    assert cache.get_many("m", ["a"]) == {} and len(cache) == 0
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        TextEmbeddingCache(-1)


def test_cache_thread_safety_smoke():
    cache = TextEmbeddingCache(50)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                keys = [f"t{k}" for k in rng.integers(0, 120, 5)]
                found = cache.get_many("m", keys)
                for key, (embedding, _) in found.items():
                    assert embedding[0] == float(key[1:])  # never another key's row
                cache.put_many("m", {k: (row(float(k[1:])), False) for k in keys if k not in found})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    stats = cache.stats()
    assert stats["size"] <= 50 and stats["capacity"] == 50
    assert stats["hits"] + stats["misses"] > 0
