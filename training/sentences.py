"""Deterministic English sentences for the synthetic corpus.

The vocabulary (a few hundred common words) is chosen so that every English phoneme occurs often:
bilabials (p b m), labiodentals (f v), dentals (th), postalveolars (sh zh ch j), velars (k g ng),
rounded vowels (oo, oh, aw), diphthongs (ai, ow, oy) and r-coloured vowels. Sentences are built
from templates with 4-12 words, so the model sees varied rhythm and phoneme contexts; a seed
fixes the whole stream, and no sentence repeats, so splits by sentence have disjoint content.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

MIN_WORDS = 4
MAX_WORDS = 12

NAMES = (
    "Bob", "Mary", "Peter", "Vivian", "Martha", "Joseph", "George", "Judy", "Charles", "Sheila",
    "Theo", "Ruth", "Owen", "Molly", "Paul", "Fiona", "Victor", "Ben", "Zoe", "Hugh", "Nora",
    "Walter", "Yvonne", "Gordon", "Irene", "Maggie", "Arthur", "Joy",
)
PEOPLE = (
    "the farmer", "my brother", "your mother", "the teacher", "our neighbour", "the baker",
    "the pilot", "my father", "the young girl", "the old man", "the doctor", "the nurse",
    "the boy", "the fisherman", "the judge", "the singer", "the driver", "the waiter",
    "her cousin", "the police officer", "the children", "the workers", "my aunt", "the mayor",
)
ADJECTIVES = (
    "big", "small", "blue", "brown", "yellow", "purple", "orange", "green", "warm", "cold",
    "smooth", "rough", "heavy", "empty", "beautiful", "usual", "beige", "cheap", "huge", "loud",
    "quiet", "round", "sharp", "thick", "thin", "soft", "fresh", "old", "new", "bright", "dark",
    "wooden", "golden", "shiny", "muddy", "noisy", "tiny", "pretty", "broken", "strange",
    "famous", "lovely", "careful", "awful", "lazy", "hungry", "polished", "narrow", "wide",
)
NOUNS = (
    "map", "book", "box", "boat", "bottle", "basket", "ball", "bag", "bench", "bridge", "bike",
    "cup", "coin", "coat", "chair", "cheese", "chicken", "church", "clock", "cloud", "cookie",
    "door", "dog", "drawer", "engine", "envelope", "fish", "fork", "fence", "flower", "fruit",
    "garage", "garden", "gift", "glove", "guitar", "hat", "house", "horse", "jacket", "jar",
    "juice", "key", "kettle", "kitchen", "lamp", "letter", "ladder", "lemon", "measure",
    "mirror", "monkey", "moon", "mouse", "mouth", "nut", "oven", "owl", "paper", "pencil",
    "phone", "piano", "picture", "pillow", "plate", "pool", "potato", "puppy", "puzzle",
    "rabbit", "radio", "ring", "road", "roof", "rope", "shoe", "shirt", "shovel", "spoon",
    "sugar", "table", "teapot", "thumb", "ticket", "tooth", "towel", "toy", "treasure", "truck",
    "umbrella", "vase", "van", "violin", "voice", "wagon", "wallet", "watch", "water", "window",
    "wheel", "wool", "zipper", "feather", "leather", "pearl", "bird", "shell", "soup", "vision",
)
PLACES = (
    "the river", "the station", "the village", "the beach", "the market", "the office",
    "the theatre", "the mountain", "the harbour", "the museum", "the bakery", "the airport",
    "the forest", "the school", "the hospital", "the square", "the valley", "the farm",
    "the shop", "the library", "the church", "the pier", "the north shore", "the zoo",
)
PREPOSITIONS = (
    "near", "behind", "beside", "under", "above", "inside", "outside", "by", "past", "toward",
    "across", "through", "beyond", "around", "with",
)
TIMES = (
    "yesterday", "today", "this morning", "last night", "on Monday", "on Thursday",
    "in the evening", "every week", "after lunch", "before breakfast", "at noon", "at three",
    "in June", "in the autumn", "this year", "last weekend", "for a while", "at midnight",
)
# (past tense, base form) for transitive verbs.
VERBS = (
    ("brought", "bring"), ("moved", "move"), ("found", "find"), ("pushed", "push"),
    ("watched", "watch"), ("bought", "buy"), ("fixed", "fix"), ("washed", "wash"),
    ("painted", "paint"), ("carried", "carry"), ("dropped", "drop"), ("measured", "measure"),
    ("borrowed", "borrow"), ("showed", "show"), ("threw", "throw"), ("caught", "catch"),
    ("judged", "judge"), ("chose", "choose"), ("hid", "hide"), ("opened", "open"),
    ("closed", "close"), ("polished", "polish"), ("weighed", "weigh"), ("filled", "fill"),
    ("folded", "fold"), ("lifted", "lift"), ("kept", "keep"), ("sold", "sell"), ("took", "take"),
    ("gave away", "give away"), ("put away", "put away"), ("picked up", "pick up"),
    ("looked at", "look at"), ("thought about", "think about"), ("waved at", "wave at"),
    ("pointed at", "point at"), ("dreamed about", "dream about"), ("heard", "hear"),
    ("touched", "touch"), ("shared", "share"), ("mixed", "mix"), ("wrapped", "wrap"),
    ("enjoyed", "enjoy"), ("bumped into", "bump into"),
)
# (past tense, base form) for intransitive verbs, followed by a place.
MOTIONS = (
    ("walked", "walk"), ("ran", "run"), ("drove", "drive"), ("swam", "swim"),
    ("waited", "wait"), ("sang", "sing"), ("slept", "sleep"), ("worked", "work"),
    ("played", "play"), ("jumped", "jump"), ("shouted", "shout"), ("laughed", "laugh"),
    ("stayed", "stay"), ("arrived", "arrive"), ("wandered", "wander"), ("smiled", "smile"),
    ("travelled", "travel"), ("rowed", "row"), ("hurried", "hurry"), ("fished", "fish"),
)
ADVERBS = (
    "slowly", "quickly", "quietly", "happily", "carefully", "usually", "often", "very well",
    "together", "again", "at once", "all day", "too early", "rather late", "once more",
)
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "thirty")
OPENERS = (
    "I think", "We know", "They said", "She believes", "He told me", "You can see", "It seems",
    "Everyone knows", "Nobody thought", "My friend says", "Obviously", "Perhaps",
)


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _verb(rng: np.random.Generator, verbs: tuple[tuple[str, str], ...], past: bool) -> str:
    past_form, base = verbs[int(rng.integers(len(verbs)))]
    return past_form if past else base


def _subject(rng: np.random.Generator) -> str:
    return _pick(rng, NAMES) if rng.random() < 0.5 else _pick(rng, PEOPLE)


def _object(rng: np.random.Generator) -> str:
    """A noun phrase: 'the blue map', 'three wooden spoons', 'a kettle'."""
    noun = _pick(rng, NOUNS)
    roll = rng.random()
    if roll < 0.15:
        return f"{_pick(rng, NUMBERS)} {_plural(noun)}"
    adjective = f"{_pick(rng, ADJECTIVES)} " if rng.random() < 0.6 else ""
    det = _pick(rng, ("the", "a", "my", "his", "her", "our", "their", "that", "this"))
    if det == "a" and (adjective or noun)[0] in "aeiou" and not (adjective or noun).startswith("us"):
        det = "an"
    return f"{det} {adjective}{noun}"


def _plural(noun: str) -> str:
    if noun in ("mouse",):
        return "mice"
    if noun in ("tooth",):
        return "teeth"
    if noun.endswith(("s", "sh", "ch", "x", "z")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _template(rng: np.random.Generator) -> str:
    """One sentence from a randomly chosen template; punctuation sets its intonation."""
    kind = int(rng.integers(8))
    if kind == 0:
        text = f"{_subject(rng)} {_verb(rng, VERBS, True)} {_object(rng)}"
        if rng.random() < 0.6:
            text += f" {_pick(rng, PREPOSITIONS)} {_pick(rng, PLACES)}"
        if rng.random() < 0.4:
            text += f" {_pick(rng, TIMES)}"
        return text + "."
    if kind == 1:
        who, went = _subject(rng), _verb(rng, MOTIONS, True)
        return f"{who} {went} {_pick(rng, PREPOSITIONS)} {_pick(rng, PLACES)} {_pick(rng, TIMES)}."
    if kind == 2:
        return f"Did {_subject(rng)} {_verb(rng, VERBS, False)} {_object(rng)} {_pick(rng, TIMES)}?"
    if kind == 3:
        return f"Please {_verb(rng, VERBS, False)} {_object(rng)} {_pick(rng, PREPOSITIONS)} {_object(rng)}."
    if kind == 4:
        return f"{_pick(rng, OPENERS)} {_subject(rng)} will {_verb(rng, VERBS, False)} {_object(rng)}."
    if kind == 5:
        return f"{_object(rng)} was {_pick(rng, ADJECTIVES)} and {_pick(rng, ADJECTIVES)} {_pick(rng, TIMES)}."
    if kind == 6:
        return f"Why did {_subject(rng)} {_verb(rng, MOTIONS, False)} {_pick(rng, ADVERBS)}?"
    who, went, how = _subject(rng), _verb(rng, MOTIONS, True), _pick(rng, ADVERBS)
    return f"{who} {went} {how} and {_verb(rng, VERBS, True)} {_object(rng)}."


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def sentences(seed: int) -> Iterator[str]:
    """An endless stream of distinct sentences with MIN_WORDS..MAX_WORDS words, fixed by `seed`."""
    rng = np.random.default_rng([seed, 0x5E27])
    seen: set[str] = set()
    while True:
        text = _capitalise(_template(rng))
        if MIN_WORDS <= len(text.split()) <= MAX_WORDS and text not in seen:
            seen.add(text)
            yield text
