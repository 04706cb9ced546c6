"""Text side of the model: tokenising with truncation flags, length-trimmed encoding, and an LRU cache.

Trimming: open_clip pads every caption to the full context (77 tokens) and runs the text transformer
over all of it, although with a causal attention mask the feature that gets pooled (the end-of-text
token) never sees the padding after it. `encode_text_trimmed` runs the transformer only up to the
longest pooled position in the batch, which gives the same features (to float rounding) for a
fraction of the work on short captions. Models where that is not provably exact (no causal mask, a
class token, HF text towers, 'last' pooling, ...) go through `model.encode_text` unchanged.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.tokenizer import HFTokenizer, SigLipTokenizer, SimpleTokenizer, basic_clean, canonicalize_text
from open_clip.transformer import TextTransformer, text_global_pool
from torch import nn

log = logging.getLogger(__name__)

# Pool types whose pooled position is known from the tokens alone (so the batch can be cut after it).
TRIMMABLE_POOL_TYPES = ("argmax", "eos")


# ---- length-trimmed text encoding ------------------------------------------------------------------
@dataclass
class _TextTower:
    """The parts of a text tower that encode_text uses, wherever the model keeps them."""

    token_embedding: nn.Module
    positional_embedding: torch.Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Any  # nn.Linear, nn.Parameter or None
    attn_mask: torch.Tensor | None
    pool_type: str
    eos_id: int | None


def _trimmable_tower(model: nn.Module) -> _TextTower | None:
    """The model's text tower if its encode_text is the plain causal pipeline we re-implement, else None."""
    # Exact types only: a subclass (CoCa, future variants) may change what encode_text does.
    if type(model) is open_clip.CLIP:
        tower = _TextTower(
            token_embedding=model.token_embedding,
            positional_embedding=model.positional_embedding,
            transformer=model.transformer,
            ln_final=model.ln_final,
            text_projection=model.text_projection,
            attn_mask=model.attn_mask,
            pool_type=model.text_pool_type,
            eos_id=getattr(model, "text_eos_id", None),
        )
    elif type(model) is open_clip.CustomTextCLIP and type(model.text) is TextTransformer:
        text = model.text
        # A class token is appended at the end (sees everything), a padding mask changes attention, and
        # output_tokens changes the return type: none of these can be trimmed like the plain tower.
        if text.cls_emb is not None or text.use_pad_mask or text.output_tokens:
            return None
        tower = _TextTower(
            token_embedding=text.token_embedding,
            positional_embedding=text.positional_embedding,
            transformer=text.transformer,
            ln_final=text.ln_final,
            text_projection=text.text_projection,
            attn_mask=text.attn_mask,
            pool_type=text.pool_type,
            eos_id=getattr(text, "eos_id", None),
        )
    else:
        return None
    if tower.attn_mask is None:  # bidirectional attention: every position sees the padding
        return None
    if tower.pool_type not in TRIMMABLE_POOL_TYPES:  # 'last' pools the final padded position
        return None
    if tower.pool_type == "eos" and tower.eos_id is None:
        return None
    return tower


def _pooled_positions(tokens: torch.Tensor, tower: _TextTower) -> torch.Tensor:
    """Per row, the position text_global_pool will read (the same rule it uses)."""
    if tower.pool_type == "argmax":
        return tokens.argmax(dim=-1)  # EOT has the highest id in the CLIP vocabulary
    return tokens.eq(tower.eos_id).int().argmax(dim=-1)


def can_trim(model: nn.Module) -> bool:
    """Whether encode_text_trimmed can take the trimmed path for this model (else it falls back)."""
    return _trimmable_tower(model) is not None


def encode_text_trimmed(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Unnormalised text features equal to `model.encode_text(tokens)`, computed on the shortest prefix.

    Cuts the batch after its longest pooled position, so a batch of short captions runs the transformer
    over ~10 positions instead of 77. Exact because of the causal mask: a position only attends to
    positions at or before it. Falls back to `model.encode_text` when that cannot be guaranteed.
    """
    tower = _trimmable_tower(model)
    if tower is None or tokens.ndim != 2 or tokens.shape[0] == 0:
        return model.encode_text(tokens)

    length = int(_pooled_positions(tokens, tower).max().item()) + 1
    if length >= tokens.shape[1]:
        return model.encode_text(tokens)  # nothing to cut
    # The positions kept must not attend to the ones cut off; true for the causal (-inf above the
    # diagonal) mask open_clip builds, checked rather than assumed in case a model carries another.
    mask = tower.attn_mask
    if mask is None or not bool(torch.isneginf(mask[:length, length:]).all()):
        return model.encode_text(tokens)

    kept = tokens[:, :length]
    cast_dtype = tower.transformer.get_cast_dtype()  # as encode_text: follows the model's weights dtype
    x = tower.token_embedding(kept).to(cast_dtype)
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.transformer(x, attn_mask=mask[:length, :length])
    # Pool first, then the final LayerNorm: LayerNorm works per position, so this equals
    # ln_final-then-pool and only normalises the rows we keep.
    x = text_global_pool(x, kept, tower.pool_type, eos_token_id=tower.eos_id)
    x = tower.ln_final(x)
    if tower.text_projection is not None:
        x = tower.text_projection(x) if isinstance(tower.text_projection, nn.Linear) else x @ tower.text_projection
    return x


# ---- tokenising with truncation flags ----------------------------------------------------------------
# CLIP's BPE is pure Python and quadratic in a word's length, and open_clip BPEs the whole caption before it
# truncates: 256 captions of 10,000 characters kept the model thread busy for a minute, and its memo
# (`SimpleTokenizer.cache`) grew by every unique word, forever. Here only what the context can hold is
# encoded: the caption is cleaned as open_clip cleans it, split into words by its own pattern, and words are
# BPE'd one at a time until one token more than the context holds is known (enough for the truncation flag).
# A long word is BPE'd in windows of WORD_WINDOW symbols, keeping only the tokens that end WORD_MARGIN
# symbols before the window's cut (a merge near the cut can change once more of the word is seen; CLIP's
# longest token is 32 symbols). The ids equal `tokenizer(texts)`'s; tests/unit/test_text_trimmed.py checks
# that against open_clip on long texts.
PRECLEAN_CHARS_PER_TOKEN = 256  # a caption is cut to context_length x this before cleaning (19,712 at 77)
WORD_WINDOW = 128
WORD_MARGIN = 48
CACHED_WORD_SYMBOLS = 64  # longer words are not worth remembering (natural words are far shorter)


class BpeCache:
    """Thread-safe LRU of word -> BPE ids, in front of open_clip's BPE (whose own memo is switched off)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, word: str) -> tuple[int, ...] | None:
        with self._lock:
            ids = self._items.get(word)
            if ids is not None:
                self._items.move_to_end(word)
            return ids

    def put(self, word: str, ids: tuple[int, ...]) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[word] = ids
            self._items.move_to_end(word)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


class _SpecialTokensOnly(dict[str, str]):
    """open_clip's BPE memo, kept to its special tokens: it reads them from here, and writes are dropped."""

    def __setitem__(self, key: str, value: str) -> None:
        pass


def bound_memo(tokenizer: SimpleTokenizer) -> None:
    """Stop open_clip's BPE memo from growing (idempotent); BpeCache does the remembering instead."""
    if not isinstance(tokenizer.cache, _SpecialTokensOnly):
        specials = {
            token: token for token in tokenizer.cache if tokenizer.encoder.get(token) in tokenizer.all_special_ids
        }
        tokenizer.cache = _SpecialTokensOnly(specials)


def _pieces_to_ids(tokenizer: SimpleTokenizer, pieces: Sequence[str]) -> list[int]:
    return [tokenizer.encoder[piece] for piece in pieces]


def _word_ids(tokenizer: SimpleTokenizer, cache: BpeCache, word: str, budget: int) -> Sequence[int]:
    """The BPE ids of one word (byte-encoded symbols); for a long word, at least the first `budget` of them."""
    if len(word) <= CACHED_WORD_SYMBOLS:
        known = cache.get(word)
        if known is None:
            known = tuple(_pieces_to_ids(tokenizer, tokenizer.bpe(word).split(" ")))
            cache.put(word, known)
        return known
    ids: list[int] = []
    start = 0
    while len(ids) < budget:
        pieces = tokenizer.bpe(word[start : start + WORD_WINDOW]).split(" ")
        if start + WORD_WINDOW >= len(word):  # the rest of the word: its tokens are final
            ids.extend(_pieces_to_ids(tokenizer, pieces))
            break
        used = 0
        for piece in pieces:  # no piece here ends the word, so none carries "</w>"
            if used + len(piece) > WORD_WINDOW - WORD_MARGIN or len(ids) >= budget:
                break
            ids.append(tokenizer.encoder[piece])
            used += len(piece)
        start += used
    return ids


def encode_prefix(tokenizer: SimpleTokenizer, text: str, max_tokens: int, cache: BpeCache) -> tuple[list[int], bool]:
    """The first `max_tokens` BPE ids of `text` as `tokenizer.encode` gives them, and whether there are more."""
    cleaned = tokenizer.clean_fn(text[: max(max_tokens, 1) * PRECLEAN_CHARS_PER_TOKEN])
    byte_encoder = tokenizer.byte_encoder
    ids: list[int] = []
    for match in tokenizer.pat.finditer(cleaned):
        word = "".join(byte_encoder[b] for b in match.group().encode("utf-8"))
        ids.extend(_word_ids(tokenizer, cache, word, max_tokens + 1 - len(ids)))
        if len(ids) > max_tokens:
            return ids[:max_tokens], True
    return ids, False


def tokenize(
    tokenizer: Any, texts: Sequence[str], context_length: int, cache: BpeCache | None = None
) -> tuple[torch.Tensor, list[bool]]:
    """Token ids (n, context_length) as `tokenizer(texts, context_length)` makes them, plus truncation flags.

    A caption is "truncated" when the tokenizer had to drop some of its tokens to fit the context: for
    CLIP's BPE tokenizer, when its BPE token count + 2 (start/end of text) exceeds context_length, i.e.
    more than 75 BPE tokens at the usual 77. The model then only sees the first part of the caption.
    For HF / SigLIP tokenizers the count is taken the same way from the wrapped tokenizer; a tokenizer
    we do not know reports False. `cache`: the word cache to use (the encoder keeps one; None: this call's).
    """
    texts = list(texts)
    if isinstance(tokenizer, SimpleTokenizer) and tokenizer.reduction_fn is None:
        bound_memo(tokenizer)
        cache = cache if cache is not None else BpeCache(4096)
        tokens = torch.zeros(len(texts), context_length, dtype=torch.long)
        truncated = []
        for i, text in enumerate(texts):
            # The same steps as SimpleTokenizer.__call__: SOT, ids, EOT, cut to the context with EOT last.
            ids, cut = encode_prefix(tokenizer, text, context_length - 2, cache)
            row = [tokenizer.sot_token_id, *ids, tokenizer.eot_token_id]
            tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            truncated.append(cut)
        return tokens, truncated
    if isinstance(tokenizer, SimpleTokenizer):  # a training-time reduction strategy: let it build the ids
        rows = [[tokenizer.sot_token_id, *tokenizer.encode(text), tokenizer.eot_token_id] for text in texts]
        return tokenizer(texts, context_length=context_length), [len(row) > context_length for row in rows]
    tokens = tokenizer(texts, context_length=context_length)
    return tokens, [_hf_truncated(tokenizer, text, context_length) for text in texts]


def _hf_truncated(tokenizer: Any, text: str, context_length: int) -> bool:
    """Whether an HF-backed open_clip tokenizer drops tokens of `text` (False when we cannot tell)."""
    try:
        if isinstance(tokenizer, HFTokenizer):
            cleaned = tokenizer.clean_fn(text)
            if tokenizer.tokenizer_mode == "clips":
                # 'clips' keeps context_length - 3 content tokens (+ bos, eos and a class token).
                ids = tokenizer.tokenizer(cleaned, add_special_tokens=False, truncation=False)["input_ids"]
                return len(ids) > context_length - 3
            ids = tokenizer.tokenizer(cleaned, truncation=False)["input_ids"]  # with special tokens
            return len(ids) > context_length
        if isinstance(tokenizer, SigLipTokenizer):
            cleaned = canonicalize_text(basic_clean(text))  # what SigLipTokenizer.__call__ does
            ids = tokenizer.tokenizer(cleaned, truncation=False)["input_ids"]
            return len(ids) > context_length
    except Exception:  # noqa: BLE001 - a flag is not worth failing a request for
        log.debug("could not count tokens for the truncation flag", exc_info=True)
    return False


# ---- cache of text embeddings ------------------------------------------------------------------------
class TextEmbeddingCache:
    """Thread-safe LRU of normalised text embeddings keyed by (model identity, caption).

    Values are (float32 row, truncated flag). The rows are private read-only copies, so a caller cannot
    change a cached embedding by writing into an array it was given. capacity 0 disables the cache.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], tuple[np.ndarray, bool]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get_many(self, identity: str, texts: Sequence[str]) -> dict[str, tuple[np.ndarray, bool]]:
        """The cached (embedding, truncated) of those texts that are cached; each counts one hit or miss."""
        if self.capacity == 0:
            return {}
        found: dict[str, tuple[np.ndarray, bool]] = {}
        with self._lock:
            for text in dict.fromkeys(texts):  # a caption repeated in one call counts once
                key = (identity, text)
                value = self._items.get(key)
                if value is None:
                    self.misses += 1
                    continue
                self._items.move_to_end(key)  # now the most recently used
                self.hits += 1
                found[text] = value
        return found

    def put_many(self, identity: str, items: Mapping[str, tuple[np.ndarray, bool]]) -> None:
        """Store (embedding, truncated) per text, evicting the least recently used beyond capacity."""
        if self.capacity == 0:
            return
        prepared = []
        for text, (embedding, truncated) in items.items():
            # Own copy: a row of a batch array would keep the whole batch alive, and stay writable.
            row = np.array(embedding, dtype=np.float32, copy=True)
            row.flags.writeable = False
            prepared.append(((identity, text), (row, bool(truncated))))
        with self._lock:
            for key, value in prepared:
                self._items[key] = value
                self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = 0
            self.misses = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"size": len(self._items), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}
