"""IOI prompts: templates, word lists, tokenisation and the dataset with its features.

An IOI prompt names two people, then repeats one of them as the subject (S) of a clause that
ends just before the indirect object (IO): "When Mary and John went to the store, John gave a
drink to" -> " Mary". The IO is the name that appears once, S the name that appears twice (S1,
S2). Each template is written once with three name slots, `{A}`, `{B}` and `{S}`; in **ABBA**
order the IO fills `{A}` and S fills `{B}` (IO first), in **BABA** order S fills `{A}` and the
IO fills `{B}` (S first); `{S}` is always the subject. `{PLACE}` and `{OBJECT}` vary too.

**Tokenisation and alignment.** The token ids come from the tokenizer the caller provides
(GPT-2's own, from the local Hugging Face directory the weights came from; tests use
`WordTokenizer`). Each template is encoded once, piece by piece: the literal text between the
slots is encoded with the tokenizer, and each slot holds exactly one token, the id of
`" " + word`. Words that are not a single token are dropped from the lists (and an error is
raised if too few remain). For GPT-2 this piecewise encoding equals encoding the whole prompt,
because GPT-2's pre-tokenizer splits before every space-led word and every punctuation mark,
and every slot is a space-led word followed by a space or a punctuation mark. So every prompt
of one template has the same length and the same positions of IO, S1, S2 and END.

Templates differ in length. Every prompt starts with the beginning-of-sequence token (GPT-2's
`<|endoftext|>`) and shorter templates are **left-padded** with more of it, so that all prompts
have one length and END (the last token, always " to") is the last position of every row. The
model then reads its logits at one position for the whole batch, and the END position's token
and positional embedding are the same in every prompt. GPT-2 saw `<|endoftext|>` between
documents in training, so the padding reads as the end of earlier, empty documents. (The
paper's dataset instead right-pads and reads each prompt's logits at its own END index.)

Features of each row (all int64, shape [n]): `io` and `s` (token ids), `io_pos`, `s1_pos`,
`s2_pos`, `end_pos` (positions in `tokens`), `template` (index into the templates), `order`
(0 = ABBA, 1 = BABA). The rows are balanced: each (template, order) cell has n / (2 x number of
templates) rows, rounded.

Example:
    >>> from causal_scrubbing.experiments.ioi import data
    >>> tok = data.WordTokenizer.for_ioi()
    >>> ds = data.dataset(tok, n=64, seed=0)
    >>> print(data.prompt(tok, ds, 0))
    <|endoftext|><|endoftext|>The farm was closed when Patrick and William arrived, so William gave the bag to
    >>> tok.decode([int(ds["io"][0])]), tok.decode([int(ds["s"][0])]), int(ds["order"][0])
    (' Patrick', ' William', 0)
    >>> int(ds["io_pos"][0]), int(ds["s1_pos"][0]), int(ds["s2_pos"][0]), int(ds["end_pos"][0])
    (7, 9, 13, 17)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ...core.data import Dataset
from ...core.errors import ScrubError

log = logging.getLogger(__name__)

#: Base templates. `{A}` and `{B}` are the two names of the first clause (ABBA: IO then S; BABA:
#: S then IO), `{S}` the repeated subject. Every slot follows a space; every template ends with
#: " to", the END token whose next token is the IO.
TEMPLATES = [
    "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "After {A} and {B} arrived at the {PLACE}, {S} handed the {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "Then, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Yesterday {A} and {B} were at the {PLACE}. {S} passed the {OBJECT} to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {S} gave it to",
    "The {PLACE} was closed when {A} and {B} arrived, so {S} gave the {OBJECT} to",
    "Once {A} and {B} had left the {PLACE}, {S} threw the {OBJECT} to",
    "When {A} and {B} met at the {PLACE}, {S} showed the {OBJECT} to",
    "After lunch, {A} and {B} went to the {PLACE}, and {S} brought a {OBJECT} to",
    "On Sunday {A} and {B} visited the {PLACE}, where {S} sold a {OBJECT} to",
    "Because {A} and {B} were hungry at the {PLACE}, {S} offered a {OBJECT} to",
    "Later, {A} and {B} were cleaning the {PLACE}. {S} handed a {OBJECT} to",
    "As {A} and {B} walked into the {PLACE}, {S} tossed a {OBJECT} to",
    "In the morning, {A} and {B} went to the {PLACE}. {S} sent a {OBJECT} to",
    "When {A} and {B} sat down at the {PLACE}, {S} passed a {OBJECT} to",
]

#: Common English first names; those that are not one token (with a leading space) in the
#: tokenizer are dropped when the dataset is built.
NAMES = [
    "Mary", "John", "James", "Robert", "Michael", "William", "David", "Richard", "Joseph",
    "Thomas", "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Paul", "Steven", "Andrew",
    "Kevin", "Brian", "George", "Edward", "Peter", "Jack", "Henry", "Adam", "Ryan", "Eric",
    "Sarah", "Jessica", "Emily", "Laura", "Anna", "Rachel", "Susan", "Karen", "Lisa", "Nancy",
    "Kate", "Amy", "Helen", "Alice", "Rose", "Jane", "Emma", "Grace", "Linda", "Julia",
    "Martin", "Simon", "Frank", "Victoria", "Elizabeth", "Jennifer", "Patrick", "Scott",
    "Justin", "Jason", "Sam", "Tom",
]

#: Places and objects (single tokens, consonant-initial so that "a {OBJECT}" reads well).
PLACES = [
    "store", "park", "school", "hospital", "restaurant", "office", "station", "beach",
    "garden", "house", "market", "church", "library", "museum", "airport", "hotel", "bank",
    "kitchen", "farm", "bakery",
]
OBJECTS = [
    "drink", "book", "ring", "bag", "box", "cake", "card", "hat", "key", "letter", "ball",
    "cup", "pen", "phone", "bottle", "gift", "basket", "computer", "snack", "ticket",
]

ABBA, BABA = 0, 1
ORDERS = {ABBA: "ABBA", BABA: "BABA"}
_SLOT = re.compile(r"( \{[A-Z]+\})")
_NAME_SLOTS = ("A", "B", "S")


class Tokenizer(Protocol):
    """What the dataset needs from a tokenizer: Hugging Face tokenizers have all of it."""

    bos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class WordTokenizer:
    """A word-level tokenizer that splits text as GPT-2's pre-tokenizer does, one token per
    piece: a word with its leading space (" Mary"), or a punctuation mark. Id 0 is the
    beginning-of-sequence token `<|endoftext|>`. For tests and random-weight models.

    Example:
        >>> tok = WordTokenizer(["When", " Mary", ",", " to"])
        >>> tok.encode("When Mary, to"), tok.decode([1, 2]), tok.bos_token_id
        ([1, 2, 3, 4], 'When Mary', 0)
    """

    PIECE = re.compile(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]|\s+")
    BOS = "<|endoftext|>"

    def __init__(self, pieces: Iterable[str]):
        self.vocab: dict[str, int] = {self.BOS: 0}
        for piece in pieces:
            self.vocab.setdefault(piece, len(self.vocab))
        self.words = list(self.vocab)
        self.bos_token_id: int | None = 0

    @classmethod
    def for_ioi(cls, templates: Sequence[str] = TEMPLATES, names: Sequence[str] = NAMES,
                places: Sequence[str] = PLACES, objects: Sequence[str] = OBJECTS) -> WordTokenizer:
        """A vocabulary holding every piece of the templates and every word of the lists."""
        pieces: list[str] = []
        for template in templates:
            for part in _SLOT.split(template):
                if not _SLOT.fullmatch(part):
                    pieces += cls.PIECE.findall(part)
        pieces += [" " + w for w in [*names, *places, *objects]]
        return cls(pieces)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        pieces = self.PIECE.findall(text)
        unknown = [p for p in pieces if p not in self.vocab]
        if unknown or "".join(pieces) != text:
            raise ScrubError(f"WordTokenizer cannot encode {text!r}: unknown pieces {unknown}. "
                             "Build it with the words it must know (WordTokenizer.for_ioi(...)).")
        return [self.vocab[p] for p in pieces]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.words[int(i)] for i in ids)


@dataclass(frozen=True)
class CompiledTemplate:
    """A template as token ids, with the index of each slot's single token."""

    text: str
    tokens: tuple[int, ...]  # slot positions hold -1
    slots: dict[str, int]  # slot name -> index into tokens


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:  # a tokenizer without the keyword
        return list(tokenizer.encode(text))


def compile_template(tokenizer: Tokenizer, template: str) -> CompiledTemplate:
    """Encode `template` piece by piece; each `{SLOT}` becomes one placeholder token."""
    tokens: list[int] = []
    slots: dict[str, int] = {}
    for part in _SLOT.split(template):
        if not part:
            continue
        if _SLOT.fullmatch(part):
            name = part.strip()[1:-1]
            if name in slots:
                raise ScrubError(f"IOI template {template!r} has slot {{{name}}} twice.")
            slots[name] = len(tokens)
            tokens.append(-1)
        else:
            if "{" in part:
                raise ScrubError(f"IOI template {template!r}: every slot must follow a space "
                                 f"(found {part!r}).")
            tokens += _encode(tokenizer, part)
    missing = [s for s in _NAME_SLOTS if s not in slots]
    if missing:
        raise ScrubError(f"IOI template {template!r} lacks the name slots {missing}; each "
                         "template needs {A}, {B} and {S}.")
    return CompiledTemplate(template, tuple(tokens), slots)


def single_tokens(tokenizer: Tokenizer, words: Iterable[str], what: str, minimum: int) -> dict[str, int]:
    """`{word: id}` for the words whose `" " + word` is exactly one token (duplicates dropped)."""
    out: dict[str, int] = {}
    dropped = []
    for w in dict.fromkeys(words):
        ids = _encode(tokenizer, " " + w)
        if len(ids) == 1:
            out[w] = ids[0]
        else:
            dropped.append(w)
    if dropped:
        log.info("IOI: dropped %d %s that are not one token: %s", len(dropped), what, dropped)
    if len(out) < minimum:
        raise ScrubError(f"Only {len(out)} of the IOI {what} are single tokens in this tokenizer "
                         f"(need at least {minimum}); dropped: {dropped}. Give a longer list.")
    return out


def dataset(tokenizer: Tokenizer, n: int = 20_000, seed: int = 0,
            templates: Sequence[str] = TEMPLATES, names: Sequence[str] = NAMES,
            places: Sequence[str] = PLACES, objects: Sequence[str] = OBJECTS) -> Dataset:
    """`n` IOI prompts, left-padded to one length, with their features (see the module doc).

    Each (template, order) cell gets an equal share of the rows; IO and S are two different
    names drawn uniformly; place and object uniformly.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise ScrubError("The tokenizer has no bos_token_id; IOI prompts start with (and are "
                         "left-padded by) the beginning-of-sequence token (GPT-2: <|endoftext|>).")
    name_ids = torch.tensor(list(single_tokens(tokenizer, names, "names", 2).values()))
    place_ids = torch.tensor(list(single_tokens(tokenizer, places, "places", 1).values()))
    object_ids = torch.tensor(list(single_tokens(tokenizer, objects, "objects", 1).values()))
    compiled = [compile_template(tokenizer, t) for t in templates]
    length = 1 + max(len(c.tokens) for c in compiled)  # BOS + the longest template

    n_t = len(compiled)
    table = torch.full((n_t, length), bos, dtype=torch.long)  # [n_t, length] left-padded
    slot_pos = {s: torch.full((n_t,), -1, dtype=torch.long) for s in (*_NAME_SLOTS, "PLACE", "OBJECT")}
    for i, c in enumerate(compiled):
        offset = length - len(c.tokens)
        table[i, offset:] = torch.tensor(c.tokens)
        for name, j in c.slots.items():
            if name not in slot_pos:
                raise ScrubError(f"IOI template {c.text!r} has an unknown slot {{{name}}}; use "
                                 "{A}, {B}, {S}, {PLACE}, {OBJECT}.")
            slot_pos[name][i] = offset + j

    gen = torch.Generator().manual_seed(seed)
    cell = torch.arange(n)[torch.randperm(n, generator=gen)]  # balanced cells, shuffled
    template = cell % n_t
    order = (cell // n_t) % 2
    io_i = torch.randint(0, len(name_ids), (n,), generator=gen)
    s_i = (io_i + torch.randint(1, len(name_ids), (n,), generator=gen)) % len(name_ids)  # != io
    io, s = name_ids[io_i], name_ids[s_i]  # [n] token ids
    rows = torch.arange(n)
    tokens = table[template].clone()  # [n, length]
    first = torch.where(order == ABBA, io, s)
    second = torch.where(order == ABBA, s, io)
    a_pos, b_pos, s2_pos = (slot_pos[k][template] for k in _NAME_SLOTS)  # [n] each
    tokens[rows, a_pos] = first
    tokens[rows, b_pos] = second
    tokens[rows, s2_pos] = s
    for slot, ids in (("PLACE", place_ids), ("OBJECT", object_ids)):
        pos = slot_pos[slot][template]  # [n], -1 where the template has no such slot
        fill = ids[torch.randint(0, len(ids), (n,), generator=gen)]
        has = pos >= 0
        tokens[rows[has], pos[has]] = fill[has]
    return Dataset({
        "tokens": tokens,
        "io": io, "s": s,
        "io_pos": torch.where(order == ABBA, a_pos, b_pos),
        "s1_pos": torch.where(order == ABBA, b_pos, a_pos),
        "s2_pos": s2_pos,
        "end_pos": torch.full((n,), length - 1, dtype=torch.long),
        "template": template, "order": order,
    })


def prompt(tokenizer: Tokenizer, ds: Dataset, row: int) -> str:
    """The text of row `row` (padding included)."""
    return tokenizer.decode(ds["tokens"][row].tolist())


# ---- features the hypotheses condition on ---------------------------------------------------


def s_and_order(ds: Dataset) -> Tensor:
    """The subject's token and the name order, [n, 2]: what the S-inhibition heads are
    claimed to signal (which name to avoid, and whether it came first or second)."""
    return torch.stack([ds["s"], ds["order"]], 1)


def s_and_positions(ds: Dataset) -> Tensor:
    """The subject's token and the positions of S1 and S2, [n, 3]: what the duplicate-token,
    induction and previous-token heads are claimed to compute (S is repeated, and where)."""
    return torch.stack([ds["s"], ds["s1_pos"], ds["s2_pos"]], 1)
